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
