"""What a training run records about its budget (steps, examples, distinct examples, tokens that
carry a loss, the retain term), hand-counted on tiny runs; and the average_alpha post-step of the
loss-based methods."""

from __future__ import annotations

import random

import pytest
import torch

from ulmr.errors import UlmrError
from ulmr.prompts import PromptTemplate
from ulmr.unlearning.batches import IGNORE_INDEX, encode_example
from ulmr.unlearning.config import build_config
from ulmr.unlearning.interface import Example, UnlearningData, ValidationData
from ulmr.unlearning.losses import answer_nll, retain_term
from ulmr.unlearning.registry import get_method
from ulmr.unlearning.training import TrainingConfig, full_state_dict, train

TEMPLATE = PromptTemplate()
FORGET = [Example(question=f"Who wrote book {i}?", answer=f"Book {i} was written by Ann Lee.") for i in range(6)]
RETAIN = [Example(answer=f"Plain text number {i} about the weather.") for i in range(6)]


def answer_tokens(tokenizer, example: Example) -> int:
    """Tokens that carry a loss, counted from the tokenisation: the answer (+ EOS) of a QA pair,
    every token but the first of a plain text."""
    encoded = encode_example(tokenizer, TEMPLATE, example, 512)
    return sum(label != IGNORE_INDEX for label in encoded.labels[1:])


def run(tiny, retain=None, **config):
    model, tokenizer = tiny
    config = TrainingConfig(**{"lr": 1e-3, "warmup_ratio": 0.0, "grad_accum": 1, **config})

    def loss(m, batch, reference):
        return {"forget": answer_nll(m, batch["forget"]), **retain_term(m, batch, reference, config)}
    return train(model, tokenizer, TEMPLATE, config, loss, {"forget": FORGET}, retain)[1]


def test_two_epochs_record_every_example_twice_and_each_answer_token_twice(tiny):
    _, tokenizer = tiny
    # 6 forget items in batches of 4 (4 + 2): 4 steps are 2 epochs; the retain batches match them in size
    record = run(tiny, RETAIN, max_steps=4, batch_size=4, retain_weight=0.5)
    assert record.steps == 4 and record.epochs == 2.0 and record.processes == 1
    assert record.examples_seen == {"forget": 12, "retain": 12}
    assert record.distinct_examples == {"forget": 6, "retain": 6}
    # 12 retain draws without replacement from 6 items: each item twice
    assert record.trained_tokens == {"forget": 2 * sum(answer_tokens(tokenizer, ex) for ex in FORGET),
                                     "retain": 2 * sum(answer_tokens(tokenizer, ex) for ex in RETAIN)}
    assert answer_tokens(tokenizer, RETAIN[0]) == len(encode_example(tokenizer, TEMPLATE, RETAIN[0], 512).input_ids) - 1
    assert (record.retain_term, record.retain_weight, record.retain_loss) == (True, 0.5, "nll")
    assert set(record.as_dict()) >= {"steps", "examples_seen", "distinct_examples", "trained_tokens",
                                     "retain_term", "retain_weight", "retain_loss", "tokens"}


def test_part_of_an_epoch_under_accumulation_counts_what_was_drawn(tiny):
    _, tokenizer = tiny
    # 1 step of 2 micro-batches of 2: the first 4 items of the seeded epoch order, no retain term
    record = run(tiny, max_steps=1, batch_size=2, grad_accum=2, seed=5)
    order = list(range(6))
    random.Random(5).shuffle(order)  # the epoch order of ulmr.unlearning.batches.micro_batches
    assert record.examples_seen == {"forget": 4} and record.distinct_examples == {"forget": 4}
    assert record.trained_tokens == {"forget": sum(answer_tokens(tokenizer, FORGET[i]) for i in order[:4])}
    assert (record.retain_term, record.retain_weight, record.retain_loss) == (False, 0.0, None)


def toy_data() -> UnlearningData:
    return UnlearningData("toy", "books", FORGET, RETAIN, FORGET, [], TEMPLATE, ["I don't know."])


@pytest.mark.parametrize("method", ["ga", "npo"])
def test_average_alpha_post_step_is_exact_at_zero_one_and_the_midpoint(method, tiny_path):
    from ulmr.models import load_model

    cls = get_method(method)

    def unlearned(alpha):
        model, tokenizer = load_model(tiny_path, dtype="fp32", device="cpu")
        config = build_config(cls.config_class, {"lr": 1e-2, "max_steps": 2, "batch_size": 3, "grad_accum": 1,
                                                 "warmup_ratio": 0.0, "average_alpha": alpha})
        result = cls(config).unlearn(model, tokenizer, toy_data())
        return full_state_dict(result.model), result.record

    original = full_state_dict(load_model(tiny_path, dtype="fp32", device="cpu")[0])
    trained, record = unlearned(None)
    assert record["averaging"]["alpha"] is None
    assert any(not torch.equal(trained[k], original[k]) for k in original)
    at_zero, record = unlearned(0.0)
    assert record["averaging"]["alpha"] == 0.0 and record["config"]["average_alpha"] == 0.0
    assert all(torch.equal(at_zero[k], original[k]) for k in original)  # bit for bit
    at_one, _ = unlearned(1.0)
    assert all(torch.equal(at_one[k], trained[k]) for k in original)
    halfway, record = unlearned(0.5)
    assert record["averaging"]["alpha"] == 0.5 and record["steps"] == 2
    for name, tensor in halfway.items():
        assert torch.equal(tensor, 0.5 * trained[name] + 0.5 * original[name]), name


