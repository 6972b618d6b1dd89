"""`ulmr-bench eval`: score one model on TOFU or RWKU and write a results JSON."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ulmr.cli.options import (benchmark_options, data_dir_option, eval_options, model_option, selection_from,
                              template_from, template_options)
from ulmr.errors import UlmrError


@click.command("eval")
@model_option
@benchmark_options
@data_dir_option
@template_options
@eval_options
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="Results JSON to write (per-sample records go beside it as .samples.jsonl).")
@click.option("--reference", type=click.Path(dir_okay=False), default=None,
              help="Results JSON of the reference model on the same selection (TOFU: the retain model's; "
                   "adds forget quality).")
def eval_command(model, benchmark, output, reference, **kwargs):
    """Score MODEL on a benchmark with the lm-eval tasks and print its table."""
    from ulmr.evaluation import EvalSettings, add_reference_metrics, evaluate
    from ulmr.hardware import is_main_process
    from ulmr.report import format_result_table
    from ulmr.results import write_json_atomic

    selection = selection_from(benchmark, kwargs)
    if output:
        from ulmr.storage import check_writable

        check_writable(Path(output).parent, what="--output")
    reference_result = _read_result(reference) if reference else None
    settings = EvalSettings(benchmark=benchmark, selection=selection, template=template_from(kwargs), **kwargs)
    samples_path = Path(output).with_suffix(".samples.jsonl") if output else None
    result = evaluate(model, settings, samples_path=samples_path)
    if not is_main_process():  # under `accelerate launch` the first process writes and prints
        return
    if reference_result is not None:
        add_reference_metrics(result, reference_result)
    if output:
        write_json_atomic(output, result)
    click.echo(format_result_table(result))
    if output:
        click.echo(f"results: {output}")


def _read_result(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UlmrError(f"cannot read reference results {path}: {exc}; pass a results JSON "
                        "written by `ulmr-bench eval --output`") from exc
