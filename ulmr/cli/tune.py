"""`ulmr-bench tune`: the same hyperparameter grid for every method, chosen on validation data only."""

from __future__ import annotations

import click

from ulmr.cli.options import data_dir_option, profile_overrides, profile_selection_options


@click.command("tune")
@profile_selection_options
@data_dir_option
@click.option("--results-dir", default="results", show_default=True, type=click.Path(file_okay=False),
              help="Grid results go under <results-dir>/tune/; the prepared models' reference rows beside "
                   "those of `ulmr-bench run` with the same folder.")
@click.option("--stored-only", is_flag=True,
              help="Train no grid point: print the table of the points stored so far (a grid in progress).")
def tune_command(profile, methods, benchmarks, seeds, model, set_options, data_dir, results_dir, stored_only):
    """Train every method on each point of the profile's tune_grid, score held-out validation data,
    and print the chosen setting per method (the protocol: ulmr/tune.py, README "Tuning")."""
    import yaml

    from ulmr.profiles import load_profile
    from ulmr.run import check_plan
    from ulmr.storage import check_writable
    from ulmr.tune import tune

    chosen = load_profile(profile, profile_overrides(methods, benchmarks, seeds, model, set_options))
    check_plan(chosen)
    check_writable(results_dir, what="--results-dir")
    summaries = tune(chosen, results_dir, data_dir=data_dir, echo=click.echo, stored_only=stored_only)
    if stored_only:
        return
    for benchmark, summary in summaries.items():
        click.echo(f"chosen on {benchmark} (put under {benchmark}.method_overrides):\n"
                   + yaml.safe_dump(summary["chosen"], default_flow_style=None, sort_keys=False))
