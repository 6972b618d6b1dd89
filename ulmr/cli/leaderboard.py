"""`ulmr-bench leaderboard`: regenerate the leaderboard from a results directory alone."""

from __future__ import annotations

import click


@click.command("leaderboard")
@click.option("--results-dir", type=click.Path(file_okay=False), default="results", show_default=True,
              help="Folder of results JSONs (read recursively), as `ulmr-bench run` writes it.")
@click.option("--output", type=click.Path(file_okay=False), default="leaderboard", show_default=True,
              help="Folder to write leaderboard.md and the trade-off plots (PNG) to.")
def leaderboard_command(results_dir, output):
    """Write the markdown tables and forget-vs-utility plots of the stored results; print their paths."""
    build_and_report(results_dir, output)


def build_and_report(results_dir, output, label: str = "") -> None:
    """Regenerate the leaderboard; say what was skipped and which files were written (one a line,
    after `label`)."""
    from leaderboard import build_leaderboard

    built = build_leaderboard(results_dir, output)
    for skipped in built.skipped:
        click.echo(f"skipped {skipped}", err=True)
    for path in built.files:
        click.echo(f"{label}{path}")
