#!/usr/bin/env bash
# GPU smoke run: the tiny profile's three training branches (cold start, strong SFT, GRPO) on CUDA and
# then on the CPU, printing median step time, tokens/s and the CPU/CUDA ratio (bench/train_speed.py); then
# the rehearsal (the paper profile's code paths, tests/test_rehearsal.py) on CUDA.
# Needs data/prepared, models/base and models/embedder: run `dvc repro embedder` first (a GPU machine
# without DVC can be handed those folders). A few minutes in all; extra arguments go to train_speed.py,
# e.g. `bash bench/gpu_smoke.sh --sft-steps 60 --grpo-steps 20 --out speed.json`.
set -euo pipefail
cd "$(dirname "$0")/.."

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MLFLOW_DISABLE_TELEMETRY=true
export PYTHON="${PYTHON:-python}"

if ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_smoke: torch sees no CUDA device; for the CPU numbers alone run:" >&2
    echo "  $PYTHON bench/train_speed.py --devices cpu" >&2
    exit 2
fi
for need in data/prepared/mt/train.jsonl models/base/config.json models/embedder/modules.json; do
    if [ ! -f "$need" ]; then
        echo "gpu_smoke: $need missing; run \`dvc repro embedder\` first" >&2
        exit 2
    fi
done
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

start=$(date +%s)
"$PYTHON" bench/train_speed.py --devices cuda,cpu "$@"
echo "gpu_smoke: train_speed done in $(( $(date +%s) - start )) s"

# The paper profile's code paths on CUDA (bf16 native there): the rehearsal tier, its stage times printed.
# REHEARSAL=0 skips it. The real recipe's step times (Qwen3-4B, for check.budget.throughput) need the hub
# and a prepared zh-bo corpus of the paper's size: after a `make run PROFILE=paper-1gpu-day` has trained,
# `python bench/budget_vs_run.py --workspace .` sets each stage against its estimate.
if [ "${REHEARSAL:-1}" = 1 ]; then
    "$PYTHON" -m pytest -p no:cacheprovider -m rehearsal tests/test_rehearsal.py -s -q
fi
echo "gpu_smoke: done in $(( $(date +%s) - start )) s"
