"""What the machine is good at: device and the compute dtype that is actually fast on it."""

from __future__ import annotations

import functools

import torch


@functools.cache
def cpu_has_bf16_units() -> bool:
    """True when the CPU has bf16 matrix instructions (AMX or AVX512-BF16).

    Without them PyTorch emulates bf16 matmuls, which measured 20-100x slower than fp32 on an
    AVX2-only EPYC here, so "bf16 where the hardware has it" must be a real check.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("amx_bf16", "avx512_bf16"))


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def fast_dtype(device: str | None = None) -> torch.dtype:
    """bf16 where the hardware computes it natively, else fp32."""
    device = device or default_device()
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_bf16_units() else torch.float32


def resolve_dtype(name: str, device: str | None = None) -> torch.dtype:
    """'auto' | 'bf16' | 'fp32' | 'fp16' (and torch spellings) -> torch dtype."""
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32,
             "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16}
    if name == "auto":
        return fast_dtype(device)
    if name not in table:
        from ulmr.errors import UlmrError
        raise UlmrError(f"unknown dtype {name!r}: use auto, bf16, fp16 or fp32")
    return table[name]


# short names of the compute dtypes, for folder names and tables
DTYPE_TAGS = {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16"}


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (Linux reports ru_maxrss in KiB)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024



def matmul_flops(dtype: torch.dtype, device: str | None = None, seconds: float = 0.5) -> float:
    """Measured dense matmul rate (FLOP/s) in `dtype` on `device`, for about `seconds`: the
    denominator of a benchmark's FLOP floor. Square products of 4096 on a GPU, 512 on a CPU (where
    emulated bf16 is ~50x slower than fp32 and a larger product takes seconds)."""
    import time

    device = device or default_device()
    size = 4096 if device.startswith("cuda") else 512
    a = torch.randn(size, size, device=device).to(dtype)
    a @ a  # warm-up: kernel selection, allocator
    count, start = 0, time.perf_counter()
    while count < 3 or time.perf_counter() - start < seconds:
        a @ a
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        count += 1
    return 2 * size ** 3 * count / (time.perf_counter() - start)
