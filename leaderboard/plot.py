"""The plots of a table. Same table, same PNG bytes.

plot: the trade-off scatter, forget efficacy (x, right = more forgotten) against utility (y), one
labelled point per row with the 95 % intervals of the bolding rule as error bars; reference rows
in black with their own markers, the before row's values as dashed lines, the retain row's dotted.

alpha_plot: for methods that average their weights with the original ones (ULMR, ga-avg, ...), the
validation scores at each alpha the choice tried (`unlearning.averaging.curve`, else `.table`), mean
over seeds, the chosen alphas marked, led by the trade-off the alphas trace (forget progress against
retain kept x (1 - refusals)) where the curve records both; only for tables with such a curve.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from statistics import fmean
from typing import Any

from leaderboard.tables import REFERENCE_METHODS, Table
from leaderboard.uncertainty import Z_95
from ulmr.benchmarks.registry import Axis, get_benchmark

FIGURE_SIZE, DPI = (6.4, 4.8), 100
# reference rows: marker and the line style of their values across the plot (None: no lines)
REFERENCE_STYLES = {"base": ("^", None), "before": ("s", "--"), "retain": ("D", ":")}
# the alpha plot shows at most this many panels; the criterion's measures first, in this order
MAX_ALPHA_PANELS = 4
ALPHA_PANEL_ORDER = ("score", "forget_progress", "retain_kept", "retain_refusal_rate")
# the criterion's two sides (ulmr/selection.py): with both, the first panel is their trade-off
TRADE_OFF_KEYS = {"forget_progress", "retain_kept"}


def plot_filename(table: Table) -> str | None:
    """The PNG's file name, or None when no row has both axes (nothing to plot)."""
    if _axes(table) is None:
        return None
    return table.slug + ".png"


def alpha_plot_filename(table: Table) -> str | None:
    """The alpha plot's file name, or None when no result records an alpha curve."""
    return table.slug + "-alpha.png" if _alpha_curves(table) else None


def plot(table: Table, path: str | Path) -> None:
    """Write the table's trade-off scatter to `path` (PNG); the table must have something to plot."""
    x_axis, y_axis = _axes(table)
    figure, ax = _figure()
    for row in table.rows:
        if x_axis.key not in row.cells or y_axis.key not in row.cells:
            continue
        x, y = row.cells[x_axis.key], row.cells[y_axis.key]
        x_mean, _ = _plotted(row, x_axis, y_axis)
        reference = REFERENCE_STYLES.get(row.method) if row.method in REFERENCE_METHODS else None
        marker, line = reference or ("o", None)
        color = "black" if reference else None
        ax.errorbar(x_mean, y.mean, xerr=_half_width(x.uncertainty), yerr=_half_width(y.uncertainty), fmt=marker,
                    capsize=3, color=color, markerfacecolor="white" if reference else None, zorder=3)
        ax.annotate(row.method, (x_mean, y.mean), textcoords="offset points", xytext=(5, 5), fontsize=9,
                    color=color or "0.15", fontweight="bold" if reference else "normal")
        if line:
            ax.axvline(x_mean, color="black", linestyle=line, linewidth=0.9, alpha=0.6, zorder=1)
            ax.axhline(y.mean, color="black", linestyle=line, linewidth=0.9, alpha=0.6, zorder=1)
    if x_axis.log:
        ax.set_xscale("log")
    ax.set_xlabel(x_axis.label)
    ax.set_ylabel(y_axis.label)
    ax.set_title(table.title, fontsize=10)
    ax.grid(True, alpha=0.3)
    _save(figure, path)


def pareto_front(table: Table) -> list[str]:
    """The unlearning methods on the trade-off plot's Pareto front, by their row means: no other
    method is at least as good on both axes and better on one (as plotted, right and up are better).
    Uncertainty is not considered: the markdown says so beside the list."""
    axes = _axes(table)
    if axes is None:
        return []
    points = {row.method: _plotted(row, *axes) for row in table.rows
              if row.method not in REFERENCE_METHODS and all(axis.key in row.cells for axis in axes)}

    def dominated(x: float, y: float) -> bool:
        return any(ox >= x and oy >= y and (ox, oy) != (x, y) for ox, oy in points.values())

    return [method for method, (x, y) in points.items() if not dominated(x, y)]


def _plotted(row, x_axis: Axis, y_axis: Axis) -> tuple[float, float]:
    """A row's point on the plot: (x, y) means, x as 1 - value where the axis is flipped."""
    x = row.cells[x_axis.key].mean
    return (1 - x if x_axis.flipped else x), row.cells[y_axis.key].mean


