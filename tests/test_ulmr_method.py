"""ULMR end to end on the tiny model: the pipeline forgets, the presets change what they should, and
(slow) the embedded model's run saves its pairs."""

import json

import pytest
import torch

from ulmr.errors import UlmrError
from ulmr.models import load_model
from ulmr.prompts import PromptTemplate
from ulmr.method.method import UlmrConfig
from ulmr.selection import mean_answer_probability
from ulmr.unlearning.config import build_config
from ulmr.unlearning.interface import Example, UnlearningData, ValidationData
from ulmr.unlearning.losses import answer_nll
from ulmr.unlearning.registry import get_method
from ulmr.unlearning.training import TrainingConfig, full_state_dict, train

TEMPLATE = PromptTemplate()
FORGET = [Example("Zorblax Quint wrote Moon Soup.", "Who wrote Moon Soup?"),
          Example("Zorblax Quint was born in Quibberton.", "Where was Zorblax Quint born?"),
          Example("Zorblax Quint loves purple hats.", "What does Zorblax Quint love?"),
          Example("Zorblax Quint has written nine novels.", "How many books has Zorblax Quint written?")]
RETAIN = [Example("Paris.", "What is the capital of France?"), Example("Blue.", "What colour is the sky?"),
          Example("Four.", "What is two plus two?"), Example("Water.", "What do fish swim in?"),
          Example("Seven.", "How many days are in a week?"), Example("Cold.", "How does ice feel?")]
# validation: more Zorblax facts (forget) and retain facts, learned with the rest, never trained on
VALIDATION = ValidationData(
    forget=[Example("Zorblax Quint's cat is called Mimble.", "What is Zorblax Quint's cat called?"),
            Example("Zorblax Quint drives a green tram.", "What does Zorblax Quint drive?")],
    retain=[Example("Ten.", "How many fingers do people have?"), Example("Green.", "What colour is grass?")])
FAST = {"rewriter": "template", "k": 2, "lr": 3e-3, "max_steps": 12, "batch_size": 4, "grad_accum": 1,
        "warmup_ratio": 0.0, "alpha_grid": [0.5, 1.0]}


def toy_task(validation=VALIDATION):
    return UnlearningData("toy", "zorblax", FORGET, RETAIN, FORGET, ["Zorblax Quint"], TEMPLATE,
                          ["I don't know.", "I have no idea about that."], validation=validation)


@pytest.fixture(scope="module")
def knowing_weights(tiny_path):
    """The tiny model after learning the toy facts, so that there is something to forget."""
    model, tokenizer = load_model(tiny_path, dtype="fp32", device="cpu")
    model, _ = train(model, tokenizer, TEMPLATE, TrainingConfig(lr=3e-3, max_steps=60, batch_size=10, grad_accum=1,
                                                                warmup_ratio=0.0),
                     lambda m, batch, ref: answer_nll(m, batch["forget"]),
                     {"forget": FORGET + RETAIN + VALIDATION.forget + VALIDATION.retain})
    return full_state_dict(model)


@pytest.fixture()
def knowing(tiny_path, knowing_weights):
    model, tokenizer = load_model(tiny_path, dtype="fp32", device="cpu")
    model.load_state_dict(knowing_weights)
    return model, tokenizer


def run(method, model, tokenizer, task=None, **overrides):
    cls = get_method(method)
    return cls(build_config(cls.config_class, {**FAST, **overrides})).unlearn(model, tokenizer, task or toy_task())


def forget_probability(model, tokenizer):
    return mean_answer_probability(model, tokenizer, TEMPLATE, FORGET, 512)


