"""The trade-off plot of a table: forget efficacy (x, right = more forgotten) against utility (y),
one labelled point per row, error bars for the spread over seeds. Same table, same PNG bytes."""

from __future__ import annotations

import re
from pathlib import Path

from leaderboard.tables import Table
from ulmr.benchmarks.registry import Axis, get_benchmark


FIGURE_SIZE, DPI = (6.4, 4.8), 100


def plot_filename(table: Table) -> str | None:
    """The PNG's file name, or None when no row has both axes (nothing to plot)."""
    if _axes(table) is None:
        return None
    slug = "-".join((table.benchmark, table.selection, table.model))
    return re.sub(r"[^A-Za-z0-9._-]+", "_", slug) + ".png"


def plot(table: Table, path: str | Path) -> None:
    """Write the table's trade-off scatter to `path` (PNG); the table must have something to plot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x_axis, y_axis = _axes(table)
    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    for row in table.rows:
        if x_axis.key not in row.cells or y_axis.key not in row.cells:
            continue
        x, y = row.cells[x_axis.key], row.cells[y_axis.key]
        x_mean = 1 - x.mean if x_axis.flipped else x.mean
        ax.errorbar(x_mean, y.mean, xerr=x.spread, yerr=y.spread, fmt="o", capsize=3)
        ax.annotate(row.method, (x_mean, y.mean), textcoords="offset points", xytext=(5, 5), fontsize=9)
    if x_axis.log:
        ax.set_xscale("log")
    ax.set_xlabel(x_axis.label)
    ax.set_ylabel(y_axis.label)
    ax.set_title(f"{table.benchmark.upper()} {table.selection} | {table.model}", fontsize=10)
    ax.grid(True, alpha=0.3)
    figure.tight_layout()
    # no Software entry: the PNG's bytes then depend on the table alone
    figure.savefig(path, format="png", metadata={"Software": None})


def _axes(table: Table) -> tuple[Axis, Axis] | None:
    """The (x, y) axes of the table's benchmark (its plug-in's trade_off_axes) that some row has both of."""
    x_choices, y_axis = get_benchmark(table.benchmark).trade_off_axes or ((), None)
    for x_axis in x_choices:
        if any(x_axis.key in row.cells and y_axis.key in row.cells for row in table.rows):
            return x_axis, y_axis
    return None
