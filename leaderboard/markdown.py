"""Leaderboard tables -> markdown. Everything is sorted and formatted the same way, and nothing
depends on the clock or on where the files lie, so the same results give the same bytes."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from leaderboard.loading import SkippedFile
from leaderboard.plot import plot_filename
from leaderboard.tables import REFERENCE_METHODS, Cell, Table, better
from ulmr.benchmarks.registry import CLOSEST_TO_BEFORE, HIGHER, LOWER

LEGEND = ("Cells: mean ± sample standard deviation over seeds (n − 1 denominator); a single value where "
          "a row has one seed; n/a where no run produced the metric. **Bold**: the best unlearning method "
          f"per column (the {', '.join(REFERENCE_METHODS)} rows are references, never bold; base is the "
          "untouched model on the forget probes only); each table's notes say which way its columns "
          "are better.")
DIRECTION_LEADS = {HIGHER: "Higher is better", LOWER: "Lower is better",
                   CLOSEST_TO_BEFORE: "Closest to the before row is better", None: "Not ranked"}


def render_markdown(tables: list[Table], skipped: list[SkippedFile]) -> str:
    """The whole leaderboard: a legend, then per table its rows, failed runs, plot and notes, then
    the files that were skipped."""
    lines = ["# ulmr-bench leaderboard", "", LEGEND, ""]
    for table in tables:
        lines += _section(table)
    if skipped:
        lines += ["## Skipped files", "", *(f"- `{file.path}`: {file.reason}" for file in skipped), ""]
    return "\n".join(lines)


def format_number(value: float) -> str:
    """Four significant digits, trailing zeros kept, so that columns read alike."""
    return f"{value:#.4g}"


def format_cell(cell: Cell | None) -> str:
    if cell is None:
        return "n/a"
    text = format_number(cell.mean)
    return text if cell.spread is None else f"{text} ± {format_number(cell.spread)}"


def _section(table: Table) -> list[str]:
    title = f"{table.benchmark.upper()} {table.selection} | {table.model}"
    lines = [f"## {title}", ""]
    if table.rows:
        lines += _table_lines(table) + [""]
    else:
        lines += ["No successful runs.", ""]
    if table.failed:
        lines += ["Failed runs:", ""]
        lines += [f"- {r['method']} seed {r['seed']}: {_first_line(r.get('error'))}" for r in table.failed]
        lines.append("")
    plot_name = plot_filename(table)
    if plot_name:
        lines += [f"![{title}: forget efficacy vs utility]({plot_name})", ""]
    lines += ["Notes:", "", f"- {_directions_note(table)}", *(f"- {note}" for note in table.notes)]
    lines += ["- Provenance:", *(f"  - {line}" for line in _provenance_lines(table.results)), ""]
    return lines


def _table_lines(table: Table) -> list[str]:
    headers = ["Method", "Seeds"] + [header for _, header in table.columns]
    lines = ["| " + " | ".join(headers) + " |", "| :--- " + "| ---: " * (len(headers) - 1) + "|"]
    for row in table.rows:
        cells = [row.method, str(len(row.seeds))]
        for key, _ in table.columns:
            text = format_cell(row.cells.get(key))
            cells.append(f"**{text}**" if row.method in table.best.get(key, []) else text)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _directions_note(table: Table) -> str:
    """Which way each column is better, from each benchmark plug-in's `directions`."""
    headers_by_direction = defaultdict(list)
    for key, header in table.columns:
        headers_by_direction[better(table.benchmark, key)].append(header)
    return " ".join(f"{lead}: {', '.join(headers_by_direction[direction])}."
                    for direction, lead in DIRECTION_LEADS.items() if headers_by_direction[direction])


def _slice(eval_record: dict[str, Any]) -> str:
    """Which docs were scored: every doc, or the first N of every task, with per-task exceptions."""
    limit = eval_record.get("limit")
    text = "full task sets" if limit is None else f"first {limit} docs per task (`eval.limit`)"
    exceptions = eval_record.get("limits") or {}
    if exceptions:
        text += " except " + ", ".join(f"{task}: {'all' if n is None else f'first {n}'}"
                                       for task, n in sorted(exceptions.items())) + " (`eval.limits`)"
    return text


