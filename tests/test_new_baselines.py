"""simnpo, rmu, icu and undial: their losses against hand-computed values, RMU's steering target and
the weights it may touch, ICU's prompt (named subjects, unchanged weights) reaching the evaluation,
and the defaults each config documents."""

from __future__ import annotations

import dataclasses
import json
import math
import shlex

import pytest
import torch

from baselines.icu import ICU, UNNAMED_SUBJECTS, icu_prompt
from baselines.rmu import RMU, RMUConfig, decoder_layers, layer_output, masked_mse, steering_vector
from baselines.simnpo import SimNPO, simnpo_loss
from baselines.undial import undial_loss
from ulmr.run import model_folder
from ulmr.errors import UlmrError
from ulmr.prompts import PromptTemplate, render_prompt
from ulmr.unlearning.batches import IGNORE_INDEX, collate, encode_example
from ulmr.unlearning.config import build_config
from ulmr.unlearning.losses import answer_nll
from ulmr.unlearning.registry import available_methods, get_method

FEW_STEPS = {"max_steps": 3, "lr": 1e-2, "batch_size": 3, "grad_accum": 1, "warmup_ratio": 0.0, "dtype": "fp32"}


def logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


@pytest.fixture(scope="module")
def task(data_dir):
    from ulmr.benchmarks.registry import get_benchmark

    full = get_benchmark("tofu").unlearning_data("forget01", PromptTemplate(), data_dir)
    return dataclasses.replace(full, forget=full.forget[:6], forget_questions=full.forget[:6], retain=full.retain[:12])


def batch_of(tokenizer, template, examples):
    return collate([encode_example(tokenizer, template, ex, 512) for ex in examples], tokenizer.pad_token_id)


def mean_nll(model, tokenizer, task, examples) -> float:
    with torch.no_grad():
        return answer_nll(model, batch_of(tokenizer, task.template, examples)).item()


def test_the_four_methods_are_registered():
    assert {"simnpo", "rmu", "icu", "undial"} <= set(available_methods())


# ---- SimNPO --------------------------------------------------------------------------------------

@pytest.mark.parametrize("gamma", [0.0, 1.0])
def test_simnpo_loss_matches_the_papers_formula(gamma):
    logp, lengths, beta = [-6.0, -2.0], [3, 4], 2.5
    # -(2/beta) mean log sigmoid(-(beta/|y|) log p - gamma): arguments 5 - gamma and 1.25 - gamma
    expected = -(2 / beta) * (logsigmoid(5.0 - gamma) + logsigmoid(1.25 - gamma)) / 2
    loss = simnpo_loss(torch.tensor(logp), torch.tensor(lengths), beta, gamma)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_simnpo_normalises_by_length_and_needs_no_reference():
    # twice the log-prob over twice the tokens is the same per-token likelihood: the same loss
    short = simnpo_loss(torch.tensor([-3.0]), torch.tensor([2]), 2.5, 0.0)
    long = simnpo_loss(torch.tensor([-6.0]), torch.tensor([4]), 2.5, 0.0)
    assert short.item() == pytest.approx(long.item())
    assert not SimNPO.needs_reference


def test_simnpo_compute_loss_weights_the_forget_term(tiny, task):
    from ulmr.unlearning.losses import token_logprobs

    model, tokenizer = tiny
    method = SimNPO(build_config(SimNPO.config_class, {"forget_weight": 0.5, "retain_weight": 0.0}))
    batch = {"forget": batch_of(tokenizer, task.template, task.forget[:2])}
    with torch.no_grad():
        terms = method.compute_loss(model, batch, None)
        logp, mask = token_logprobs(model, batch["forget"])
    expected = 0.5 * -(2 / 2.5) * sum(logsigmoid(-2.5 * lp / n) for lp, n in zip(logp.sum(1).tolist(),
                                                                                mask.sum(1).tolist())) / 2
    assert set(terms) == {"forget"} and terms["forget"].item() == pytest.approx(expected, rel=1e-5)


def test_simnpo_defaults_are_the_papers_tofu_recipe():
    config = build_config(SimNPO.config_class)
    assert (config.beta, config.gamma, config.forget_weight, config.retain_weight, config.lr) == (2.5, 0.0, 0.1375,
                                                                                                   1.0, 1e-5)
    with pytest.raises(UlmrError, match="beta=0"):
        build_config(SimNPO.config_class, {"beta": 0})
    with pytest.raises(UlmrError, match="gamma=-1"):
        build_config(SimNPO.config_class, {"gamma": -1})


