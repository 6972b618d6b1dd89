"""UNDIAL: unlearning by self-distillation on adjusted logits. At every forget token the frozen
model before unlearning gives the target distribution, with the logit of the true next token lowered
by beta; the model learns it by cross-entropy:

    mean over forget tokens t of CE(softmax(z_ref,t - beta * onehot(y_t)), softmax(z_theta,t))

optionally + retain_weight * retain term. Unlike gradient ascent the target is a fixed distribution,
so the loss is bounded below and training settles instead of running away.

Source: Dong et al., 2024, "UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning in
Large Language Models" (NAACL 2025); its experiments use other benchmarks than TOFU, so the numbers
below are open-unlearning's TOFU settings (configs/trainer/UNDIAL.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ulmr.unlearning.batches import IGNORE_INDEX
from ulmr.unlearning.config import check_range
from ulmr.unlearning.losses import next_token_logits, retain_term
from ulmr.unlearning.registry import register_method
from ulmr.unlearning.training import LossUnlearner, TrainingConfig


def undial_loss(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """The UNDIAL loss from next-token logits of the model and of the reference ([batch, length,
    vocab], position t predicting labels[:, t]) and the labels ([batch, length], IGNORE_INDEX where
    no loss)."""
    mask = labels != IGNORE_INDEX
    targets = labels[mask]
    adjusted = ref_logits[mask].float()
    adjusted = adjusted.scatter_add(-1, targets.unsqueeze(-1), adjusted.new_full((len(targets), 1), -beta))
    soft_targets = F.softmax(adjusted, dim=-1)
    return -(soft_targets * F.log_softmax(logits[mask].float(), dim=-1)).sum(-1).mean()


@dataclass
class UNDIALConfig(TrainingConfig):
    """open-unlearning's UNDIAL on TOFU (configs/trainer/UNDIAL.yaml):

    retain_weight: 0, the shared default and their `alpha: 0.0` (their forget weight `gamma` is 1).
    They train 10 epochs at effective batch 16; the shared default is TOFU's 5 epochs.
    """

    beta: float = field(default=10.0, metadata={"help": (
            "how far the true token's logit is lowered in the target (10.0, their `beta`).")})
    lr: float = field(default=1e-4, metadata={"help": (
            "1e-4 (theirs, 10x the shared TOFU rate: the target is fixed, so the loss cannot run away).")})

    def validate(self) -> None:
        super().validate()
        check_range("beta", self.beta, 0, low_open=True)


@register_method
class UNDIAL(LossUnlearner):
    """UNDIAL: self-distillation towards the frozen model's logits with the true token lowered by beta."""

    name = "undial"
    config_class = UNDIALConfig
    needs_reference = True

    def compute_loss(self, model, batch, reference):
        forget = batch["forget"]
        with torch.no_grad():
            ref_logits, _ = next_token_logits(reference, forget)
        logits, labels = next_token_logits(model, forget)
        loss = undial_loss(logits, ref_logits, labels, self.config.beta)
        return {"forget": loss, **retain_term(model, batch, reference, self.config)}
