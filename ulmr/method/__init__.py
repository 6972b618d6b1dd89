"""ULMR: rewritten instructions, negative responses, fine-tuning, parameter averaging (docs/design.md, "ULMR").

Start at method.py (the config and the pipeline); rewriting.py holds every rewrite template,
negatives.py the refusals, leak.py the rule that keeps the forget answer out of both; the parameter
average is the core's (ulmr/unlearning/averaging.py, shared with every method's average_alpha) and
alpha=auto is the selection criterion's (ulmr/selection.py, auto_alpha).
"""

from ulmr.method import method  # noqa: F401  (registers ulmr, ulmr-norewrite, ulmr-noavg)
