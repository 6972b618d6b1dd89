"""`ulmr-bench unlearn`: run one method on one benchmark's forget set and save the unlearned model."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ulmr.cli.options import benchmark_options, data_dir_option, model_option, selection_from, template_from, template_options

UNLEARN_SCHEMA = "ulmr-bench/unlearn/v1"


@click.command("unlearn")
@click.option("--method", required=True, help="Registered method name (list them with `ulmr-bench methods`).")
@model_option
@benchmark_options
@data_dir_option
@click.option("--output", required=True, type=click.Path(file_okay=False),
              help="Folder for the unlearned checkpoint (safetensors), its unlearn.json record and the "
                   "method's artifacts.json, if any.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML or JSON file of method config values (see the method's config class).")
@click.option("--set", "set_options", multiple=True, metavar="KEY=VALUE",
              help="Override one config value, e.g. --set lr=2e-5 --set lora=true (after --config).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="Train on this device (default: cuda when available; under `accelerate launch`, one per process).")
@template_options
def unlearn_command(method, model, benchmark, data_dir, output, config_file, set_options, device, **kwargs):
    """Unlearn a benchmark's forget set from MODEL with METHOD; save the result as a checkpoint."""
    import torch
    from accelerate import Accelerator

    from ulmr.benchmarks.registry import get_benchmark
    from ulmr.models import load_model, save_checkpoint
    from ulmr.results import provenance, write_json_atomic
    from ulmr.storage import check_writable
    from ulmr.unlearning.config import build_config, config_to_dict, load_config_file, parse_set_options
    from ulmr.unlearning.registry import get_method

    check_writable(Path(output).parent, what="--output")
    bench = get_benchmark(benchmark)
    selection = selection_from(benchmark, kwargs) or bench.default_selection
    method_class = get_method(method)
    overrides = {**(load_config_file(config_file) if config_file else {}), **parse_set_options(set_options)}
    config = build_config(method_class.config_class, overrides, where=f"{method} config")
    template = template_from(kwargs)
    data = bench.unlearning_data(selection, template, data_dir)

    # One process, or one per device under `accelerate launch`. An Accelerator (not a bare
    # PartialState) so that the process group is set up exactly as the training loop's sees it.
    # Without a GPU the launched processes must be told to use the CPU here: the first Accelerator
    # decides for the whole process, and a later cpu=True (in the training loop) is ignored.
    accelerator = Accelerator(cpu=device == "cpu" or (device is None and not torch.cuda.is_available()))
    if accelerator.is_main_process:
        click.echo(f"unlearning {data.benchmark} {data.name} ({len(data.forget)} forget, {len(data.retain)} "
                   f"retain items) from {model} with {method}", err=True)
    start = time.perf_counter()
    loaded, tokenizer = load_model(model, dtype="fp32", device=str(accelerator.device))
    result = method_class(config).unlearn(loaded, tokenizer, data)
    if not accelerator.is_main_process:
        return
    out = Path(output)
    save_checkpoint(result.model, tokenizer, out)
    write_json_atomic(out / "unlearn.json", {
        "schema": UNLEARN_SCHEMA, "model": model, "benchmark": benchmark, "selection": data.name,
        "template": template.as_options(), **result.record, "system_prompt": result.system_prompt,
        "config": config_to_dict(config), "total_time_s": time.perf_counter() - start,
        "provenance": provenance()})
    if result.artifacts:  # e.g. ULMR's generated training pairs
        write_json_atomic(out / "artifacts.json", result.artifacts)
    record = result.record
    if record.get("losses"):
        click.echo(f"{record['steps']} steps in {record['time_s']:.1f}s, final loss {record['losses'][-1]:.4g}")
    click.echo(f"checkpoint: {out}")
    if result.system_prompt is not None:  # the method acts through the prompt (icu): evaluate with it
        command = eval_command_line(out, benchmark, data, data_dir, template, result.system_prompt)
        click.echo(f"{method} is evaluated with an instruction before every prompt (unlearn.json: "
                   f"system_prompt):\n  {command}")


def eval_command_line(model, benchmark: str, data, data_dir, template, system_prompt: str) -> str:
    """The `ulmr-bench eval` command that scores `model` with `system_prompt` before every prompt,
    on the same benchmark, selection and template."""
    import shlex

    from ulmr.benchmarks.registry import get_benchmark

    def tag(value: str) -> str:  # the tag options read the two characters \n as a newline
        return value.replace("\n", "\\n")

    args = ["ulmr-bench", "eval", "--model", str(model), "--benchmark", benchmark,
            f"--{get_benchmark(benchmark).selection_option.replace('_', '-')}", data.name]
    if data_dir:
        args += ["--data-dir", str(data_dir)]
    if template.kind == "tags":
        args += ["--prompt-template", "tags", "--question-start-tag", tag(template.question_start_tag),
                 "--question-end-tag", tag(template.question_end_tag), "--answer-tag", tag(template.answer_tag)]
    return " ".join(shlex.quote(arg) for arg in args + ["--system-prompt", system_prompt])
