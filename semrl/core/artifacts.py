"""The files a training step leaves beside its model (models/<task>/<method>/seed<k>/), named once: the
trainers write them, the flow, evaluation and the report read them (so evaluation never imports training)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SUMMARY_FILE = "summary.json"        # what the step did: steps, seconds, examples, its MLflow run
TRAJECTORY_FILE = "trajectory.jsonl"  # the branch scored along training (train.trajectory)
TAU_FILE = "tau.json"                # GRPO's tau calibration and the reward diagnostics at the branch point
GATE_FILE = "gate.json"              # the cold-start gate's checks and outcome (train.coldstart.gate)
INPUTS_FILE = "inputs.json"          # everything that shaped these outputs, and its key (written last)


def read_points(path: Path) -> list[dict[str, Any]]:
    """The trajectory's points (one JSON object a line); none when the file is missing."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
