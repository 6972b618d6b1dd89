"""The one training loop of every loss-based method.

    model, record = train(model, tokenizer, template, config, loss_fn, forget={"forget": examples},
                          retain=data.retain, reference=True)

`loss_fn(model, batch, reference)` returns the loss, or a dict of named terms that are summed (and
logged one by one). `batch` maps part names to tensors (see ulmr.unlearning.batches): the forget
parts given to `train` plus "retain" when retain examples are given. The loop runs under
`accelerate.Accelerator`, so `accelerate launch ulmr-bench unlearn ...` trains data-parallel on
several GPUs with no code change, and on one CPU or GPU it is plain PyTorch.

Methods that are one loss subclass `LossUnlearner` and implement `compute_loss` only.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import functools
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Iterator, Literal

import torch

from ulmr.errors import UlmrError
from ulmr.prompts import PromptTemplate
from ulmr.unlearning.averaging import OnDisk, interpolate, load_weights
from ulmr.unlearning.batches import IGNORE_INDEX, Batch, batches_per_epoch, encode_example, micro_batches
from ulmr.unlearning.config import SAME_RESULT, check_range, config_to_dict
from ulmr.unlearning.interface import Example, Unlearner, UnlearningResult, UnlearningData

LossFn = Callable[[Any, Batch, Any], "torch.Tensor | dict[str, torch.Tensor]"]


class TrainingDiverged(UlmrError):
    """The loss, the gradient norm or the weights became NaN or infinite; the model is unusable."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


