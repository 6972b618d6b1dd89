"""Time the fast and hf backends on the raw lm-eval requests of some tasks, interleaved.

    python perf/time_requests.py --data-dir ../shared/data --tasks tofu_forget01_forget_rouge --limit 10
    python perf/time_requests.py --tasks rwku_mia --targets 1 --backends fast --repeats 1
    python perf/time_requests.py --tasks rwku_utility_rea,rwku_utility_flu --limit 10 --together

Builds each task's requests once (lm-eval's own construction), then calls the backends'
`loglikelihood` / `loglikelihood_rolling` / `generate_until` directly, alternating backends for
`--repeats` rounds, so that a shared machine's load falls on both alike. Prints seconds per call and
whether the outputs agree (generated strings identical; log-likelihoods: max absolute difference).
`--together` sends the tasks' requests of one kind in one call, as lm-eval's evaluator does (the
fast backend then decodes them in one batch where their settings agree).
A tool for iterating on ulmr/fast_lm.py, not the acceptance measurement (perf/compare_backends.py).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path


# this checkout's packages, not an installed copy's (the venv may hold another worktree's)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_requests(tasks: list[str], limit: int | None, data_dir: str | None, targets: str, tokenizer: str):
    from lm_eval.tasks import TaskManager, get_task_dict

    from lm_eval_tasks import TASKS_PATH

    metadata = {"tokenizer": tokenizer, "prompt_template": "chat", "targets": targets}
    if data_dir:
        metadata["data_dir"] = data_dir
    manager = TaskManager(include_path=str(TASKS_PATH), include_defaults=False, metadata=metadata)
    out = {}
    for name, task in get_task_dict(tasks, manager).items():
        task.build_all_requests(limit=limit)
        out[name] = (task.OUTPUT_TYPE, task.instances)
    return out


def call(lm, output_type: str, instances):
    method = {"multiple_choice": "loglikelihood", "loglikelihood": "loglikelihood",
              "loglikelihood_rolling": "loglikelihood_rolling", "generate_until": "generate_until"}[output_type]
    return getattr(lm, method)(instances, disable_tqdm=True)


def difference(a, b) -> str:
    if isinstance(a[0], str):
        same = sum(x == y for x, y in zip(a, b))
        return f"{same}/{len(a)} strings identical"
    values = lambda out: [x[0] if isinstance(x, tuple) else x for x in out]  # noqa: E731
    pairs = list(zip(values(a), values(b)))
    exact = sum(x == y for x, y in pairs)
    largest = max(abs(x - y) for x, y in pairs)
    relative = max(abs(x - y) / max(abs(y), 1e-30) for x, y in pairs)
    return f"{exact}/{len(pairs)} bit-identical, max |d logprob| {largest:.2e} (relative {relative:.1e})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--tasks", default="tofu_forget01_forget_prob,tofu_forget01_forget_rouge")
    parser.add_argument("--targets", default="1")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--backends", default="fast,hf")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--fast-args", default="", help="extra FastLM keyword args: key=value,...")
    parser.add_argument("--together", action="store_true",
                        help="the tasks' requests of one kind in one call, as lm-eval's evaluator sends them")
    args = parser.parse_args()

    import torch
    from lm_eval.models.huggingface import HFLM

    from ulmr.fast_lm import FastLM
    from ulmr.hardware import resolve_dtype
    from ulmr.models import resolve_model

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    path = resolve_model(args.model)
    dtype = resolve_dtype(args.dtype, "cpu")
    extra = dict(kv.split("=", 1) for kv in args.fast_args.split(",") if kv)
    lms = {}
    for backend in args.backends.split(","):
        if backend == "fast":
            lms[backend] = FastLM(pretrained=path, dtype=args.dtype, device="cpu", batch_size=args.batch_size, **extra)
        else:  # "hf", or "hf<N>": the hf model at batch size N (its own rounding noise, against "hf")
            lms[backend] = HFLM(pretrained=path, dtype=str(dtype).removeprefix("torch."), device="cpu",
                                batch_size=int(backend[2:] or args.batch_size))
    requests = build_requests(args.tasks.split(","), args.limit, args.data_dir, args.targets, path)
    if args.together:
        by_kind: dict[str, list] = {}
        for output_type, instances in requests.values():
            by_kind.setdefault(output_type, []).extend(instances)
        requests = {"+".join(t for t, (o, _) in requests.items() if o == output_type): (output_type, instances)
                    for output_type, instances in by_kind.items()}
    print(f"dtype {dtype}, batch {args.batch_size}, limit {args.limit}, threads {torch.get_num_threads()}, "
          f"fast args {extra or '-'}", flush=True)
    for task, (output_type, instances) in requests.items():
        seconds = {b: [] for b in lms}
        outputs = {}
        for r in range(args.repeats):
            order = list(lms) if r % 2 == 0 else list(reversed(lms))
            for backend in order:
                start = time.perf_counter()
                outputs[backend] = call(lms[backend], output_type, instances)
                seconds[backend].append(time.perf_counter() - start)
        line = f"{task:<30}{len(instances):>5} req  " + "  ".join(
            f"{b} {statistics.median(s):7.2f} s" for b, s in seconds.items())
        if "fast" in seconds and "hf" in seconds:
            line += f"  ratio {statistics.median(seconds['hf']) / statistics.median(seconds['fast']):.2f}x"
            line += "  fast vs hf: " + difference(outputs["fast"], outputs["hf"])
        for other in (b for b in outputs if b.startswith("hf") and b != "hf" and "hf" in outputs):
            line += f"; {other} vs hf: " + difference(outputs[other], outputs["hf"])
        print(line, flush=True)


if __name__ == "__main__":
    main()
