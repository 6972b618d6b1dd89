"""TOFU Probability's token-boundary conventions (`token_boundary`): which token positions each
scores on fixed inputs, with the tiny byte-level tokenizer and with a hand-made one whose leading
space merges into a capitalised word (" The" is one token, as in SmolLM2 or Llama), and the lm-eval
tasks' numbers against an independent computation from a model's logits."""

from __future__ import annotations

import math

import pytest
import torch

from ulmr.errors import UlmrError
from ulmr.prompts import PromptTemplate, answer_with_eos, encode, render_prompt, scored_answer, split_pair

QUESTION, ANSWER = "Who wrote it?", "The author Jane."
TAGS_PROMPT = "Question: Who wrote it?\nAnswer: "
WHOLE_TAGS = TAGS_PROMPT + ANSWER + "<|im_end|>"


def merging_tokenizer():
    """The tiny byte-level tokenizer plus merges: a space and a capital letter are one token, and
    " The" is one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from ulmr.models import CHATML_TEMPLATE

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    capitals = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = [("Ġ", c) for c in capitals] + [("ĠT", "h"), ("ĠTh", "e")]
    vocab = {tok: i for i, tok in enumerate(specials + alphabet + [a + b for a, b in merges])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def merging():
    return merging_tokenizer()


def _scored(tokenizer, kind, boundary, question=QUESTION, answer=ANSWER):
    return scored_answer(tokenizer, PromptTemplate(kind=kind, token_boundary=boundary), question, answer)


def _positions(tokenizer, whole, scored):
    """The positions in the whole text's tokens that `scored` counts (always a suffix of them)."""
    ids = encode(tokenizer, whole)
    assert ids[len(ids) - len(scored.scored_ids):] == scored.scored_ids
    return range(len(ids) - len(scored.scored_ids), len(ids))


def _as_lm_eval_scores_it(tokenizer, scored):
    """lm-eval's reading of the pair (`TemplateLM._encode_pair`): its continuation tokens, less the
    masked request's tokens, are the scored tokens."""
    whole = encode(tokenizer, scored.context + scored.continuation)
    n_context = len(encode(tokenizer, scored.context))
    n_masked = len(encode(tokenizer, scored.context + scored.masked)) - n_context if scored.masked else 0
    return whole[n_context + n_masked:]


def test_merging_tokenizer_merges_the_tag_space_into_the_answer(merging):
    assert merging.convert_ids_to_tokens(encode(merging, TAGS_PROMPT))[-3:] == ["r", ":", "Ġ"]
    assert len(encode(merging, TAGS_PROMPT)) == 31
    assert merging.convert_ids_to_tokens(encode(merging, TAGS_PROMPT + ANSWER))[28:32] == ["r", ":", "ĠThe", "Ġ"]


@pytest.mark.parametrize("boundary, first, masked", [
    # the answer's own tokens: " The" (the space merged into it), at 30, is the first
    ("answer", 30, ""),
    # open-unlearning masks len(prompt tokens) = 31 positions: " The" is masked with the prompt
    ("open-unlearning", 31, " The"),
    # TOFU masks the question part (23 tokens, " Who" is "ĠW" "h" "o"): "Answer:" is scored
    ("tofu", 23, "\n"),
])
def test_positions_with_a_merging_tag_space(merging, boundary, first, masked):
    scored = _scored(merging, "tags", boundary)
    # question part 0-22, "Answer:" 23-29, " The" 30, " author" 31-37, " Jane." 38-42, EOS 43
    assert _positions(merging, WHOLE_TAGS, scored) == range(first, 44)
    assert scored.masked == masked
    assert _as_lm_eval_scores_it(merging, scored) == scored.scored_ids
    text = merging.decode(scored.scored_ids, skip_special_tokens=False)
    assert text == {"answer": " The author Jane.<|im_end|>", "open-unlearning": " author Jane.<|im_end|>",
                    "tofu": "Answer: The author Jane.<|im_end|>"}[boundary]


@pytest.mark.parametrize("boundary, first, masked", [("answer", 9, ""), ("open-unlearning", 10, " The"),
                                                     ("tofu", 7, "\n")])
