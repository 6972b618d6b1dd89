"""ulmr-bench: ULMR and baseline unlearning methods, scored on TOFU and RWKU through lm-eval."""

__version__ = "0.1.0"
