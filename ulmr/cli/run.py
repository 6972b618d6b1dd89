"""`ulmr-bench run`: the main job, from a profile to stored results and the leaderboard."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
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
@click.option("--jobs", default="auto", show_default=True,
              help="Processes that share the rows, the CPU cores split among them (each starts on another "
                   "benchmark and takes the rows no other is producing), after one process with every core has "
                   "prepared the models. auto: one per benchmark, at most one per core; 1 on a GPU or under a "
                   "data-parallel launcher.")
@click.option("--worker-summary", hidden=True, type=click.Path(dir_okay=False),
              help="Set by --jobs for the processes it starts: write the run's summary here, no leaderboard.")
@click.option("--models-only", hidden=True, is_flag=True,
              help="Set by --jobs for its first process: prepare the benchmarks' models only.")
def run_command(profile, methods, benchmarks, seeds, model, set_options, data_dir, results_dir, leaderboard_dir,
                backend, jobs, worker_summary, models_only):
    """Prepare models, unlearn with each method and seed, evaluate, store, regenerate the leaderboard."""
    from ulmr.profiles import load_profile
    from ulmr.run import check_plan, run
    from ulmr.storage import check_writable

    chosen = load_profile(profile, profile_overrides(methods, benchmarks, seeds, model, set_options))
    check_plan(chosen)  # then the output folders: all before any work
    processes = job_count(jobs, len(chosen.benchmarks))
    check_writable(results_dir, what="--results-dir")
    leaderboard_dir = check_writable(leaderboard_dir or Path(results_dir) / "leaderboard", what="--leaderboard-dir")
    if not worker_summary:  # the process that started it said so
        threads = threads_each(processes)
        click.echo(f"profile {chosen.name}: {chosen.model}, benchmarks {','.join(chosen.benchmarks)}, "
                   f"methods {','.join(chosen.methods)}, seeds {','.join(map(str, chosen.seeds))}"
                   + (f"; models prepared first, then {processes} processes of {threads} "
                      f"thread{'s' if threads > 1 else ''}" if processes > 1 else ""))
    if processes > 1:
        worker_args = ["--profile", profile, "--results-dir", str(results_dir), "--backend", backend,
                       *(["--methods", methods] if methods else []), *(["--seeds", seeds] if seeds else []),
                       *(["--model", model] if model else []), *(["--data-dir", str(data_dir)] if data_dir else []),
                       *[arg for pair in set_options for arg in ("--set", pair)]]
        started = time.time()
        summary = run_in_processes(chosen.benchmarks, worker_args, processes)
        click.echo(f"\nthe models and {processes} processes finished in {time.time() - started:.0f} s\n"
                   f"{summary.format()}")
    else:
        summary = run(chosen, results_dir, data_dir=data_dir, backend=backend, echo=click.echo,
                      models_only=models_only)
    if worker_summary:  # the starting process merges the summaries and builds the leaderboard
        Path(worker_summary).write_text(json.dumps(dataclasses.asdict(summary)))
        return
    build_and_report(results_dir, leaderboard_dir, label="leaderboard: ")
    if summary.failure():
        raise UlmrError(summary.failure())


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_each(processes: int) -> int:
    return max(1, cpu_cores() // processes)


def job_count(jobs: str, benchmarks: int) -> int:
    """--jobs as a number of processes: auto splits a CPU's cores between the benchmarks."""
    if jobs != "auto":
        if not jobs.isdigit() or int(jobs) < 1:
            raise UlmrError(f"--jobs {jobs!r} is not a positive whole number: pass e.g. --jobs 2, or auto")
        return int(jobs)
    from ulmr.hardware import default_device, launched_processes

    if launched_processes() > 1 or default_device() != "cpu":
        return 1
    return max(1, min(benchmarks, cpu_cores()))


def run_in_processes(benchmarks: list[str], worker_args: list[str], processes: int):
    """Run the same job in `processes` processes on one results directory. First one process with
    the cores a single run would have trains (or finds cached) every benchmark's prepared models:
    training on a share of the cores gains nothing over training one model after the other on all
    of them. Then `processes` processes, each with an equal share of the cores and the benchmarks in
    another order (process k starts on benchmark k), share the rows: the results directory's claims
    give each row to one of them (ulmr.storage). Their output goes to this console, each line
    naming its benchmark; returns their merged summary."""
    from ulmr.results import COMMAND_ENV, portable_command
    from ulmr.run import RunSummary

    env = {**os.environ, COMMAND_ENV: portable_command(sys.argv)}
    with tempfile.TemporaryDirectory(prefix="ulmr-run-") as scratch:
        def started(name: str, args: list[str], threads: dict[str, str]) -> tuple[subprocess.Popen, Path]:
            summary_path = Path(scratch) / f"{name}.json"
            return subprocess.Popen([sys.executable, "-m", "ulmr", "run", *worker_args, *args, "--jobs", "1",
                                     "--worker-summary", str(summary_path)], env={**env, **threads}), summary_path

        models = [started("models", ["--benchmarks", ",".join(benchmarks), "--models-only"], {})]
        parts = _finished(models, "process preparing the models")
        shares = {"OMP_NUM_THREADS": str(threads_each(processes))}
        workers = [started(f"worker{k}", ["--benchmarks", ",".join(benchmarks[k % len(benchmarks):]
                                                                   + benchmarks[:k % len(benchmarks)])], shares)
                   for k in range(processes)]
        parts += _finished(workers, "run processes")
        return RunSummary.merged(parts)


def _finished(started: list[tuple[subprocess.Popen, Path]], what: str) -> list[dict]:
    """The summaries of processes started together, once all have exited; stopped here (Ctrl-C), they
    stop too (their finished rows are stored)."""
    try:
        codes = [process.wait() for process, _ in started]
    finally:
        for process, _ in started:
            if process.poll() is None:
                process.terminate()
                process.wait()
    stopped = [k for k, code in enumerate(codes) if code != 0 or not started[k][1].is_file()]
    if stopped:
        which = "the" if len(started) == 1 else f"{len(stopped)} of {len(started)}"
        raise UlmrError(f"{which} {what} stopped early (exit code {codes[stopped[0]]}; its error is above): fix "
                        "the cause and rerun, stored rows and prepared models are skipped")
    return [json.loads(path.read_text()) for _, path in started]
