"""What the machine is good at: device and the compute dtype that is actually fast on it."""

from __future__ import annotations

import functools
import os

import torch


@functools.cache
def cpu_has_bf16_units() -> bool:
    """True when the CPU has bf16 matrix instructions (AMX or AVX512-BF16).

    Without them PyTorch emulates bf16 matmuls, which measured 20-100x slower than fp32 on an
    AVX2-only EPYC here, so "bf16 where the hardware has it" must be a real check. ULMR_CPU_BF16=0
    (or 1) overrides it, for this process and those it starts (perf/as_avx2_cpu.py sets 0).
    """
    if os.environ.get("ULMR_CPU_BF16") in ("0", "1"):
        return os.environ["ULMR_CPU_BF16"] == "1"
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


# ---- processes of a data-parallel launch (`accelerate launch`, torchrun) -----------------------

def launched_processes() -> int:
    """How many processes the launcher started (torchrun/accelerate launch: WORLD_SIZE; mpirun: its
    own variables), read as accelerate reads them; 1 without a launcher."""
    from accelerate.utils import get_int_from_env

    return max(1, get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1))


def join_launched_processes(device: str) -> tuple[int, int, str]:
    """This process's (rank, number of processes, device) in a data-parallel launch, the process group
    joined (on CPU processes too: gloo); (0, 1, device) without a launcher. On GPUs each process takes
    its own (cuda:<local rank>)."""
    launched = launched_processes()
    if launched == 1:
        return 0, 1, device
    from accelerate import PartialState

    from ulmr.errors import UlmrError

    # without cpu=True accelerate makes N processes on a machine without GPUs N single-process runs
    state = PartialState(cpu=device.startswith("cpu"))
    if state.num_processes != launched:
        raise UlmrError(f"{launched} processes were launched but accelerate set up {state.num_processes} per run, so "
                        "each would work alone on all the data: on a machine without GPUs pass --device cpu")
    return state.process_index, state.num_processes, str(state.device)


def is_main_process() -> bool:
    """False on every process of a data-parallel launch but the first (which writes the outputs)."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) \
        or torch.distributed.get_rank() == 0


def broadcast_object(obj, rank: int, world_size: int):
    """The first process's `obj`, on every process of the launch."""
    if world_size == 1:
        return obj
    box = [obj if rank == 0 else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (Linux reports ru_maxrss in KiB)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def release_freed_memory() -> None:
    """Collect garbage and hand the heap's free pages back to the OS (glibc's malloc_trim; nothing
    elsewhere). glibc keeps freed memory below the heap's top in the process, so an evaluation or a
    training loop that allocated gigabytes leaves its successor starting from that high-water mark:
    on the quick profile a TOFU evaluation left 1.85 GB resident that trimming brought to 0.72 GB.
    Called between stages; the pages come back from the OS when the next stage touches them."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return
    trim(0)


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
