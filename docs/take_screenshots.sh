#!/usr/bin/env bash
# Screenshots of the Prefect and MLflow UIs for the README, taken by headless Chromium (Debian package
# `chromium`) against the servers of `semrl up`, after `semrl serve` has registered the deployment.
#   bash docs/take_screenshots.sh [prefect-url] [mlflow-url]
set -euo pipefail
prefect=${1:-http://127.0.0.1:4200}
mlflow=${2:-http://127.0.0.1:5000}
out=docs/screenshots
shot() {  # url file
  chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync --hide-scrollbars \
    --user-data-dir="$(mktemp -d)" --window-size=1400,860 --virtual-time-budget=15000 \
    --screenshot="$2" "$1" 2>/dev/null
}
shot "$prefect/deployments" "$out/prefect-deployments.png"
shot "$mlflow/#/experiments/$(MLFLOW_TRACKING_URI=$mlflow python -c 'import mlflow; print(mlflow.get_experiment_by_name("semrl").experiment_id)')/runs" \
  "$out/mlflow-experiment.png"
ls -la "$out"
