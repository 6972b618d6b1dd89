"""Score a model on a benchmark through lm-eval's evaluator and our task folders.

`evaluate` runs lm-eval's `simple_evaluate` on the benchmark's tasks with the model (an alias,
folder or hub id, or an already loaded model) and returns a results dict in our schema; per-sample
records are written beside the results file as JSON Lines.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ulmr.benchmarks.registry import get_benchmark
from ulmr.errors import UlmrError, first_line
from ulmr.hardware import broadcast_object, join_launched_processes
from ulmr.prompts import PromptTemplate
from ulmr.results import RESULT_SCHEMA, provenance


@dataclass
class EvalSettings:
    """How to evaluate: the same settings for every model that is compared."""

    benchmark: str = "tofu"
    selection: str | None = None  # TOFU split or RWKU targets; None = the benchmark's default
    data_dir: str | None = None
    template: PromptTemplate = field(default_factory=PromptTemplate)
    batch_size: int = 16
    limit: int | None = None  # first N docs of every task (a slice; recorded in the results)
    # per-task exceptions to `limit`, by a name in `tasks` (e.g. {"rwku_utility": 10} slices only
    # the utility sets while every forget probe is scored); None = every doc of that task
    limits: dict[str, int | None] = field(default_factory=dict)
    dtype: str = "auto"
    device: str | None = None
    # "fast": our prefix-sharing transformers model (ulmr/fast_lm.py, same numbers as "hf");
    # "hf": lm-eval's own transformers model; "vllm": lm-eval's vLLM model (GPU machines)
    backend: str = "fast"
    max_gen_toks: int | None = None  # None = each task's own (TOFU 200, RWKU 30)
    tasks: list[str] | None = None  # a subset of the benchmark's tasks (e.g. a forget-only probe)

    def validate(self) -> None:
        from ulmr.unlearning.config import check_range

        check_range("batch_size", self.batch_size, 1)
        for name, value in (("limit", self.limit), ("max_gen_toks", self.max_gen_toks),
                            *((f"limits.{task}", n) for task, n in self.limits.items())):
            if value is not None:
                check_range(name, value, 1)
        if self.backend not in LM_EVAL_MODEL_NAMES:
            raise UlmrError(f"unknown backend {self.backend!r}: use {', '.join(LM_EVAL_MODEL_NAMES)}")
        if self.dtype not in DTYPES:
            raise UlmrError(f"unknown dtype {self.dtype!r}: use {', '.join(DTYPES)}")


DTYPES = ("auto", "bf16", "fp16", "fp32")


# Part of every stored result's key: bump when how a model is scored changes, so a rerun does not
# reuse results scored the old way. 2: in-memory (unlearned) models are cast to the compute dtype,
# as the reference rows loaded from their folders are (ulmr.fast_lm.FastLM).
SCORING_VERSION = 2


def settings_from_plan(benchmark: str, plan, **fixed) -> EvalSettings:
    """A benchmark plan's evaluation settings (its `eval` section, type- and range-checked, so that a
    bad value is an error naming the profile key before any model loads), plus `fixed` fields."""
    from dataclasses import replace

    from ulmr.unlearning.config import build_config

    checked = build_config(EvalSettings, plan.eval, where=f"profile {benchmark}.eval")
    return replace(checked, benchmark=benchmark, selection=plan.selection, **fixed)


def lm_eval_model_args(model_path: str, settings: EvalSettings) -> dict[str, Any]:
    """Model arguments for lm-eval's "hf" or "vllm" model, from our settings."""
    from ulmr.hardware import default_device, resolve_dtype

    device = settings.device or default_device()
    dtype = str(resolve_dtype(settings.dtype, device)).removeprefix("torch.")
    if settings.backend == "vllm":
        return {"pretrained": model_path, "dtype": dtype, "gpu_memory_utilization": 0.8,
                "max_model_len": 4096, "seed": 0}
    if settings.backend == "fast":
        return {"pretrained": model_path, "dtype": settings.dtype, "device": device}
    if settings.backend != "hf":
        raise UlmrError(f"unknown backend {settings.backend!r}: use fast, hf or vllm")
    return {"pretrained": model_path, "dtype": dtype, "device": device}


