#!/usr/bin/env bash
# The committed quick-profile leaderboard: every registered method x seeds 0,1,2 on TOFU forget01
# and RWKU target 1, with the learning rates of ulmr/profiles/quick.yaml, which come from
#   ulmr-bench tune --benchmarks <b> --methods all --data-dir ../shared/data --results-dir RESULTS_DIR
# (tables in leaderboard/tuning/). `--jobs 2`: two processes share the rows, each with half the cores
# (on the 2-core development CPU, one thread each). Resumable: run it again and it skips every stored
# result.
#
#   bash leaderboard/run_quick.sh [RESULTS_DIR] [BENCHMARKS]
#     RESULTS_DIR: default results (the log beside the results); BENCHMARKS: default "tofu,rwku"
#     ULMR_PYTHON: the interpreter (default .venv/bin/python); the code run is this checkout's
#     (`python -m ulmr` from its root), so a git worktree without a venv can borrow another's
#
# Then copy the result JSONs and gzipped samples (for the per-question errors) to leaderboard/results
# and regenerate:
#   (cd RESULTS_DIR && for f in */*/*.json */*/*.samples.jsonl; do install -D -m 644 "$f" "$OLDPWD/leaderboard/results/$f"; done)
#   gzip -9 -n leaderboard/results/*/*/*.samples.jsonl
#   ulmr-bench leaderboard --results-dir leaderboard/results --output leaderboard
set -euo pipefail
cd "$(dirname "$0")/.."
results=${1:-results}
data=${ULMR_DATA_DIR:-../shared/data}
python=${ULMR_PYTHON:-.venv/bin/python}
mkdir -p "$results"
"$python" -m ulmr run --benchmarks "${2:-tofu,rwku}" --methods all --seeds 0,1,2 --jobs 2 --data-dir "$data" \
  --results-dir "$results" > "$results/run.log" 2>&1
