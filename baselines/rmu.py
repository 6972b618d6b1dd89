"""Representation misdirection for unlearning (RMU): on forget tokens, push the hidden states that
decoder layer `layer` outputs towards a fixed random vector c * u; on retain tokens, keep them equal
to the frozen model's:

    mean over forget tokens of ||h_theta(x) - c u||^2 / d  +  alpha * mean over retain tokens of
    ||h_theta(x) - h_ref(x)||^2 / d

with h the output of decoder layer `layer` (the residual stream after it), d the hidden size, u a
unit vector drawn once, uniformly in [0, 1)^d then normalised (seeded), and tokens those that carry
labels (the answer of a question/answer example, every token of a plain text). Only the parameters
of `update_modules` in `update_layers` are trained; every other weight stays bit-identical.

Source: Li et al., 2024, "The WMDP Benchmark: Measuring and Reducing Malicious Use With
Unlearning", section 4 (RMU) and its code (centerforaisafety/wmdp, rmu/unlearn.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ulmr.errors import UlmrError
from ulmr.unlearning.batches import IGNORE_INDEX
from ulmr.unlearning.config import check_range
from ulmr.unlearning.losses import accepts_logits_to_keep
from ulmr.unlearning.registry import register_method
from ulmr.unlearning.training import LossUnlearner, TrainingConfig


def steering_vector(hidden_size: int, coeff: float, seed: int) -> torch.Tensor:
    """c * u: u drawn uniformly in [0, 1)^hidden_size (seeded) and scaled to unit length, as the
    WMDP code does (torch.rand, not a Gaussian: u lies in the positive orthant)."""
    u = torch.rand(hidden_size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (coeff * u / u.norm()).float()


def masked_mse(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over the hidden dimension and the masked tokens:
    hidden [batch, length, d], target broadcastable to it, mask [batch, length]."""
    squared = (hidden.float() - target.float()).pow(2).mean(dim=-1)
    return (squared * mask).sum() / mask.sum()


@dataclass
class RMUConfig(TrainingConfig):
    """The paper's numbers are for 7B models: Zephyr-7B (32 layers) with layer 7, update layers
    5, 6, 7 (only their MLP down-projection: `param_ids=[6]` in rmu/unlearn.py), c = 6.5, alpha =
    1200, lr 5e-5, batch 4, 150 steps, constant lr (WMDP README / run_rmu_zephyr.ipynb command
    `--steering_coeffs 6.5,6.5 --alpha 1200,1200 --lr 5e-5`, rmu/unlearn.py defaults `layer_id=7`,
    `layer_ids=5,6,7`, `param_ids=6`). Our defaults are for SmolLM2-135M (30 layers):

    lr 5e-5, grad_accum 1, warmup_ratio 0 and max_grad_norm 0: the WMDP code's AdamW at a constant
        5e-5, one step per batch, no clipping. retain_weight must stay 0: RMU's retain term is alpha's.
    """

    layer: int = field(default=7, metadata={"help": (
            "decoder layer (0-based) whose output is steered: 7, the paper's layer placed at the same depth (7 of 32 "
            "-> 6.6 of 30, rounded).")})
    steering_coeff: float = field(default=370.0, metadata={"help": (
            "c = 370. c only means something relative to the size of that layer's activations: a third-party "
            "measurement of Zephyr-7B's layer-7 outputs found a median token norm of about 2.0, so the paper's c is "
            "~3.2x the norm; SmolLM2-135M's layer-7 outputs have median norm ~115 on TOFU and RWKU texts (measured "
            "here: 120 forget answers, 115 retain answers, 111 RWKU passages), and 3.2 x 115 = 370.")})
    alpha: float = field(default=1200.0, metadata={"help": (
            "retain weight, 1200 (the paper's): both terms are mean squares of the same layer's activations, so "
            "scaling c with the activation norm leaves their ratio, and alpha, unchanged.")})
    update_layers: list[int] | None = field(default=None, metadata={"help": (
            "layers whose `update_modules` are trained; None: layer-2, layer-1, layer (the paper's choice).")})
    update_modules: list[str] = field(default_factory=lambda: ["mlp.down_proj"], metadata={"help": (
            "parameter-name prefixes inside a decoder layer that are trained ([\"mlp.down_proj\"], what the WMDP "
            "code trains; [\"mlp\"] trains the whole MLP).")})
    lr: float = 5e-5
    grad_accum: int = 1
    warmup_ratio: float = 0.0
    max_grad_norm: float = 0.0

    def validate(self) -> None:
        super().validate()
        check_range("layer", self.layer, 0)
        check_range("steering_coeff", self.steering_coeff, 0, low_open=True)
        check_range("alpha", self.alpha, 0)
        for layer in self.update_layers or []:
            check_range("update_layers entry", layer, 0, self.layer)
        if self.update_layers is not None and not self.update_layers:
            raise UlmrError("rmu update_layers is empty: name at least one layer (or leave it unset)")
        if not self.update_modules:
            raise UlmrError("rmu update_modules is empty: name at least one, e.g. [mlp.down_proj]")
        if self.retain_weight:
            raise UlmrError(f"rmu's retain term is alpha * activation MSE (retain_weight={self.retain_weight}): "
                            "leave retain_weight at 0 and set alpha")
        if self.lora:
            raise UlmrError("rmu trains chosen weights of chosen layers directly: leave lora off")

    @property
    def layers_to_update(self) -> list[int]:
        return self.update_layers if self.update_layers is not None else \
            [i for i in (self.layer - 2, self.layer - 1, self.layer) if i >= 0]


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's stack of decoder layers (the first ModuleList named `...layers`)."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.split(".")[-1] == "layers":
            return module
    raise UlmrError(f"rmu found no decoder-layer stack (a ModuleList named 'layers') in {type(model).__name__}")


