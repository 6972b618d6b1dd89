"""Benchmarks as the evaluator sees them: which lm-eval tasks to run for a selection, and how to
turn lm-eval's results into the flat metrics of the benchmark's table.

Each benchmark module registers a `Benchmark` in BENCHMARKS."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ulmr.errors import UlmrError


@dataclass(frozen=True)
class Benchmark:
    name: str
    # selection (TOFU split, RWKU targets) -> lm-eval task or group names
    tasks: Callable[[str], list[str]]
    # (lm-eval results dict, per-task samples) -> (flat metrics in table order, per-question values)
    summarize: Callable[[dict[str, Any], dict[str, list]], tuple[dict[str, float], dict[str, list]]]
    # table columns: (metric key, header), in the benchmark's own order
    columns: list[tuple[str, str]]
    default_selection: str
    # extra task metadata for a selection (e.g. which RWKU targets)
    task_metadata: Callable[[str], dict[str, Any]] = lambda selection: {}
    # column groups, for a table with one row per group: headers start with their group's name
    column_groups: tuple[str, ...] = ()
    # (lm-eval model, per-task samples) -> metrics lm-eval's requests cannot express, computed with
    # the same model after lm-eval has run (RWKU's Min-K%, which needs per-token log-probs)
    model_metrics: Callable[[Any, dict[str, list]], dict[str, Any]] = lambda lm, samples: {}
    # per-task samples -> what the selection amounted to in the scored docs, kept in the results
    scored_selection: Callable[[dict[str, list]], dict[str, Any]] = lambda samples: {}


BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def get_benchmark(name: str) -> Benchmark:
    from ulmr.benchmarks import rwku, tofu  # noqa: F401  (modules register themselves)

    if name not in BENCHMARKS:
        raise UlmrError(f"unknown benchmark {name!r}: choose from {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name]
