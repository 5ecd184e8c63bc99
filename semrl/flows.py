"""Prefect flow `expansion`: for each task and seed, the cold start, then strong SFT and GRPO (and any
enabled reward ablations) as sibling branches that run concurrently; optionally evaluation and the report.

Each step runs the `semrl` CLI in its own process: branches really run in parallel (no GIL, no shared
torch or accelerate state), a crash stays in its branch, and a killed step resumes from its checkpoint
when retried or rerun. Prefect retries a step only when its process was killed by a signal or exited
with EX_TEMPFAIL (75) — an error in the data, the config or the code fails the same way twice and is not
retried. One MLflow parent run per flow run holds the steps as nested runs.
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

from semrl.io import atomic_write_text, deep_merge, load_params
from semrl.train import PARENT_RUN_ENV, methods, output_dir, run_name

EX_TEMPFAIL = 75


class StepFailed(RuntimeError):
    """A step exited non-zero; its MLflow run is FAILED or KILLED and its own output says why."""

    def __init__(self, message: str, returncode: int):
        super().__init__(message)
        self.returncode = returncode


def transient(task, task_run, state) -> bool:
    """Retry condition: only a step killed by a signal (OOM killer, preemption) or exiting EX_TEMPFAIL."""
    exc = state.data
    return isinstance(exc, StepFailed) and (exc.returncode < 0 or exc.returncode == EX_TEMPFAIL)


def _cli(args: list[str], parent_run_id: str, label: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "semrl.cli", *args], env={**os.environ, PARENT_RUN_ENV: parent_run_id})
    if proc.returncode != 0:
        raise StepFailed(f"{label} exited with {proc.returncode}", proc.returncode)


@task(name="train-step", task_run_name="{task_name}-{method}-s{seed}", cache_policy=None,
      retry_condition_fn=transient)
def train_step(task_name: str, method: str, seed: int, params_path: str, parent_run_id: str) -> dict[str, Any]:
    start = time.time()
    _cli(["train", "--task", task_name, "--method", method, "--seed", str(seed), "--params", params_path],
         parent_run_id, run_name(task_name, method, seed))
    summary_file = output_dir(load_params(params_path), task_name, method, seed) / "summary.json"
    return {**json.loads(summary_file.read_text()), "start": start, "end": time.time()}


@task(name="evaluate-step", task_run_name="evaluate-{task_name}", cache_policy=None, retry_condition_fn=transient)
def evaluate_step(task_name: str, params_path: str, parent_run_id: str) -> str:
    _cli(["evaluate", "--task", task_name, "--params", params_path], parent_run_id, f"evaluate-{task_name}")
    return task_name


@task(name="report-step", cache_policy=None, retry_condition_fn=transient)
def report_step(params_path: str, parent_run_id: str) -> str:
    _cli(["transfer", "--params", params_path], parent_run_id, "transfer")
    _cli(["report", "--params", params_path], parent_run_id, "report")
    return str(Path(load_params(params_path)["report"]["out_dir"]) / "alignment_tax.md")


def run_params(params_path: str, profile: str | None, run_id: str) -> str:
    """The params file a run uses: params_path, or it with configs/<profile>.yaml merged in (saved per run,
    so a scheduled and a manual run with different profiles never see each other's settings)."""
    params = load_params(params_path)
    if not profile or profile == params.get("profile"):
        return params_path
    overlay = Path("configs") / f"{profile}.yaml"
    merged = deep_merge(params, {**load_params(overlay), "profile": profile})
    path = Path(".semrl") / "params" / f"{run_id}.yaml"
    import yaml

    atomic_write_text(path, yaml.safe_dump(merged, sort_keys=False, allow_unicode=True))
    return str(path)


@flow(name="expansion", task_runner=ThreadPoolTaskRunner(max_workers=16), log_prints=True)
def expansion(tasks: list[str] | None = None, seeds: list[int] | None = None, params_path: str = "params.yaml",
              profile: str | None = None, evaluate: bool = False) -> list[dict[str, Any]]:
    """Cold start -> {strong SFT || GRPO || ablations} for every task x seed, then (evaluate=True) each
    task's evaluation and the report. Returns each training step's summary with start/end times, also
    written to models/<task>/flow_run.json."""
    from prefect.runtime import flow_run

    from semrl import tracking

    run_id = str(flow_run.get_id() or "local")
    params_path = run_params(params_path, profile, run_id)
    params = load_params(params_path)
    tasks = list(tasks or params["train"]["tasks"])
    seeds = [int(s) for s in (seeds if seeds is not None else params["train"]["seeds"])]
    retry = {"retries": int(params["flow"]["retries"]), "retry_delay_seconds": float(params["flow"]["retry_delay_s"])}
    step = train_step.with_options(**retry)
    name = f"expansion-{flow_run.get_name() or 'local'}"
    with tracking.run(params, name, tags={"semrl.flow_run_id": run_id, "semrl.kind": "flow"},
                      log_params={"tasks": tasks, "seeds": seeds, "methods": methods(params), "profile": profile,
                                  "params_path": params_path}) as parent:
        parent_id = parent.info.run_id
        futures, by_task = [], {}
        for task_name in tasks:
            for seed in seeds:
                cold = step.submit(task_name, "coldstart", seed, params_path, parent_id)
                branch = [step.submit(task_name, m, seed, params_path, parent_id, wait_for=[cold])
                          for m in methods(params)]
                futures += [cold, *branch]
                by_task.setdefault(task_name, []).extend([cold, *branch])
        evals = [evaluate_step.with_options(**retry).submit(t, params_path, parent_id, wait_for=by_task[t])
                 for t in tasks] if evaluate else []
        report = [report_step.with_options(**retry).submit(params_path, parent_id, wait_for=evals)] if evaluate else []
        wait(futures + evals + report)
        results, failures = [], []
        for f in futures + evals + report:
            if f.state.is_completed():
                if f in futures:
                    results.append(f.result())
            else:
                failures.append(f.state.message or f.state.name)
        for task_name in tasks:
            mine = [r for r in results if r["task"] == task_name]
            atomic_write_text(Path(params["train"]["out_dir"]) / task_name / "flow_run.json",
                              json.dumps(mine, indent=2) + "\n")
        if failures:
            raise StepFailed(f"{len(failures)} of {len(futures + evals + report)} steps failed: " + "; ".join(failures),
                             1)
    return results
