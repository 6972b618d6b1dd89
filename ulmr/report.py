"""Plain-text tables of results for the terminal."""

from __future__ import annotations

from typing import Any

from ulmr.benchmarks import get_benchmark


def format_result_table(result: dict[str, Any]) -> str:
    """The benchmark's metrics in its own column order, one metric per line."""
    bench = get_benchmark(result["benchmark"])
    metrics = result["metrics"]
    rows = [(header, metrics[key]) for key, header in bench.columns if key in metrics]
    width = max(len(h) for h, _ in rows)
    title = f"{result['benchmark']} {result['selection']} | {result['model']}"
    if result.get("eval", {}).get("limit"):
        title += f" | first {result['eval']['limit']} docs per task"
    lines = [title, "-" * len(title)]
    lines += [f"{header:<{width}}  {value:.4f}" for header, value in rows]
    return "\n".join(lines)
