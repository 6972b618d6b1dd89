"""Negative preference optimisation (NPO): the forget answers as dispreferred responses without a
preferred one, relative to the frozen model before unlearning:

    -(2/beta) * mean over forget items of log sigmoid(-beta * (log p_theta(y|x) - log p_ref(y|x)))

with sequence log-probs summed over answer tokens; optionally + retain_weight * retain term
(retain_weight=1 is NPO+RT, open-unlearning's NPO default).

Source: Zhang et al., 2024, "Negative Preference Optimization" (beta 0.1 on TOFU); open-unlearning NPO.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ulmr.unlearning.config import check_range
from ulmr.unlearning.losses import retain_term, sequence_logprob
from ulmr.unlearning.registry import register_method
from ulmr.unlearning.training import LossUnlearner, TrainingConfig


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """The NPO loss from per-sequence log-probs of the model and of the reference."""
    return -(2 / beta) * F.logsigmoid(-beta * (logp - ref_logp)).mean()


@dataclass
class NPOConfig(TrainingConfig):
    """NPO's settings on top of TrainingConfig."""

    beta: float = field(default=0.1, metadata={"help": (
        "inverse temperature of the preference (NPO paper and open-unlearning on TOFU: 0.1).")})

    def validate(self) -> None:
        super().validate()
        check_range("beta", self.beta, 0, low_open=True)


@register_method
class NPO(LossUnlearner):
    """Negative preference optimisation on the forget answers (+ optional retain term)."""

    name = "npo"
    config_class = NPOConfig
    reference_logprobs = ("forget",)
    relative_cost = 1.1  # the quick profile on the AVX2 proxy: 1.08-1.13x ga's row (the reference's pass)

    def compute_loss(self, model, batch, reference):
        forget = batch["forget"]
        loss = npo_loss(sequence_logprob(model, forget), forget["reference_logprob"], self.config.beta)
        return {"forget": loss, **retain_term(model, batch, reference, self.config)}
