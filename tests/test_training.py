"""The shared training loop: tokenisation and labels, batching, reference model, LoRA, seeding,
the divergence guard, method discovery and config errors, and the `ulmr-bench unlearn` command."""

from __future__ import annotations

import copy
import json
import math
import sys

import pytest
import torch

from ulmr.errors import UlmrError
from ulmr.hardware import fast_dtype
from ulmr.prompts import PromptTemplate, answer_with_eos, render_prompt, split_pair
from ulmr.unlearning.batches import IGNORE_INDEX, Encoded, encode_example, micro_batches
from ulmr.unlearning.interface import Example
from ulmr.unlearning.losses import answer_nll, sequence_logprob
from ulmr.unlearning.training import TrainingConfig, TrainingDiverged, full_state_dict, train

TEMPLATE = PromptTemplate()
FORGET = [Example(question=f"Who wrote book {i}?", answer=f"Book {i} was written by Ann Lee.") for i in range(6)]
RETAIN = [Example(answer=f"Plain text number {i} about the weather.") for i in range(6)]
FAST = dict(lr=1e-3, max_steps=3, batch_size=2, grad_accum=1, warmup_ratio=0.0)


def nll_loss(model, batch, reference):
    return answer_nll(model, batch["forget"])


def weights(model) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def test_question_example_labels_exactly_the_answer_tokens_lm_eval_scores(tiny):
    _, tokenizer = tiny
    example = FORGET[0]
    encoded = encode_example(tokenizer, TEMPLATE, example, max_length=512)
    pair = split_pair(tokenizer, render_prompt(tokenizer, TEMPLATE, example.question),
                      answer_with_eos(tokenizer, example.answer))
    assert encoded.input_ids == pair.context_ids + pair.continuation_ids
    assert [t for t in encoded.labels if t != IGNORE_INDEX] == pair.answer_ids
    assert pair.answer_ids[-1] == tokenizer.eos_token_id


def test_plain_text_example_labels_every_token(tiny):
    _, tokenizer = tiny
    encoded = encode_example(tokenizer, TEMPLATE, RETAIN[0], max_length=512)
    assert encoded.labels == encoded.input_ids


def test_example_without_answer_tokens_after_truncation_is_a_one_line_error(tiny):
    _, tokenizer = tiny
    with pytest.raises(UlmrError, match="max_length=8"):
        encode_example(tokenizer, TEMPLATE, FORGET[0], max_length=8)


def test_micro_batches_pair_each_forget_batch_with_an_equal_retain_batch():
    forget = {"forget": [Example(answer=str(i)) for i in range(5)]}
    retain = [Example(answer=f"r{i}") for i in range(3)]
    encode = lambda ex: Encoded([len(ex.answer), 7], [len(ex.answer), 7])  # noqa: E731
    stream = micro_batches(forget, retain, encode, batch_size=2, seed=0, pad_id=0)
    sizes = [(len(b["forget"]["input_ids"]), len(b["retain"]["input_ids"])) for b in (next(stream) for _ in range(3))]
    assert sizes == [(2, 2), (2, 2), (1, 1)]  # 5 forget items: one epoch is three batches


def test_processes_take_disjoint_slices_of_each_epoch():
    forget = {"forget": [Example(answer="x" * (i + 1)) for i in range(8)]}
    encode = lambda ex: Encoded([len(ex.answer)], [len(ex.answer)])  # noqa: E731
    seen = []
    for rank in range(2):
        stream = micro_batches(forget, None, encode, batch_size=2, seed=3, pad_id=0, process_index=rank,
                               num_processes=2)
        seen += [int(v) for _ in range(2) for v in next(stream)["forget"]["input_ids"][:, 0]]
    assert sorted(seen) == list(range(1, 9))