@dataclass
class TrainingConfig:
    """Hyperparameters of the shared loop; every method's config extends this one.

    Defaults follow TOFU (Maini et al., 2024) and open-unlearning's TOFU settings (both train
    Llama-2-7B / Phi-1.5 with the transformers Trainer), with the batch shrunk for a 40-item
    forget01 on a small model.
    """

    lr: float = field(default=1e-5, metadata={"help": "peak AdamW learning rate (TOFU, open-unlearning: 1e-5)."})
    epochs: int = field(default=5, metadata={"help": "passes over the forget items (TOFU: 5; open-unlearning: 10)."})
    max_steps: int | None = field(default=None, metadata={"help": (
            "optimizer steps to run instead of `epochs` (None: derive from epochs).")})
    batch_size: int = field(default=4, metadata={"help": (
            "forget items per micro-batch, per process (open-unlearning: 4); a retain batch of the same size joins "
            "each one when the method has a retain term.")})
    grad_accum: int = field(default=4, metadata={"help": (
            "micro-batches per optimizer step (open-unlearning: 4; effective batch 16 on one device).")})
    warmup_ratio: float = field(default=0.2, metadata={"help": (
            "share of the steps with a linear learning-rate warm-up, then linear decay (TOFU warms up for one epoch "
            "of five: 0.2).")})
    weight_decay: float = field(default=0.01, metadata={"help": (
            "AdamW decay of the matrices (TOFU, open-unlearning: 0.01); biases and norms get none.")})
    max_grad_norm: float = field(default=1.0, metadata={"help": (
            "gradient-norm clipping (the Trainer's default 1.0); 0 turns clipping off.")})
    seed: int = field(default=0, metadata={"help": (
            "seeds data order, refusal choice, LoRA init and dropout: the same seed repeats a run exactly.")})
    dtype: Literal["auto", "bf16", "fp32"] = field(default="auto", metadata={"help": (
            "compute precision. \"auto\": bf16 where the hardware has bf16 units (ulmr.hardware), else fp32; "
            "\"bf16\": torch.autocast to bf16 (weights and optimizer state stay fp32); \"fp32\".")})
    lora: bool = field(default=False, metadata={"help": (
            "train LoRA adapters (PEFT) instead of all weights; merged into the model at the end.")})
    lora_r: int = field(default=8, metadata={"help": (
            "LoRA rank, scale and dropout (alpha 32 and dropout 0.05 as in TOFU's config; rank 8, PEFT's default).")})
    lora_alpha: float = field(default=32.0, metadata={"help": (
            "LoRA rank, scale and dropout (alpha 32 and dropout 0.05 as in TOFU's config; rank 8, PEFT's default).")})
    lora_dropout: float = field(default=0.05, metadata={"help": (
            "LoRA rank, scale and dropout (alpha 32 and dropout 0.05 as in TOFU's config; rank 8, PEFT's default).")})
    lora_target_modules: list[str] | None = field(default=None, metadata={"help": (
            "module names to adapt (None: every linear layer but the output head).")})
    retain_weight: float = field(default=0.0, metadata={"help": (
            "weight of the retain term of methods that have one (0: no retain batches).")})
    retain_loss: Literal["nll", "kl"] = field(default="nll", metadata={"help": (
            "\"nll\" on retain answers, or \"kl\" to the frozen reference model on them.")})
    max_length: int = field(default=512, metadata={"help": (
            "tokens per sequence; longer ones are cut from the right (TOFU: 500).")})
    group_by_length: bool = field(default=False, metadata={"help": (
            "draw each micro-batch from items of similar length (shuffled windows of 16 batches, sorted by length, "
            "cut into batches, the batches shuffled): RWKU injection mixes 40-token questions with 200-token "
            "passages, and padding to the longest row of a random batch made it compute 1.63 tokens per real one.")})
    gradient_checkpointing: bool = field(default=False, metadata={SAME_RESULT: True, "help": (
            "keep only each layer's input through the forward pass and recompute the rest in the backward: "
            "the same losses and weights bit for bit (so stored results are keyed without it), less memory "
            "the longer the micro-batch (TOFU's of 4: 0.24 GiB less, 11-15 % slower; perf/README.md).")})
    average_alpha: float | Literal["auto"] | None = field(default=None, metadata={"help": (
            "a post-step of every loss-based method (LossUnlearner): after training, theta = alpha * theta_trained + "
            "(1 - alpha) * theta_original (ulmr.unlearning.averaging; 0 = the original model, 1 = the trained one); "
            "None: off. \"auto\": chosen as ULMR's alpha=auto, over ulmr.selection.ALPHA_GRID on the benchmark's "
            "validation data by the selection criterion, every alpha's scores recorded (averaging.curve). ULMR "
            "averages through its own `alpha` instead.")})

    def validate(self) -> None:
        check_range("lr", self.lr, 0, low_open=True)
        check_range("epochs", self.epochs, 1)
        if self.max_steps is not None:
            check_range("max_steps", self.max_steps, 1)
        check_range("batch_size", self.batch_size, 1)
        check_range("grad_accum", self.grad_accum, 1)
        check_range("warmup_ratio", self.warmup_ratio, 0, 1)
        check_range("weight_decay", self.weight_decay, 0)
        check_range("max_grad_norm", self.max_grad_norm, 0)
        check_range("seed", self.seed, 0, 2**32 - 1)  # numpy's seed range (accelerate's set_seed seeds it)
        check_range("lora_r", self.lora_r, 1)
        check_range("lora_alpha", self.lora_alpha, 0, low_open=True)
        check_range("lora_dropout", self.lora_dropout, 0, 1)
        check_range("retain_weight", self.retain_weight, 0)
        check_range("max_length", self.max_length, 2)
        if self.average_alpha not in (None, "auto"):
            check_range("average_alpha", self.average_alpha, 0, 1)


