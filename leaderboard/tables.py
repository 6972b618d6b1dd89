"""Results -> leaderboard tables: one per (benchmark, model, selection), with forget quality against
the retain model, mean and spread over seeds, the standard error over questions, the best
unlearning method per column where it is separated from the others, the summary columns, the
per-method training budget; and one table averaged over single-unit selections (RWKU's targets).

The uncertainty of a row's mean in a column, its SE, is sqrt(spread^2 / seeds + q^2): the seed
term is the standard error of a mean over seeds; q, the standard error over questions, is not
divided by the number of seeds because every seed is scored on the same questions (the question
draw is one draw for all of them). Either term is left out where unknown (one seed; no per-doc
values and no stored error), for the plots; a cell lacking either is not `complete`, and only
complete cells can be bold.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from statistics import fmean, stdev
from typing import Any

from leaderboard.loading import PER_DOC_FIELD
from leaderboard.uncertainty import Z_95, question_errors
from ulmr.benchmarks.registry import (CLOSEST_TO_BEFORE, CLOSEST_TO_HALF, CLOSEST_TO_REFERENCE, HIGHER, LOWER,
                                      Benchmark, get_benchmark)

# Evaluated models that are not unlearning methods: the first rows, in this order, and never bold
# (base: the untouched model on the forget probes only, the yardstick of the knowledge gates).
REFERENCE_METHODS = ("base", "before", "retain")
# where each run's question errors came from, for the notes
BOOTSTRAP, STORED, NO_ERRORS = "bootstrap", "stored", "none"
# what each method optimised, from its result's `unlearning` record (a field of the record itself,
# else of its config): (header, field); "retain term" is read from retain_weight and retain_loss
BUDGET_FIELDS = (("Retain term", None), ("Retain weight", "retain_weight"), ("lr", "lr"),
                 ("Optimizer steps", "steps"), ("Examples seen", "examples_seen"),
                 ("Tokens trained", "trained_tokens"))


def better(benchmark: str, key: str) -> str | None:
    """The column's direction, as its benchmark plug-in states it; None: not ranked (never bold)."""
    return get_benchmark(benchmark).direction(key)


@dataclass(frozen=True)
class Cell:
    mean: float
    spread: float | None  # sample standard deviation over seeds (averaged tables: over units); None with one
    question_se: float | None = None  # standard error over questions; None: unknown
    uncertainty: float | None = None  # the SE of `mean` (module docstring), from the terms known; None: none
    complete: bool = False  # both terms known (at least two seeds and a q): bolding needs this


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
    best: dict[str, list[str]]  # column key -> the method marked best (at most one; none when not separated)
    notes: list[str]  # why a column is n/a, what forget quality was measured against
    results: list[dict[str, Any]]  # every result of the table, failed ones included, by (method, seed)
    summary_columns: list[tuple[str, str]] = field(default_factory=list)
    groups: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)  # the full table, split
    budgets: list[tuple[str, list[str]]] = field(default_factory=list)  # (method, BUDGET_FIELDS' texts)
    averaged_over: list[str] = field(default_factory=list)  # the single-unit selections averaged, if any
    error_sources: dict[str, int] = field(default_factory=dict)  # BOOTSTRAP / STORED / NO_ERRORS -> runs

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [result for result in self.results if result["status"] == "failed"]

    @property
    def title(self) -> str:
        bench = get_benchmark(self.benchmark)
        if self.averaged_over:
            return (f"{self.benchmark.upper()} averaged over {len(self.averaged_over)} {bench.selection_unit}s "
                    f"({compact_list(self.averaged_over)}) | {self.model}")
        return f"{self.benchmark.upper()} {bench.selection_title(self.selection)} | {self.model}"

    @property
    def slug(self) -> str:
        """The table's name in file names."""
        unit = get_benchmark(self.benchmark).selection_unit
        selection = f"{unit}s-averaged" if self.averaged_over else self.selection
        return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join((self.benchmark, selection, self.model)))

    def keys(self) -> list[str]:
        """Every ranked key: the columns, then summary keys that are not columns."""
        columns = [key for key, _ in self.columns]
        return columns + [key for key, _ in self.summary_columns if key not in columns]


def model_label(result: dict[str, Any]) -> str:
    """The model a result belongs to on the board, with the precision it was computed in when the
    result records it: bf16 and fp32 runs of one model are separate tables, never averaged together."""
    dtype = result.get("compute_dtype")
    return f"{result['model']} {dtype}" if dtype else result["model"]