# ---- UNDIAL --------------------------------------------------------------------------------------

def test_undial_loss_is_cross_entropy_to_the_adjusted_reference():
    beta = 2.0
    # one scored position: reference logits (1, 2, 0), true token 1 lowered by beta -> (1, 0, 0)
    e = math.e
    target = [e / (e + 2), 1 / (e + 2), 1 / (e + 2)]
    student = [0.0, 1.0, 0.0]
    lse = math.log(2 + e)
    expected = -sum(t * (s - lse) for t, s in zip(target, student))
    # a second, unlabelled position with wild logits must not count
    logits = torch.tensor([[student, [50.0, -50.0, 3.0]]])
    ref_logits = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 0.0, 90.0]]])
    labels = torch.tensor([[1, IGNORE_INDEX]])
    assert undial_loss(logits, ref_logits, labels, beta).item() == pytest.approx(expected, rel=1e-6)


def test_undial_at_its_target_has_zero_gradient():
    """The model that already predicts the adjusted distribution is at the loss's minimum."""
    ref = torch.tensor([[[0.5, 1.5, -1.0, 0.2]]])
    labels = torch.tensor([[1]])
    logits = ref.clone()
    logits[0, 0, 1] -= 3.0
    logits.requires_grad_(True)
    undial_loss(logits, ref, labels, 3.0).backward()
    assert logits.grad.abs().max().item() < 1e-6


# (RMU acts on a layer's activations, not on the likelihood: its test below measures those)
@pytest.mark.parametrize("method", ["simnpo", "undial"])
def test_each_new_likelihood_method_lowers_the_forget_likelihood(method, tiny, task):
    model, tokenizer = tiny
    before = mean_nll(model, tokenizer, task, task.forget)
    overrides = {"simnpo": {"forget_weight": 1.0, "retain_weight": 0.0}, "undial": {}}[method]
    cls = get_method(method)
    result = cls(build_config(cls.config_class, {**FEW_STEPS, **overrides})).unlearn(model, tokenizer, task)
    assert mean_nll(result.model, tokenizer, task, task.forget) > before + 0.05


# ---- RMU -----------------------------------------------------------------------------------------

def test_rmu_steering_target_is_a_seeded_positive_vector_of_norm_c():
    target = steering_vector(64, 6.5, seed=3)
    assert target.shape == (64,) and target.norm().item() == pytest.approx(6.5, rel=1e-6)
    assert (target >= 0).all()  # uniform in [0, 1) before normalising, as the WMDP code draws it
    draw = torch.rand(64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.allclose(target, (6.5 * draw / draw.norm()).float())
    assert torch.equal(target, steering_vector(64, 6.5, seed=3))
    assert not torch.equal(target, steering_vector(64, 6.5, seed=4))


def test_rmu_mse_averages_over_hidden_size_and_labelled_tokens_only():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # ((1-1)^2 + (2-0)^2) / 2 = 2 and ((3-1)^2 + (4-0)^2) / 2 = 10: mean 6; the third token is masked
    assert masked_mse(hidden, torch.tensor([1.0, 0.0]), mask).item() == pytest.approx(6.0)


def test_rmu_layer_output_is_the_decoder_layers_hidden_state(tiny, task):
    model, tokenizer = tiny
    part = batch_of(tokenizer, task.template, task.forget[:2])
    with torch.no_grad():
        hooked = layer_output(model, part, 0)
        states = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"],
                       output_hidden_states=True).hidden_states
    assert torch.allclose(hooked, states[1])  # hidden_states[0] is the embeddings


def test_rmu_trains_only_the_chosen_layers_and_moves_their_output_towards_c_u(tiny, task):
    model, tokenizer = tiny
    before = {name: value.clone() for name, value in model.state_dict().items()}
    # c about 5x the random tiny model's activation norm (0.18), as the paper's c is a few times Zephyr's
    config = build_config(RMUConfig, {**FEW_STEPS, "max_steps": 6, "lr": 5e-2, "layer": 1, "update_layers": [1],
                                      "steering_coeff": 1.0, "alpha": 1.0, "dtype": "fp32"})
    part = batch_of(tokenizer, task.template, task.forget)
    mask = (part["labels"] != IGNORE_INDEX).float()
    c_u = steering_vector(model.config.hidden_size, 1.0, config.seed)
    with torch.no_grad():
        distance_before = masked_mse(layer_output(model, part, 1), c_u, mask).item()
    result = RMU(config).unlearn(model, tokenizer, task)
    after = result.model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {"model.layers.1.mlp.down_proj.weight"}
    assert result.record["trainable_params"] == after["model.layers.1.mlp.down_proj.weight"].numel()
    assert all(p.requires_grad for p in result.model.parameters())  # the loop gives the flags back
    # the record names RMU's own retain term (alpha x activation MSE), not the unused shared one
    assert (result.record["retain_loss"], result.record["retain_weight"]) == ("activation MSE at layer 1", 1.0)
    with torch.no_grad():
        distance_after = masked_mse(layer_output(result.model, part, 1), c_u, mask).item()
    assert distance_after < 0.6 * distance_before


