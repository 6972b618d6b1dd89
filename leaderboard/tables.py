"""Results -> leaderboard tables: one per (benchmark, model, selection), with forget quality against
the retain model, mean and spread over seeds, and the best unlearning method per column."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from statistics import fmean, stdev
from typing import Any, Callable

from ulmr.benchmarks import get_benchmark
from ulmr.metrics import forget_quality

# Evaluated models that are not unlearning methods: the first rows, in this order, and never bold
# (base: the untouched model on the forget probes only, the yardstick of the knowledge gates).
REFERENCE_METHODS = ("base", "before", "retain")

HIGHER, LOWER, CLOSEST_TO_BEFORE = "higher", "lower", "closest to before"
# Which way a column is better: (benchmark, metric key prefix, direction); the first match wins.
BETTER = [
    ("tofu", "forget_quality", HIGHER),  # KS p-value: truth ratios look like the retain model's
    ("tofu", "forget_truth_ratio", HIGHER),  # min(R, 1/R): 1 = paraphrase and perturbations alike
    ("tofu", "forget_", LOWER),  # Prob, ROUGE-L: the forget answers are gone
    ("tofu", "", HIGHER),  # model utility; retain, real authors, world facts
    ("rwku", "forget_", LOWER),
    ("rwku", "neighbor_", HIGHER),
    ("rwku", "utility_", HIGHER),
    ("rwku", "mia_fm", HIGHER),  # forget-member loss rises when forgotten
    ("rwku", "mia_rm", CLOSEST_TO_BEFORE),  # retain-member loss should not move
    ("rwku", "mia_auroc", LOWER),  # P(RM loss > FM loss): falls as FM losses rise
]


def better(benchmark: str, key: str) -> str | None:
    """The column's direction from BETTER; None for a column it does not cover (never bold)."""
    return next((direction for bench, prefix, direction in BETTER
                 if bench == benchmark and key.startswith(prefix)), None)


@dataclass(frozen=True)
class Cell:
    mean: float
    spread: float | None  # sample standard deviation over seeds; None with one value


@dataclass(frozen=True)
class Row:
    method: str
    seeds: list[int]
    cells: dict[str, Cell]  # column key -> cell; a column without values has no cell


@dataclass(frozen=True)
class Table:
    benchmark: str
    model: str
    selection: str
    columns: list[tuple[str, str]]  # (metric key, header) in the benchmark's order
    rows: list[Row]  # reference rows first, then methods by name
    best: dict[str, list[str]]  # column key -> the methods marked best (ties: all of them)
    notes: list[str]  # why a column is n/a, what forget quality was measured against
    results: list[dict[str, Any]]  # every result of the table, failed ones included, by (method, seed)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [result for result in self.results if result["status"] == "failed"]


def aggregate(results: list[dict[str, Any]]) -> list[Table]:
    """One table per (benchmark, model, selection), sorted by those."""
    groups = defaultdict(list)
    for result in results:
        groups[(result["benchmark"], result["model"], result["selection"])].append(result)
    return [_table(*group, sorted(members, key=lambda r: (r["method"], r["seed"])))
            for group, members in sorted(groups.items())]


def _table(benchmark: str, model: str, selection: str, results: list[dict[str, Any]]) -> Table:
    columns = get_benchmark(benchmark).columns
    runs = [(result, dict(result["metrics"])) for result in results if result["status"] == "ok"]
    notes = _add_forget_quality(runs) if any(key == "forget_quality" for key, _ in columns) else []
    metrics_by_method = defaultdict(list)
    for result, metrics in runs:
        metrics_by_method[result["method"]].append((result["seed"], metrics))
    methods = ([m for m in REFERENCE_METHODS if m in metrics_by_method]
               + sorted(m for m in metrics_by_method if m not in REFERENCE_METHODS))
    rows = [_row(method, metrics_by_method[method], columns) for method in methods]
    return Table(benchmark, model, selection, columns, rows, _best(benchmark, columns, rows), notes, results)


def _add_forget_quality(runs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[str]:
    """Set every run's forget quality (replacing any stored one) against the retain model's run of
    the same seed, else of its lowest seed; return the notes that say so or why it is n/a."""
    retain_by_seed = {result["seed"]: result for result, _ in runs
                      if result["method"] == "retain" and _forget_truth_ratios(result)}
    if not retain_by_seed:
        for _, metrics in runs:
            metrics["forget_quality"] = None
        return ["Forget quality n/a: no retain-model result with forget truth ratios for this model and "
                "split; `ulmr-bench run` evaluates the retain model."]
    fallback = retain_by_seed[min(retain_by_seed)]
    without_ratios = set()
    for result, metrics in runs:
        ratios = _forget_truth_ratios(result)
        reference = retain_by_seed.get(result["seed"], fallback)
        metrics["forget_quality"] = forget_quality(ratios, _forget_truth_ratios(reference)) if ratios else None
        if not ratios:
            without_ratios.add(result["method"])
    notes = [f"Forget quality: KS test of each run's forget truth ratios against the retain model's "
             f"of the same seed, else of seed {fallback['seed']}."]
    if without_ratios:
        notes.append(f"Forget quality n/a for {', '.join(sorted(without_ratios))}: "
                     "no per-question forget truth ratios in the results.")
    return notes


def _forget_truth_ratios(result: dict[str, Any]) -> list[float]:
    per_question = result.get("per_question")
    return (per_question.get("forget_truth_ratio") or []) if isinstance(per_question, dict) else []


def _row(method: str, seeded_metrics: list[tuple[int, dict[str, Any]]], columns: list[tuple[str, str]]) -> Row:
    cells = {}
    for key, _ in columns:
        values = [m[key] for _, m in seeded_metrics if _is_number(m.get(key))]
        if values:
            cells[key] = Cell(fmean(values), stdev(values) if len(values) >= 2 else None)
    return Row(method, sorted(seed for seed, _ in seeded_metrics), cells)


def _is_number(value: Any) -> bool:
    """A metric value to average: a finite number (None and NaN mean the slice could not produce it)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _best(benchmark: str, columns: list[tuple[str, str]], rows: list[Row]) -> dict[str, list[str]]:
    """Per column, the unlearning methods with the best mean, when at least two have one."""
    before = next((row for row in rows if row.method == "before"), None)
    methods = [row for row in rows if row.method not in REFERENCE_METHODS]
    best = {}
    for key, _ in columns:
        badness = _badness(better(benchmark, key), before.cells.get(key) if before else None)
        scores = {row.method: badness(row.cells[key].mean) for row in methods if key in row.cells} if badness else {}
        if len(scores) >= 2:
            best[key] = [method for method, score in scores.items() if score == min(scores.values())]
    return best


def _badness(direction: str | None, before: Cell | None) -> Callable[[float], float] | None:
    """Mean -> a score where lower is better; None when the column has no best (no direction, or
    closest to a before row that is missing)."""
    if direction == HIGHER:
        return lambda mean: -mean
    if direction == LOWER:
        return lambda mean: mean
    if direction == CLOSEST_TO_BEFORE and before is not None:
        return lambda mean: abs(mean - before.mean)
    return None