@dataclass
class TrainingRecord:
    """What a run did: its budget, what it optimised, its losses and its cost. Counts are over all
    processes; losses are per optimizer step, on the main process. Parts are the forget parts given
    to `train` (e.g. "forget", DPO's "preferred"/"rejected") and "retain".

    steps: optimizer steps.
    examples_seen: rows trained on, per part (an example drawn twice counts twice).
    distinct_examples: distinct items of each part's list among them.
    trained_tokens: tokens that carry a loss, per part: labelled positions after the first (the first
        token is never predicted), i.e. the answer tokens and EOS of a question/answer example and
        every token but the first of a plain text.
    retain_term, retain_weight, retain_loss: whether retain batches joined the forget ones, the
        weight of the retain term ("nll" or "kl") over them (0.0 and None without one).
    processes: data-parallel processes (each draws its own micro-batches).
    tokens: every non-padding token through the trained model (prompts included).
    """

    steps: int
    epochs: float
    examples_seen: dict[str, int]
    distinct_examples: dict[str, int]
    trained_tokens: dict[str, int]
    retain_term: bool
    retain_weight: float
    retain_loss: str | None
    processes: int
    losses: list[float]
    loss_terms: dict[str, list[float]]
    time_s: float
    tokens: int  # non-padding tokens through the trained model, all processes
    tokens_per_s: float
    peak_memory_bytes: int  # GPU: peak allocated; CPU: peak resident memory of the process
    device: str
    compute_dtype: str
    trainable_params: int
    # Data-parallel sharding, for the record: distinct forget items each process drew, and how many
    # of them more than one process drew (0 within an epoch whose size the processes divide; later
    # epochs reshuffle, so multi-epoch runs share items across processes by design).
    forget_items_per_process: list[int] = field(default_factory=list)
    forget_items_shared: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def train(model, tokenizer, template: PromptTemplate, config: TrainingConfig, loss_fn: LossFn,
          forget: dict[str, list[Example]], retain: list[Example] | None = None, *,
          reference: bool = False, reference_logprobs: Iterable[str] = (),
          on_step: Callable[[int, Any], None] | None = None,
          desc: str = "training",
          trainable_parameters: Callable[[Any], Iterable[torch.nn.Parameter]] | None = None):
    """Train `model` on `loss_fn` and return (trained model, TrainingRecord).

    forget: named, aligned example lists (same length), batched together index by index; one pass
        over them is an epoch.
    retain: examples sampled to give every forget micro-batch a "retain" part of the same size.
    reference: pass a frozen copy of the model as it is now (eval mode, no gradients) to loss_fn;
        else loss_fn gets None.
    reference_logprobs: parts whose per-sequence answer log-probs under the model as it is now the
        loss reads, as part["reference_logprob"] ([batch], fp32). They are computed for every planned
        micro-batch before the first step, exactly as the loss would compute them (same batches, same
        autocast), and the frozen copy is freed before training unless `reference` keeps it: a 135M
        model's fp32 copy is 0.54 GB of the loop's peak.
    on_step(step, model): called on every process after each optimizer step (e.g. to snapshot
        `full_state_dict(model)` for trajectory averaging); under LoRA `model` is the PEFT model.
    trainable_parameters(model): the parameters to train (default: all that require gradients, the LoRA
        adapters under lora=True); the others stay bit-identical, and their requires_grad comes
        back as it was when training ends.

    The returned model is the input model trained in place (fp32 weights), or with lora=True the
    same model with the adapters merged in. Raises TrainingDiverged (on every process) when a loss,
    the gradient norm or, after an optimizer step, the trained weights are NaN or infinite: a
    finite loss and gradient do not imply finite weights (nothing reads the weights after the last
    step, and AdamW's decoupled decay scales weights the loss never touches), so the weights are
    checked after every step, one fused norm over the trainable tensors (about a tenth of the cost
    of the AdamW step itself, which reads and writes weights, gradients and both moments).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from ulmr.hardware import join_launched_processes, launched_processes, peak_rss_bytes, resolve_dtype

    config.validate()
    # the launch's process group, on CPU processes where there is no GPU (an error where accelerate
    # would make each process a run of its own); the Accelerator shares it, and a state the caller
    # set up first wins
    launched_on_cpu = launched_processes() > 1 and not torch.cuda.is_available()
    join_launched_processes("cpu" if launched_on_cpu else "cuda")
    accelerator = Accelerator(cpu=launched_on_cpu)
    device = accelerator.device
    set_seed(config.seed)
    _check_parts(forget)
    # Tokenise each example once, when first drawn (a retain corpus can be large); the forget parts
    # now, so that an example that does not fit max_length fails before training starts.
    encode = functools.cache(functools.partial(encode_example, tokenizer, template,
                                               max_length=config.max_length))
    for examples in forget.values():
        for example in examples:
            encode(example)

    model.float()  # fp32 master weights; bf16 is compute precision only (autocast)
    reference_logprobs = tuple(reference_logprobs)
    frozen = _frozen_copy(model).to(device) if reference or reference_logprobs else None
    if config.gradient_checkpointing:
        _checkpoint_activations(model, True)
    if config.lora:
        model = _with_lora(model, config)
    model.train()
    frozen_here = _restrict_training(model, trainable_parameters)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        # Decay matrices only, as the transformers Trainer does (no decay of biases and norms).
        [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": config.weight_decay},
         {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}], lr=config.lr)
    model, optimizer = accelerator.prepare(model, optimizer)

    n_items = len(next(iter(forget.values())))
    per_epoch = batches_per_epoch(n_items, config.batch_size, accelerator.num_processes)
    total_steps = planned_steps(config, n_items, accelerator.num_processes)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_then_linear_decay(total_steps, round(config.warmup_ratio * total_steps)))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    distinct: dict[str, set[int]] = {}  # per part, the items this process trained on
    stream = micro_batches(forget, retain, encode, config.batch_size, config.seed, pad_id,
                           accelerator.process_index, accelerator.num_processes, config.group_by_length,
                           drawn=lambda part, indices: distinct.setdefault(part, set()).update(indices))
    parallel = accelerator.num_processes > 1
    compute_dtype = resolve_dtype(config.dtype, device.type)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=compute_dtype == torch.bfloat16)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses: list[float] = []
    loss_terms: dict[str, list[float]] = {}
    tokens = 0
    parts = [*forget, "retain"] if retain else list(forget)
    seen, labelled = dict.fromkeys(parts, 0), dict.fromkeys(parts, 0)
    start = time.perf_counter()
    if reference_logprobs:
        stream = _with_reference_logprobs(stream, total_steps * config.grad_accum, frozen, reference_logprobs,
                                          device, autocast, f"{desc}: reference", not accelerator.is_main_process)
        if not reference:
            frozen = None
    bar = tqdm(total=total_steps, desc=desc, disable=not accelerator.is_main_process)  # shown in logs too
    try:
        for step in range(1, total_steps + 1):
            step_terms: dict[str, float] = {}
            diverged: TrainingDiverged | None = None
            for micro in range(config.grad_accum):
                batch = next(stream)
                for name, part in batch.items():  # counted on the CPU tensors: no device sync
                    tokens += int(part["attention_mask"].sum())
                    seen[name] += len(part["input_ids"])
                    labelled[name] += int((part["labels"][:, 1:] != IGNORE_INDEX).sum())
                batch = {name: {k: v.to(device) for k, v in part.items()} for name, part in batch.items()}
                # Gradients are all-reduced across processes only on the last micro-batch of a step.
                last = micro == config.grad_accum - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(model):
                    with autocast:
                        terms = _as_terms(loss_fn(model, batch, frozen))
                        loss = sum(terms.values())
                    if diverged is None and not torch.isfinite(loss):
                        diverged = _diverged(f"the loss is {loss.item()}", step, total_steps, config, terms)
                    if diverged is not None and not parallel:
                        raise diverged
                    # Several processes: every one finishes the step's collectives, then all stop together.
                    accelerator.backward(loss / config.grad_accum)
                for name, value in terms.items():
                    step_terms[name] = step_terms.get(name, 0.0) + value.item() / config.grad_accum
            if parallel:
                _agree(accelerator, diverged, "the loss", step, total_steps, config)
            # The norm is measured even without clipping (max_norm=inf scales by 1): a NaN/inf gradient
            # must never reach the weights.
            norm = accelerator.clip_grad_norm_(trainable, config.max_grad_norm or math.inf)
            if norm is not None and not torch.isfinite(torch.as_tensor(norm)):  # the same on every process
                raise _diverged(f"the gradient norm is {float(norm)}", step, total_steps, config, {})
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            weight_norm = _weights_norm(trainable)
            bad_weights = None if math.isfinite(weight_norm) else _diverged(
                f"the weights are no longer finite after the optimizer step (norm {weight_norm})",
                step, total_steps, config, {})
            if parallel:  # weights may be sharded (FSDP): agree before anyone stops
                _agree(accelerator, bad_weights, "the weights", step, total_steps, config)
            elif bad_weights is not None:
                raise bad_weights

            losses.append(sum(step_terms.values()))
            for name, value in step_terms.items():
                loss_terms.setdefault(name, []).append(value)
            bar.set_postfix({name: f"{value:.4g}" for name, value in step_terms.items()}, refresh=False)
            bar.update()
            if on_step is not None:
                on_step(step, accelerator.unwrap_model(model))
    finally:
        bar.close()  # ends the progress line, so an error message starts a line of its own
    elapsed = time.perf_counter() - start

    from accelerate.utils import gather_object

    counts = accelerator.reduce(torch.tensor([tokens, *seen.values(), *labelled.values()], device=device), "sum")
    tokens, *counts = (int(c) for c in counts)
    seen, labelled = dict(zip(parts, counts[:len(parts)])), dict(zip(parts, counts[len(parts):]))
    distinct_counts = {name: len(set(gather_object(sorted(distinct.get(name, ()))))) for name in parts}
    for p in frozen_here:
        p.requires_grad_(True)
    shards = [sorted(distinct.get(next(iter(forget)), ()))]  # the forget items of each process
    if parallel:
        shards = gather_object(shards)
    owners: dict[int, int] = {}
    for shard in shards:
        for index in shard:
            owners[index] = owners.get(index, 0) + 1
    model = accelerator.unwrap_model(model)
    if config.lora:
        model = model.merge_and_unload()
    if config.gradient_checkpointing:
        _checkpoint_activations(model, False)
    accelerator.free_memory()
    record = TrainingRecord(
        steps=total_steps, epochs=total_steps * config.grad_accum / per_epoch, examples_seen=seen,
        distinct_examples=distinct_counts, trained_tokens=labelled, retain_term=bool(retain),
        retain_weight=config.retain_weight if retain else 0.0, retain_loss=config.retain_loss if retain else None,
        processes=accelerator.num_processes, losses=losses,
        loss_terms=loss_terms if set(loss_terms) != {"loss"} else {}, time_s=elapsed, tokens=tokens,
        tokens_per_s=tokens / elapsed if elapsed > 0 else 0.0,
        peak_memory_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss_bytes(),
        device=str(device), compute_dtype=str(compute_dtype).removeprefix("torch."),
        trainable_params=sum(p.numel() for p in trainable),
        forget_items_per_process=[len(shard) for shard in shards],
        forget_items_shared=sum(1 for count in owners.values() if count > 1))
    return model.eval(), record


def planned_steps(config: TrainingConfig, n_items: int, num_processes: int = 1) -> int:
    """Optimizer steps `train` runs on n_items forget items: max_steps, else the epochs' micro-batches
    over grad_accum (for callers that act at chosen steps, e.g. ULMR's trajectory soup)."""
    per_epoch = batches_per_epoch(n_items, config.batch_size, num_processes)
    return config.max_steps or math.ceil(config.epochs * per_epoch / config.grad_accum)


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """An fp32 CPU copy of the full weights under the plain model's names, LoRA deltas added in,
    without changing the model (for trajectory snapshots and parameter averaging)."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    if not isinstance(model, PeftModel):
        return {name: value.detach().float().cpu().clone() for name, value in model.state_dict().items()}
    base = model.get_base_model()
    weights = {name.replace(".base_layer.", "."): value.detach().float().cpu().clone()
               for name, value in base.state_dict().items() if "lora_" not in name}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            for adapter in module.active_adapters:
                weights[f"{name}.weight"] += module.get_delta_weight(adapter).detach().float().cpu()
    return weights


def retain_items(method: str, config: TrainingConfig, data: UnlearningData) -> list[Example] | None:
    """The data's retain items when `config.retain_weight` > 0, else None; a one-line error when the
    weight asks for them and the data has none."""
    if config.retain_weight == 0:
        return None
    if not data.retain:
        raise UlmrError(f"{method}: retain_weight={config.retain_weight} but {data.benchmark} "
                        f"{data.name} has no retain items: set retain_weight=0")
    return data.retain


class LossUnlearner(Unlearner):
    """Base of the methods that are one loss on forget/retain batches.

    A subclass sets `name` and `config_class` (a TrainingConfig subclass), implements
    `compute_loss`, and may set `needs_reference` (a frozen copy of the model before unlearning is
    passed to compute_loss), `reference_logprobs` (parts whose per-sequence log-probs under that model
    the loss reads from part["reference_logprob"], computed before training without keeping the copy)
    and override `forget_parts` (which examples form the forget side).
    """

    config_class: ClassVar[type] = TrainingConfig
    needs_reference: ClassVar[bool] = False
    reference_logprobs: ClassVar[tuple[str, ...]] = ()

    def forget_parts(self, data: UnlearningData) -> dict[str, list[Example]]:
        """Named, aligned example lists batched together as the forget side (default: the data's
        forget corpus as "forget")."""
        return {"forget": data.forget}

    def retain_examples(self, data: UnlearningData) -> list[Example] | None:
        """The retain side, or None when the method has no retain term (default: the data's retain
        items when retain_weight > 0)."""
        return retain_items(self.name, self.config, data)

    def retain_objective(self) -> tuple[str, float]:
        """(what the retain term is, its weight), for the record when the method has one (default:
        the shared retain loss at retain_weight)."""
        return self.config.retain_loss, self.config.retain_weight

    def trainable_parameters(self, model) -> Iterable[torch.nn.Parameter]:
        """The parameters this method trains (default: all that require gradients); the loop keeps
        every other one bit-identical."""
        return [p for p in model.parameters() if p.requires_grad]

    @abc.abstractmethod
    def compute_loss(self, model, batch: Batch, reference) -> torch.Tensor | dict[str, torch.Tensor]:
        """The loss to minimise on one micro-batch, or a dict of named terms to sum."""

    def unlearn(self, model, tokenizer, data: UnlearningData) -> UnlearningResult:
        from ulmr.selection import ALPHA_VALIDATION_ITEMS, validation_for

        config = self.config
        retain = self.retain_examples(data)
        # before any work: average_alpha=auto fails where the benchmark has no validation data
        validation = validation_for(data, ALPHA_VALIDATION_ITEMS, "average_alpha=auto chooses alpha",
                                    "set average_alpha to a number") if config.average_alpha == "auto" else None
        reference = self.needs_reference or (retain is not None and config.retain_loss == "kl")
        original = OnDisk(full_state_dict(model)) if config.average_alpha is not None else None
        model, record = train(model, tokenizer, data.template, config, self.compute_loss,
                              self.forget_parts(data), retain, reference=reference,
                              reference_logprobs=self.reference_logprobs, desc=self.name,
                              trainable_parameters=self.trainable_parameters)
        averaging, artifacts = self._average(model, tokenizer, data, original, validation, record.compute_dtype)
        retain_record = dict(zip(("retain_loss", "retain_weight"), self.retain_objective())) if retain else {}
        return UnlearningResult(model, {"method": self.name, "selection": data.name,
                                        "config": config_to_dict(config), **record.as_dict(), **retain_record,
                                        "averaging": averaging}, artifacts)

    def _average(self, model, tokenizer, data: UnlearningData, original, validation,
                 compute_dtype: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The average_alpha post-step: load alpha * trained + (1 - alpha) * original into `model`;
        returns what the record keeps ("alpha": None when averaging is off) and, for alpha=auto, the
        artifacts (the greedy validation answers of the original and the chosen alpha)."""
        if original is None:
            return {"alpha": None, "reason": "average_alpha unset: no averaging"}, {}
        from ulmr.selection import ALPHA_GRID, auto_alpha

        started = time.perf_counter()
        original = original.load()
        trained = full_state_dict(model)
        averaging, artifacts = {"alpha": self.config.average_alpha, "reason": "average_alpha from the config"}, {}
        if validation is not None:
            averaging, answers = auto_alpha(model, tokenizer, data.template, trained, original, validation,
                                            compute_dtype, ALPHA_GRID, self.config.max_length)
            artifacts["validation_answers"] = answers
        load_weights(model, interpolate(trained, original, averaging["alpha"]))
        return {**averaging, "time_s": time.perf_counter() - started}, artifacts


def _check_parts(forget: dict[str, list[Example]]) -> None:
    sizes = {name: len(examples) for name, examples in forget.items()}
    if not sizes or not all(sizes.values()) or len(set(sizes.values())) != 1:
        raise UlmrError(f"forget parts must be non-empty lists of equal length, got sizes {sizes}: "
                        "check the data's forget examples")
    if "retain" in forget:
        raise UlmrError("'retain' is reserved for the retain examples: name the forget part differently")


def _restrict_training(model, trainable_parameters) -> list[torch.nn.Parameter]:
    """Leave gradients on only the parameters `trainable_parameters(model)` names; return those
    turned off."""
    if trainable_parameters is None:
        return []
    chosen = {id(p) for p in trainable_parameters(model)}
    if not chosen:
        raise UlmrError("the method chose no parameters to train: check its layer/parameter settings")
    turned_off = [p for p in model.parameters() if p.requires_grad and id(p) not in chosen]
    for p in turned_off:
        p.requires_grad_(False)
    return turned_off


def _checkpoint_activations(model, on: bool) -> None:
    """Turn transformers' per-layer activation checkpointing on or off; non-reentrant, which recomputes
    under the autocast state of the step. transformers 5 renamed it from "gradient_" to "activation_"."""
    if hasattr(model, "activation_checkpointing_enable"):
        enable, disable, kwargs = (model.activation_checkpointing_enable, model.activation_checkpointing_disable,
                                   "activation_checkpointing_kwargs")
    else:
        enable, disable, kwargs = (model.gradient_checkpointing_enable, model.gradient_checkpointing_disable,
                                   "gradient_checkpointing_kwargs")
    if on:
        enable(**{kwargs: {"use_reentrant": False}})
    else:
        disable()


def _frozen_copy(model):
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def _with_reference_logprobs(stream: Iterator[Batch], n: int, frozen, parts: tuple[str, ...], device, autocast,
                             desc: str, quiet: bool) -> Iterator[Batch]:
    """The next n micro-batches of `stream`, each of `parts` given its "reference_logprob": the frozen
    model's sequence_logprob on it, computed as the loss would (on the device, under the loop's
    autocast, without gradients) and kept on the CPU with the batch."""
    from tqdm.auto import tqdm

    from ulmr.unlearning.losses import sequence_logprob

    batches = []
    for _ in tqdm(range(n), desc=desc, disable=quiet):
        batch = next(stream)
        for name in parts:
            part = batch[name]
            with autocast, torch.no_grad():
                logprob = sequence_logprob(frozen, {k: v.to(device) for k, v in part.items()})
            part["reference_logprob"] = logprob.cpu()
        batches.append(batch)
    return iter(batches)


def _with_lora(model, config: TrainingConfig):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules or "all-linear", task_type="CAUSAL_LM"))


