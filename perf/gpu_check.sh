#!/usr/bin/env bash
# The prepared GPU check, run once on a lent GPU machine (no network there):
#   .device/ (ignored by git, carried) holds the wheels the machine lacks, TOFU forget01's files and
#   SmolLM2-135M's config and tokenizer. The weights cannot travel (over the 64 MiB carry limit), so
#   the model is SmolLM2-135M's architecture with seeded random weights: the timings are real, the
#   metrics are not. In order (the most wanted first, should the lease run out): lm-eval's own hf
#   backend against our fast backend on a slice, `unlearn --method ga` and `--method ulmr` in bf16,
#   the fast backend (bf16) on the whole forget01 suite, and whether vLLM is there.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -m pip install -q --no-deps --no-index .device/wheels/*.whl
python3 -c "import datasets" 2>/dev/null || python3 -m pip install -q --no-deps --no-index .device/fallback/*.whl
python3 -m pip install -q --no-deps --no-build-isolation -e .  # registers the baselines' entry point
export ULMR_DATA_DIR=$PWD/.device/data ULMR_CACHE=/tmp/ulmr-cache
python3 -c "import torch, transformers, lm_eval, datasets; print('torch', torch.__version__, 'transformers', transformers.__version__, 'lm_eval', lm_eval.__version__, 'datasets', datasets.__version__)"
python3 - <<'PY'
import shutil, torch
from transformers import AutoConfig, AutoModelForCausalLM
config = AutoConfig.from_pretrained(".device/tokenizer")
torch.manual_seed(0)
AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained("/tmp/smol-random")
for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
    shutil.copy(f".device/tokenizer/{f}", "/tmp/smol-random/")
print("built /tmp/smol-random")
PY
MODEL=/tmp/smol-random

bench_eval() {  # ARGS...: bench_eval.py on MODEL in bf16, batch 64, without progress bars
  python3 perf/bench_eval.py --model "$MODEL" --data-dir "$ULMR_DATA_DIR" --batch-size 64 --dtype bf16 "$@" 2>&1 \
    | grep -v "it/s\]\|Custom kwargs\|For example"
}

timed_unlearn() {  # METHOD [--set KEY=VALUE]...: bf16 unlearning of forget01, then its timings record
  local method=$1; shift
  /usr/bin/time -v python3 -m ulmr unlearn --method "$method" --model "$MODEL" --split forget01 \
      --output "/tmp/$method" --set dtype=bf16 "$@" 2>&1 \
    | grep -v "it/s\]" | grep -E "steps in|checkpoint|Elapsed|Maximum resident|rror"
  python3 -c "import json, sys; r = json.load(open(sys.argv[1])); print({k: r[k] for k in ('generation_time_s', 'steps', 'time_s', 'tokens', 'tokens_per_s', 'peak_memory_bytes', 'compute_dtype', 'device') if k in r})" \
    "/tmp/$method/unlearn.json"
}

echo "== lm-eval hf backend, bf16, first 40 docs per task"
bench_eval --limit 40 --backend hf
echo "== fast backend, bf16, first 40 docs per task"
bench_eval --limit 40
echo "== unlearn ga, bf16 autocast"
timed_unlearn ga
echo "== unlearn ulmr (rewrite, generate negatives, fine-tune, average), bf16 autocast"
timed_unlearn ulmr --set k=2 --set epochs=2 --set alpha=0.5
echo "== fast backend, bf16, whole forget01 suite"
bench_eval
echo "== vLLM"
python3 -c "import vllm; print('vllm', vllm.__version__)" 2>&1 | tail -1