def test_pipeline_lowers_forget_likelihood_and_records_everything(knowing):
    model, tokenizer = knowing
    before = forget_probability(model, tokenizer)
    result = run("ulmr", model, tokenizer)
    assert forget_probability(result.model, tokenizer) < 0.8 * before

    record, pairs = result.record, result.artifacts["pairs"]
    assert record["pairs"]["total"] == len(pairs) == 4 + 4 * 2  # every pair trains: nothing is held out
    assert set(pairs[0]) == {"instruction", "response", "template", "response_source", "source_question",
                             "subject"}
    assert sum(c["kept"] for c in record["rewriting"].values()) == 8
    assert record["steps"] == 12 and record["subjects"] == ["Zorblax Quint"]
    # every one of the 12 pairs trains; no retain term (ULMR's default)
    assert record["distinct_examples"] == {"forget": 12} and record["examples_seen"]["forget"] >= 12
    assert record["trained_tokens"]["forget"] > 0 and record["retain_term"] is False
    # alpha=auto: every grid alpha scored on the task's validation data, the best score chosen
    averaging = record["averaging"]
    curve = averaging["curve"]
    assert [row["alpha"] for row in curve] == [0.5, 1.0]
    assert averaging["alpha"] == max(curve, key=lambda row: (row["score"], -row["alpha"]))["alpha"]
    for row in curve:
        assert {"forget_prob", "forget_rouge", "retain_prob", "retain_kept", "retain_refusal_rate", "forget_progress",
                "score"} <= set(row)
        assert row["score"] == pytest.approx(row["forget_progress"] * row["retain_kept"]
                                             * (1 - row["retain_refusal_rate"]))
    assert averaging["validation"]["forget"] == 2 and averaging["validation"]["retain"] == 2
    assert averaging["original"]["forget_prob"] > curve[-1]["forget_prob"]  # alpha 1 forgot more than alpha 0
    answers = result.artifacts["validation_answers"]
    assert answers["questions"]["forget"] == [ex.question for ex in VALIDATION.forget]
    assert answers["chosen"]["alpha"] == averaging["alpha"] and len(answers["original"]["retain"]) == 2
    json.dumps(record), json.dumps(result.artifacts)  # both are saved as JSON


def test_auto_alpha_needs_validation_data_and_fails_before_any_work(knowing):
    model, tokenizer = knowing
    with pytest.raises(UlmrError, match="alpha=auto chooses alpha on the benchmark's validation data and toy "
                                        "zorblax has none"):
        run("ulmr", model, tokenizer, task=toy_task(validation=None), rewriter="self")
    assert run("ulmr", model, tokenizer, task=toy_task(validation=None), alpha=0.5, max_steps=1).record[
        "averaging"]["alpha"] == 0.5


@pytest.mark.parametrize("method", ["ulmr", "graddiff"])
def test_a_retain_weight_without_retain_items_fails_in_one_line_before_any_work(method, tiny, monkeypatch):
    """ULMR and the loss-based methods share one check; ULMR's runs before it generates any pair."""
    from ulmr.method.method import UlmrUnlearner

    def no_generation(*args, **kwargs):
        raise AssertionError("the pairs were generated before the retain check")

    monkeypatch.setattr(UlmrUnlearner, "_make_pairs", no_generation)
    task = UnlearningData("toy", "zorblax", FORGET, [], FORGET, ["Zorblax Quint"], TEMPLATE, ["I don't know."])
    cls = get_method(method)
    settings = {**FAST, "alpha": 0.5} if method == "ulmr" else {"max_steps": 1}
    with pytest.raises(UlmrError, match=rf"^{method}: retain_weight=0.5 but toy zorblax has no retain items: "
                                        r"set retain_weight=0$"):
        cls(build_config(cls.config_class, {**settings, "retain_weight": 0.5})).unlearn(*tiny, task)


def test_norewrite_preset_trains_on_the_original_questions_only(knowing):
    model, tokenizer = knowing
    assert get_method("ulmr-norewrite")().config.rewrite is False
    result = run("ulmr-norewrite", model, tokenizer, alpha=1.0)
    assert {p["template"] for p in result.artifacts["pairs"]} == {"original"}
    assert {p["instruction"] for p in result.artifacts["pairs"]} == {ex.question for ex in FORGET}
    assert result.record["rewriting"] == {}


def test_noavg_preset_is_ulmr_at_alpha_one(knowing, tiny_path, knowing_weights):
    model, tokenizer = knowing
    assert get_method("ulmr-noavg")().config.alpha == 1.0 and get_method("ulmr")().config.alpha == "auto"
    unaveraged = full_state_dict(run("ulmr-noavg", model, tokenizer).model)
    fresh, _ = load_model(tiny_path, dtype="fp32", device="cpu")
    fresh.load_state_dict(knowing_weights)
    halfway = full_state_dict(run("ulmr", fresh, tokenizer, alpha=0.5).model)
    for name, tensor in halfway.items():  # same seed, same training: only the average differs
        assert torch.allclose(tensor, 0.5 * unaveraged[name] + 0.5 * knowing_weights[name], atol=1e-6), name


def test_max_questions_rewrites_only_the_first_questions(knowing):
    model, tokenizer = knowing
    pairs = run("ulmr", model, tokenizer, alpha=1.0, max_steps=1, max_questions=2).artifacts["pairs"]
    assert {p["source_question"] for p in pairs} == {ex.question for ex in FORGET[:2]}
    assert len(pairs) == 2 + 2 * 2


def test_soup_records_its_trajectory_steps(knowing):
    model, tokenizer = knowing
    result = run("ulmr", model, tokenizer, alpha=1.0, soup=3, max_steps=6)
    assert result.record["averaging"]["soup_steps"] == [2, 4, 6]