def test_rmu_defaults_document_the_paper_and_a_135m_placement():
    config = build_config(RMUConfig)
    assert (config.layer, config.alpha, config.update_modules, config.layers_to_update) == \
        (7, 1200.0, ["mlp.down_proj"], [5, 6, 7])
    assert (config.lr, config.grad_accum, config.warmup_ratio, config.max_grad_norm) == (5e-5, 1, 0.0, 0.0)
    assert "6.5" in RMUConfig.__doc__ and "1200" in RMUConfig.__doc__ and "Zephyr-7B" in RMUConfig.__doc__


@pytest.mark.parametrize("overrides, message", [
    ({"retain_weight": 1.0}, "leave retain_weight at 0 and set alpha"),
    ({"lora": True}, "leave lora off"),
    ({"steering_coeff": 0}, "steering_coeff=0"),
    ({"alpha": -1}, "alpha=-1"),
    ({"layer": 3, "update_layers": [4]}, "update_layers entry=4"),
    ({"update_modules": []}, "update_modules is empty"),
])
def test_rmu_config_errors_are_one_line(overrides, message):
    with pytest.raises(UlmrError, match=message):
        build_config(RMUConfig, overrides)


def test_rmu_layer_beyond_the_model_is_a_one_line_error(tiny, task):
    model, tokenizer = tiny
    with pytest.raises(UlmrError, match="the model has 2 decoder layers"):
        RMU(build_config(RMUConfig, FEW_STEPS)).unlearn(model, tokenizer, task)
    assert len(decoder_layers(model)) == 2


# ---- ICU -----------------------------------------------------------------------------------------

def test_icu_changes_no_weight_and_names_the_rwku_targets(tiny, data_dir):
    from ulmr.benchmarks.registry import get_benchmark

    model, tokenizer = tiny
    before = {name: value.clone() for name, value in model.state_dict().items()}
    data = get_benchmark("rwku").unlearning_data("1-2", PromptTemplate(), data_dir)
    result = ICU().unlearn(model, tokenizer, data)
    assert all(torch.equal(before[name], value) for name, value in result.model.state_dict().items())
    assert result.record["weights_changed"] is False
    assert result.record["subjects"] == ["Stephen King", "Confucius"]
    assert "unlearned everything about Stephen King and Confucius." in result.system_prompt
    assert result.record["system_prompt"] == result.system_prompt


def test_icu_names_tofus_authors_from_the_questions_or_speaks_of_them_in_general(data_dir):
    from ulmr.benchmarks.registry import get_benchmark

    data = get_benchmark("tofu").unlearning_data("forget01", PromptTemplate(), data_dir)
    named = ICU().unlearn(None, None, data)
    # forget01's two authors and the forget-validation author, half of whose questions join the forget set
    assert named.record["subjects"] == ["Basil Mahfouz Al-Kuwaiti", "Nikolai Abilov", "Fatima Al-Mansour"]
    assert "Basil Mahfouz Al-Kuwaiti, Nikolai Abilov and Fatima Al-Mansour" in named.system_prompt
    generic = ICU(build_config(ICU.config_class, {"infer_names": False})).unlearn(None, None, data)
    assert generic.record["subjects"] == [] and UNNAMED_SUBJECTS in generic.system_prompt


def test_icu_keeps_a_system_prompt_the_template_already_has(data_dir):
    from ulmr.benchmarks.registry import get_benchmark

    data = get_benchmark("rwku").unlearning_data("1", PromptTemplate(system_prompt="Be brief."), data_dir)
    assert ICU().unlearn(None, None, data).system_prompt == "Be brief.\n\n" + icu_prompt(["Stephen King"])


