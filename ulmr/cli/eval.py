"""`ulmr-bench eval`: score one model on TOFU or RWKU and write a results JSON."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ulmr.cli.options import data_dir_option, eval_options, model_option, template_from, template_options
from ulmr.errors import UlmrError


@click.command("eval")
@model_option
@click.option("--benchmark", type=click.Choice(["tofu", "rwku"]), default="tofu", show_default=True)
@click.option("--split", default=None, help="TOFU forget split: forget01, forget05 or forget10 (default forget01).")
@click.option("--targets", default=None, help="RWKU targets: index (1), range (1-10), list (1,5) or name.")
@data_dir_option
@template_options
@eval_options
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="Results JSON to write (per-sample records go beside it as .samples.jsonl).")
@click.option("--reference", type=click.Path(dir_okay=False), default=None,
              help="Results JSON of the retain model on the same split: adds TOFU forget quality.")
def eval_command(model, benchmark, split, targets, output, reference, **kwargs):
    """Score MODEL on a benchmark with the lm-eval tasks and print its table."""
    from ulmr.evaluation import EvalSettings, add_forget_quality, evaluate
    from ulmr.report import format_result_table
    from ulmr.results import write_json_atomic

    selection = split if benchmark == "tofu" else targets
    if benchmark == "tofu" and targets or benchmark == "rwku" and split:
        raise UlmrError("--split is for TOFU and --targets for RWKU: pass the one that matches --benchmark")
    reference_result = _read_result(reference) if reference else None
    settings = EvalSettings(benchmark=benchmark, selection=selection, template=template_from(kwargs), **kwargs)
    samples_path = Path(output).with_suffix(".samples.jsonl") if output else None
    result = evaluate(model, settings, samples_path=samples_path)
    if reference_result is not None:
        add_forget_quality(result, reference_result)
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
