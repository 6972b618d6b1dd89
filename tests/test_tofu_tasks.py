"""The TOFU lm-eval tasks on the tiny model: scores equal an independent computation from the
model's logits, and the fast backend gives lm-eval's "hf" numbers."""

import math

import pytest
import torch

from ulmr.evaluation import EvalSettings, evaluate
from ulmr.prompts import PromptTemplate, render_prompt, split_pair


def _answer_prob(model, tokenizer, prompt, answer):
    """P(answer) from logits: exp(mean log p) over the answer tokens plus EOS, prompt excluded.
    The tiny tokenizer is byte-level, so prompt and answer tokens simply concatenate."""
    prompt_ids = tokenizer.encode(prompt)
    answer_ids = tokenizer.encode(answer) + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        logprobs = model(ids).logits[0].double().log_softmax(-1)
    lp = [logprobs[len(prompt_ids) + k - 1, t].item() for k, t in enumerate(answer_ids)]
    return math.exp(sum(lp) / len(lp))


@pytest.fixture(scope="module")
def tiny_results(tiny_path, data_dir):
    settings = dict(benchmark="tofu", selection="forget01", data_dir=str(data_dir), limit=2,
                    dtype="fp32", device="cpu", max_gen_toks=8, batch_size=4)
    return {backend: evaluate(tiny_path, EvalSettings(backend=backend, **settings))
            for backend in ("fast", "hf")}


@pytest.mark.parametrize("kind", ["chat", "tags"])
def test_split_pair_separates_prompt_whitespace(tiny, kind):
    _, tokenizer = tiny
    template = PromptTemplate(kind=kind)
    prompt = render_prompt(tokenizer, template, "Who wrote it?")
    pair = split_pair(tokenizer, prompt, "Jane.<|im_end|>")
    # byte-level: the trailing "\n" (chat) or " " (tags) is its own token, and it is prompt
    assert pair.n_prompt_ws == 1
    assert tokenizer.decode(pair.answer_ids, skip_special_tokens=False) == "Jane.<|im_end|>"


def test_task_probabilities_equal_independent_computation(tiny, tiny_results, data_dir):
    from ulmr.data.tofu import load_tofu

    model, tokenizer = tiny
    rows = load_tofu("forget01_perturbed", data_dir)[:2]
    ratios = tiny_results["fast"]["per_question"]["forget_truth_ratio"]
    metrics = tiny_results["fast"]["metrics"]
    probs, expected_ratios = [], []
    for row in rows:
        prompt = render_prompt(tokenizer, PromptTemplate(), row["question"])
        p = [_answer_prob(model, tokenizer, prompt, a)
             for a in [row["answer"], row["paraphrased_answer"], *row["perturbed_answer"]]]
        probs.append(p[0])
        expected_ratios.append(math.exp(sum(math.log(x) for x in p[2:]) / 5) / p[1])
    assert metrics["forget_prob"] == pytest.approx(sum(probs) / 2, rel=1e-5)
    assert ratios == pytest.approx(expected_ratios, rel=1e-5)
    expected_score = sum(min(r, 1 / r) for r in expected_ratios) / 2
    assert metrics["forget_truth_ratio"] == pytest.approx(expected_score, rel=1e-5)


def test_fast_backend_matches_lm_eval_hf(tiny_results):
    fast, hf = tiny_results["fast"]["metrics"], tiny_results["hf"]["metrics"]
    assert fast.keys() == hf.keys() and len(fast) == 13
    for key in fast:
        assert fast[key] == pytest.approx(hf[key], rel=1e-4, abs=1e-6), key


def test_results_record_slice_and_template(tiny_results):
    result = tiny_results["fast"]
    assert result["eval"]["limit"] == 2
    assert result["eval"]["template"] == {"prompt_template": "chat"}
    assert result["eval"]["n_docs"]["tofu_forget01_forget_prob"] == 2
    assert len(result["per_question"]["forget_truth_ratio"]) == 2
    work = result["timings"]["work"]  # what the fast backend did, for stage reports
    assert work["generated_tokens"] > 0 and work["forward_tokens"] > work["scored_tokens"] > 0
    assert tiny_results["hf"]["timings"]["work"] == {}  # lm-eval's model does not count


def test_vllm_and_hf_model_arguments():
    from ulmr.evaluation import lm_eval_model_args

    vllm = lm_eval_model_args("/models/x", EvalSettings(backend="vllm", dtype="bf16", device="cuda"))
    assert vllm["pretrained"] == "/models/x" and vllm["dtype"] == "bfloat16"
    assert {"gpu_memory_utilization", "max_model_len", "seed"} <= set(vllm)
    hf = lm_eval_model_args("/models/x", EvalSettings(backend="hf", dtype="fp32", device="cpu"))
    assert hf == {"pretrained": "/models/x", "dtype": "float32", "device": "cpu"}
