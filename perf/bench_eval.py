"""Evaluation throughput of the embedded model, task by task: the TOFU forget01 suite, or RWKU's
task families for one target (all forget, neighbor and MIA probes; utility sliced by --limit).

    python perf/bench_eval.py --data-dir ../shared/data [--limit N] [--backend fast|hf]
    python perf/bench_eval.py --data-dir ../shared/data --benchmark rwku --targets 1 --limit 10

Prints, per task: docs, tokens through the model, answer tokens scored, tokens generated, seconds,
tokens/s, and the FLOP floor (2 x parameters x tokens over this machine's measured matmul rate in
the compute dtype), then totals and the process's peak memory. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path


# this checkout's packages, not an installed copy's (the venv may hold another worktree's)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--benchmark", choices=["tofu", "rwku"], default="tofu")
    parser.add_argument("--split", default="forget01")
    parser.add_argument("--targets", default="1")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--backend", choices=["fast", "hf"], default="fast")
    args = parser.parse_args()

    import lm_eval
    from lm_eval.tasks import TaskManager

    from lm_eval_tasks import TASKS_PATH
    from ulmr.fast_lm import FastLM
    from ulmr.hardware import default_device, matmul_flops, peak_rss_bytes, resolve_dtype
    from ulmr.models import resolve_model

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # per-task custom-dataset warnings
    path = resolve_model(args.model)
    dtype = resolve_dtype(args.dtype)
    rate = matmul_flops(dtype) / 1e9
    if args.backend == "fast":
        lm = FastLM(pretrained=path, dtype=args.dtype, batch_size=args.batch_size)
    else:
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(pretrained=path, dtype=str(dtype).removeprefix("torch."), device=default_device(),
                  batch_size=args.batch_size)
    n_params = sum(p.numel() for p in lm.model.parameters())
    metadata = {"tokenizer": path, "prompt_template": "chat", "targets": args.targets}
    if args.data_dir:
        metadata["data_dir"] = args.data_dir
    manager = TaskManager(include_path=str(TASKS_PATH), include_defaults=False, metadata=metadata)
    if args.benchmark == "tofu":
        tasks = {f"tofu_{args.split}_forget_{m}": args.limit for m in ("prob", "rouge")}
        tasks.update({f"tofu_{s}_{m}": args.limit for s in ("retain", "real_authors", "world_facts")
                      for m in ("prob", "rouge")})
    else:  # every probe of the target; the utility sets are sliced
        tasks = {"rwku_forget": None, "rwku_neighbor": None, "rwku_mia": None}
        tasks.update({f"rwku_utility_{u}": args.limit for u in ("gen", "rea", "tru", "fac", "flu")})

    print(f"model {args.model} ({n_params / 1e6:.1f}M params), {dtype}, backend {args.backend}, "
          f"batch {args.batch_size}, matmul {rate:.0f} GFLOP/s, limit {args.limit}")
    header = f"{'task':<28}{'docs':>6}{'fwd tok':>10}{'scored':>9}{'gen':>8}{'sec':>8}{'tok/s':>8}{'floor s':>9}"
    print(header)
    print("-" * len(header))
    totals = dict(docs=0, fwd=0, scored=0, gen=0, sec=0.0)
    for task, limit in tasks.items():
        before = dict(getattr(lm, "counters", {}))
        start = time.perf_counter()
        out = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=manager, limit=limit,
                                      batch_size=args.batch_size)
        seconds = time.perf_counter() - start
        after = getattr(lm, "counters", {})
        fwd, scored, gen = (after.get(k, 0) - before.get(k, 0)
                            for k in ("forward_tokens", "scored_tokens", "generated_tokens"))
        docs = sum(n["effective"] for n in out["n-samples"].values())
        floor = 2 * n_params * fwd / (rate * 1e9)
        print(f"{task:<28}{docs:>6}{fwd:>10}{scored:>9}{gen:>8}{seconds:>8.1f}{fwd / seconds:>8.0f}{floor:>9.1f}")
        for key, value in zip(("docs", "fwd", "scored", "gen", "sec"), (docs, fwd, scored, gen, seconds)):
            totals[key] += value
    floor = 2 * n_params * totals["fwd"] / (rate * 1e9)
    print("-" * len(header))
    print(f"{'total':<28}{totals['docs']:>6}{totals['fwd']:>10}{totals['scored']:>9}{totals['gen']:>8}"
          f"{totals['sec']:>8.1f}{totals['fwd'] / totals['sec']:>8.0f}{floor:>9.1f}")
    print(f"peak memory {peak_rss_bytes() / 2**30:.2f} GiB; FLOP floor reached {floor / totals['sec']:.0%}")


if __name__ == "__main__":
    main()