def aggregate(results: list[dict[str, Any]]) -> list[Table]:
    """One table per (benchmark, model, selection), sorted by those (selections in natural order);
    before the single-unit tables of a (benchmark, model) with two or more, their average."""
    groups = defaultdict(list)
    for result in results:
        groups[(result["benchmark"], model_label(result), result["selection"])].append(result)
    order = sorted(groups, key=lambda group: (group[0], group[1], natural_key(group[2])))
    tables = [_table(*group, sorted(groups[group], key=lambda r: (r["method"], r["seed"]))) for group in order]
    out = []
    for table in tables:
        bench = get_benchmark(table.benchmark)
        units = [t for t in tables if (t.benchmark, t.model) == (table.benchmark, table.model)
                 and bench.selection_unit and bench.is_single_unit(t.selection)]
        if len(units) >= 2 and table is units[0]:
            out.append(_averaged_table(bench, table.model, units))
        out.append(table)
    return out


def natural_key(text: str) -> list[Any]:
    """Sort key that orders "2" before "10"."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part]


def compact_list(selections: list[str]) -> str:
    """["1", "2", "3", "5"] -> "1-3, 5" (runs of consecutive integers as ranges)."""
    if not all(s.isdigit() for s in selections):
        return ", ".join(selections)
    numbers, parts = sorted(int(s) for s in selections), []
    start = prev = numbers[0]
    for n in numbers[1:] + [None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ", ".join(parts)


def _table(benchmark: str, model: str, selection: str, results: list[dict[str, Any]]) -> Table:
    bench = get_benchmark(benchmark)
    columns = list(bench.columns)
    summary = list(bench.summary_columns)
    runs = [(result, dict(result["metrics"])) for result in results if result["status"] == "ok"]
    reference_values: dict[int, dict[str, list[float]]] = {}  # id(result) -> its reference per-doc values
    notes = _add_reference_metrics(bench, runs, reference_values) if bench.reference_role else []
    keys = [key for key, _ in columns] + [key for key, _ in summary if key not in dict(columns)]
    metrics_by_method = defaultdict(list)
    sources: dict[str, int] = defaultdict(int)
    for result, metrics in runs:
        metrics.update(bench.derived_metrics(metrics))
        errors, source = _question_errors(bench, result, keys, reference_values.get(id(result), {}))
        sources[source] += 1
        metrics_by_method[result["method"]].append((result["seed"], metrics, errors))
    methods = ([m for m in REFERENCE_METHODS if m in metrics_by_method]
               + sorted(m for m in metrics_by_method if m not in REFERENCE_METHODS))
    rows = [_row(method, metrics_by_method[method], keys) for method in methods]
    return Table(benchmark, model, selection, columns, rows, _best(bench, keys, rows), notes, results,
                 summary_columns=summary, groups=_groups(bench, columns), budgets=_budgets(results),
                 error_sources=dict(sources))


def _question_errors(bench: Benchmark, result: dict[str, Any], keys: list[str],
                     reference_values: dict[str, list[float]]) -> tuple[dict[str, float], str]:
    """A run's standard errors over questions and where they came from: the bootstrap over the docs
    of its stored samples, else the errors the result stores (lm-eval's), else none; and in any
    case the bootstrap of its reference metrics over the per-doc values they are measured on."""
    per_doc = result.get(PER_DOC_FIELD) or {}
    errors = question_errors(bench, {**per_doc, **reference_values}, keys)
    if per_doc:
        return errors, BOOTSTRAP
    stored = {key: value for key, value in bench.stored_standard_errors(result).items() if key in keys}
    return {**stored, **errors}, STORED if stored else NO_ERRORS


def _groups(bench: Benchmark, columns: list[tuple[str, str]]) -> list[tuple[str, list[tuple[str, str]]]]:
    """The full table's parts: the plug-in's table_groups, else its column_groups (headers start with
    the group's name), else one part; columns no group names form a last part."""
    headers = dict(columns)
    if bench.table_groups:
        groups = [(title, [(key, headers[key]) for key in keys if key in headers])
                  for title, keys in bench.table_groups]
    elif bench.column_groups:
        groups = [(group, [(key, header) for key, header in columns if header.startswith(group + " ")])
                  for group in bench.column_groups]
    else:
        return [("All columns", columns)]
    placed = {key for _, part in groups for key, _ in part}
    rest = [(key, header) for key, header in columns if key not in placed]
    return [(title, part) for title, part in groups if part] + ([("Other columns", rest)] if rest else [])


def _add_reference_metrics(bench: Benchmark, runs: list[tuple[dict[str, Any], dict[str, Any]]],
                           per_doc: dict[int, dict[str, list[float]]]) -> list[str]:
    """Set every run's reference metrics (TOFU: forget quality; replacing any stored ones) against the
    reference row's run of the same seed, else of its lowest seed, and put the per-doc values they
    are measured on in `per_doc` (by id of the result); return the notes that say so or why they
    are n/a."""
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
        reference = by_seed.get(result["seed"], fallback)
        measured = bench.reference_metrics(result, reference)
        metrics.update(measured)
        per_doc[id(result)] = bench.reference_per_doc_values(result, reference)
        if any(value is None for value in measured.values()):
            missing.add(result["method"])
    notes = [f"{bench.reference_note} of the same seed, else of seed {fallback['seed']}."]
    if missing:
        notes.append(f"{names} n/a for {', '.join(sorted(missing))}: the results lack the per-question "
                     "values it needs.")
    return notes


def _row(method: str, runs: list[tuple[int, dict[str, Any], dict[str, float]]], keys: list[str]) -> Row:
    cells = {}
    for key in keys:
        seeded = [(m[key], errors.get(key)) for _, m, errors in runs if _is_number(m.get(key))]
        if not seeded:
            continue
        values = [value for value, _ in seeded]
        errors = [error for _, error in seeded if error is not None]
        spread = stdev(values) if len(values) >= 2 else None
        question_se = fmean(errors) if errors else None
        terms = ([spread ** 2 / len(values)] if spread is not None else []) + (
            [question_se ** 2] if question_se is not None else [])
        cells[key] = Cell(fmean(values), spread, question_se, math.sqrt(sum(terms)) if terms else None,
                          complete=len(terms) == 2)
    return Row(method, sorted(seed for seed, _, _ in runs), cells)


def _is_number(value: Any) -> bool:
    """A metric value to average: a finite number (None and NaN mean the slice could not produce it)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---- the best method per column ------------------------------------------------------------------

def _best(bench: Benchmark, keys: list[str], rows: list[Row]) -> dict[str, list[str]]:
    """Per column, the unlearning method with the best mean, when at least two have one and it is
    separated from every other: its 95 % interval (of the distance, for a "closest to" column) lies
    wholly on the better side of each other's. No bold on a tie, or where a compared cell is not
    complete (one seed, or no q)."""
    by_method = {row.method: row for row in rows}
    methods = [row for row in rows if row.method not in REFERENCE_METHODS]
    best = {}
    for key in keys:
        target = _target(bench, key, by_method)
        direction = bench.direction(key)
        if direction is None or (direction in (CLOSEST_TO_BEFORE, CLOSEST_TO_REFERENCE) and target is None):
            continue
        cells = {row.method: row.cells[key] for row in methods if key in row.cells}
        if len(cells) < 2:
            continue
        winner = separated_best(direction, target, cells)
        if winner is not None:
            best[key] = [winner]
    return best


def separated_best(direction: str, target: float | None, cells: dict[str, Cell]) -> str | None:
    """The method whose cell is best in `direction` (toward `target` for a "closest to" one) and whose
    95 % interval does not overlap any other's; None when there is no such method."""
    intervals = {method: badness_interval(direction, target, cell) for method, cell in cells.items()}
    if any(interval is None for interval in intervals.values()):
        return None
    ranked = sorted(intervals, key=lambda method: badness_interval(direction, target, cells[method], z=0)[0])
    first, others = ranked[0], ranked[1:]
    if all(intervals[first][1] < intervals[other][0] for other in others):
        return first
    return None


def badness_interval(direction: str, target: float | None, cell: Cell, z: float = Z_95) -> tuple[float, float] | None:
    """The cell's 95 % interval on a scale where lower is better (the mean itself, its negative, or
    its distance to the target); None when the cell's SE is not complete."""
    if cell.uncertainty is None or not cell.complete:
        return None
    half = z * cell.uncertainty
    if direction == LOWER:
        return cell.mean - half, cell.mean + half
    if direction == HIGHER:
        return -cell.mean - half, -cell.mean + half
    distance = abs(cell.mean - target)
    return max(0.0, distance - half), distance + half


def _target(bench: Benchmark, key: str, rows: dict[str, Row]) -> float | None:
    """What a "closest to" column is compared with: 0.5, or the before or reference row's mean."""
    direction = bench.direction(key)
    if direction == CLOSEST_TO_HALF:
        return 0.5
    role = {CLOSEST_TO_BEFORE: "before", CLOSEST_TO_REFERENCE: bench.reference_role}.get(direction)
    cell = rows[role].cells.get(key) if role in rows else None
    return cell.mean if cell else None


# ---- what each method optimised ------------------------------------------------------------------

def _budgets(results: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """Per unlearning method (ok runs with an `unlearning` record): each BUDGET_FIELDS text over its
    seeds, "n/a" where no run records it."""
    records = defaultdict(list)
    for result in results:
        if result["status"] == "ok" and isinstance(result.get("unlearning"), dict):
            records[result["method"]].append(result["unlearning"])
    return [(method, [_over_seeds([_budget_value(r, name) for r in records[method]]) for _, name in BUDGET_FIELDS])
            for method in sorted(records)]


def _budget_value(record: dict[str, Any], name: str | None) -> Any:
    if name is None:  # the retain term
        weight, loss = _record_field(record, "retain_weight"), _record_field(record, "retain_loss")
        if not isinstance(weight, (int, float)):
            return None
        return "none" if weight == 0 else (str(loss) if loss else "yes")
    return _record_field(record, name)


def _record_field(record: dict[str, Any], name: str) -> Any:
    """A field of an `unlearning` record, else of its config; None where neither has it."""
    if record.get(name) is not None:
        return record[name]
    config = record.get("config")
    return config.get(name) if isinstance(config, dict) else None


def _over_seeds(values: list[Any]) -> str:
    """One text for a field's values over seeds: the value, a min-max range of numbers, or the
    distinct texts; "n/a" when no run has it."""
    present = [value for value in values if value is not None]
    if not present:
        return "n/a"
    numbers = [v for v in present if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) == len(present) and min(numbers) != max(numbers):
        return f"{format_plain(min(numbers))}–{format_plain(max(numbers))}"
    return " / ".join(dict.fromkeys(format_plain(v) for v in present))


def format_plain(value: Any) -> str:
    """A recorded value as text: numbers in their shortest form, a dict as "key value, ..."."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) >= 1 else f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {format_plain(v)}" for k, v in value.items())
    return str(value)


# ---- averaging over single-unit selections -------------------------------------------------------

def _averaged_table(bench: Benchmark, model: str, units: list[Table]) -> Table:
    """The table of `units` (single-unit selections, e.g. one RWKU target each) averaged: a row per
    method run on every unit; a cell the mean over units of each unit's mean over seeds, its spread
    the standard deviation over units, its errors each unit's combined as independent
    (sqrt(sum of squares) / units)."""
    selections = [table.selection for table in units]
    rows_by_unit = [{row.method: row for row in table.rows} for table in units]
    everywhere = [method for method in dict.fromkeys(row.method for table in units for row in table.rows)
                  if all(method in by_method for by_method in rows_by_unit)]
    left_out = sorted({row.method for table in units for row in table.rows} - set(everywhere))
    keys = units[0].keys()
    rows = []
    for method in everywhere:
        unit_rows = [by_method[method] for by_method in rows_by_unit]
        cells = {key: _averaged_cell([row.cells[key] for row in unit_rows])
                 for key in keys if all(key in row.cells for row in unit_rows)}
        rows.append(Row(method, sorted({seed for row in unit_rows for seed in row.seeds}), cells))
    unit = bench.selection_unit
    notes = [f"Averaged over {unit}s {compact_list(selections)} ({bench.unit_note}; one table each below). "
             f"A cell is the mean over {unit}s of each {unit}'s mean over seeds; ± is the standard deviation "
             f"over {unit}s; q and the SE that bolding uses are each {unit}'s, combined as independent: "
             f"sqrt(sum of squares) / {unit}s."]
    if left_out:
        notes.append(f"Left out (not run on every {unit}): {', '.join(left_out)}.")
    results = [result for table in units for result in table.results]
    sources: dict[str, int] = defaultdict(int)
    for table in units:
        for source, count in table.error_sources.items():
            sources[source] += count
    return Table(bench.name, model, ",".join(selections), units[0].columns, rows, _best(bench, keys, rows), notes,
                 results, summary_columns=units[0].summary_columns, groups=units[0].groups,
                 budgets=_budgets(results), averaged_over=selections, error_sources=dict(sources))


def _averaged_cell(cells: list[Cell]) -> Cell:
    means = [cell.mean for cell in cells]

    def combined(errors: list[float | None]) -> float | None:
        if any(error is None for error in errors):
            return None
        return math.sqrt(sum(error ** 2 for error in errors)) / len(errors)

    return Cell(fmean(means), stdev(means) if len(means) >= 2 else None,
                combined([cell.question_se for cell in cells]), combined([cell.uncertainty for cell in cells]),
                complete=all(cell.complete for cell in cells))
