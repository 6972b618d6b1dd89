"""DPO-style unlearning: for each forget question a refusal from the bank is preferred over the
true answer, relative to the frozen model before unlearning:

    -(2/beta) * log sigmoid(beta * ((log p_theta(y_w) - log p_ref(y_w)) - (log p_theta(y_l) - log p_ref(y_l))))

with y_w the refusal, y_l the true answer, sequence log-probs summed over answer tokens; optionally
+ retain_weight * retain term. RWKU ships no true answers for its questions (reject.json), so there
the rejected responses are the target's synthetic texts (the forget corpus), each paired with a
refused question about the same targets.

Source: Rafailov et al., 2023 (DPO); TOFU's "IdkDPO" as run by Zhang et al., 2024 and
open-unlearning (beta 0.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ulmr.unlearning.config import check_range
from ulmr.unlearning.losses import retain_term, sequence_logprob
from ulmr.unlearning.registry import register_method
from ulmr.unlearning.interface import with_refusals
from ulmr.unlearning.training import LossUnlearner, TrainingConfig


def dpo_loss(logp_preferred: torch.Tensor, ref_preferred: torch.Tensor, logp_rejected: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """The DPO loss from per-sequence log-probs of the model and of the reference."""
    margin = (logp_preferred - ref_preferred) - (logp_rejected - ref_rejected)
    return -(2 / beta) * F.logsigmoid(beta * margin).mean()


@dataclass
class DPOConfig(TrainingConfig):
    """DPO's settings on top of TrainingConfig."""

    beta: float = field(default=0.1, metadata={"help": (
        "inverse temperature of the preference (open-unlearning's DPO on TOFU: 0.1).")})

    def validate(self) -> None:
        super().validate()
        check_range("beta", self.beta, 0, low_open=True)


@register_method
class DPO(LossUnlearner):
    """DPO with a refusal preferred over the true forget answer (+ optional retain term)."""

    name = "dpo"
    config_class = DPOConfig
    reference_logprobs = ("preferred", "rejected")

    def forget_parts(self, data):
        questions = data.forget_questions
        if all(q.answer for q in questions):
            rejected = questions
        else:  # RWKU: no true answers; reject the forget texts instead
            rejected = data.forget
            questions = [questions[i % len(questions)] for i in range(len(rejected))]
        return {"preferred": with_refusals(questions, data.refusals, self.config.seed), "rejected": rejected}

    def compute_loss(self, model, batch, reference):
        preferred, rejected = batch["preferred"], batch["rejected"]
        loss = dpo_loss(sequence_logprob(model, preferred), preferred["reference_logprob"],
                        sequence_logprob(model, rejected), rejected["reference_logprob"], self.config.beta)
        return {"forget": loss, **retain_term(model, batch, reference, self.config)}
