"""`ulmr-bench run`: the main job, from a profile to stored results and the leaderboard."""

from __future__ import annotations

from pathlib import Path

import click

from ulmr.cli.leaderboard import build_and_report
from ulmr.errors import UlmrError
from ulmr.cli.options import data_dir_option, profile_overrides, profile_selection_options


@click.command("run")
@profile_selection_options
@data_dir_option
@click.option("--results-dir", default="results", show_default=True, type=click.Path(file_okay=False))
@click.option("--leaderboard-dir", default=None, type=click.Path(file_okay=False),
              help="Where the leaderboard markdown and plots are regenerated after the run (default: "
                   "RESULTS_DIR/leaderboard; the committed leaderboard/ is regenerated only on purpose).")
@click.option("--backend", type=click.Choice(["fast", "hf", "vllm"]), default="fast", show_default=True,
              help="Evaluation backend; vllm saves each unlearned model and scores it with lm-eval's vLLM model.")
def run_command(profile, methods, benchmarks, seeds, model, set_options, data_dir, results_dir, leaderboard_dir,
                backend):
    """Prepare models, unlearn with each method and seed, evaluate, store, regenerate the leaderboard."""
    from ulmr.profiles import load_profile
    from ulmr.run import check_plan, run
    from ulmr.storage import check_writable

    chosen = load_profile(profile, profile_overrides(methods, benchmarks, seeds, model, set_options))
    check_plan(chosen)  # then the output folders: all before any work
    check_writable(results_dir, what="--results-dir")
    leaderboard_dir = check_writable(leaderboard_dir or Path(results_dir) / "leaderboard", what="--leaderboard-dir")
    click.echo(f"profile {chosen.name}: {chosen.model}, benchmarks {','.join(chosen.benchmarks)}, "
               f"methods {','.join(chosen.methods)}, seeds {','.join(map(str, chosen.seeds))}")
    summary = run(chosen, results_dir, data_dir=data_dir, backend=backend, echo=click.echo)
    build_and_report(results_dir, leaderboard_dir, label="leaderboard: ")
    if summary.failure():
        raise UlmrError(summary.failure())