@pytest.mark.parametrize("method", ["ga-avg", "npo-avg"])
def test_average_alpha_auto_scores_every_grid_alpha_on_validation_data_and_loads_the_chosen(method, tiny_path):
    """The averaged variants are their parent at average_alpha=auto: ULMR's grid and criterion on the
    benchmark's validation data, the curve recorded, the chosen average loaded exactly."""
    from dataclasses import replace

    from ulmr.models import load_model
    from ulmr.selection import ALPHA_GRID
    from ulmr.unlearning.averaging import interpolate

    cls = get_method(method)
    assert cls.__mro__[1] is get_method(method.removesuffix("-avg")) and cls().config.average_alpha == "auto"
    config = build_config(cls.config_class, {"lr": 1e-2, "max_steps": 2, "batch_size": 3, "grad_accum": 1,
                                             "warmup_ratio": 0.0, "seed": 3})
    model, tokenizer = load_model(tiny_path, dtype="fp32", device="cpu")
    with pytest.raises(UlmrError, match=r"^average_alpha=auto chooses alpha on the benchmark's validation data "
                                        r"and toy books has none .*: set average_alpha to a number$"):
        cls(config).unlearn(model, tokenizer, toy_data())  # no validation data: fails before training
    original = full_state_dict(model)
    data = replace(toy_data(), validation=ValidationData([Example("Ann Lee.", "Who wrote book 9?")],
                                                         [Example("Rain.", "What is the weather?")]))
    result = cls(config).unlearn(model, tokenizer, data)
    averaging = result.record["averaging"]
    assert [row["alpha"] for row in averaging["curve"]] == list(ALPHA_GRID) and averaging["alpha"] in ALPHA_GRID
    assert all({"score", "forget_rouge", "retain_kept"} <= set(row) for row in averaging["curve"])
    assert averaging["validation"]["forget"] == 1 and "validation_answers" in result.artifacts
    # the same seeded run at alpha 1 gives the trained weights; the result holds their chosen average
    plain = build_config(cls.config_class, {**config.__dict__, "average_alpha": 1.0})
    trained = full_state_dict(cls(plain).unlearn(load_model(tiny_path, dtype="fp32", device="cpu")[0], tokenizer,
                                                 data).model)
    expected = interpolate(trained, original, averaging["alpha"])
    assert all(torch.equal(full_state_dict(result.model)[k], expected[k]) for k in expected)


@pytest.mark.parametrize("method, value, message", [
    ("npo", 1.5, r"^config: average_alpha=1.5 is out of range"),
    ("ulmr", 0.5, r"^config: ULMR averages through alpha: set alpha=0.5 instead of average_alpha"),
])
def test_average_alpha_errors_are_one_line(method, value, message):
    with pytest.raises(UlmrError, match=message) as error:
        build_config(get_method(method).config_class, {"average_alpha": value})
    assert "\n" not in str(error.value)


def training_set_size(method, data) -> int:
    """How many items one epoch of `method` passes over, built as its `unlearn` builds them (ULMR
    with the template rewriter, so without a model)."""
    from ulmr.method.method import UlmrUnlearner

    if isinstance(method, UlmrUnlearner):
        pairs, _ = method._make_pairs(None, None, data)
        return len(pairs)  # every pair trains (alpha=auto validates on the benchmark's validation data)
    return len(next(iter(method.forget_parts(data).values())))


@pytest.mark.parametrize("benchmark", ["tofu", "rwku"])
def test_quick_profile_gives_every_method_the_same_steps_and_examples(benchmark, data_dir):
    from ulmr.benchmarks.registry import get_benchmark
    from ulmr.profiles import load_profile
    from ulmr.unlearning.registry import available_methods

    profile = load_profile("quick")
    budgets = {name: profile.method_config(name, benchmark, 0) for name, cls in available_methods().items()
               if issubclass(cls.config_class, TrainingConfig)}  # (other tests register config-less stubs)
    assert len({(c.max_steps, c.batch_size, c.grad_accum, c.max_length) for c in budgets.values()}) == 1, budgets
    assert all(c.max_steps for c in budgets.values())
    # equal steps and batches are nearly equal examples: only an epoch's last micro-batch may be short
    data = get_benchmark(benchmark).unlearning_data(profile.plan(benchmark).selection, TEMPLATE, data_dir)
    sizes = {name: training_set_size(get_method(name)(budgets[name]), data)
             for name in ("ulmr", "ulmr-norewrite", "ulmr-noavg", "rt", "ga", "graddiff", "npo", "dpo")}
    batch, micro_batches = budgets["ulmr"].batch_size, budgets["ulmr"].max_steps * budgets["ulmr"].grad_accum
    seen = {name: examples_seen(size, batch, micro_batches) for name, size in sizes.items()}
    assert 0.9 * batch * micro_batches <= min(seen.values()) <= max(seen.values()) <= batch * micro_batches, seen


def examples_seen(size: int, batch: int, micro_batches: int) -> int:
    """Items drawn by `micro_batches` micro-batches over epochs of `size` items in batches of `batch`."""
    epoch = [batch] * (size // batch) + ([size % batch] if size % batch else [])
    return sum(epoch[i % len(epoch)] for i in range(micro_batches))
    if benchmark == "tofu":
        assert sizes == {"ulmr": 112, "ulmr-norewrite": 36, "ulmr-noavg": 120, "rt": 40, "ga": 40, "graddiff": 40,
                         "npo": 40, "dpo": 40}
        assert budgets["ulmr"].max_steps * budgets["ulmr"].grad_accum * batch == 208
