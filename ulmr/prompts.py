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
    """

    kind: str = "chat"
    question_start_tag: str = "Question: "
    question_end_tag: str = "\n"
    answer_tag: str = "Answer: "
    system_prompt: str | None = None

    def __post_init__(self):
        if self.kind not in ("chat", "tags"):
            raise UlmrError(f"unknown prompt template kind {self.kind!r}: use 'chat' or 'tags'")

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
