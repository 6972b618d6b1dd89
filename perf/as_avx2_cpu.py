"""Run `ulmr-bench` as a CPU with AVX2 only would, on a CPU that has more (AVX512, bf16 units).

    python perf/as_avx2_cpu.py run --methods ulmr,ga,npo --data-dir ../shared/data --results-dir R

Every argument goes to `ulmr-bench`. The quick profile's wall-time goals are set on a 2-core CPU
with AVX2 only, where bf16 is emulated and `dtype=auto` resolves to fp32. This caps the kernel
libraries torch uses at AVX2 (ATen's vectorised kernels, MKL's GEMMs, oneDNN) and makes `auto`
resolve as it would there, so the same work runs on the same kind of kernels. It does not
reproduce that machine's clock, caches or memory bandwidth: its figures are a proxy, to be named
as one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# read when torch and its libraries load, so set before anything imports torch; ULMR_CPU_BF16=0 is
# what /proc/cpuinfo says on the AVX2-only CPU. In the environment, so that the processes
# `run --jobs` starts run the same way.
os.environ.update(ATEN_CPU_CAPABILITY="avx2", MKL_ENABLE_INSTRUCTIONS="AVX2", ONEDNN_MAX_CPU_ISA="AVX2",
                  ULMR_CPU_BF16="0")
# this checkout's packages, not an installed copy's (the venv may hold another worktree's)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ulmr.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
