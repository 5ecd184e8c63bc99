#!/usr/bin/env bash
# Screenshots of the Prefect and MLflow UIs for the README, taken by headless Chromium (Debian package
# `chromium`) against the servers of `semrl up`, after a `dvc repro` (training steps with their logs, the
# runs to compare) and a deployment run with `evaluate: true` (the report artifact).
#   bash docs/take_screenshots.sh [prefect-url] [mlflow-url]
set -euo pipefail
prefect=${1:-http://127.0.0.1:4200}
mlflow=${2:-http://127.0.0.1:5000}
out=docs/screenshots
shot() {  # url file [height]
  chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync --hide-scrollbars \
    --user-data-dir="$(mktemp -d)" --window-size=1400,${3:-860} --virtual-time-budget=20000 \
    --screenshot="$2" "$1" 2>/dev/null
}
# What to show: the newest step that trained (its logs), the report artifact, two runs to compare.
read -r task_run artifact < <(PREFECT_API_URL=$prefect/api python - <<'EOF'
import asyncio
from prefect.client.orchestration import get_client
from prefect.client.schemas.sorting import TaskRunSort

async def main():
    async with get_client() as c:
        runs = await c.read_task_runs(sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=200)
        done = [t for t in runs if t.state and t.state.is_completed()]
        step = next((t for t in done if t.name == "mt-grpo-s0"), next((t for t in done if t.name.startswith("dvc-exp-run")), done[0]))
        art = await c.read_latest_artifacts()
        report = next((a for a in art if a.key == "alignment-tax"), None)
        print(step.id, report.latest_id if report else "none")
asyncio.run(main())
EOF
)
read -r experiment compare < <(MLFLOW_TRACKING_URI=$mlflow python - <<'EOF'
import json, urllib.parse
import mlflow
exp = mlflow.get_experiment_by_name("semrl")
runs = {}
for r in mlflow.search_runs([exp.experiment_id], output_format="list", order_by=["attributes.start_time DESC"],
                            filter_string="tags.`semrl.task` = 'mt' and tags.`semrl.seed` = '0'"):
    if "eval/chrf" in r.data.metrics:
        runs.setdefault(r.data.tags["semrl.method"], r.info.run_id)
ids = [runs["sft"], runs["grpo"]]
print(exp.experiment_id, urllib.parse.quote(json.dumps(ids)) + "&experiments=" + urllib.parse.quote(json.dumps([exp.experiment_id])))
EOF
)
shot "$prefect/deployments" "$out/prefect-deployments.png"
shot "$prefect/runs/task-run/$task_run" "$out/prefect-step-logs.png" 1000
[ "$artifact" = none ] || shot "$prefect/artifacts/artifact/$artifact" "$out/prefect-report-artifact.png" 1100
shot "$mlflow/#/experiments/$experiment/runs" "$out/mlflow-experiment.png"
shot "$mlflow/#/compare-runs?runs=$compare" "$out/mlflow-compare-sft-grpo.png" 3400
ls -la "$out"
