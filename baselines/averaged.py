"""`ga-avg`, `npo-avg`: a baseline, then ULMR's parameter averaging with alpha chosen on validation data.

Each is its parent at `average_alpha=auto` (the post-step of every loss-based method,
ulmr.unlearning.training.LossUnlearner): the trained weights averaged with the original ones at
the alpha that ULMR's alpha=auto would choose (the same grid, validation data and criterion,
ulmr/selection.py). Beside ulmr and ulmr-noavg they separate what the averaging does from what
ULMR's training data does. As registered subclasses they take their parent's settings in a profile
(`ga`'s lr is `ga-avg`'s) unless the profile names them.
"""

from __future__ import annotations

from dataclasses import field, make_dataclass
from typing import Literal

from baselines.ga import GradientAscent
from baselines.npo import NPO
from ulmr.unlearning.registry import register_method


def averaged(parent: type) -> type:
    """Register `<parent.name>-avg`: the parent with average_alpha defaulting to "auto"."""
    config = make_dataclass(f"{parent.config_class.__name__}Averaged",
                            [("average_alpha", float | Literal["auto"] | None, field(default="auto", metadata={"help": (
                                "\"auto\" here: alpha chosen on validation data as ULMR's alpha=auto; a number fixes it.")}))],
                            bases=(parent.config_class,))
    config.__module__ = __name__
    variant = type(f"{parent.__name__}Averaged", (parent,), {
        "__module__": __name__, "name": f"{parent.name}-avg", "config_class": config,
        "__doc__": f"{parent.name}, then averaged with the original model at the alpha ULMR's alpha=auto chooses."})
    return register_method(variant)


GradientAscentAveraged = averaged(GradientAscent)
NPOAveraged = averaged(NPO)
