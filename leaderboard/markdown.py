"""Leaderboard tables -> markdown. Everything is sorted and formatted the same way, and nothing
depends on the clock or on where the files lie, so the same results give the same bytes."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from leaderboard.loading import SkippedFile
from leaderboard.plot import alpha_plot_filename, pareto_front, plot_filename
from leaderboard.tables import (BOOTSTRAP, BUDGET_FIELDS, NO_ERRORS, REFERENCE_METHODS, STORED, Cell, Table,
                                better)
from leaderboard.uncertainty import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from ulmr.benchmarks.registry import (CLOSEST_TO_BEFORE, CLOSEST_TO_HALF, CLOSEST_TO_REFERENCE, HIGHER, LOWER,
                                      get_benchmark)

LEGEND = ("Cells: mean ± sample standard deviation over seeds (n − 1 denominator), then (q …): the standard "
          "error over questions, the mean over the row's seeds of each run's. q is a bootstrap over the docs a "
          f"run scored ({BOOTSTRAP_RESAMPLES} resamples with replacement, seed {BOOTSTRAP_SEED}, from the "
          "per-sample records stored beside each result), or, where those are not stored, the standard error "
          "lm-eval stored for a mean column; each table's notes say which. One seed: no ±; no q: unknown; n/a: "
          "no run produced the metric. **Bold**: the best unlearning method in a column, only where it is "
          "separated from every other one: its 95 % interval, mean ± 1.96 × SE with SE = √(spread² / seeds + "
          "q²), lies wholly on the better side of each other method's (for a \"closest to\" column, the "
          "interval of the distance). q is not divided by the seeds: every seed is scored on the same "
          "questions. Not bold: the best is within the others' uncertainty, or a compared row lacks a term of "
          "its SE (one seed, or no q): no separation is claimed without both. "
          f"The {', '.join(REFERENCE_METHODS)} rows are references, never bold; base is the untouched model on "
          "the forget probes only. Each table's notes say which way its columns are better, and why.")
DIRECTION_LEADS = {HIGHER: "Higher is better", LOWER: "Lower is better",
                   CLOSEST_TO_BEFORE: "Closest to the before row is better",
                   CLOSEST_TO_HALF: "Closest to 0.5 is better",
                   CLOSEST_TO_REFERENCE: "Closest to the {reference} row is better", None: "Not ranked"}


def render_markdown(tables: list[Table], skipped: list[SkippedFile]) -> str:
    """The whole leaderboard: a legend, then per table its summary, its full columns in groups, what
    each method optimised, failed runs, plots and notes, then the files that were skipped."""
    lines = ["# ulmr-bench leaderboard", "", LEGEND, ""]
    for table in tables:
        lines += _section(table)
    if skipped:
        lines += ["## Skipped files", "", *(f"- `{file.path}`: {file.reason}" for file in skipped), ""]
    return "\n".join(lines)


def format_number(value: float) -> str:
    """Four significant digits, trailing zeros kept, so that columns read alike."""
    return f"{value:#.4g}"


def format_error(value: float) -> str:
    """An uncertainty: two significant digits."""
    return f"{value:#.2g}"


def format_cell(cell: Cell | None) -> str:
    if cell is None:
        return "n/a"
    text = format_number(cell.mean)
    if cell.spread is not None:
        text += f" ± {format_error(cell.spread)}"
    if cell.question_se is not None:
        text += f" (q {format_error(cell.question_se)})"
    return text


def _section(table: Table) -> list[str]:
    title = table.title
    lines = [f"## {title}", ""]
    if table.rows:
        if table.summary_columns:
            lines += ["**Summary**", "", *_table_lines(table, table.summary_columns), ""]
        lines += ["**All columns**" if len(table.groups) == 1 else "**All columns**, by group:", ""]
        for group, columns in table.groups:
            if len(table.groups) > 1:
                lines += [f"*{group}*", ""]
            lines += _table_lines(table, columns) + [""]
    else:
        lines += ["No successful runs.", ""]
    if table.budgets:
        lines += ["**What each method optimised** (its results' `unlearning` records: the retain loss when "
                  "its weight is above 0, the optimiser steps, the examples drawn and the labelled tokens trained "
                  "on, per part; a range is over seeds; n/a: not recorded)", ""]
        headers = ["Method"] + [header for header, _ in BUDGET_FIELDS]
        lines += ["| " + " | ".join(headers) + " |", "| :--- | :--- " + "| ---: " * (len(headers) - 2) + "|"]
        lines += ["| " + " | ".join([method, *texts]) + " |" for method, texts in table.budgets]
        lines.append("")
    if table.failed:
        lines += ["Failed runs:", ""]
        lines += [f"- {r['method']} seed {r['seed']}: {_first_line(r.get('error'))}" for r in table.failed]
        lines.append("")
    plot_name = plot_filename(table)
    if plot_name:
        lines += [f"![{title}: forget efficacy vs utility]({plot_name})", ""]
        front = pareto_front(table)
        if front:
            lines += [f"On the plot's Pareto front (by row means, uncertainty not considered: no other method is "
                      f"at least as good on both axes and better on one): {', '.join(front)}.", ""]
    alpha_name = alpha_plot_filename(table)
    if alpha_name:
        lines += [f"![{title}: validation scores over the averaging weight alpha]({alpha_name})", ""]
    lines += ["Notes:", "", f"- {_directions_note(table)}",
              *(f"- {note}" for note in get_benchmark(table.benchmark).column_notes),
              f"- {_errors_note(table)}", *(f"- {note}" for note in table.notes)]
    if plot_name:
        lines.append("- Plot: error bars are the 95 % intervals of the bolding rule (± 1.96 × SE); reference "
                     "rows are drawn in black with their own markers, the before row's values as dashed "
                     "lines and the retain row's as dotted ones.")
    if alpha_name:
        lines.append("- Alpha plot: each averaged method's validation scores at every alpha its choice tried "
                     "(`unlearning.averaging`: `curve`, else `table`), the mean over seeds, and the alphas "
                     "chosen marked; where the curve records the selection criterion's two sides, the first "
                     "panel is the trade-off they trace (forget progress against retain kept × (1 − "
                     "refusals), from the smallest alpha to the largest).")
    lines += ["- Provenance:", *(f"  - {line}" for line in _provenance_lines(table.results)), ""]
    return lines


def _table_lines(table: Table, columns: list[tuple[str, str]]) -> list[str]:
    seeds_header = f"{get_benchmark(table.benchmark).selection_unit}s × seeds" if table.averaged_over else "Seeds"
    headers = ["Method", seeds_header] + [header for _, header in columns]
    lines = ["| " + " | ".join(headers) + " |", "| :--- " + "| ---: " * (len(headers) - 1) + "|"]
    for row in table.rows:
        runs = f"{len(table.averaged_over)} × {len(row.seeds)}" if table.averaged_over else str(len(row.seeds))
        cells = [row.method, runs]
        for key, _ in columns:
            text = format_cell(row.cells.get(key))
            cells.append(f"**{text}**" if row.method in table.best.get(key, []) else text)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _directions_note(table: Table) -> str:
    """Which way each column is better, from each benchmark plug-in's `directions`."""
    bench = get_benchmark(table.benchmark)
    headers_by_direction = defaultdict(list)
    headers = dict(table.columns) | dict(table.summary_columns)
    for key in table.keys():
        headers_by_direction[better(table.benchmark, key)].append(headers[key])
    return " ".join(f"{lead.format(reference=bench.reference_role)}: {', '.join(headers_by_direction[direction])}."
                    for direction, lead in DIRECTION_LEADS.items() if headers_by_direction[direction])


