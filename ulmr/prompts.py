"""Prompt templates and the prompt/answer token split shared by evaluation and training.

Pure functions of a tokenizer and strings, so the lm-eval tasks can import them without the rest of
ulmr. The split follows lm-eval's own encoding of a (context, continuation) request exactly
(`TemplateLM._encode_pair`: trailing whitespace of the context moves to the continuation, the whole
string is encoded once and cut after the context's tokens), so the tokens we count, train on and
score are the tokens lm-eval scores.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ulmr.errors import UlmrError

# Which tokens of an answer TOFU's Probability (and truth ratio) scores; see scored_answer.
TOKEN_BOUNDARIES = ("answer", "open-unlearning", "tofu")


@dataclass(frozen=True)
class PromptTemplate:
    """How a question becomes a prompt.

    kind: "chat" renders the question as a user turn with the tokenizer's chat template
        (generation prompt added); "tags" concatenates TOFU-style tags:
        question_start_tag + question + question_end_tag + answer_tag, then the answer.
    system_prompt: an instruction before every prompt (e.g. in-context unlearning's). chat: the
        system turn (None keeps the chat template's own default); tags: a line of its own before
        the question tags (`prompt_prefix`).
    The defaults of the tags are TOFU's Phi-1.5 format ("Question: {q}\\nAnswer: {a}").
    token_boundary: which tokens evaluation scores as the answer (`scored_answer`): "answer" (the
        answer's tokens and EOS), "open-unlearning" or "tofu" (those codebases' rules). Scoring
        only: training always uses `split_pair`.
    """

    kind: str = "chat"
    question_start_tag: str = "Question: "
    question_end_tag: str = "\n"
    answer_tag: str = "Answer: "
    system_prompt: str | None = None
    token_boundary: str = "answer"

    def __post_init__(self):
        if self.kind not in ("chat", "tags"):
            raise UlmrError(f"unknown prompt template kind {self.kind!r}: use 'chat' or 'tags'")
        if self.token_boundary not in TOKEN_BOUNDARIES:
            raise UlmrError(f"unknown token boundary {self.token_boundary!r}: use "
                            + ", ".join(TOKEN_BOUNDARIES))

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "PromptTemplate":
        """Build from task metadata / CLI options; keys: prompt_template and the field names."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in options.items() if k in names and v is not None}
        if "prompt_template" in options and options["prompt_template"] is not None:
            kwargs["kind"] = options["prompt_template"]
        return cls(**kwargs)

    def as_options(self) -> dict[str, Any]:
        """The inverse of from_options: what to pass as lm-eval task metadata."""
        opts = {"prompt_template": self.kind}
        if self.kind == "tags":
            opts.update(question_start_tag=self.question_start_tag,
                        question_end_tag=self.question_end_tag, answer_tag=self.answer_tag)
        if self.system_prompt is not None:
            opts["system_prompt"] = self.system_prompt
        if self.token_boundary != "answer":  # the default stays out, so earlier records still match
            opts["token_boundary"] = self.token_boundary
        return opts


def prompt_prefix(template: PromptTemplate) -> str:
    """What a plain-text ("tags") prompt starts with: the system prompt and a newline, or nothing.
    Chat prompts carry the system prompt in their system turn instead."""
    return "" if template.system_prompt is None else template.system_prompt + "\n"


def render_prompt(tokenizer, template: PromptTemplate, question: str) -> str:
    """The full prompt text that precedes the answer."""
    if template.kind == "tags":
        return (prompt_prefix(template) + template.question_start_tag + question + template.question_end_tag
                + template.answer_tag)
    if not getattr(tokenizer, "chat_template", None):
        raise UlmrError(
            "the tokenizer has no chat template: pass --prompt-template tags (TOFU-style "
            "question/answer tags) or use a chat model")
    messages = [{"role": "user", "content": question}]
    if template.system_prompt is not None:
        messages.insert(0, {"role": "system", "content": template.system_prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode(tokenizer, text: str) -> list[int]:
    """Encode as lm-eval's HF model does: tokenizer defaults, no second BOS if text starts with one."""
    bos = tokenizer.bos_token
    if bos and text.startswith(bos):
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode(text)


@dataclass(frozen=True)
class SplitPair:
    """Token ids of one scored pair: context, then the continuation lm-eval scores.

    The continuation starts with `n_prompt_ws` tokens that are the prompt's own trailing
    whitespace (lm-eval moves it into the continuation); the answer tokens are the rest.
    """

    context_ids: list[int]
    continuation_ids: list[int]
    n_prompt_ws: int

    @property
    def answer_ids(self) -> list[int]:
        return self.continuation_ids[self.n_prompt_ws:]


def split_pair(tokenizer, prompt: str, answer: str) -> SplitPair:
    """Tokenise prompt + answer the way lm-eval does and locate the answer's tokens.

    Whitespace at the end of the prompt that tokenises on its own (e.g. the newline after
    "assistant" in a chat template) is prompt, not answer; whitespace that merges into the first
    answer token (" The" after "Answer:") belongs to that token and is scored with it.
    """
    stripped = prompt.rstrip()
    whole = encode(tokenizer, prompt + answer)
    context = encode(tokenizer, stripped)
    if whole[: len(context)] != context:
        raise UlmrError(f"prompt tokens change when the answer follows them (prompt {stripped[-40:]!r}); "
                        "use a template whose prompt ends at a token boundary")
    continuation = whole[len(context):]
    n_ws = 0
    if stripped != prompt:
        with_ws = encode(tokenizer, prompt)
        if whole[: len(with_ws)] == with_ws:
            n_ws = len(with_ws) - len(context)
    return SplitPair(context, continuation, n_ws)


def answer_with_eos(tokenizer, answer: str) -> str:
    """TOFU appends the end-of-sequence token to every answer; it is scored with the answer."""
    return answer + (tokenizer.eos_token or "")


@dataclass(frozen=True)
class ScoredAnswer:
    """One answer as evaluation scores it, in lm-eval's terms.

    lm-eval scores the tokens of `continuation` after `context` (its `_encode_pair`: the whole text
    encoded once, cut after the context's tokens). The tokens of `masked` (a request of its own after
    the same context; "" when none) come first among them and are not part of the score: their
    log-likelihood is subtracted, leaving the `scored_ids` (whole-text token ids) to count.
    """

    context: str
    continuation: str
    masked: str
    scored_ids: list[int]


def scored_answer(tokenizer, template: PromptTemplate, question: str, answer: str) -> ScoredAnswer:
    """Which tokens TOFU's Probability scores for `answer`, by `template.token_boundary`.

    - "answer": the answer's tokens and the EOS TOFU appends, the tokens lm-eval scores for the
      prompt/answer pair (`split_pair`): prompt whitespace that tokenises on its own is not scored,
      whitespace that merges into the first answer token (" The" after "Answer:") is.
    - "open-unlearning" (src/data/utils.py, `preprocess_chat_instance`): the prompt, and the prompt
      followed by the answer, are tokenised separately; the first len(prompt ids) positions of the
      latter are masked and EOS is appended unless it already ends in EOS. With tags ending in a space
      ("Answer: ") the space is a token of its own in the prompt but merges into the first answer
      token in the whole, so that token is masked. With a chat template the whole is the rendered
      conversation, answer turn included: its end-of-turn text is scored too.
    - "tofu" (locuslab/tofu data_module.py, `convert_raw_data_to_model_format`): only
      question_start_tag + question + question_end_tag is masked, by its token count; the answer
      tag is scored with the answer, then EOS. There is no chat template in TOFU's code (its Llama-2
      tags carry the chat markup as question tags): with one, the whole prompt is masked.
    """
    eos = tokenizer.eos_token or ""
    prompt = render_prompt(tokenizer, template, question)
    boundary = template.token_boundary
    if boundary == "answer":
        prefix, whole = prompt, prompt + answer + eos
    elif boundary == "tofu":
        prefix = (template.question_start_tag + question + template.question_end_tag
                  if template.kind == "tags" else prompt)
        whole = prompt + answer + eos
    else:  # open-unlearning
        prefix, whole = prompt, prompt + answer
        if template.kind == "chat":
            whole = _rendered_conversation(tokenizer, template, question, answer)
        if encode(tokenizer, whole)[-1:] != [tokenizer.eos_token_id]:
            whole += eos
    if not whole.startswith(prefix):
        raise UlmrError(f"the chat template renders the answer turn without the prompt before it "
                        f"(prompt ends {prompt[-40:]!r}); use --token-boundary answer")
    context = prefix.rstrip()
    whole_ids, context_ids, prefix_ids = (encode(tokenizer, t) for t in (whole, context, prefix))
    if whole_ids[: len(context_ids)] != context_ids:
        raise UlmrError(f"prompt tokens change when the answer follows them (prompt {context[-40:]!r}); "
                        "use a template whose prompt ends at a token boundary")
    if boundary == "answer" and whole_ids[: len(prefix_ids)] != prefix_ids:
        n_masked = len(context_ids)  # the prompt's whitespace merges into the answer: scored with it
    else:  # the other rules mask by the prompt's token count, whatever the tokens are
        n_masked = len(prefix_ids)
    masked = ""
    if n_masked > len(context_ids):
        masked = tokenizer.decode(whole_ids[len(context_ids):n_masked], skip_special_tokens=False,
                                  clean_up_tokenization_spaces=False)
        if encode(tokenizer, context + masked) != whole_ids[:n_masked]:
            raise UlmrError(f"the {boundary} token boundary falls inside text this tokenizer does not "
                            f"encode alone ({masked!r}); use --token-boundary answer")
    elif n_masked < len(context_ids):
        raise UlmrError(f"the {boundary} token boundary falls inside the prompt's tokens; "
                        "use --token-boundary answer")
    return ScoredAnswer(context, whole[len(context):], masked, whole_ids[n_masked:])


def _rendered_conversation(tokenizer, template: PromptTemplate, question: str, answer: str) -> str:
    """The chat template's rendering of the question and the answer as the assistant's turn."""
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    if template.system_prompt is not None:
        messages.insert(0, {"role": "system", "content": template.system_prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False)