def test_length_grouped_batches_cover_the_epoch_with_less_padding():
    lengths = [3, 40, 4, 38, 5, 41, 2, 39] * 4  # short questions and long passages, interleaved
    forget = {"forget": [Example(answer="x" * n) for n in lengths]}
    encode = lambda ex: Encoded(list(range(len(ex.answer))), list(range(len(ex.answer))))  # noqa: E731

    def epoch(group):
        stream = micro_batches(forget, None, encode, batch_size=4, seed=1, pad_id=0, group_by_length=group)
        return [next(stream)["forget"]["attention_mask"] for _ in range(len(lengths) // 4)]

    plain, grouped = epoch(False), epoch(True)
    assert sum(int(m.sum()) for m in grouped) == sum(lengths) == sum(int(m.sum()) for m in plain)
    assert sum(m.numel() for m in grouped) < 0.6 * sum(m.numel() for m in plain)  # padded cells
    assert [len(m) for m in grouped] == [4] * 8


def test_reference_is_frozen_and_never_updated(tiny):
    model, tokenizer = tiny
    before = weights(model)
    seen = []

    def loss(model, batch, reference):
        seen.append(reference)
        with torch.no_grad():
            ref = sequence_logprob(reference, batch["forget"])
        return -(sequence_logprob(model, batch["forget"]) - ref).mean()

    trained, _ = train(model, tokenizer, TEMPLATE, TrainingConfig(**FAST), loss, {"forget": FORGET}, reference=True)
    reference = seen[0]
    assert all(r is reference for r in seen) and reference is not trained
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())
    assert all(torch.equal(before[k], v) for k, v in reference.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in trained.state_dict().items())


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_precomputed_reference_logprobs_train_as_the_frozen_copy_would_and_free_it(tiny, dtype, monkeypatch):
    """npo and dpo read only per-sequence log-probs of the frozen model: computed for every planned
    micro-batch before training, they give the same losses and weights, bit for bit, as computing
    them in each step, and the frozen copy is gone while the loop trains."""
    import weakref

    from ulmr.unlearning import training

    model, tokenizer = tiny
    config = TrainingConfig(**FAST, dtype=dtype, retain_weight=1.0)
    start = copy.deepcopy(model)
    copies = []
    make_copy = training._frozen_copy
    monkeypatch.setattr(training, "_frozen_copy", lambda m: copies.append(weakref.ref(c := make_copy(m))) or c)

    def step_by_step(model, batch, reference):
        with torch.no_grad():
            ref = sequence_logprob(reference, batch["forget"])
        return -(sequence_logprob(model, batch["forget"]) - ref).mean() + answer_nll(model, batch["retain"])

    def precomputed(model, batch, reference):
        assert reference is None and copies[-1]() is None  # no frozen copy in memory while training
        ref = batch["forget"]["reference_logprob"]
        return -(sequence_logprob(model, batch["forget"]) - ref).mean() + answer_nll(model, batch["retain"])

    inline, inline_record = train(copy.deepcopy(start), tokenizer, TEMPLATE, config, step_by_step,
                                  {"forget": FORGET}, RETAIN, reference=True)
    ahead, ahead_record = train(copy.deepcopy(start), tokenizer, TEMPLATE, config, precomputed,
                                {"forget": FORGET}, RETAIN, reference_logprobs=("forget",))
    assert len(copies) == 2 and ahead_record.losses == inline_record.losses
    assert ahead_record.tokens == inline_record.tokens and ahead_record.examples_seen == inline_record.examples_seen
    assert all(torch.equal(v, ahead.state_dict()[k]) for k, v in inline.state_dict().items())
    assert any(not torch.equal(v, start.state_dict()[k]) for k, v in inline.state_dict().items())


def test_losses_project_only_from_the_first_label_and_equal_the_full_logits(tiny):
    """The losses skip the vocabulary projection of the positions before the batch's first label;
    in fp32 they equal the same losses over full logits, with and without logits_to_keep."""
    from baselines.undial import undial_loss
    from ulmr.unlearning.batches import collate
    from ulmr.unlearning.losses import kl_to_reference, next_token_logits

    model, tokenizer = tiny
    model.float().eval()
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.01 * torch.randn_like(p))
    long_question = Example(question="A much longer question about book one, its author and where she lived?",
                            answer="Ann Lee.")
    part = collate([encode_example(tokenizer, TEMPLATE, ex, 512) for ex in (FORGET[0], long_question)],
                   tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    labels = part["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    first = int(mask.any(0).nonzero()[0])
    assert first > 0

    projected = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, args, out: projected.append(args[0].shape[1]))
    with torch.no_grad():
        nll, kl = answer_nll(model, part), kl_to_reference(model, reference, part)
        undial = undial_loss(next_token_logits(model, part)[0], next_token_logits(reference, part)[0],
                             labels[:, first:], 10.0)
    hook.remove()
    assert projected[0] == labels.shape[1] + 1 - first  # the rows' shared prompt never reached the head

    class WithoutLogitsToKeep(torch.nn.Module):  # a model whose forward has no logits_to_keep
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, use_cache):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)

    with torch.no_grad():
        full = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits[:, :-1]
        full_ref = reference(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits[:, :-1]
        logp, ref_logp = full.log_softmax(-1), full_ref.log_softmax(-1)
        token_logp = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        expected_nll = -(token_logp * mask).sum() / mask.sum()
        expected_kl = ((ref_logp.exp() * (ref_logp - logp)).sum(-1) * mask).sum() / mask.sum()
        nll_without = answer_nll(WithoutLogitsToKeep(model), part)
    assert nll.item() == pytest.approx(expected_nll.item(), abs=1e-6)
    assert nll_without.item() == pytest.approx(expected_nll.item(), abs=1e-6)
    assert kl.item() == pytest.approx(expected_kl.item(), abs=1e-6) and kl.item() > 1e-4
    assert undial.item() == pytest.approx(undial_loss(full, full_ref, labels, 10.0).item(), abs=1e-6)


def test_no_reference_unless_asked(tiny):
    model, tokenizer = tiny
    seen = []
    train(model, tokenizer, TEMPLATE, TrainingConfig(**FAST),
          lambda m, b, r: seen.append(r) or nll_loss(m, b, r), {"forget": FORGET})
    assert seen == [None] * 3


def test_full_finetuning_trains_every_weight_and_records_the_run(tiny):
    model, tokenizer = tiny
    n_params = sum(p.numel() for p in model.parameters())
    trained, record = train(model, tokenizer, TEMPLATE, TrainingConfig(**FAST), nll_loss, {"forget": FORGET},
                            retain=RETAIN)
    assert record.trainable_params == n_params
    assert record.steps == 3 and len(record.losses) == 3 and record.epochs == 1.0
    assert record.tokens > 0 and record.tokens_per_s > 0 and record.peak_memory_bytes > 0
    # dtype auto: bf16 on a CPU with bf16 units (AVX512-BF16/AMX), else fp32
    assert record.compute_dtype == str(fast_dtype("cpu")).removeprefix("torch.") and not trained.training


def test_lora_trains_adapters_and_merges_them_into_a_plain_model(tiny):
    model, tokenizer = tiny
    model_class = type(model)
    n_params = sum(p.numel() for p in model.parameters())
    before = weights(model)
    snapshots = []
    config = TrainingConfig(**FAST, lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    trained, record = train(model, tokenizer, TEMPLATE, config, nll_loss, {"forget": FORGET},
                            on_step=lambda step, m: snapshots.append(full_state_dict(m)))
    assert type(trained) is model_class and 0 < record.trainable_params < n_params / 4
    after = trained.state_dict()
    assert set(after) == set(before)
    assert not torch.equal(after["model.layers.0.self_attn.q_proj.weight"],
                           before["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(after["model.norm.weight"], before["model.norm.weight"])  # not adapted
    # full_state_dict of the PEFT model during training equals the merged weights at the end
    assert all(torch.allclose(snapshots[-1][k], v, atol=1e-6) for k, v in after.items())


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_gradient_checkpointing_trains_the_same_weights_bit_for_bit_and_keys_alike(tiny, dtype):
    """Recomputing activations in the backward pass saves memory and changes nothing: the same losses
    and weights, and the same key for stored work (a cached run finds its results with it on)."""
    from ulmr.unlearning.config import config_key

    model, tokenizer = tiny
    plain, checkpointed = TrainingConfig(**FAST, dtype=dtype), TrainingConfig(**FAST, dtype=dtype,
                                                                              gradient_checkpointing=True)
    start = copy.deepcopy(model)

    def trained_with(config):  # and how often the first layer's MLP ran forward
        copied, calls = copy.deepcopy(start), []
        mlp = copied.model.layers[0].mlp
        forward = mlp.forward
        mlp.forward = lambda *args, **kwargs: calls.append(1) or forward(*args, **kwargs)
        return *train(copied, tokenizer, TEMPLATE, config, nll_loss, {"forget": FORGET}), len(calls)

    expected, expected_record, forwards = trained_with(plain)
    trained, record, checkpointed_forwards = trained_with(checkpointed)
    assert checkpointed_forwards == 2 * forwards  # each layer recomputed once in the backward pass
    assert record.losses == expected_record.losses
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in expected.state_dict().items())
    # evaluation after training runs the plain forward
    assert not any(getattr(module, "gradient_checkpointing", False) for module in trained.modules())
    assert config_key(checkpointed) == config_key(plain)
    assert config_key(TrainingConfig(**{**FAST, "lr": 2e-3})) != config_key(plain)


def test_bf16_autocast_runs(tiny):
    model, tokenizer = tiny
    _, record = train(model, tokenizer, TEMPLATE, TrainingConfig(**{**FAST, "max_steps": 1}, dtype="bf16"),
                      nll_loss, {"forget": FORGET})
    assert record.compute_dtype == "bfloat16" and math.isfinite(record.losses[0])
    assert next(model.parameters()).dtype == torch.float32  # master weights stay fp32


def test_same_seed_repeats_a_run_exactly(tiny_path):
    from ulmr.models import load_model

    def run(seed):
        model, tokenizer = load_model(tiny_path, dtype="fp32", device="cpu")
        config = TrainingConfig(**FAST, seed=seed, lora=True, lora_dropout=0.1)
        trained, record = train(model, tokenizer, TEMPLATE, config, nll_loss, {"forget": FORGET}, retain=RETAIN)
        return record.losses, weights(trained)

    (losses_a, weights_a), (losses_b, weights_b) = run(0), run(0)
    assert losses_a == losses_b
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert run(1)[0] != losses_a


def test_nan_loss_stops_the_run_with_a_one_line_error(tiny):
    model, tokenizer = tiny
    with pytest.raises(TrainingDiverged, match=r"^training diverged at step 1/3: the loss is nan") as info:
        train(model, tokenizer, TEMPLATE, TrainingConfig(**FAST), lambda m, b, r: nll_loss(m, b, r) * math.nan,
              {"forget": FORGET})
    assert isinstance(info.value, UlmrError) and info.value.step == 1 and "\n" not in str(info.value)


def test_huge_learning_rate_diverges_and_is_caught(tiny):
    model, tokenizer = tiny
    config = TrainingConfig(**{**FAST, "lr": 1e6, "max_steps": 20})
    with pytest.raises(TrainingDiverged, match="lower lr"):
        train(model, tokenizer, TEMPLATE, config, lambda m, b, r: -nll_loss(m, b, r), {"forget": FORGET})


def test_weights_that_overflow_in_the_last_step_are_caught(tiny):
    # AdamW's decoupled decay multiplies every weight by 1 - lr * weight_decay (here about -1e40):
    # the loss and the gradient of step 1 are finite, the weights after it are not, and no forward
    # pass follows the last step to notice.
    model, tokenizer = tiny
    config = TrainingConfig(**{**FAST, "lr": 1e20, "weight_decay": 1e20, "max_steps": 1})
    with pytest.raises(TrainingDiverged, match=r"^training diverged at step 1/1: the weights are no longer finite"):
        train(model, tokenizer, TEMPLATE, config, nll_loss, {"forget": FORGET})


def test_nan_gradient_is_caught_without_clipping(tiny):
    # sqrt at 0: a finite loss (the term is 0) whose gradient is 0 * inf = NaN.
    model, tokenizer = tiny

    def loss(m, batch, reference):
        return nll_loss(m, batch, reference) + (m.lm_head.weight[0, 0] * 0).sqrt()

    config = TrainingConfig(**{**FAST, "max_grad_norm": 0.0})
    with pytest.raises(TrainingDiverged, match=r"^training diverged at step 1/3: the gradient norm is nan"):
        train(model, tokenizer, TEMPLATE, config, loss, {"forget": FORGET})


def test_the_record_counts_the_forget_items_each_process_drew(tiny):
    model, tokenizer = tiny
    _, record = train(model, tokenizer, TEMPLATE, TrainingConfig(**{**FAST, "max_steps": 2}), nll_loss,
                      {"forget": FORGET})
    assert record.forget_items_per_process == [4] and record.forget_items_shared == 0


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "nan", "1e999"])
def test_non_finite_settings_are_one_line_range_errors(value):
    from ulmr.unlearning.config import build_config, parse_set_options

    with pytest.raises(UlmrError, match=r"^ga config: lr=-?(inf|nan) is out of range: it must be a finite number in \(0, inf\)$"):
        build_config(TrainingConfig, parse_set_options([f"lr={value}"]), where="ga config")
    with pytest.raises(UlmrError, match=r"^config: warmup_ratio=nan is out of range: it must be a finite number in \[0, 1\]$"):
        build_config(TrainingConfig, {"warmup_ratio": float("nan")})


def test_numbers_without_a_range_must_be_finite_too():
    from dataclasses import dataclass, field

    from ulmr.unlearning.config import build_config

    @dataclass
    class Unchecked:
        scale: float = 1.0
        grid: list[float] = field(default_factory=lambda: [0.5])

    assert build_config(Unchecked, {"scale": 2, "grid": [1, 2.5]}).grid == [1.0, 2.5]
    with pytest.raises(UlmrError, match=r"^x config key 'scale' holds nan: every number must be finite"):
        build_config(Unchecked, {"scale": "nan"}, where="x config")
    with pytest.raises(UlmrError, match=r"^x config key 'grid' holds inf"):
        build_config(Unchecked, {"grid": [0.5, float("inf")]}, where="x config")


def test_save_checkpoint_refuses_nan_weights_and_writes_nothing(tiny, tmp_path):
    from ulmr.models import save_checkpoint

    model, tokenizer = tiny
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[3, 5] = math.nan
    out = tmp_path / "ckpt"
    with pytest.raises(UlmrError, match=r"^refusing to save .*ckpt: weight model\.layers\.1\.mlp\.down_proj\.weight "
                                        r"holds NaN or infinite values") as err:
        save_checkpoint(model, tokenizer, out)
    assert "\n" not in str(err.value) and list(tmp_path.iterdir()) == []


def test_save_checkpoint_replaces_a_checkpoint_and_leaves_no_temporary_folder(tiny, tmp_path):
    from ulmr.models import load_model, save_checkpoint

    model, tokenizer = tiny
    out = tmp_path / "ckpt"
    save_checkpoint(model, tokenizer, out)
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    save_checkpoint(model, tokenizer, out)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    reloaded, _ = load_model(str(out), dtype="fp32", device="cpu")
    assert torch.equal(reloaded.lm_head.weight, model.lm_head.weight)


@pytest.mark.parametrize("value", [".inf", ".nan"])
def test_unlearn_with_a_non_finite_lr_fails_in_one_line_and_writes_nothing(value, tiny_path, data_dir, tmp_path, capsys):
    from ulmr.cli import main

    out = tmp_path / "x"
    with pytest.raises(SystemExit) as exit_info:
        main(["unlearn", "--method", "ga", "--model", "tiny-random", "--set", f"lr={value}", "--set", "max_steps=1",
              "--output", str(out), "--data-dir", str(data_dir)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: ga config: lr={value[1:]} is out of range: it must be a finite number in (0, inf)")
    assert not out.exists()


def test_forget_parts_must_align(tiny):
    model, tokenizer = tiny
    with pytest.raises(UlmrError, match="equal length"):
        train(model, tokenizer, TEMPLATE, TrainingConfig(**FAST), nll_loss, {"a": FORGET, "b": FORGET[:2]})


PLUGIN = '''
from ulmr.unlearning.losses import answer_nll
from ulmr.unlearning.registry import register_method
from ulmr.unlearning.training import LossUnlearner


@register_method
class HalfAscent(LossUnlearner):
    """Gradient ascent at half strength (a test plugin)."""

    name = "half-ascent"

    def compute_loss(self, model, batch, reference):
        return -0.5 * answer_nll(model, batch["forget"])
'''


def test_method_from_an_installed_package_is_discovered(tmp_path, monkeypatch):
    from ulmr.plugins import Registry
    from ulmr.unlearning import registry

    (tmp_path / "ulmr_test_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "ulmr_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ulmr-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ulmr_bench.methods]\nhalf-ascent = ulmr_test_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # Register the built-ins first: their modules import once, so a registry restored without
    # them would stay without them.
    fresh = Registry("method", registry.ENTRY_POINT_GROUP)  # reads the entry points again
    for method in registry.available_methods().values():
        fresh.add(method)
    monkeypatch.setattr(registry, "_METHODS", fresh)
    try:
        assert registry.get_method("half-ascent").__doc__.startswith("Gradient ascent at half")
        assert {"ga", "graddiff", "npo", "dpo", "rt"} <= set(registry.available_methods())
    finally:
        sys.modules.pop("ulmr_test_plugin", None)


def test_unknown_method_and_config_key_are_one_line_errors():
    from ulmr.unlearning.config import build_config
    from ulmr.unlearning.registry import get_method

    with pytest.raises(UlmrError, match=r"unknown method 'gaa': choose from .*\bga\b.*\bnpo\b"):
        get_method("gaa")
    with pytest.raises(UlmrError, match=r"unknown npo config key 'bta': valid keys are .*\bbeta\b"):
        build_config(get_method("npo").config_class, {"bta": 1}, where="npo config")
    with pytest.raises(UlmrError, match=r"^config: lr=0.0 is out of range"):
        build_config(TrainingConfig, {"lr": "0"})
    assert build_config(TrainingConfig, {"lr": "1e-5"}).lr == 1e-5  # YAML reads 1e-5 as a string


def test_tofu_task_from_the_forget_split(data_dir):
    from ulmr.benchmarks.registry import get_benchmark
    from ulmr.data.tofu import load_tofu

    task = get_benchmark("tofu").unlearning_data("forget01", TEMPLATE, data_dir)
    # forget01 and half the forget-validation author; retain99 less the three validation authors
    assert (len(task.forget), len(task.retain), len(task.refusals)) == (40 + 10, 3960 - 60, 100)
    assert (len(task.validation.forget), len(task.validation.retain)) == (10, 40)
    assert task.forget_questions == task.forget and all(ex.question for ex in task.forget)
    # the texts the truth ratio scores, for each scored forget question: no generated negative may be
    # one (the forget-validation author's questions are scored by no task, so have none)
    avoid = task.metadata["avoid_responses"]
    scored = {row["question"] for row in load_tofu("forget01_perturbed", data_dir)}
    assert set(avoid) == scored < {ex.question for ex in task.forget}
    assert all(len(texts) == 6 for texts in avoid.values())
    with pytest.raises(UlmrError, match="unknown TOFU split 'forget02'"):
        get_benchmark("tofu").unlearning_data("forget02", TEMPLATE, data_dir)


def test_rwku_task_from_a_target(data_dir):
    from ulmr.benchmarks.registry import get_benchmark

    task = get_benchmark("rwku").unlearning_data("1", TEMPLATE, data_dir)
    assert task.subjects == ["Stephen King"] and task.metadata["retain_targets"] == [2, 3]
    assert task.forget and all(ex.question is None and ex.subject == "Stephen King" for ex in task.forget)
    assert task.retain and all(ex.question is None and ex.subject != "Stephen King" for ex in task.retain)
    assert task.forget_questions and all(q.question and q.answer == "" for q in task.forget_questions)
    assert "I'm not certain about that." in task.refusals and len(set(task.refusals)) == len(task.refusals)


def test_unlearn_command_writes_a_loadable_checkpoint_and_record(tiny_path, data_dir, tmp_path, capsys):
    from ulmr.cli import main
    from ulmr.models import load_model

    out = tmp_path / "unlearned"
    config = tmp_path / "npo.yaml"
    config.write_text("lr: 1e-3\nbatch_size: 2\ngrad_accum: 1\n")
    main(["unlearn", "--method", "npo", "--model", tiny_path, "--split", "forget01", "--data-dir", str(data_dir),
          "--output", str(out), "--config", str(config), "--set", "max_steps=2", "--set", "beta=0.2"])
    assert f"checkpoint: {out}" in capsys.readouterr().out
    assert (out / "model.safetensors").is_file()
    record = json.loads((out / "unlearn.json").read_text())
    assert record["method"] == "npo" and record["selection"] == "forget01" and record["steps"] == 2
    assert record["config"]["beta"] == 0.2 and record["config"]["lr"] == 1e-3 and len(record["losses"]) == 2
    assert record["provenance"]["versions"]["torch"]
    model, _ = load_model(str(out), dtype="fp32", device="cpu")
    original, _ = load_model(tiny_path, dtype="fp32", device="cpu")
    assert not torch.equal(model.lm_head.weight, original.lm_head.weight)


@pytest.mark.parametrize("args, message", [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--method", "ga", "--set", "beta=1"], "unknown ga config key 'beta'"),
    (["--method", "ga", "--set", "retain_weight=1"], "ga has no retain term"),
    (["--method", "ga", "--targets", "1"], "--targets is not an option of tofu: its selection is --split"),
])
def test_unlearn_command_errors_are_one_line(args, message, tiny_path, tmp_path, capsys):
    from ulmr.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["unlearn", "--model", tiny_path, "--output", str(tmp_path / "x"), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1
