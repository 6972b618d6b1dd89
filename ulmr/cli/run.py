"""`ulmr-bench run`: the main job, from a profile to stored results and the leaderboard."""

from __future__ import annotations

import click

from ulmr.cli.options import compose, data_dir_option


run_selection_options = compose(
    click.option("--profile", default="quick", show_default=True,
                 help="smoke, quick, full, or a profile YAML file (ulmr/profiles/)."),
    click.option("--methods", default=None, help="Comma list of methods, or 'all' (default: the profile's)."),
    click.option("--benchmarks", default=None, help="Comma list: tofu, rwku (default: the profile's)."),
    click.option("--seeds", default=None, help="Comma list of seeds (default: the profile's)."),
    click.option("--model", default=None, help="Base model (default: the profile's)."),
    click.option("--set", "set_options", multiple=True, metavar="KEY=VALUE",
                 help="Override a profile field by dotted key, e.g. --set tofu.eval.limit=20."),
)


@click.command("run")
@run_selection_options
@data_dir_option
@click.option("--results-dir", default="results", show_default=True, type=click.Path(file_okay=False))
@click.option("--leaderboard-dir", default="leaderboard", show_default=True, type=click.Path(file_okay=False),
              help="Where the leaderboard markdown and plot are regenerated after the run.")
@click.option("--backend", type=click.Choice(["fast", "hf", "vllm"]), default="fast", show_default=True,
              help="Evaluation backend; vllm saves each unlearned model and scores it with lm-eval's vLLM model.")
def run_command(profile, methods, benchmarks, seeds, model, set_options, data_dir, results_dir, leaderboard_dir,
                backend):
    """Prepare models, unlearn with each method and seed, evaluate, store, regenerate the leaderboard."""
    from ulmr.profiles import load_profile
    from ulmr.run import run

    chosen = load_profile(profile, profile_overrides(methods, benchmarks, seeds, model, set_options))
    click.echo(f"profile {chosen.name}: {chosen.model}, benchmarks {','.join(chosen.benchmarks)}, "
               f"methods {','.join(chosen.methods)}, seeds {','.join(map(str, chosen.seeds))}")
    run(chosen, results_dir, data_dir=data_dir, backend=backend, leaderboard_dir=leaderboard_dir,
        echo=click.echo)


def profile_overrides(methods, benchmarks, seeds, model, set_options) -> dict:
    """The profile overrides the selection options ask for (--set first, the named options win)."""
    from ulmr.unlearning.config import parse_set_options
    from ulmr.unlearning.registry import available_methods

    overrides = parse_set_options(set_options)
    if methods:
        overrides["methods"] = list(available_methods()) if methods == "all" else _split(methods)
    if benchmarks:
        overrides["benchmarks"] = _split(benchmarks)
    if seeds:
        overrides["seeds"] = [_seed(s) for s in _split(seeds)]
    if model:
        overrides["model"] = model
    return overrides


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _seed(text: str) -> int:
    from ulmr.errors import UlmrError

    if not text.lstrip("-").isdigit():
        raise UlmrError(f"seed {text!r} is not an integer: pass e.g. --seeds 0,1,2")
    return int(text)