LM_EVAL_MODEL_NAMES = {"fast": "ulmr-fast", "hf": "hf", "vllm": "vllm"}


def evaluate(model: str | Any, settings: EvalSettings, samples_path: str | Path | None = None,
             tokenizer: Any = None, model_label: str | None = None) -> dict[str, Any]:
    """Evaluate `model` (alias/folder/hub id, or a loaded model with its `tokenizer`). A loaded model
    is scored as its checkpoint loaded in `settings.dtype` would be: its weights are cast to that
    dtype in place."""
    import lm_eval

    from lm_eval_tasks import TASKS_PATH
    from ulmr.data.common import data_dir
    from ulmr.hardware import peak_rss_bytes
    from ulmr.models import resolve_model

    bench = get_benchmark(settings.benchmark)
    selection = settings.selection or bench.default_selection
    tasks = settings.tasks or bench.tasks(selection)
    data_dir(settings.data_dir)  # a bad data directory fails before any model is loaded
    started = time.time()
    import ulmr.fast_lm  # noqa: F401  (registers the "ulmr-fast" lm-eval model)

    if isinstance(model, str):
        model_path = resolve_model(model)
        lm, model_args = LM_EVAL_MODEL_NAMES[settings.backend], lm_eval_model_args(model_path, settings)
        tokenizer_name = model_path
    else:  # an in-memory model, evaluated without saving it
        from ulmr.fast_lm import FastLM

        if settings.backend != "fast":
            raise UlmrError(f"an in-memory model is evaluated with the fast backend; save it first "
                            f"to use {settings.backend}")
        tokenizer_name = getattr(tokenizer, "name_or_path", None)
        lm = FastLM(pretrained=model, tokenizer=tokenizer, dtype=settings.dtype, device=settings.device,
                    batch_size=settings.batch_size)
        model_args = None
    metadata = {"tokenizer": tokenizer_name, **settings.template.as_options(),
                **bench.task_metadata(selection)}
    if settings.data_dir:
        metadata["data_dir"] = str(settings.data_dir)
    from lm_eval.tasks import TaskManager

    # lm-eval warns once per task about custom dataset kwargs; our progress bars say what runs
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    # only our task folder: indexing lm-eval's thousands of built-in task files costs ~20 s a run
    task_manager = TaskManager(include_path=str(TASKS_PATH), include_defaults=False,
                               metadata={**(model_args or {}), **metadata})
    gen_kwargs = {"max_gen_toks": settings.max_gen_toks} if settings.max_gen_toks else None
    if isinstance(lm, str) and settings.backend == "hf":
        # joined before lm-eval's hf model creates its Accelerator, which then shares the group
        join_launched_processes(model_args["device"])
    try:
        if isinstance(lm, str):  # built here, not inside lm-eval, so that benchmarks can score with it after
            from lm_eval.api.registry import get_model

            lm = get_model(lm).create_from_arg_obj(model_args, {"batch_size": settings.batch_size})
            _shard_hf_across_cpu_processes(lm)
        out = {"results": {}, "samples": {}}
        for limit, some_tasks in _tasks_by_limit(tasks, settings):  # lm-eval takes one limit a call
            part = lm_eval.simple_evaluate(model=lm, model_args=model_args, tasks=some_tasks,
                                           task_manager=task_manager, batch_size=settings.batch_size,
                                           limit=limit, log_samples=True, gen_kwargs=gen_kwargs,
                                           random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                                           fewshot_random_seed=0)
            if part is not None:  # None on all but the first process of a data-parallel launch
                out["results"].update(part["results"])
                out["samples"].update(part.get("samples", {}))
    except UlmrError:
        raise
    except Exception as exc:  # noqa: BLE001  (a failure deep in lm-eval becomes one line)
        cause = exc.__cause__ or exc
        if isinstance(cause, UlmrError):
            raise cause
        raise UlmrError(f"evaluation of {model_label or model} on {settings.benchmark} failed: "
                        f"{type(cause).__name__}: {first_line(cause, limit=None)}") from exc
    rank, world_size = getattr(lm, "rank", 0), getattr(lm, "world_size", 1)
    if rank != 0:  # the first process gathered every shard; it builds the result and sends it
        return broadcast_object(None, rank, world_size)
    # gathered shards come process by process; in doc order the records are the single process's
    samples = {task: sorted(records, key=lambda r: r["doc_id"]) for task, records in out["samples"].items()}
    metrics, per_question = bench.summarize(out["results"], samples)
    metrics.update(bench.model_metrics(lm, samples))
    result = {
        "schema": RESULT_SCHEMA,
        "benchmark": settings.benchmark,
        "selection": selection,
        "model": model_label or (model if isinstance(model, str) else tokenizer_name),
        "metrics": metrics,
        "per_question": per_question,
        "eval": {"tasks": tasks, "limit": settings.limit, "limits": settings.limits, "template": settings.template.as_options(),
                 "batch_size": settings.batch_size, "backend": settings.backend, "dtype": settings.dtype,
                 "max_gen_toks": settings.max_gen_toks, "processes": world_size, "n_docs": {t: len(s) for t, s in samples.items()},
                 **bench.scored_selection(samples)},
        "lm_eval_results": out["results"],
        # work done by this (the first) process (fast backend: tokens through the model, scored,
        # generated) and its peak memory so far (an upper bound for this evaluation), for stage reports
        "timings": {"eval_seconds": round(time.time() - started, 2), "work": dict(getattr(lm, "counters", {})),
                    "peak_rss_bytes": peak_rss_bytes()},
        "provenance": provenance(),
    }
    if samples_path is not None:
        write_samples(samples_path, samples)
        result["samples_file"] = Path(samples_path).name
    return broadcast_object(result, rank, world_size)


