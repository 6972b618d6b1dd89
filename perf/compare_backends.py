"""The fast backend against lm-eval's hf model, side by side: `ulmr-bench eval` on a benchmark
with each, in one process, timed, and every metric of the benchmark's table compared.

    python perf/compare_backends.py --data-dir ../shared/data                  # quick profile's slices
    python perf/compare_backends.py --data-dir ../shared/data --limit 5 --dtype fp32 --benchmarks tofu

By default each benchmark is evaluated as the quick profile does (TOFU forget01, the first 40 docs
of every task; RWKU target 1, every forget/neighbor/MIA probe and the first 10 docs of each utility
set); --limit N instead takes the first N docs of every task of both. The backends alternate
(fast, hf; then hf, fast in a second --repeats round), so a shared machine's load falls on both,
after an untimed warm-up (1 doc a task, both backends) that pays the first run's imports and caches.
Prints the machine, the resolved dtype, and per benchmark: each backend's seconds (median over the
rounds), the speed-up hf/fast, the largest absolute difference between the two runs' metrics (every
column of the benchmark's table) and between their per-request outputs (log-likelihoods; generated
strings counted identical or not). --json writes everything measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# this checkout's packages, not an installed copy's (the venv may hold another worktree's)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def machine() -> dict:
    import platform

    import torch

    from ulmr.hardware import cpu_has_bf16_units

    name, flags = platform.processor() or "unknown", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and name in ("unknown", "x86_64", ""):
                    name = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    return {"cpu": name, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "bf16_units": cpu_has_bf16_units(), "cuda": torch.cuda.is_available(),
            "torch": torch.__version__}


def settings_for(benchmark: str, profile, args, backend: str):
    from dataclasses import replace

    from ulmr.evaluation import settings_from_plan
    from ulmr.prompts import PromptTemplate

    settings = settings_from_plan(benchmark, profile.plan(benchmark), data_dir=args.data_dir,
                                  template=PromptTemplate.from_options(profile.template), backend=backend,
                                  dtype=args.dtype, device="cpu" if args.cpu else None)
    if args.limit is not None:  # every task sliced alike
        settings = replace(settings, limit=args.limit, limits={})
    return settings


def read_samples(path: Path) -> dict:
    """(task, doc_id) -> the doc's responses (generated strings or log-likelihoods)."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            out[(record["task"], record["doc_id"])] = record["resps"]
    return out


def compare_samples(fast: dict, hf: dict) -> dict:
    strings = same = 0
    largest = 0.0
    for key, fast_resps in fast.items():
        for a, b in zip(fast_resps, hf.get(key, [])):
            a, b = a[0], b[0]
            if isinstance(a, str):
                strings += 1
                same += a == b
            else:
                a, b = (a[0], b[0]) if isinstance(a, list) else (a, b)
                largest = max(largest, abs(float(a) - float(b)))
    return {"generations": strings, "identical_generations": same, "max_abs_loglik_diff": largest,
            "same_docs": set(fast) == set(hf)}


