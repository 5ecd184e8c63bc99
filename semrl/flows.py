"""Prefect flow `expansion`: for each task and seed, the cold start, then strong SFT and GRPO (and any
enabled reward ablations) as sibling branches that run concurrently.

Each step runs `semrl train` in its own process: branches really run in parallel (no GIL, no shared
torch or accelerate state), a crash stays in its branch, and a killed step resumes from its checkpoint
when the flow is rerun. One MLflow parent run per flow run holds the steps as nested runs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from semrl.io import atomic_write_text, load_params
from semrl.train import PARENT_RUN_ENV, methods, output_dir, run_name


class BranchFailed(RuntimeError):
    """A training step exited non-zero (its MLflow run is FAILED or KILLED; its log says why)."""


@task(name="train-step", task_run_name="{task_name}-{method}-s{seed}", cache_policy=None)
def train_step(task_name: str, method: str, seed: int, params_path: str, parent_run_id: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "semrl.cli", "train", "--task", task_name, "--method", method,
           "--seed", str(seed), "--params", params_path]
    start = time.time()
    proc = subprocess.run(cmd, env={**os.environ, PARENT_RUN_ENV: parent_run_id})
    end = time.time()
    if proc.returncode != 0:
        raise BranchFailed(f"{run_name(task_name, method, seed)} exited with {proc.returncode}")
    summary_file = output_dir(load_params(params_path), task_name, method, seed) / "summary.json"
    return {**json.loads(summary_file.read_text()), "start": start, "end": end}


@flow(name="expansion", task_runner=ThreadPoolTaskRunner(max_workers=16), log_prints=True)
def expansion(tasks: list[str] | None = None, seeds: list[int] | None = None,
              params_path: str = "params.yaml") -> list[dict[str, Any]]:
    """Cold start -> {strong SFT || GRPO || ablations} for every task x seed; returns each step's summary
    with its start/end times, also written to models/<task>/flow_run.json."""
    from prefect.runtime import flow_run

    from semrl import tracking

    params = load_params(params_path)
    tasks = list(tasks or params["train"]["tasks"])
    seeds = [int(s) for s in (seeds if seeds is not None else params["train"]["seeds"])]
    name = f"expansion-{flow_run.get_name() or 'local'}"
    with tracking.run(params, name, tags={"semrl.flow_run_id": str(flow_run.get_id()), "semrl.kind": "flow"},
                      log_params={"tasks": tasks, "seeds": seeds, "methods": methods(params)}) as parent:
        futures = []
        for task_name in tasks:
            for seed in seeds:
                cold = train_step.submit(task_name, "coldstart", seed, params_path, parent.info.run_id)
                futures.append(cold)
                futures += [train_step.submit(task_name, m, seed, params_path, parent.info.run_id, wait_for=[cold])
                            for m in methods(params)]
        wait(futures)
        results, failures = [], []
        for f in futures:
            state = f.state
            if state.is_completed():
                results.append(f.result())
            else:
                failures.append(f"{f.task_run_id}: {state.message or state.name}")
        for task_name in tasks:
            mine = [r for r in results if r["task"] == task_name]
            path = Path(params["train"]["out_dir"]) / task_name / "flow_run.json"
            atomic_write_text(path, json.dumps(mine, indent=2) + "\n")
        if failures:
            raise BranchFailed(f"{len(failures)} of {len(futures)} training steps failed: " + "; ".join(failures))
    return results