@pytest.mark.parametrize("overrides, message", [
    ({"alpha": 1.5}, r"alpha=1.5 is out of range"),
    ({"alpha": "sometimes"}, r"alpha.* got 'sometimes'"),
    ({"templates": ["paraphrase", "poetry"]}, r"unknown ULMR rewrite templates \['poetry'\]"),
    ({"negatives": "invented"}, r"negatives.* got 'invented'"),
    ({"rewrite": False, "include_original": False}, r"nothing to train on"),
    ({"max_questions": 0}, r"max_questions=0 is out of range"),
    ({"negatives": "alternative", "rewriter": "template"}, r"^ulmr config: negatives=alternative needs an LLM rewriter"),
])
def test_bad_config_values_fail_in_one_line(overrides, message):
    with pytest.raises(UlmrError, match=message):
        build_config(UlmrConfig, overrides, where="ulmr config")
    assert build_config(UlmrConfig, {"alpha": 0.3}).alpha == 0.3


def test_alternative_negatives_and_the_acceptance_record(knowing, monkeypatch):
    """negatives=alternative with the model as its own writer: made-up answers that name the subject
    are kept, one equal to a text the unlearning data says to avoid is not; the record counts both
    the rewriter's and the negatives' acceptance."""
    from ulmr.method.generation import TextGenerator

    def write(self, prompts, desc, cut="lines"):
        if desc == "ULMR rewriting":
            return [f"Tell me, please: {next(ex.question for ex in FORGET if ex.question in p)}" if i % 2 else "ok"
                    for i, p in enumerate(prompts)]
        return ["Zorblax Quint was a lighthouse keeper." if "Moon Soup" in p else "Zorblax Quint sang opera."
                for p in prompts]
    monkeypatch.setattr(TextGenerator, "__call__", write)
    model, tokenizer = knowing
    data = toy_task()
    data.metadata["avoid_responses"] = {"Who wrote Moon Soup?": ["zorblax quint was a LIGHTHOUSE keeper"]}
    cls = get_method("ulmr")
    config = build_config(cls.config_class, {**FAST, "rewriter": "self", "negatives": "alternative", "alpha": 1.0,
                                             "max_steps": 1})
    result = cls(config).unlearn(model, tokenizer, data)
    responses = {(p["source_question"], p["response"], p["response_source"]) for p in result.artifacts["pairs"]}
    assert all(source != "alternative" for question, _, source in responses if question == "Who wrote Moon Soup?")
    assert ("Where was Zorblax Quint born?", "Zorblax Quint sang opera.", "alternative") in responses
    acceptance = result.record["acceptance"]
    # 8 rewrites planned: "ok" rejected 4 times (replaced by the template form), 4 LLM rewrites kept
    assert acceptance["rewrites"] == {"planned": 8, "kept": 8, "dropped": 0, "llm_written": 8, "llm_accepted": 4,
                                      "template_written": 4, "template_fallback": 4}
    # 12 instructions (4 original + 8 rewrites); the 3 about Moon Soup hit the avoided text
    assert acceptance["negatives"]["alternative"] == {"tried": 12, "accepted": 9, "dropped": 3}
    assert acceptance["summary"].startswith("4 of 8 LLM rewrites accepted (4 fell back to templates, 0 dropped); "
                                            "9 of 12 alternative negatives accepted")


@pytest.mark.slow
def test_embedded_model_run_saves_its_pairs(tmp_path, data_dir):
    """ULMR on TOFU forget01 with SmolLM2-135M, a few steps, through the CLI. The template rewriter
    and a fixed alpha keep it within minutes on a CPU (the LLM rewriter and alpha=auto are covered
    with the tiny model)."""
    from ulmr.cli import main

    out = tmp_path / "ulmr"
    settings = ["rewriter=template", "k=2", "max_steps=3", "batch_size=1", "grad_accum=1", "max_length=256",
                "alpha=0.5"]
    main(["unlearn", "--method", "ulmr", "--model", "smollm2-135m", "--data-dir", str(data_dir),
          "--output", str(out), *[arg for s in settings for arg in ("--set", s)]])
    pairs = json.loads((out / "artifacts.json").read_text())["pairs"]
    record = json.loads((out / "unlearn.json").read_text())
    assert len(pairs) == record["pairs"]["total"] == (40 + 10) * 3  # forget01 and half the forget-validation author
    assert {p["template"] for p in pairs} == {"original", *record["config"]["templates"]}
    assert record["averaging"]["alpha"] == 0.5 and record["steps"] == 3
    assert (out / "model.safetensors").is_file()
