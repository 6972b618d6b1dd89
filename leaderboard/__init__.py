"""The leaderboard: stored results -> markdown tables and forget-vs-utility plots.

    load_results(results_dir)         the result JSONs, and the files skipped      (loading.py)
    aggregate(results)                one Table per (benchmark, model, selection):  (tables.py)
                                      forget quality, mean ± spread (q: SE over questions,
                                      uncertainty.py), best per column where separated,
                                      what each method optimised; averages over single-unit
                                      selections (RWKU targets)
    render_markdown(tables, skipped)  the text of leaderboard.md                    (markdown.py)
    plot(table, path)                 one table's trade-off scatter (PNG)           (plot.py)
    alpha_plot(table, path)           its averaging methods' alpha curves (PNG)     (plot.py)
    build_leaderboard(results_dir, output_dir)   all of the above, written to output_dir
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from leaderboard.loading import SkippedFile, load_results
from leaderboard.markdown import render_markdown
from leaderboard.plot import alpha_plot, alpha_plot_filename, plot, plot_filename
from leaderboard.tables import Table, aggregate
from ulmr.errors import UlmrError
from ulmr.storage import check_writable

__all__ = ["BuiltLeaderboard", "SkippedFile", "Table", "aggregate", "build_leaderboard", "load_results", "plot",
           "render_markdown"]

MARKDOWN_NAME = "leaderboard.md"


@dataclass(frozen=True)
class BuiltLeaderboard:
    files: list[Path]  # the markdown, then the plots
    skipped: list[SkippedFile]  # result-directory files that were not results


def build_leaderboard(results_dir: str | Path, output_dir: str | Path) -> BuiltLeaderboard:
    """Read every result under `results_dir`; write leaderboard.md and one PNG per table to `output_dir`."""
    results, skipped = load_results(results_dir)
    if not results:
        skipped_note = f" ({len(skipped)} JSON file(s) skipped as not results)" if skipped else ""
        raise UlmrError(f"no results in {results_dir}{skipped_note}: run `ulmr-bench run` first")
    tables = aggregate(results)
    output_dir = Path(output_dir)
    check_writable(output_dir, what="the leaderboard folder")  # before any file of it is written
    markdown_path = output_dir / MARKDOWN_NAME
    markdown_path.write_text(render_markdown(tables, skipped), encoding="utf-8")
    files = [markdown_path]
    for table in tables:
        for name, draw in ((plot_filename(table), plot), (alpha_plot_filename(table), alpha_plot)):
            if name:
                draw(table, output_dir / name)
                files.append(output_dir / name)
    return BuiltLeaderboard(files, skipped)
