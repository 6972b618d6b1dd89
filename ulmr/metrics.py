"""Cross-model and summary metrics (pure functions): TOFU's forget quality and model utility."""

from __future__ import annotations

from statistics import harmonic_mean


def forget_quality(unlearned_truth_ratios: list[float], retain_truth_ratios: list[float]) -> float:
    """TOFU's forget quality: p-value of the two-sample KS test between the per-question forget
    truth ratios of the unlearned model and of the retain model (higher = closer to never trained)."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(unlearned_truth_ratios, retain_truth_ratios).pvalue)


def model_utility(values: list[float]) -> float:
    """Harmonic mean of TOFU's nine retain / real-authors / world-facts numbers (0 if any is 0)."""
    if len(values) != 9:
        raise ValueError(f"model utility needs 9 numbers, got {len(values)}")
    return 0.0 if min(values) <= 0 else harmonic_mean(values)