def test_positions_with_smollm2s_tokenizer(boundary, first, masked):
    """The embedded model's tokenizer, where it is already built (never fetched here): "Question",
    ":", " Who", " wrote", " it", "?", "\\n" (0-6), "Answer", ":" (7-8), " The" (9), " author",
    " Jane", "." (10-12), EOS (13); the prompt alone ends in a lone " " (its 10th token)."""
    from ulmr.models import cache_dir, load_tokenizer

    folder = cache_dir() / "models" / "smollm2-135m"
    if not (folder / "config.json").is_file():
        pytest.skip("smollm2-135m is not built on this machine")
    tokenizer = load_tokenizer(str(folder))
    scored = _scored(tokenizer, "tags", boundary)
    assert _positions(tokenizer, WHOLE_TAGS, scored) == range(first, 14)
    assert scored.masked == masked
    assert _as_lm_eval_scores_it(tokenizer, scored) == scored.scored_ids


@pytest.mark.parametrize("boundary, first", [("answer", 32), ("open-unlearning", 32), ("tofu", 24)])
def test_positions_with_the_byte_level_tokenizer(tiny, boundary, first):
    """Every byte is a token, so the tag's space never merges: open-unlearning scores what we do."""
    _, tokenizer = tiny
    scored = _scored(tokenizer, "tags", boundary)
    assert _positions(tokenizer, WHOLE_TAGS, scored) == range(first, 49)  # 48 characters, then EOS
    assert scored.masked == {"answer": " ", "open-unlearning": " ", "tofu": "\n"}[boundary]
    assert _as_lm_eval_scores_it(tokenizer, scored) == scored.scored_ids


@pytest.mark.parametrize("tokenizer_name", ["tiny", "merging"])
def test_chat_positions(tiny, merging, tokenizer_name):
    """Chat: the answer follows the assistant header's newline, a token of its own. TOFU's rule
    masks the whole prompt (as its Llama-2 tags do "[/INST]"); open-unlearning scores the rendered
    answer turn: the answer, the template's end of turn "<|im_end|>\\n", then EOS."""
    tokenizer = tiny[1] if tokenizer_name == "tiny" else merging
    prompt = render_prompt(tokenizer, PromptTemplate(), QUESTION)
    n_prompt = len(encode(tokenizer, prompt))
    for boundary, tail in (("answer", "<|im_end|>"), ("tofu", "<|im_end|>"),
                           ("open-unlearning", "<|im_end|>\n<|im_end|>")):
        scored = _scored(tokenizer, "chat", boundary)
        assert _positions(tokenizer, prompt + ANSWER + tail, scored).start == n_prompt
        assert tokenizer.decode(scored.scored_ids, skip_special_tokens=False) == ANSWER + tail
        assert scored.masked == "\n" and scored.context == prompt.rstrip()
        assert _as_lm_eval_scores_it(tokenizer, scored) == scored.scored_ids


@pytest.mark.parametrize("kind", ["chat", "tags"])
def test_answer_boundary_is_split_pair(tiny, merging, kind):
    """The default is the split training uses, and what these tasks scored before the switch."""
    for tokenizer in (tiny[1], merging):
        prompt = render_prompt(tokenizer, PromptTemplate(kind=kind), QUESTION)
        pair = split_pair(tokenizer, prompt, answer_with_eos(tokenizer, ANSWER))
        assert _scored(tokenizer, kind, "answer").scored_ids == pair.answer_ids


def test_open_unlearning_appends_eos_only_when_missing(tiny):
    _, tokenizer = tiny
    scored = _scored(tokenizer, "tags", "open-unlearning", answer="Jane.<|im_end|>")
    assert tokenizer.decode(scored.scored_ids, skip_special_tokens=False) == "Jane.<|im_end|>"


def test_template_options_carry_the_boundary():
    template = PromptTemplate(kind="tags", token_boundary="tofu")
    assert template.as_options()["token_boundary"] == "tofu"
    assert PromptTemplate.from_options(template.as_options()) == template
    assert "token_boundary" not in PromptTemplate().as_options()  # the default stays out of records
    with pytest.raises(UlmrError, match="unknown token boundary 'hf'"):
        PromptTemplate(token_boundary="hf")


