"""The baselines: each lowers the forget answers' likelihood, retain terms protect the retain
answers, the NPO/DPO losses match hand-computed values, and each method builds its forget side
as documented. Runs on a tiny model first fine-tuned on a few TOFU items (the TOFU protocol's
"target" model, in miniature)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from baselines.dpo import DPO, dpo_loss
from baselines.npo import NPO, npo_loss
from baselines.rt import RejectionTuning
from ulmr.errors import UlmrError
from ulmr.prompts import PromptTemplate
from ulmr.unlearning.batches import collate, encode_example
from ulmr.unlearning.config import build_config
from ulmr.unlearning.interface import Example
from ulmr.unlearning.losses import answer_nll, sequence_logprob
from ulmr.unlearning.registry import get_method
from ulmr.unlearning.training import TrainingConfig, train

FEW_STEPS = {"max_steps": 3, "lr": 1e-2, "batch_size": 3, "grad_accum": 1, "warmup_ratio": 0.0}


@pytest.fixture(scope="module")
def task(data_dir):
    from ulmr.benchmarks.registry import get_benchmark

    full = get_benchmark("tofu").unlearning_data("forget01", PromptTemplate(), data_dir)
    return dataclasses.replace(full, forget=full.forget[:6], forget_questions=full.forget[:6],
                               retain=full.retain[:12])


@pytest.fixture(scope="module")
def target_weights(tiny_path, task):
    """The tiny model fine-tuned on the forget and retain items, so there is something to forget."""
    from ulmr.models import load_model

    model, tokenizer = load_model(tiny_path, dtype="fp32", device="cpu")
    config = TrainingConfig(lr=1e-2, max_steps=25, batch_size=6, grad_accum=1, warmup_ratio=0.1)
    model, _ = train(model, tokenizer, task.template, config, lambda m, b, r: answer_nll(m, b["forget"]),
                     {"forget": task.forget + task.retain})
    return {name: value.clone() for name, value in model.state_dict().items()}


@pytest.fixture()
def target(tiny, target_weights):
    model, tokenizer = tiny
    model.load_state_dict(target_weights)
    return model, tokenizer


def mean_nll(model, tokenizer, task, examples) -> float:
    batch = collate([encode_example(tokenizer, task.template, ex, 512) for ex in examples], tokenizer.pad_token_id)
    with torch.no_grad():
        return answer_nll(model, batch).item()


def nll_change(method: str, overrides: dict, target, task) -> tuple[float, float]:
    """How much the forget and the retain answers' NLL rise when `method` runs a few steps."""
    model, tokenizer = target
    before = [mean_nll(model, tokenizer, task, part) for part in (task.forget, task.retain)]
    cls = get_method(method)
    result = cls(build_config(cls.config_class, {**FEW_STEPS, **overrides})).unlearn(model, tokenizer, task)
    after = [mean_nll(result.model, tokenizer, task, part) for part in (task.forget, task.retain)]
    return after[0] - before[0], after[1] - before[1]


@pytest.mark.parametrize("method", ["ga", "graddiff", "npo", "dpo", "rt"])
def test_each_baseline_lowers_the_forget_likelihood(method, target, task):
    forget_rise, _ = nll_change(method, {}, target, task)
    assert forget_rise > 0.05


# NPO and DPO sum log-probs over an answer's tokens (about 150 bytes with the tiny model's byte
# tokenizer), which dwarfs a retain NLL averaged over tokens: their retain weight is scaled to match.
@pytest.mark.parametrize("method, with_retain, without", [
    pytest.param("graddiff", {}, ("ga", {}), id="graddiff-vs-ga"),
    pytest.param("graddiff", {"retain_loss": "kl"}, ("ga", {}), id="graddiff-kl-vs-ga"),
    pytest.param("npo", {"retain_weight": 100.0}, ("npo", {}), id="npo"),
    pytest.param("dpo", {"retain_weight": 100.0}, ("dpo", {}), id="dpo"),
    pytest.param("rt", {"retain_weight": 3.0}, ("rt", {}), id="rt"),
])
def test_a_retain_term_keeps_the_retain_likelihood_closer(method, with_retain, without, target, task,
                                                         target_weights):
    _, retain_drift = nll_change(*without, target, task)
    target[0].load_state_dict(target_weights)
    _, protected_drift = nll_change(method, with_retain, target, task)
    assert abs(protected_drift) < abs(retain_drift)


def test_npo_loss_matches_the_formula():
    logp, ref, beta = [-2.0, -4.0], [-3.0, -3.0], 0.1
    expected = -(2 / beta) * sum(math.log(1 / (1 + math.exp(beta * (p - r)))) for p, r in zip(logp, ref)) / 2
    assert npo_loss(torch.tensor(logp), torch.tensor(ref), beta).item() == pytest.approx(expected, rel=1e-6)