def compare_metrics(fast: dict, hf: dict) -> tuple[float, str]:
    largest, where = 0.0, "-"
    for key in sorted(set(fast) | set(hf)):
        a, b = fast.get(key), hf.get(key)
        if a is None and b is None:
            continue
        if a is None or b is None or (isinstance(a, float) and math.isnan(a)) != (isinstance(b, float) and math.isnan(b)):
            return math.inf, key
        if isinstance(a, float) and math.isnan(a):
            continue
        if abs(a - b) >= largest:
            largest, where = abs(a - b), key
    return largest, where


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--benchmarks", default="tofu,rwku")
    parser.add_argument("--profile", default="quick", help="the profile whose eval settings are used")
    parser.add_argument("--limit", type=int, default=None, help="first N docs of every task (default: the profile's)")
    parser.add_argument("--dtype", default="fp32", help="auto, bf16 or fp32 (equality is checked in fp32)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both backends (default: torch's)")
    parser.add_argument("--cpu", action="store_true", help="evaluate on the CPU even where a GPU is present")
    parser.add_argument("--no-warmup", action="store_true",
                        help="skip the untimed first evaluation (1 doc a task, both backends) of each benchmark")
    parser.add_argument("--json", default=None, help="write the measurements here")
    args = parser.parse_args()

    import torch

    from ulmr.evaluation import evaluate
    from ulmr.hardware import resolve_dtype
    from ulmr.models import resolve_model
    from ulmr.profiles import load_profile

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    resolve_model(args.model)  # built once, before any timing
    profile = load_profile(args.profile)
    info = machine()
    device = "cpu" if args.cpu or not info["cuda"] else "cuda"
    info["dtype"] = f"{args.dtype} -> {str(resolve_dtype(args.dtype, device)).removeprefix('torch.')}"
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} with {info['torch_threads']} "
          f"threads, AVX512-BF16 {'yes' if info['avx512_bf16'] else 'no'}, AMX-BF16 "
          f"{'yes' if info['amx_bf16'] else 'no'}, device {device}; dtype {info['dtype']}; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    report = {"machine": info, "args": vars(args), "benchmarks": {}}
    workdir = Path(tempfile.mkdtemp(prefix="compare_backends_"))
    for benchmark in args.benchmarks.split(","):
        if not args.no_warmup:  # imports, data and tokenizer caches: a first run pays them, whichever backend
            for backend in ("fast", "hf"):
                warm = settings_for(benchmark, profile, args, backend)
                warm.limit, warm.limits = 1, {}
                evaluate(args.model, warm)
        seconds = {"fast": [], "hf": []}
        results, loads = {}, []
        for round_ in range(args.repeats):
            for backend in (("fast", "hf") if round_ % 2 == 0 else ("hf", "fast")):
                settings = settings_for(benchmark, profile, args, backend)
                samples = workdir / f"{benchmark}-{backend}-{round_}.jsonl"
                load = os.getloadavg()[0]
                start = time.perf_counter()
                result = evaluate(args.model, settings, samples_path=samples)
                seconds[backend].append(time.perf_counter() - start)
                loads.append((load + os.getloadavg()[0]) / 2)
                results[backend] = (result, read_samples(samples))
                print(f"  {benchmark} {backend} round {round_ + 1}: {seconds[backend][-1]:.1f} s "
                      f"(load average ~{loads[-1]:.1f}), work {result['timings']['work'] or '-'}", flush=True)
        (fast, fast_samples), (hf, hf_samples) = results["fast"], results["hf"]
        largest, where = compare_metrics(fast["metrics"], hf["metrics"])
        entry = {"seconds": seconds, "median_seconds": {b: statistics.median(s) for b, s in seconds.items()},
                 "max_abs_metric_diff": largest, "at": where, "metrics": {"fast": fast["metrics"], "hf": hf["metrics"]},
                 "samples": compare_samples(fast_samples, hf_samples), "n_docs": fast["eval"]["n_docs"],
                 "limit": fast["eval"]["limit"], "limits": fast["eval"]["limits"], "load_average": loads}
        report["benchmarks"][benchmark] = entry
    print()
    header = f"{'benchmark':<10}{'backend':<9}{'seconds':>9}{'speed-up':>10}{'max |metric diff|':>19}  detail"
    print(header)
    print("-" * (len(header) + 40))
    total = {"fast": 0.0, "hf": 0.0}
    for benchmark, entry in report["benchmarks"].items():
        med = entry["median_seconds"]
        total["fast"] += med["fast"]
        total["hf"] += med["hf"]
        s = entry["samples"]
        print(f"{benchmark:<10}{'hf':<9}{med['hf']:>9.1f}{'1.00x':>10}{'':>19}  "
              f"{sum(entry['n_docs'].values())} docs, limit {entry['limit']}, limits {entry['limits'] or '-'}")
        print(f"{'':<10}{'fast':<9}{med['fast']:>9.1f}{med['hf'] / med['fast']:>9.2f}x"
              f"{entry['max_abs_metric_diff']:>19.2e}  (at {entry['at']}); generations identical "
              f"{s['identical_generations']}/{s['generations']}, max |loglik diff| {s['max_abs_loglik_diff']:.2e}")
    if len(report["benchmarks"]) > 1:
        print(f"{'total':<10}{'fast':<9}{total['fast']:>9.1f}{total['hf'] / total['fast']:>9.2f}x"
              f"   (hf {total['hf']:.1f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
