"""Small informational subcommands."""

from __future__ import annotations

import click


@click.command("tasks-path")
def tasks_path_command():
    """Print the lm-eval task folder, for `lm_eval --include_path`."""
    from lm_eval_tasks import TASKS_PATH

    click.echo(TASKS_PATH)


@click.command("methods")
def methods_command():
    """List the registered unlearning methods (built-in and from installed plugins)."""
    from ulmr.unlearning.registry import available_methods

    for name, cls in available_methods().items():
        doc = (cls.__doc__ or "").strip().splitlines()
        click.echo(f"{name:<16} {doc[0] if doc else ''}")


@click.command("benchmarks")
def benchmarks_command():
    """List the registered benchmarks (built-in and from installed plugins) and their selection option."""
    from ulmr.benchmarks.registry import available_benchmarks

    for name, bench in available_benchmarks().items():
        doc = (type(bench).__doc__ or type(bench).__module__).strip().splitlines()[0]
        click.echo(f"{name:<12} --{bench.selection_option.replace('_', '-'):<10} default {bench.default_selection:<10} {doc}")