def _provenance_lines(results: list[dict[str, Any]]) -> list[str]:
    """What produced the table's results, each distinct value once."""
    slices = sorted({_slice(r["eval"]) for r in results if isinstance(r.get("eval"), dict)})
    lines = [f"runs: {len(results)}, seeds {', '.join(map(str, sorted({r['seed'] for r in results})))}",
             f"evaluated on: {', '.join(slices) or 'not recorded'}"]
    injected = _distinct(results, "preparation", "injected")
    if injected:
        lines.append(f"knowledge injected before unlearning (`preparation.injected`): {', '.join(injected)}")
    trainings = _preparation_trainings(results)
    if trainings:
        lines.append("prepared models (`preparation.label`: final training loss × runs; two losses under "
                     "one label are two trainings of the same recipe): " + trainings)
    dtypes = Counter(str(dtype) for dtype in (_get(r, "unlearning", "compute_dtype") for r in results) if dtype)
    if dtypes:
        lines.append("unlearning compute dtype (`unlearning.compute_dtype`; `auto` is bf16 on hardware with "
                     "bf16 units, else fp32): " + _tally(dtypes))
    commands = _distinct(results, "provenance", "command")
    if commands:
        lines.append("commands: " + ", ".join(f"`{command}`" for command in commands))
    versions = defaultdict(set)
    for result in results:
        recorded = _get(result, "provenance", "versions")
        for package, version in recorded.items() if isinstance(recorded, dict) else []:
            if version:
                versions[package].add(str(version))
    labelled = [("git revisions", _distinct(results, "provenance", "git_revision")),
                ("versions", [f"{package} {' / '.join(sorted(versions[package]))}" for package in sorted(versions)]),
                ("python", _distinct(results, "provenance", "python")),
                ("machines", _distinct(results, "provenance", "machine")),
                ("dates", _date_range(_distinct(results, "provenance", "created")))]
    lines += [f"{label}: {', '.join(values)}" for label, values in labelled if values]
    return lines


def _preparation_trainings(results: list[dict[str, Any]]) -> str:
    """Which trained model each run started from: a cache rebuilt on another machine trains again,
    in another dtype or floating-point order: a different model under the same recipe."""
    runs: dict[str, Counter] = defaultdict(Counter)
    for result in results:
        label, loss = _get(result, "preparation", "label"), _get(result, "preparation", "training", "final_loss")
        if label is not None and isinstance(loss, (int, float)):
            runs[str(label)][f"{loss:.6g}"] += 1
    return "; ".join(f"{label} {_tally(runs[label])}" for label in sorted(runs))


def _tally(counts: Counter) -> str:
    """Counted values as "value × count", sorted by value."""
    return ", ".join(f"{value} × {n}" for value, n in sorted(counts.items()))


def _date_range(timestamps: list[str]) -> list[str]:
    """Sorted ISO timestamps -> ["first day to last day"] (one day alone; nothing for none)."""
    days = sorted({timestamp[:10] for timestamp in timestamps})
    if len(days) <= 1:
        return days
    return [f"{days[0]} to {days[-1]}"]


def _get(result: dict[str, Any], *path: str) -> Any:
    """The value at a nested path of a result, or None where any step is missing."""
    value: Any = result
    for field in path:
        value = value.get(field) if isinstance(value, dict) else None
    return value


def _distinct(results: list[dict[str, Any]], *path: str) -> list[str]:
    """The distinct scalar values at a nested path of the results, as sorted text."""
    values = (_get(result, *path) for result in results)
    return sorted({str(value) for value in values if value is not None and not isinstance(value, (dict, list))})


def _first_line(error: Any) -> str:
    lines = str(error or "").strip().splitlines()
    return lines[0] if lines else "no error message recorded"
