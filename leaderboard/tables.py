"""Results -> leaderboard tables: one per (benchmark, model, selection), with forget quality against
the retain model, mean and spread over seeds, and the best unlearning method per column."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from statistics import fmean, stdev
from typing import Any, Callable

from ulmr.benchmarks.registry import CLOSEST_TO_BEFORE, HIGHER, LOWER, Benchmark, get_benchmark

# Evaluated models that are not unlearning methods: the first rows, in this order, and never bold
# (base: the untouched model on the forget probes only, the yardstick of the knowledge gates).
REFERENCE_METHODS = ("base", "before", "retain")

def better(benchmark: str, key: str) -> str | None:
    """The column's direction, as its benchmark plug-in states it; None: not ranked (never bold)."""
    return get_benchmark(benchmark).direction(key)


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
    bench = get_benchmark(benchmark)
    columns = bench.columns
    runs = [(result, dict(result["metrics"])) for result in results if result["status"] == "ok"]
    notes = _add_reference_metrics(bench, runs) if bench.reference_role else []
    metrics_by_method = defaultdict(list)
    for result, metrics in runs:
        metrics_by_method[result["method"]].append((result["seed"], metrics))
    methods = ([m for m in REFERENCE_METHODS if m in metrics_by_method]
               + sorted(m for m in metrics_by_method if m not in REFERENCE_METHODS))
    rows = [_row(method, metrics_by_method[method], columns) for method in methods]
    return Table(benchmark, model, selection, columns, rows, _best(benchmark, columns, rows), notes, results)


def _add_reference_metrics(bench: Benchmark, runs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[str]:
    """Set every run's reference metrics (TOFU: forget quality; replacing any stored ones) against the
    reference row's run of the same seed, else of its lowest seed; return the notes that say so or
    why they are n/a."""
    role = bench.reference_role
    names = ", ".join(header for key, header in bench.columns if key in bench.reference_columns)
    by_seed = {result["seed"]: result for result, _ in runs if result["method"] == role}
    if not by_seed:
        for _, metrics in runs:
            metrics.update(dict.fromkeys(bench.reference_columns))
        return [f"{names} n/a: no {role}-model result for this model and selection; "
                f"`ulmr-bench run` evaluates the {role} model."]
    fallback = by_seed[min(by_seed)]
    missing = set()
    for result, metrics in runs:
        measured = bench.reference_metrics(result, by_seed.get(result["seed"], fallback))
        metrics.update(measured)
        if any(value is None for value in measured.values()):
            missing.add(result["method"])
    notes = [f"{bench.reference_note} of the same seed, else of seed {fallback['seed']}."]
    if missing:
        notes.append(f"{names} n/a for {', '.join(sorted(missing))}: the results lack the per-question "
                     "values it needs.")
    return notes


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
