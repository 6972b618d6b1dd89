"""Small informational subcommands."""

from __future__ import annotations

import click


@click.command("tasks-path")
def tasks_path_command():
    """Print the lm-eval task folder, for `lm_eval --include_path`."""
    from lm_eval_tasks import TASKS_PATH

    click.echo(TASKS_PATH)


@click.command("methods")
@click.option("--verbose", "-v", is_flag=True, help="Also print every config field: type, default, range, help.")
@click.argument("names", nargs=-1)
def methods_command(verbose, names):
    """List the registered unlearning methods (built-in and from installed plugins), or only NAMES."""
    from ulmr.unlearning.config import describe_fields
    from ulmr.unlearning.registry import available_methods, get_method

    methods = {name: get_method(name) for name in names} if names else available_methods()
    for name, cls in methods.items():
        doc = (cls.__doc__ or "").strip().splitlines()
        click.echo(f"{name:<16} {doc[0] if doc else ''}")
        if not verbose:
            continue
        for f in describe_fields(cls.config_class):
            allowed = f" in {f['range']}" if f["range"] else ""
            click.echo(f"    {f['name']} ({f['type']}, default {f['default']!r}{allowed}): {f['help'] or '-'}")
        click.echo("")


@click.command("benchmarks")
def benchmarks_command():
    """List the registered benchmarks (built-in and from installed plugins) and their selection option."""
    from ulmr.benchmarks.registry import available_benchmarks

    for name, bench in available_benchmarks().items():
        doc = (type(bench).__doc__ or type(bench).__module__).strip().splitlines()[0]
        click.echo(f"{name:<12} --{bench.selection_option.replace('_', '-'):<10} default {bench.default_selection:<10} {doc}")
