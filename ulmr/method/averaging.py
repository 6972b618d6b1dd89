"""ULMR step 4: average the unlearned parameters with the original ones (docs/design.md, "ULMR").

theta = alpha * theta_unlearned + (1 - alpha) * theta_original, and `soup`, the uniform average of
checkpoints of one trajectory: `interpolate`, `soup` and `load_weights` live in
ulmr.unlearning.averaging (shared with the average_alpha post-step of every loss-based method).

`choose_alpha` picks alpha on held-out data (see its docstring for the criterion).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

# The generic averaging lives in the core so that every loss-based method can average (average_alpha);
# re-exported here as ULMR's step 4.
from ulmr.unlearning.averaging import StateDict, check_compatible, interpolate, load_weights, soup  # noqa: F401


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
