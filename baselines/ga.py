"""Gradient ascent (GA): minimise -NLL(forget), i.e. push the forget answers' likelihood down.

Source: TOFU (Maini et al., 2024), "Gradient Ascent"; hyperparameters are the shared defaults of
TrainingConfig (TOFU / open-unlearning: lr 1e-5, 5 epochs).
"""

from __future__ import annotations

from dataclasses import dataclass

from ulmr.errors import UlmrError
from ulmr.unlearning.losses import answer_nll
from ulmr.unlearning.registry import register_method
from ulmr.unlearning.training import LossUnlearner, TrainingConfig


@dataclass
class GAConfig(TrainingConfig):
    """The shared training hyperparameters; GA has no retain term (graddiff is GA with one)."""

    def validate(self) -> None:
        super().validate()
        if self.retain_weight:
            raise UlmrError(f"ga has no retain term (retain_weight={self.retain_weight}): "
                            "leave retain_weight at 0, or use graddiff")


@register_method
class GradientAscent(LossUnlearner):
    """Gradient ascent: minimise -NLL(forget)."""

    name = "ga"
    config_class = GAConfig

    def compute_loss(self, model, batch, reference):
        return {"forget": -answer_nll(model, batch["forget"])}
