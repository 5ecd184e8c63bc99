#!/usr/bin/env bash
# GPU smoke run: the tiny profile's three training branches (cold start, strong SFT, GRPO) on CUDA and
# then on the CPU, printing median step time, tokens/s and the CPU/CUDA ratio (bench/train_speed.py).
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
echo "gpu_smoke: done in $(( $(date +%s) - start )) s"
