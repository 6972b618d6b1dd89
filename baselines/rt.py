"""Rejection tuning (RT, TOFU's "IdK"): supervised fine-tuning on the forget questions paired with
refusals drawn from the bank (TOFU's idontknow list), loss on the refusal tokens; optionally +
retain_weight * retain term. No rewriting and no averaging: the baseline that isolates what ULMR's
rewritten instructions and parameter averaging add.

Source: RWKU (Jin et al., 2024), "RT" (no retain term, our default); TOFU (Maini et al., 2024),
"Preference Optimization" with "I don't know" answers, which is RT with retain_weight=1.
Hyperparameters are the shared TrainingConfig defaults.
"""

from __future__ import annotations

from ulmr.unlearning.losses import answer_nll, retain_term
from ulmr.unlearning.registry import register_method
from ulmr.unlearning.interface import with_refusals
from ulmr.unlearning.training import LossUnlearner, TrainingConfig


@register_method
class RejectionTuning(LossUnlearner):
    """Rejection tuning: SFT on forget questions paired with refusals from the bank."""

    name = "rt"
    config_class = TrainingConfig

    def forget_parts(self, data):
        return {"forget": with_refusals(data.forget_questions, data.refusals, self.config.seed)}

    def compute_loss(self, model, batch, reference):
        return {"forget": answer_nll(model, batch["forget"]), **retain_term(model, batch, reference, self.config)}
