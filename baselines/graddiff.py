"""Gradient difference (GradDiff): -NLL(forget) + lambda * NLL(retain), or a KL-to-reference
retain term with retain_loss=kl.

Source: TOFU (Maini et al., 2024), "Gradient Difference"; open-unlearning's GradDiff (lambda 1,
retain_loss_type NLL or KL).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ulmr.unlearning.config import check_range
from ulmr.unlearning.losses import answer_nll, retain_term
from ulmr.unlearning.registry import register_method
from ulmr.unlearning.training import LossUnlearner, TrainingConfig


@dataclass
class GradDiffConfig(TrainingConfig):
    """GradDiff's settings on top of TrainingConfig (its retain term is on by default)."""

    retain_weight: float = field(default=1.0, metadata={"help": (
        "lambda, the weight of the retain term (TOFU, open-unlearning: 1.0).")})

    def validate(self) -> None:
        super().validate()
        check_range("retain_weight", self.retain_weight, 0, low_open=True)


@register_method
class GradDiff(LossUnlearner):
    """Gradient difference: -NLL(forget) + lambda * NLL(retain) (or KL to the reference)."""

    name = "graddiff"
    config_class = GradDiffConfig

    def compute_loss(self, model, batch, reference):
        return {"forget": -answer_nll(model, batch["forget"]), **retain_term(model, batch, reference, self.config)}