def alpha_plot(table: Table, path: str | Path) -> None:
    """Write the table's alpha curves to `path` (PNG); the table must have some. Where the curves
    hold the selection criterion's two sides (ulmr/selection.py), the first panel is the trade-off
    they trace: forget progress against retain kept x (1 - refusals), one point per alpha."""
    curves = _alpha_curves(table)
    trade_off, scores = alpha_panels({key for points, _ in curves.values() for point in points.values()
                                      for key in point})
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = len(scores) + trade_off
    columns = 1 if panels == 1 else 2
    rows = (panels + columns - 1) // columns
    figure = Figure(figsize=(FIGURE_SIZE[0], 2.4 * rows + 0.6), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    if trade_off:
        _trade_off_panel(axes[0], curves)
    for ax, score in zip(axes[trade_off:], scores):
        for method, (points, chosen) in curves.items():
            alphas = sorted(alpha for alpha, point in points.items() if score in point)
            if not alphas:
                continue
            values = [fmean(points[alpha][score]) for alpha in alphas]
            (line,) = ax.plot(alphas, values, marker=".", label=method)
            picked = [(alpha, fmean(points[alpha][score])) for alpha in chosen if score in points.get(alpha, {})]
            if picked:
                ax.plot(*zip(*picked), linestyle="none", marker="o", markersize=8, markerfacecolor="none",
                        color=line.get_color())
        ax.set_title(score, fontsize=9)
        ax.set_xlabel("alpha", fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=8)
    for ax in axes[panels:]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    figure.suptitle(f"{table.title}: validation scores over alpha (circles: chosen)", fontsize=9)
    _save(figure, path)


def alpha_panels(keys: set[str]) -> tuple[bool, list[str]]:
    """(whether the trade-off panel leads, the scores drawn over alpha after it) for curves that
    record `keys`: the criterion's measures first, at most MAX_ALPHA_PANELS panels in all."""
    trade_off = TRADE_OFF_KEYS <= keys
    preferred = [key for key in ALPHA_PANEL_ORDER if key in keys]
    return trade_off, (preferred + sorted(keys - set(preferred)))[:MAX_ALPHA_PANELS - trade_off]


def _trade_off_panel(ax, curves) -> None:
    """Forget progress (x) against retain kept x (1 - refusals) (y) over the alphas, mean over seeds;
    the smallest and largest alpha labelled, the chosen ones circled."""
    def point(values: dict[str, list[float]]) -> tuple[float, float]:
        refusals = fmean(values["retain_refusal_rate"]) if "retain_refusal_rate" in values else 0.0
        return fmean(values["forget_progress"]), fmean(values["retain_kept"]) * (1 - refusals)

    for method, (points, chosen) in curves.items():
        alphas = sorted(alpha for alpha, values in points.items() if TRADE_OFF_KEYS <= set(values))
        if not alphas:
            continue
        xy = [point(points[alpha]) for alpha in alphas]
        (line,) = ax.plot(*zip(*xy), marker=".", label=method)
        for alpha, (x, y) in ((alphas[0], xy[0]), (alphas[-1], xy[-1])):
            ax.annotate(f"{alpha:g}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7,
                        color=line.get_color())
        picked = [point(points[alpha]) for alpha in chosen if alpha in alphas]
        if picked:
            ax.plot(*zip(*picked), linestyle="none", marker="o", markersize=8, markerfacecolor="none",
                    color=line.get_color())
    ax.set_title("trade-off over alpha", fontsize=9)
    ax.set_xlabel("forget progress", fontsize=8)
    ax.set_ylabel("retain kept x (1 - refusals)", fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=8)


def _alpha_curves(table: Table) -> dict[str, tuple[dict[float, dict[str, list[float]]], list[float]]]:
    """method -> ({alpha: {score: [value per seed]}}, [chosen alpha per seed]), for the ok results of
    unlearning methods whose `unlearning.averaging` has a curve of at least two alphas."""
    curves: dict[str, tuple[dict[float, dict[str, list[float]]], list[float]]] = {}
    for result in table.results:
        if result["status"] != "ok" or result["method"] in REFERENCE_METHODS:
            continue
        averaging = (result.get("unlearning") or {}).get("averaging")
        if not isinstance(averaging, dict):
            continue
        points = averaging.get("curve") or averaging.get("table")
        if not isinstance(points, list) or len(points) < 2:
            continue
        by_alpha, chosen = curves.setdefault(result["method"], (defaultdict(lambda: defaultdict(list)), []))
        for point in points:
            if isinstance(point, dict) and _number(point.get("alpha")):
                for key, value in point.items():
                    if key != "alpha" and _number(value):
                        by_alpha[float(point["alpha"])][key].append(float(value))
        if _number(averaging.get("alpha")):
            chosen.append(float(averaging["alpha"]))
    return {method: (points, chosen) for method, (points, chosen) in sorted(curves.items()) if points}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _half_width(uncertainty: float | None) -> float | None:
    return None if uncertainty is None else Z_95 * uncertainty


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _save(figure, path: str | Path) -> None:
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
