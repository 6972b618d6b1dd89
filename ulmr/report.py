"""Plain-text tables of results for the terminal."""

from __future__ import annotations

from typing import Any

from ulmr.benchmarks.registry import get_benchmark


def format_result_table(result: dict[str, Any]) -> str:
    """The benchmark's metrics in its own column order: one metric per line, or, for a benchmark
    with column groups (RWKU), one line of headers and one of values per group."""
    bench = get_benchmark(result["benchmark"])
    metrics = result["metrics"]
    rows = [(header, metrics[key]) for key, header in bench.columns if key in metrics]
    title = f"{result['benchmark']} {result['selection']} | {result['model']}"
    scored = result.get("eval", {})
    if scored.get("targets"):
        title += " | targets " + ", ".join(f"{t['index']} {t['name']}" for t in scored["targets"])
    if scored.get("limit"):
        title += f" | first {scored['limit']} docs per task"
    lines = [title, "-" * len(title)]
    if bench.column_groups:
        lines += _grouped_lines(rows, bench.column_groups)
    else:
        width = max(len(h) for h, _ in rows)
        lines += [f"{header:<{width}}  {_number(value)}" for header, value in rows]
    return "\n".join(lines)


def _grouped_lines(rows: list[tuple[str, Any]], groups: tuple[str, ...]) -> list[str]:
    """Per group: its name and column headers, then its values under them."""
    label_width = max(len(g) for g in groups)
    lines = []
    for group in groups:
        cells = [(header[len(group):].strip(), _number(value)) for header, value in rows
                 if header.startswith(group + " ")]
        if not cells:
            continue
        widths = [max(len(h), len(v)) for h, v in cells]
        lines.append(" " * label_width + "  " + "  ".join(h.ljust(w) for (h, _), w in zip(cells, widths)))
        lines.append(group.ljust(label_width) + "  " + "  ".join(v.ljust(w) for (_, v), w in zip(cells, widths)))
    return lines


def _number(value: float | None) -> str:
    """4 decimals; small nonzero values (zlib scores) in scientific notation; None as n/a."""
    if value is None:
        return "n/a"
    return f"{value:.4f}" if value == 0 or abs(value) >= 0.01 else f"{value:.3e}"