def test_icu_instruction_must_name_the_subjects():
    with pytest.raises(UlmrError, match="must contain"):
        build_config(ICU.config_class, {"instruction": "Forget everything."})
    with pytest.raises(UlmrError, match="does not format"):
        build_config(ICU.config_class, {"instruction": "Forget {subjects} and {other}."})
    with pytest.raises(UlmrError, match="min_name_questions=0"):
        build_config(ICU.config_class, {"min_name_questions": 0})


def test_a_system_prompt_reaches_every_rwku_prompt_under_both_templates(tiny_path, data_dir):
    from lm_eval_tasks.rwku.utils import load_docs

    instruction = icu_prompt(["Stephen King"])
    options = {"tokenizer": tiny_path, "targets": "1", "data_dir": str(data_dir), "system_prompt": instruction}
    for subset in ("forget_level1", "neighbor_level2", "retain_mmlu"):
        chat = load_docs(subset, prompt_template="chat", **options)["test"]
        tags = load_docs(subset, prompt_template="tags", **options)["test"]
        assert all(doc["prompt"].startswith(f"<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n")
                   for doc in chat)
        assert all(doc["prompt"].startswith(instruction + "\n") for doc in tags)


def test_a_system_prompt_goes_before_the_tags_and_travels_as_task_metadata(tiny):
    _, tokenizer = tiny
    template = PromptTemplate(kind="tags", system_prompt="Forget X.")
    assert render_prompt(tokenizer, template, "Who is X?") == "Forget X.\nQuestion: Who is X?\nAnswer: "
    assert PromptTemplate.from_options(template.as_options()) == template
    assert "system_prompt" not in PromptTemplate(kind="tags").as_options()  # stored result keys stay as they were


def test_icu_is_evaluated_with_its_prompt_in_a_run(tmp_path, tiny_path, data_dir, monkeypatch):
    """`ulmr-bench run --methods icu` on the smoke profile (starting from the tiny model itself, no
    preparation): the stored result was scored with the instruction before every TOFU prompt, and
    records that no weight changed."""
    from ulmr import run as run_module
    from ulmr.benchmarks.registry import Preparation, PreparedModel
    from ulmr.profiles import load_profile

    monkeypatch.setattr(run_module.BenchmarkRun, "prepare",
                        lambda self: Preparation(PreparedModel(tiny_path, {}), None))
    profile = load_profile("smoke", {"benchmarks": ["tofu"], "methods": ["icu"]})
    summary = run_module.run(profile, tmp_path, data_dir=str(data_dir), echo=lambda line: None)
    assert [(r["method"], r["status"]) for r in summary.rows] == [("icu", "ok")]
    folder = tmp_path / model_folder("tiny-random") / "tofu-forget01"
    result = json.loads((folder / "icu-seed0.json").read_text())
    prompt = result["unlearning"]["system_prompt"]
    assert result["unlearning"]["weights_changed"] is False and "Nikolai Abilov" in prompt
    assert result["eval"]["template"]["system_prompt"] == prompt
    samples = [json.loads(line) for line in (folder / "icu-seed0.samples.jsonl").read_text().splitlines()]
    assert {s["task"] for s in samples} == set(result["eval"]["n_docs"]) and len(samples) > 4
    assert all(s["doc"]["prompt"].startswith(f"<|im_start|>system\n{prompt}<|im_end|>\n") for s in samples)


def test_unlearn_icu_writes_the_prompt_and_prints_the_eval_command(tiny_path, data_dir, tmp_path, capsys):
    from ulmr.cli import main
    from ulmr.cli.eval import eval_command

    out = tmp_path / "icu"
    main(["unlearn", "--method", "icu", "--model", tiny_path, "--benchmark", "rwku", "--targets", "1",
          "--data-dir", str(data_dir), "--output", str(out), "--prompt-template", "tags", "--device", "cpu"])
    record = json.loads((out / "unlearn.json").read_text())
    assert record["weights_changed"] is False and "Stephen King" in record["system_prompt"]
    command = next(line.strip() for line in capsys.readouterr().out.splitlines()
                   if line.strip().startswith("ulmr-bench eval"))
    args = shlex.split(command)[2:]
    params = eval_command.make_context("eval", args).params
    assert params["system_prompt"] == record["system_prompt"] and params["prompt_template"] == "tags"
    assert (params["model"], params["benchmark"], params["targets"]) == (str(out), "rwku", "1")
    assert params["question_end_tag"] == "\\n"  # the CLI reads it back as a newline
