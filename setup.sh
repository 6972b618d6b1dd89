#!/usr/bin/env bash
# Set up from nothing: a virtual environment in .venv with ulmr-bench and its test tools.
# On machines without a GPU the CPU build of torch is installed first, so that no multi-GB CUDA
# build is pulled in; on a GPU machine set ULMR_TORCH to the build you want (e.g. "torch") and
# add the vLLM extra with: .venv/bin/pip install -e '.[vllm]'.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet "${ULMR_TORCH:-torch==2.13.0}"
.venv/bin/pip install --quiet -e '.[dev]'
