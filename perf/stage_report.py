"""Where a run's time went: one row per stage of the results a `ulmr-bench run` stored.

    python perf/stage_report.py --results-dir results [--model smollm2-135m]

Stages: preparation (each prepared model's fine-tuning), unlearning (each method and seed: the
whole unlearn call, and its training loop alone), evaluation (each evaluated model). For each: wall
seconds, tokens processed, tokens/s, the FLOP floor (6 x parameters per trained token, 2 x per
evaluated token) over this machine's matmul rate measured now in the compute dtype, the fraction
of that floor reached, and the process's peak memory when the stage ended (an upper bound for the
stage). Then the stage furthest from its floor. A benchmark, not a test: the rates are this
machine's, measured when the report runs, so run it on the machine that made the results.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

GIB = 1024 ** 3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--model", default="smollm2-135m", help="the base model, for its parameter count")
    parser.add_argument("--dtype", default="auto", help="the compute dtype the run used")
    args = parser.parse_args()

    import torch

    from ulmr.hardware import matmul_flops, resolve_dtype
    from ulmr.models import load_model, resolve_model

    model, _ = load_model(resolve_model(args.model), dtype="fp32", device="cpu")
    n_params = sum(p.numel() for p in model.parameters())
    del model
    dtype = resolve_dtype(args.dtype, "cpu")
    rate = matmul_flops(dtype)
    bf16_rate = rate if dtype == torch.bfloat16 else matmul_flops(torch.bfloat16)
    print(f"{n_params / 1e6:.1f}M parameters; matmul {rate / 1e9:.0f} GFLOP/s in {str(dtype)[6:]} "
          f"(bf16: {bf16_rate / 1e9:.1f} GFLOP/s) on this machine now")

    rows = stage_rows(Path(args.results_dir))
    header = f"{'stage':<44}{'wall s':>9}{'tokens':>10}{'tok/s':>8}{'floor s':>9}{'of floor':>9}{'peak GiB':>9}"
    print(header)
    print("-" * len(header))
    worst = None
    for name, seconds, tokens, flops_per_token, peak in rows:
        floor = tokens * flops_per_token * n_params / rate if tokens else None
        share = f"{floor / seconds:.0%}" if floor and seconds else "-"
        peak_text = f"{peak / GIB:.2f}" if peak else "-"  # not recorded for every stage
        print(f"{name:<44}{seconds:>9.1f}{tokens or 0:>10,}{(tokens or 0) / seconds if seconds else 0:>8.0f}"
              f"{floor or 0:>9.1f}{share:>9}{peak_text:>9}")
        if floor and (worst is None or seconds - floor > worst[1]):
            worst = (name, seconds - floor, floor, seconds)
    total = sum(seconds for name, seconds, *_ in rows if not name.startswith(" "))  # sub-rows are inside others
    print(f"{'total':<44}{total:>9.1f}")
    if worst:
        print(f"largest gap to the floor: {worst[0]}: {worst[3]:.0f} s against a floor of {worst[2]:.0f} s")


def stage_rows(results_dir: Path) -> list[tuple[str, float, int | None, int, int | None]]:
    """(stage, wall seconds, tokens, FLOPs per token per parameter, peak bytes) from stored results."""
    rows, prepared = [], set()
    for path in sorted(results_dir.rglob("*-seed*.json")):
        result = json.loads(path.read_text())
        if result.get("status") != "ok":
            continue
        where = f"{result['benchmark']} {result['selection']}"
        training = (result.get("preparation") or {}).get("training")
        label = (result.get("preparation") or {}).get("label")
        if training and label not in prepared:
            prepared.add(label)
            rows.append((f"prepare {label}", training["time_s"], training["tokens"], 6, None))
        unlearning = result.get("unlearning")
        if unlearning and "tokens" in unlearning:  # icu trains nothing: no training record
            name = f"{where} unlearn {result['method']} seed {result['seed']}"
            rows.append((name, result["timings"]["unlearn_seconds"], unlearning["tokens"], 6,
                         unlearning.get("peak_memory_bytes")))
            rows.append((f"  of which the training loop", unlearning["time_s"], unlearning["tokens"], 6, None))
        timings = result["timings"]
        work = timings.get("work") or {}
        rows.append((f"{where} eval {result['method']} seed {result['seed']}", timings["eval_seconds"],
                     work.get("forward_tokens"), 2, timings.get("peak_rss_bytes")))
    return rows


if __name__ == "__main__":
    main()
