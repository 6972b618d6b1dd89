"""SimNPO: NPO without a reference model, on length-normalised answer log-probs, with a margin:

    -(2/beta) * mean over forget items of log sigmoid(-(beta/|y|) * log p_theta(y|x) - gamma)

with log p_theta(y|x) summed over the |y| answer tokens (every token of a plain text), weighted by
forget_weight, optionally + retain_weight * retain term.

Source: Fan et al., 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM
Unlearning" (the loss above is their Eq. for SimNPO). Their code (OPTML-Group/Unlearn-Simple,
TOFU/dataloader.py) subtracts gamma before multiplying by beta, i.e. uses a margin beta * gamma; the
two agree at the TOFU default gamma = 0 and we follow the paper's formula.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ulmr.unlearning.config import check_range
from ulmr.unlearning.losses import retain_term, token_logprobs
from ulmr.unlearning.registry import register_method
from ulmr.unlearning.training import LossUnlearner, TrainingConfig


def simnpo_loss(logp_sum: torch.Tensor, n_tokens: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """The SimNPO loss from per-sequence answer log-probs (summed) and answer lengths."""
    return -(2 / beta) * F.logsigmoid(-beta * logp_sum / n_tokens - gamma).mean()


@dataclass
class SimNPOConfig(TrainingConfig):
    """SimNPO's TOFU recipe (Fan et al., 2024; OPTML-Group/Unlearn-Simple, TOFU/README.md, the
    forget05 command: `npo_coeff=0.1375 beta=2.5`, with TOFU/config/forget.yaml's gamma 0.0,
    grad_diff_coeff 1.0 on the retain NLL, lr 1e-5, weight decay 0.01):

    The shared lr (1e-5) is theirs; they train 20 epochs (forget.yaml) where the shared default is
    TOFU's 5, and profiles set the budget for every method alike.
    """

    beta: float = field(default=2.5, metadata={"help": (
            "inverse temperature (2.5; their forget10 run and open-unlearning's SimNPO.yaml use 4.5).")})
    gamma: float = field(default=0.0, metadata={"help": (
            "reward margin (0.0, forget.yaml; open-unlearning's `delta`, also 0.0).")})
    forget_weight: float = field(default=0.1375, metadata={"help": (
            "weight of the SimNPO term (0.1375, their `npo_coeff` for forget05; forget10 and open-unlearning's "
            "`gamma`: 0.125).")})
    retain_weight: float = field(default=1.0, metadata={"help": (
            "weight of the retain NLL (1.0, their `grad_diff_coeff`; open-unlearning's `alpha`); 0 gives SimNPO "
            "without a retain term.")})

    def validate(self) -> None:
        super().validate()
        check_range("beta", self.beta, 0, low_open=True)
        check_range("gamma", self.gamma, 0)
        check_range("forget_weight", self.forget_weight, 0, low_open=True)


@register_method
class SimNPO(LossUnlearner):
    """SimNPO: reference-free NPO on length-normalised answer log-probs with a margin (+ retain NLL)."""

    name = "simnpo"
    config_class = SimNPOConfig

    def compute_loss(self, model, batch, reference):
        logp, mask = token_logprobs(model, batch["forget"])
        config = self.config
        loss = simnpo_loss(logp.sum(dim=1), mask.sum(dim=1), config.beta, config.gamma)
        return {"forget": config.forget_weight * loss, **retain_term(model, batch, reference, config)}
