"""ULMR step 4: average the unlearned parameters with the original ones (docs/design.md, "ULMR").

theta = alpha * theta_unlearned + (1 - alpha) * theta_original, and `soup`, the uniform average of
checkpoints of one trajectory: `interpolate`, `soup` and `load_weights` live in
ulmr.unlearning.averaging (shared with the average_alpha post-step of every loss-based method).

`choose_alpha` picks alpha on the benchmark's validation data by the selection criterion that
`ulmr-bench tune` uses too (ulmr/selection.py).
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
    curve: list[dict]  # per grid alpha, ascending: the validation measurements and their judgement
    answers: dict  # the chosen alpha's greedy validation answers ({"forget": [...], "retain": [...]})


def choose_alpha(grid: list[float], measure_at: Callable[[float], dict], original: dict) -> AlphaChoice:
    """Pick alpha from `grid` by the selection criterion (ulmr/selection.py) on validation data.

    measure_at(alpha) -> `ulmr.selection.measure` of the model averaged with that alpha; `original`
    is the same for the original model (alpha 0), the "before" every alpha is judged against. There
    is no reference model inside a method, so forget progress is the relative drop. Every grid alpha
    is scored (the curve); the highest score wins, a tie goes to the smaller alpha.
    """
    from ulmr.selection import best, judge, summary

    curve, answers = [], []
    for alpha in sorted(set(grid)):
        scores = measure_at(alpha)
        curve.append({"alpha": alpha, **summary(scores), **judge(scores, original)})
        answers.append({"forget": scores["forget_answers"], "retain": scores["retain_answers"]})
    chosen = best(curve)
    row = curve[chosen]
    ties = [r["alpha"] for r in curve if r["score"] == row["score"]]
    if row["score"] <= 0:
        reason = "no grid alpha scored above 0 on the validation data: the smallest alpha"
    else:
        reason = (f"highest validation score {row['score']:.4g} (forget progress {row['forget_progress']:.3f}, "
                  f"retain kept {row['retain_kept']:.3f}, retain refusals {row['retain_refusal_rate']:.3f})")
        if len(ties) > 1:
            reason += f"; tied with {', '.join(f'{a:g}' for a in ties if a != row['alpha'])}: the smallest alpha"
    return AlphaChoice(row["alpha"], reason, curve, answers[chosen])
