"""Training throughput of the shared loop, per method, on the embedded model (fp32 vs bf16 autocast).

    python perf/bench_training.py --data-dir ../shared/data [--methods ga,npo] [--dtypes fp32,bf16]
                                        [--steps 1] [--batch-size 2] [--random-init]
                                        [--gradient-checkpointing off|on|both]

For every method and compute dtype, in a fresh process (so that peak memory is that run's own):
load the model, unlearn TOFU forget01 for one warm-up step (GPU only: kernel selection), then time
--steps optimizer steps of --batch-size items (no accumulation). Prints tokens/s through the trained
model, the FLOP floor (6 x parameters x tokens at this machine's measured matmul rate in that dtype),
the share of that rate reached, and peak memory (GPU: allocated; CPU: resident, model load
included). NPO and DPO also run the frozen reference forward (2 x parameters x forget tokens more),
so they top out near 3/4 of the floor's rate. --gradient-checkpointing both runs each method with
and without TrainingConfig.gradient_checkpointing (same weights; less memory, one more forward).

By default bf16 runs only where the hardware computes it natively (ulmr.hardware): on AVX2-only
CPUs it is emulated, ~50x slower. --random-init builds the model from the checkpoint's config with
random weights (throughput does not depend on them), for machines with only config and tokenizer
files. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import torch

METHODS = ("ga", "graddiff", "npo", "dpo", "rt")


def run_one(model_spec: str, random_init: bool, data_dir: str | None, method: str, dtype: str,
            steps: int, batch_size: int, gradient_checkpointing: bool) -> dict:
    """One method and dtype: a warm-up step, then the timed steps; returns the training record."""
    import baselines  # noqa: F401  (registers the methods also where the package is not installed)
    from ulmr.hardware import default_device
    from ulmr.models import load_model, load_tokenizer, resolve_model
    from ulmr.prompts import PromptTemplate
    from ulmr.unlearning.config import build_config
    from ulmr.unlearning.registry import get_method
    from ulmr.benchmarks.registry import get_benchmark

    if random_init:
        from transformers import AutoConfig, AutoModelForCausalLM

        path = resolve_model(model_spec)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch.float32)
        model, tokenizer = model.to(default_device()), load_tokenizer(path)
    else:
        model, tokenizer = load_model(model_spec, dtype="fp32")
    task = get_benchmark("tofu").unlearning_data("forget01", PromptTemplate(), data_dir)
    method_class = get_method(method)
    settings = {"batch_size": batch_size, "grad_accum": 1, "dtype": dtype, "warmup_ratio": 0.0,
                "gradient_checkpointing": gradient_checkpointing}
    for max_steps in ([1] if default_device() == "cuda" else []) + [steps]:
        config = build_config(method_class.config_class, {**settings, "max_steps": max_steps})
        result = method_class(config).unlearn(model, tokenizer, task)
    return result.record


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--dtypes", default=None, help="comma list of fp32, bf16 (default: fp32, plus bf16 "
                                                        "where the hardware has bf16 units)")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--gradient-checkpointing", choices=("off", "on", "both"), default="off")
    args = parser.parse_args()

    from ulmr.hardware import default_device, fast_dtype, matmul_flops

    device = default_device()
    native_bf16 = fast_dtype() == torch.bfloat16
    dtypes = args.dtypes.split(",") if args.dtypes else ["fp32"] + (["bf16"] if native_bf16 else [])
    rates = {"fp32": matmul_flops(torch.float32), "bf16": matmul_flops(torch.bfloat16)}
    print(f"model {args.model}{' (random init)' if args.random_init else ''} on {device}; matmul "
          f"fp32 {rates['fp32'] / 1e12:.3g} TFLOP/s, bf16 {rates['bf16'] / 1e12:.3g} TFLOP/s; TOFU forget01, "
          f"batch {args.batch_size}, {args.steps} timed step(s)")
    if "bf16" not in dtypes:
        print("bf16 skipped: this hardware has no native bf16 (force it with --dtypes fp32,bf16)")
    checkpointing = {"off": [False], "on": [True], "both": [False, True]}[args.gradient_checkpointing]
    header = (f"{'method':<10}{'dtype':<7}{'ckpt':<6}{'tokens':>8}{'sec':>9}{'tok/s':>10}{'floor s':>10}{'% floor':>9}"
              f"{'peak MiB':>10}")
    print(header)
    print("-" * len(header))
    spawn = multiprocessing.get_context("spawn")  # CUDA-safe
    for method in args.methods.split(","):
        for dtype in dtypes:
            for recompute in checkpointing:
                with ProcessPoolExecutor(1, mp_context=spawn) as fresh_process:
                    record = fresh_process.submit(run_one, args.model, args.random_init, args.data_dir, method,
                                                  dtype, args.steps, args.batch_size, recompute).result()
                floor = 6 * record["trainable_params"] * record["tokens"] / rates[dtype]
                print(f"{method:<10}{dtype:<7}{'on' if recompute else 'off':<6}{record['tokens']:>8}"
                      f"{record['time_s']:>9.2f}{record['tokens_per_s']:>10.0f}{floor:>10.3f}"
                      f"{100 * floor / record['time_s']:>8.1f}%{record['peak_memory_bytes'] / 2**20:>10.0f}")


if __name__ == "__main__":
    main()