def layer_output(model, part, layer: int) -> torch.Tensor:
    """The hidden states decoder layer `layer` outputs for a batch part: [batch, length, d]."""
    captured = []

    def keep(module, args, output):
        captured.append(output[0] if isinstance(output, tuple) else output)

    handle = decoder_layers(model)[layer].register_forward_hook(keep)
    # the logits are not needed: compute one position's where the model allows it
    extra = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    try:
        model(input_ids=part["input_ids"], attention_mask=part["attention_mask"], use_cache=False, **extra)
    finally:
        handle.remove()
    return captured[0]


def labelled(part) -> torch.Tensor:
    """The tokens that carry labels (answer tokens; every token of a plain text): [batch, length]."""
    return (part["labels"] != IGNORE_INDEX).float()


@register_method
class RMU(LossUnlearner):
    """RMU: steer a middle layer's activations on forget tokens to a random vector; keep retain ones."""

    name = "rmu"
    config_class = RMUConfig
    needs_reference = True

    def retain_examples(self, data):
        if self.config.alpha == 0:
            return None
        if not data.retain:
            raise UlmrError(f"rmu: alpha={self.config.alpha} but {data.benchmark} {data.name} has no retain items: "
                            "set alpha=0")
        return data.retain

    def retain_objective(self):
        return f"activation MSE at layer {self.config.layer}", self.config.alpha

    def trainable_parameters(self, model):
        layers = decoder_layers(model)
        config = self.config
        if config.layer >= len(layers):
            raise UlmrError(f"rmu layer={config.layer} but the model has {len(layers)} decoder layers (0-"
                            f"{len(layers) - 1}): set layer lower")
        chosen = []
        for index in config.layers_to_update:
            for name, param in layers[index].named_parameters():
                if any(name == prefix or name.startswith(prefix + ".") for prefix in config.update_modules):
                    chosen.append(param)
        if not chosen:
            names = [name for name, _ in layers[config.layer].named_parameters()]
            raise UlmrError(f"rmu update_modules {config.update_modules} match no parameter of layers "
                            f"{config.layers_to_update}; a layer has: {', '.join(names)}")
        return chosen

    def compute_loss(self, model, batch, reference):
        config = self.config
        forget = batch["forget"]
        hidden = layer_output(model, forget, config.layer)
        target = steering_vector(hidden.shape[-1], config.steering_coeff, config.seed).to(hidden.device)
        terms = {"forget": masked_mse(hidden, target, labelled(forget))}
        if "retain" in batch:
            retain = batch["retain"]
            with torch.no_grad():
                kept = layer_output(reference, retain, config.layer)
            terms["retain"] = config.alpha * masked_mse(layer_output(model, retain, config.layer), kept,
                                                        labelled(retain))
        return terms