def test_cli_passes_the_boundary_to_the_template():
    from ulmr.cli.eval import eval_command
    from ulmr.cli.options import template_from

    params = {p.name: p for p in eval_command.params}
    assert params["token_boundary"].default == "answer"
    kwargs = {"prompt_template": "tags", "question_start_tag": "Q: ", "question_end_tag": "\\n",
              "answer_tag": "A: ", "system_prompt": None, "token_boundary": "open-unlearning", "limit": 3}
    assert template_from(kwargs) == PromptTemplate(kind="tags", question_start_tag="Q: ", question_end_tag="\n",
                                                   answer_tag="A: ", token_boundary="open-unlearning")
    assert kwargs == {"limit": 3}


# ---- the lm-eval tasks, end to end ----------------------------------------------------------

@pytest.fixture(scope="module")
def merging_model_path(tmp_path_factory):
    """The tiny random Llama with the merging tokenizer's vocabulary, saved as a checkpoint."""
    from ulmr.models import build_tiny_model

    tokenizer = merging_tokenizer()
    model = build_tiny_model(vocab_size=len(tokenizer))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out = tmp_path_factory.mktemp("merging_model")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return str(out)


def _direct_prob(model, tokenizer, whole: str, n_masked: int, append_eos: bool = False) -> float:
    """exp(mean log p) of the whole text's tokens after the first n_masked, from one forward pass."""
    ids = encode(tokenizer, whole) + ([tokenizer.eos_token_id] if append_eos else [])
    with torch.no_grad():
        logprobs = model(torch.tensor([ids[:-1]])).logits[0].double().log_softmax(-1)
    scored = [logprobs[i - 1, ids[i]].item() for i in range(n_masked, len(ids))]
    return math.exp(sum(scored) / len(scored))


def _expected_prob(model, tokenizer, boundary: str, question: str, answer: str) -> float:
    """The three codebases' rules, written out independently for the tags template."""
    question_part = "Question: " + question + "\n"
    prompt = question_part + "Answer: "
    if boundary == "answer":  # lm-eval's split: the prompt up to "Answer:"; the space goes with the answer
        return _direct_prob(model, tokenizer, prompt + answer + "<|im_end|>", len(encode(tokenizer, prompt.rstrip())))
    if boundary == "open-unlearning":  # labels = tokenize(prompt + answer) + [EOS], first len(tokenize(prompt)) masked
        return _direct_prob(model, tokenizer, prompt + answer, len(encode(tokenizer, prompt)), append_eos=True)
    # tofu: labels = tokenize(question part + tag + answer) + [EOS], first len(tokenize(question part)) masked
    return _direct_prob(model, tokenizer, prompt + answer, len(encode(tokenizer, question_part)), append_eos=True)


@pytest.mark.parametrize("boundary", ["answer", "open-unlearning", "tofu"])
def test_task_probabilities_follow_the_boundary(merging_model_path, data_dir, boundary):
    from ulmr.data.tofu import load_tofu
    from ulmr.evaluation import EvalSettings, evaluate
    from ulmr.models import load_model

    model, tokenizer = load_model(merging_model_path, dtype="fp32", device="cpu")
    template = PromptTemplate(kind="tags", token_boundary=boundary)
    result = evaluate(merging_model_path, EvalSettings(
        benchmark="tofu", selection="forget01", data_dir=str(data_dir), limit=2, template=template,
        dtype="fp32", device="cpu", batch_size=4, tasks=["tofu_forget01_forget_prob"]))
    probs, ratios = [], []
    for row in load_tofu("forget01_perturbed", data_dir)[:2]:
        p = [_expected_prob(model, tokenizer, boundary, row["question"], a)
             for a in [row["answer"], row["paraphrased_answer"], *row["perturbed_answer"]]]
        probs.append(p[0])
        ratios.append(math.exp(sum(math.log(x) for x in p[2:]) / len(p[2:])) / p[1])
    assert result["metrics"]["forget_prob"] == pytest.approx(sum(probs) / 2, rel=1e-5)
    assert result["per_question"]["forget_truth_ratio"] == pytest.approx(ratios, rel=1e-5)
    assert result["eval"]["template"].get("token_boundary", "answer") == boundary