def _shard_hf_across_cpu_processes(lm) -> None:
    """lm-eval's hf model shards docs across processes only when they have GPUs; on CPU processes of
    a launch (its Accelerator joined the group) it would evaluate everything in each. Give it the
    group's rank and size, which its evaluator and gather methods then use."""
    accelerator = getattr(lm, "accelerator", None)
    if accelerator is not None and lm.world_size == 1 and accelerator.num_processes > 1:
        lm._rank, lm._world_size = accelerator.process_index, accelerator.num_processes


def _tasks_by_limit(tasks: list[str], settings: EvalSettings) -> list[tuple[int | None, list[str]]]:
    unknown = sorted(set(settings.limits) - set(tasks))
    if unknown:
        raise UlmrError(f"eval limits name {', '.join(unknown)}, not among the evaluated tasks "
                        f"({', '.join(tasks)}): key limits by those names")
    by_limit: dict[int | None, list[str]] = {}
    for task in tasks:
        by_limit.setdefault(settings.limits.get(task, settings.limit), []).append(task)
    return list(by_limit.items())


def write_samples(path: str | Path, samples: dict[str, list]) -> None:
    """lm-eval's per-sample records as JSON Lines (one per doc, with its task name), atomically."""
    from ulmr.results import atomic_writer

    with atomic_writer(path) as f:
        for task, records in samples.items():
            for record in records:
                f.write(json.dumps({"task": task, **record}, default=str) + "\n")


def add_reference_metrics(result: dict[str, Any], reference: dict[str, Any]) -> None:
    """Add the metrics measured against a reference model's results (TOFU: forget quality against
    the retain model's, on the same split) in front of the result's own."""
    bench = get_benchmark(result["benchmark"])
    if bench.reference_role is None:
        raise UlmrError(f"{bench.name} has no metrics against a reference model: drop --reference")
    if reference.get("benchmark") != bench.name:
        raise UlmrError(f"the reference results are for {reference.get('benchmark')!r}, not {bench.name}: pass "
                        f"the {bench.reference_role} model's {bench.name} results")
    result["metrics"] = {**bench.reference_metrics(result, reference), **result["metrics"]}
