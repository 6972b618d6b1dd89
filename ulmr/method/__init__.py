"""ULMR: rewritten instructions, negative responses, fine-tuning, parameter averaging (docs/design.md, "ULMR").

Start at method.py (the config and the pipeline); rewriting.py holds every rewrite template,
negatives.py the refusals, leak.py the rule that keeps the forget answer out of both, averaging.py
the parameter average and the choice of alpha.
"""

from ulmr.method import method  # noqa: F401  (registers ulmr, ulmr-norewrite, ulmr-noavg)
