"""ULMR step 4: average the unlearned parameters with the original ones (docs/design.md, "ULMR").

theta = alpha * theta_unlearned + (1 - alpha) * theta_original, tensor by tensor in fp32 on CPU,
after checking that both hold the same tensor names and shapes. Weights are read with
`ulmr.unlearning.training.full_state_dict`, which adds LoRA deltas in, so full fine-tuning and LoRA
average the same way. `soup` is the uniform average of several checkpoints of one training
trajectory.

`choose_alpha` picks alpha on held-out data (see its docstring for the criterion).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ulmr.errors import UlmrError

StateDict = dict[str, torch.Tensor]


def check_compatible(first: StateDict, second: StateDict, what: str) -> None:
    """Same tensor names and shapes, or a one-line UlmrError naming the first difference."""
    missing = sorted(set(first) ^ set(second))
    if missing:
        raise UlmrError(f"cannot average {what}: tensor {missing[0]!r} is in only one of them "
                        f"({len(missing)} names differ); average checkpoints of the same architecture")
    for name, tensor in first.items():
        if tensor.shape != second[name].shape:
            raise UlmrError(f"cannot average {what}: tensor {name!r} has shape {tuple(tensor.shape)} vs "
                            f"{tuple(second[name].shape)}; average checkpoints of the same architecture")


def interpolate(unlearned: StateDict, original: StateDict, alpha: float) -> StateDict:
    """alpha * unlearned + (1 - alpha) * original, tensor by tensor in fp32."""
    if not 0.0 <= alpha <= 1.0:
        raise UlmrError(f"ULMR alpha={alpha} is out of range: it must lie in [0, 1]")
    check_compatible(unlearned, original, "the unlearned and the original model")
    return {name: _lerp(original[name], t, alpha) for name, t in unlearned.items()}


def soup(checkpoints: list[StateDict]) -> StateDict:
    """The uniform average of checkpoints (same names and shapes), in fp32."""
    if not checkpoints:
        raise UlmrError("cannot make a soup of no checkpoints: set soup to 1 or more")
    for i, other in enumerate(checkpoints[1:], start=2):
        check_compatible(checkpoints[0], other, f"soup checkpoints 1 and {i}")
    return {name: torch.stack([c[name].float() for c in checkpoints]).mean(0) if t.is_floating_point() else t
            for name, t in checkpoints[0].items()}


def load_weights(model, state: StateDict) -> None:
    """Copy `state` into a plain (non-PEFT) `model`, cast to each tensor's dtype and device."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        raise UlmrError("cannot load averaged weights into a model with LoRA adapters: merge them first "
                        "(model.merge_and_unload())")
    own = model.state_dict()
    check_compatible(own, state, "the model and the averaged weights")
    with torch.no_grad():
        for name, tensor in own.items():
            tensor.copy_(state[name])


def _lerp(original: torch.Tensor, unlearned: torch.Tensor, alpha: float) -> torch.Tensor:
    if not unlearned.is_floating_point():  # integer buffers are not parameters: keep them
        return unlearned.clone()
    return alpha * unlearned.float() + (1.0 - alpha) * original.float()


@dataclass(frozen=True)
class AlphaChoice:
    alpha: float
    reason: str
    table: list[dict]  # per grid alpha: forget and retain scores and their ratios to the original


def choose_alpha(grid: list[float], score: Callable[[float], tuple[float, float]], original: tuple[float, float],
                 forget_threshold: float, retain_tolerance: float) -> AlphaChoice:
    """Pick alpha from `grid` on held-out data.

    score(alpha) -> (forget, retain): mean per-token probability of the true answers given held-out
    rewritten forget instructions, and of the answers of held-out retain items, for the model
    averaged with that alpha; `original` is the same pair for the original model.

    Criterion: the smallest alpha (closest to the original model) whose forget score is at most
    forget_threshold x the original's while the retain score stays at least (1 - retain_tolerance)
    x the original's. If no alpha reaches the forget threshold, the alpha with the lowest forget
    score among those keeping retain; if none keeps retain, the largest retain - forget ratio gap.
    """
    forget0, retain0 = original
    table = []
    for alpha in sorted(grid):
        forget, retain = score(alpha)
        table.append({"alpha": alpha, "forget": forget, "retain": retain,
                      "forget_ratio": forget / forget0 if forget0 > 0 else 0.0,
                      "retain_ratio": retain / retain0 if retain0 > 0 else 1.0})
    keeps_retain = [row for row in table if row["retain_ratio"] >= 1.0 - retain_tolerance]
    forgets = [row for row in keeps_retain if row["forget_ratio"] <= forget_threshold]
    if forgets:
        row = forgets[0]
        reason = (f"smallest alpha with forget <= {forget_threshold} x original and retain >= "
                  f"{1 - retain_tolerance:.3g} x original")
    elif keeps_retain:
        row = min(keeps_retain, key=lambda r: r["forget_ratio"])
        reason = (f"no alpha reached forget <= {forget_threshold} x original; lowest forget among alphas "
                  f"keeping retain >= {1 - retain_tolerance:.3g} x original")
    else:
        row = max(table, key=lambda r: r["retain_ratio"] - r["forget_ratio"])
        reason = (f"every alpha dropped retain below {1 - retain_tolerance:.3g} x original; best "
                  "retain_ratio - forget_ratio trade-off")
    return AlphaChoice(row["alpha"], reason, table)