def _errors_note(table: Table) -> str:
    """Where the table's q values came from, and which columns have none."""
    sources = table.error_sources
    parts = []
    if sources.get(BOOTSTRAP):
        parts.append(f"{sources[BOOTSTRAP]} run(s) by the bootstrap over their stored samples")
    if sources.get(STORED):
        parts.append(f"{sources[STORED]} run(s) from lm-eval's stored standard error of the mean (their "
                     "samples are not beside them; for a mean, the bootstrap's SE up to a factor √(n/(n−1)))")
    if sources.get(NO_ERRORS):
        parts.append(f"{sources[NO_ERRORS]} run(s) with neither")
    text = "Standard errors over questions (q): " + ("; ".join(parts) if parts else "no runs") + "."
    headers = dict(table.columns) | dict(table.summary_columns)
    methods = [row for row in table.rows if row.method not in REFERENCE_METHODS]
    without = [headers[key] for key in table.keys()
               if any(key in row.cells for row in methods)
               and all(row.cells[key].question_se is None for row in methods if key in row.cells)]
    if without:
        text += (f" No q for {', '.join(without)}: no per-doc values or stored errors give one, so these "
                 "columns have no bold.")
    return text


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
    training_data = _training_data(results)
    if training_data:
        lines.append("what the rewriting methods trained on (`unlearning.acceptance.summary`, with the config's "
                     "`rewriter`): " + training_data)
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


def _training_data(results: list[dict[str, Any]]) -> str:
    """Per method that records it (ULMR and its ablations), its rewrite and negative acceptance
    summary and rewriter, each distinct one once, with the seeds that had it."""
    seeds: dict[tuple[str, str], list[int]] = defaultdict(list)
    for result in results:
        summary = _get(result, "unlearning", "acceptance", "summary")
        if isinstance(summary, str) and summary:
            rewriter = _get(result, "unlearning", "config", "rewriter")
            seeds[(result["method"], f"{summary} (rewriter: {rewriter or 'not recorded'})")].append(result["seed"])
    return "; ".join(f"{method} seed {', '.join(map(str, sorted(runs)))}: {text}"
                     for (method, text), runs in sorted(seeds.items(), key=lambda item: (item[0][0], min(item[1]))))


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