def test_dpo_loss_matches_the_formula():
    beta = 0.5
    # margin = (-5 - -6) - (-3 - -2) = 2, so the loss is -(2 / beta) * log sigmoid(1)
    expected = -(2 / beta) * math.log(1 / (1 + math.exp(-1.0)))
    loss = dpo_loss(torch.tensor([-5.0]), torch.tensor([-6.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), beta)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("method", [NPO, DPO])
def test_preference_losses_start_at_2_over_beta_log_2(method, tiny, task):
    """Before any update the model equals its reference, every log-ratio is 0: loss (2/beta) ln 2."""
    model, tokenizer = tiny
    unlearner = method(build_config(method.config_class, {"beta": 0.2}))
    parts = unlearner.forget_parts(task)
    batch = {name: collate([encode_example(tokenizer, task.template, ex, 512) for ex in examples[:2]],
                           tokenizer.pad_token_id) for name, examples in parts.items()}
    with torch.no_grad():
        for name in unlearner.reference_logprobs:  # what the loop computes from the frozen copy
            batch[name]["reference_logprob"] = sequence_logprob(model, batch[name])
        loss = unlearner.compute_loss(model, batch, None)["forget"]
    assert loss.item() == pytest.approx(2 / 0.2 * math.log(2), rel=1e-5)


def test_rt_pairs_the_forget_questions_with_refusals_from_the_bank(task):
    pairs = RejectionTuning(TrainingConfig(seed=1)).forget_parts(task)["forget"]
    assert [p.question for p in pairs] == [q.question for q in task.forget_questions]
    assert all(p.answer in task.refusals for p in pairs)
    assert pairs == RejectionTuning(TrainingConfig(seed=1)).forget_parts(task)["forget"]


def test_dpo_prefers_a_refusal_over_the_true_answer(task):
    parts = DPO(build_config(DPO.config_class)).forget_parts(task)
    assert parts["rejected"] == task.forget_questions
    assert [p.question for p in parts["preferred"]] == [q.question for q in task.forget_questions]
    assert all(p.answer in task.refusals for p in parts["preferred"])


def test_dpo_without_true_answers_rejects_the_forget_texts(task):
    """RWKU's questions come without answers: the rejected responses are the forget texts."""
    texts = [Example(answer=f"Text {i} about the target.", subject="X") for i in range(5)]
    questions = [Example(answer="", question=f"Question {i} about X?", subject="X") for i in range(2)]
    rwku_like = dataclasses.replace(task, forget=texts, forget_questions=questions)
    parts = DPO(build_config(DPO.config_class)).forget_parts(rwku_like)
    assert parts["rejected"] == texts
    assert [p.question for p in parts["preferred"]] == [q.question for q in questions * 3][:5]


@pytest.mark.parametrize("method", ["graddiff", "dpo", "rt"])
def test_baselines_run_on_an_rwku_target(method, tiny, data_dir):
    from ulmr.benchmarks.registry import get_benchmark

    model, tokenizer = tiny
    task = get_benchmark("rwku").unlearning_data("1", PromptTemplate(), data_dir)
    cls = get_method(method)
    config = build_config(cls.config_class, {**FEW_STEPS, "max_steps": 1, "batch_size": 2, "max_length": 384})
    assert math.isfinite(cls(config).unlearn(model, tokenizer, task).record["losses"][0])


@pytest.mark.parametrize("method, overrides, message", [
    ("npo", {"beta": 0.0}, r"^config: beta=0.0 is out of range"),
    ("dpo", {"beta": -1.0}, r"^config: beta=-1.0 is out of range"),
    ("graddiff", {"retain_weight": 0.0}, r"^config: retain_weight=0.0 is out of range"),
    ("ga", {"retain_weight": 1.0}, r"^config: ga has no retain term"),
    ("rt", {"warmup_ratio": 2.0}, r"^config: warmup_ratio=2.0 is out of range"),
])
def test_bad_hyperparameters_are_one_line_errors(method, overrides, message):
    with pytest.raises(UlmrError, match=message):
        build_config(get_method(method).config_class, overrides)


@pytest.mark.slow
def test_ga_unlearns_tofu_forget01_from_the_embedded_model(data_dir, tmp_path):
    from ulmr.cli import main
    from ulmr.models import load_model
    from ulmr.benchmarks.registry import get_benchmark

    out = tmp_path / "ga"
    main(["unlearn", "--method", "ga", "--model", "smollm2-135m", "--benchmark", "tofu", "--split", "forget01",
          "--data-dir", str(data_dir), "--output", str(out),
          "--set", "max_steps=3", "--set", "batch_size=2", "--set", "grad_accum=1"])
    record = json.loads((out / "unlearn.json").read_text())
    assert record["method"] == "ga" and record["steps"] == 3 and record["tokens"] > 0
    assert record["config"]["lr"] == 1e-5 and all(math.isfinite(loss) for loss in record["losses"])
    task = get_benchmark("tofu").unlearning_data("forget01", PromptTemplate(), data_dir)
    unlearned, tokenizer = load_model(str(out), dtype="fp32", device="cpu")
    original, _ = load_model("smollm2-135m", dtype="fp32", device="cpu")
    probe = task.forget[:4]
    assert mean_nll(unlearned, tokenizer, task, probe) > mean_nll(original, tokenizer, task, probe)