def _warmup_then_linear_decay(total: int, warmup: int) -> Callable[[int], float]:
    """Learning-rate factor for optimizer step `step` (0-based); never 0, so no step is wasted."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return (total - step) / (total - warmup)
    return factor


def _as_terms(loss) -> dict[str, torch.Tensor]:
    return loss if isinstance(loss, dict) else {"loss": loss}


def _diverged(what: str, step: int, total: int, config: TrainingConfig,
              terms: dict[str, torch.Tensor]) -> TrainingDiverged:
    parts = ", ".join(f"{name}={v.item():.4g}" for name, v in terms.items())
    return TrainingDiverged(
        f"training diverged at step {step}/{total}: {what}"
        f"{f' ({parts})' if len(terms) > 1 else ''}; lower lr (now {config.lr:g}) or max_steps", step)


def _agree(accelerator, diverged: TrainingDiverged | None, what: str, step: int, total: int,
           config: TrainingConfig) -> None:
    """Under several processes: raise on all of them when any one diverged (a lone raise would leave
    the others waiting in the next collective)."""
    flag = torch.tensor(0.0 if diverged is None else 1.0, device=accelerator.device)
    if float(accelerator.reduce(flag, "sum")) > 0:
        raise diverged or _diverged(f"{what} diverged on another process", step, total, config, {})


def _weights_norm(params: list[torch.Tensor]) -> float:
    """L2 norm of all `params` in one fused pass: NaN or inf as soon as one weight is (or is so
    large, beyond ~1e19, that its square overflows fp32: a model no forward pass survives)."""
    if not params:
        return 0.0
    with torch.no_grad():
        tensors = [p.detach() for p in params]
        norms = torch._foreach_norm(tensors, 2) if hasattr(torch, "_foreach_norm") else \
            [torch.linalg.vector_norm(t) for t in tensors]
        return float(torch.linalg.vector_norm(torch.stack([n.float() for n in norms])))
