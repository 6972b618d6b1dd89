"""Uncertainty over questions: a seeded bootstrap over the docs a result scored.

A run's column is a statistic of the docs its tasks scored (usually their mean). Resampling those
docs with replacement, BOOTSTRAP_RESAMPLES times from one fixed seed, and recomputing the column
gives its standard error over questions: how much the number would move on another draw of
questions like these. The seed is fixed and every (result, column) starts from it, so the same
results always give the same errors, whatever order they are read in.

Columns that are a mean: the bootstrap of the mean of their per-doc list. Columns that are another
statistic (`DocStatistic`: TOFU's model utility, RWKU's AUROC and utility mean): each stratum of
aligned lists resampled with one set of indices, strata independently, the statistic recomputed.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ulmr.benchmarks.registry import Benchmark, DocStatistic

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
# a 95 % normal interval: mean ± Z_95 × standard error
Z_95 = 1.959963984540054


def bootstrap_se_of_mean(values: Sequence[float]) -> float | None:
    """The bootstrap standard error of the mean of `values` (None under two values: no spread to
    resample). Converges to sqrt(sum((x - mean)^2)) / n, the plug-in SE, as resamples grow."""
    data = np.asarray(values, dtype=float)
    if data.size < 2 or not np.all(np.isfinite(data)):
        return None
    if data.min() == data.max():  # every resample's mean is that value (not 1e-16 of rounding)
        return 0.0
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = data[rng.integers(0, data.size, size=(BOOTSTRAP_RESAMPLES, data.size))].mean(axis=1)
    return float(means.std(ddof=1))


def bootstrap_se(values: dict[str, Sequence[float]], statistic: DocStatistic) -> float | None:
    """The bootstrap standard error of `statistic` over the per-doc lists in `values`; None when an
    input is missing, a stratum's lists are not aligned, no stratum has two docs, or fewer than
    half the resamples give a finite value."""
    strata = []
    for keys in statistic.strata:
        if any(key not in values for key in keys):
            return None
        arrays = {key: np.asarray(values[key], dtype=float) for key in keys}
        sizes = {array.size for array in arrays.values()}
        if len(sizes) != 1 or 0 in sizes:
            return None
        strata.append((sizes.pop(), arrays))
    if all(size < 2 for size, _ in strata):
        return None
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    picks = [rng.integers(0, size, size=(BOOTSTRAP_RESAMPLES, size)) for size, _ in strata]
    replicates = []
    for b in range(BOOTSTRAP_RESAMPLES):
        resampled = {key: array[indices[b]] for (_, arrays), indices in zip(strata, picks)
                     for key, array in arrays.items()}
        value = statistic.compute(resampled)
        if value is not None and math.isfinite(value):
            replicates.append(value)
    if len(replicates) < BOOTSTRAP_RESAMPLES / 2:
        return None
    values = np.asarray(replicates)
    if np.ptp(values) <= 1e-12 * max(1.0, float(np.max(np.abs(values)))):  # the same value up to rounding
        return 0.0
    return float(values.std(ddof=1))


def question_errors(bench: Benchmark, per_doc: dict[str, list[float]], keys: Sequence[str]) -> dict[str, float]:
    """{column key: bootstrap SE over questions} for the `keys` the per-doc values can give."""
    errors = {}
    for key in keys:
        statistic = bench.doc_statistics.get(key)
        se = bootstrap_se(per_doc, statistic) if statistic else (
            bootstrap_se_of_mean(per_doc[key]) if key in per_doc else None)
        if se is not None:
            errors[key] = se
    return errors
