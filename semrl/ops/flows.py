"""Prefect flows. `expansion`: for each task and seed, the cold start, then strong SFT and GRPO (and any
enabled reward ablations) as sibling branches that run concurrently, each reused when its inputs are
unchanged; optionally evaluation and the report. The DVC stage train@<task> runs it for one task.
`experiment`: the whole pipeline as a DVC experiment (`dvc exp run --temp`), what the deployment runs.

Each step runs a library function (STEPS) in its own process (semrl.ops.steps: forked from a warm server that
imported the ML stack once per flow): branches really run in parallel (no GIL, no shared torch or
accelerate state), a crash stays in its branch, and a killed step resumes from its checkpoint when
retried or rerun. Prefect retries a step only when its process was killed by a signal or exited
with EX_TEMPFAIL (75) — an error in the data, the config or the code fails the same way twice and is not
retried. One MLflow parent run per flow run holds the steps as nested runs.
"""
from __future__ import annotations

import collections
import contextlib
import itertools
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from semrl import SemrlError
from semrl.core.artifacts import SUMMARY_FILE
from semrl.core.config import Config, deep_merge, load_config, profile_overlay, read_yaml, write_config
from semrl.core.io import atomic_write_text
from semrl.core.methods import (COLDSTART, TRAINING_STAGES, Method, branches, get_method, methods, output_dir,
                                run_name, stage_dir)
from semrl.core.tasks import data_problems
from semrl.core.tracking import PARENT_RUN_ENV
from semrl.ops import steps
from semrl.ops.liveness import FLOW_PID_ENV, this_process, watch_prefect_api

EX_TEMPFAIL = 75


class StepFailed(RuntimeError):
    """A step exited non-zero; its MLflow run is FAILED or KILLED and its own output says why."""

    def __init__(self, message: str, returncode: int):
        super().__init__(message)
        self.returncode = returncode


def transient(task, task_run, state) -> bool:
    """Retry condition: only a step killed by a signal (OOM killer, preemption) or exiting EX_TEMPFAIL."""
    exc = state.data
    if steps.STOPPING.is_set():  # the flow itself is being stopped: a step it killed is not retried
        return False
    return isinstance(exc, StepFailed) and (exc.returncode < 0 or exc.returncode == EX_TEMPFAIL)


def visible_gpus(cfg: Config) -> list[str]:
    """The GPUs the flow hands out: flow.devices, else CUDA_VISIBLE_DEVICES, else every GPU torch sees."""
    if cfg.flow.devices is not None:
        return [str(d) for d in cfg.flow.devices]
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    import torch  # device_count() asks NVML: no CUDA context in the flow process

    return [str(i) for i in range(torch.cuda.device_count())]


class DeviceSlots:
    """Placement of a flow run's steps. On GPUs a slot is a group of flow.gpus_per_step devices, offered
    flow.steps_per_gpu times; a step holds one slot for its whole run and waits while none is free. So on
    one GPU, branches that do not fit together run one after another (the flow still submits them as
    siblings), and with N GPUs each step gets its own. Without a GPU, `cpu_steps` slots (None: no limit)
    cap how many step processes run at once: on a CPU more processes than cores add no speed, only memory
    (each step process holds the ML stack and its models).

    A freed slot goes to the waiting step whose `group` (a task and seed) already has a step running, then to
    the lowest `priority`, then to the earliest. The flow asks seed by seed: a seed's cold start, then its
    branches, the longest (GRPO) before SFT, then the next seed's cold start; once one branch of a seed runs,
    its sibling is next in line, so two CPU slots run a seed's SFT and GRPO side by side."""

    def __init__(self, gpus: list[str], gpus_per_step: int = 1, steps_per_gpu: int = 1, cpu_steps: int | None = None):
        if gpus and len(gpus) < gpus_per_step:
            raise SemrlError(f"flow.gpus_per_step {gpus_per_step}, but only {len(gpus)} GPU(s) visible: {gpus}")
        self.groups = [tuple(gpus[i:i + gpus_per_step]) for i in range(0, len(gpus) - gpus_per_step + 1, gpus_per_step)]
        self.free: list = [group for _ in range(steps_per_gpu) for group in self.groups]
        self.cpu_steps = None if self.groups else cpu_steps
        self.free += [None] * (self.cpu_steps or 0)  # a CPU slot: no device to hand out
        self._cond = threading.Condition()
        self._waiting: list[list] = []  # [priority, arrival, group]
        self._running: collections.Counter = collections.Counter()  # steps holding a slot, per group
        self._arrivals = itertools.count()

    def _next(self) -> list:
        return min(self._waiting, key=lambda w: (0 if w[2] is not None and self._running[w[2]] else 1, w[0], w[1]))

    @contextlib.contextmanager
    def take(self, priority: tuple = (), group: Any = None):
        if not self.groups and not self.cpu_steps:
            yield None
            return
        with self._cond:
            me = [tuple(priority), next(self._arrivals), group]
            self._waiting.append(me)
            while not (self.free and self._next() is me):
                self._cond.wait()
            self._waiting.remove(me)
            slot = self.free.pop(0)
            self._running[group] += 1
            self._cond.notify_all()  # the next in line may find a free slot too
        try:
            yield slot
        finally:
            with self._cond:
                self.free.append(slot)
                self._running[group] -= 1
                self._cond.notify_all()


def cpu_step_limit(cfg: Config) -> int | None:
    """flow.cpu_steps: None -> as many steps as the cores this process may use plus one (make's -j N+1) hold
    at train.torch_threads each, at least 1: a stage's steps are its seeds, and 3 one-thread seeds in 2 slots
    left a core idle for the whole second wave (grpo@mt 231 s against 182 s with 3 slots, the same weights:
    docs/performance.md); 0 -> no limit."""
    if cfg.flow.cpu_steps is not None:
        return cfg.flow.cpu_steps or None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, (cores + 1) // max(1, cfg.train.torch_threads or cores))


def _free_port() -> int:
    """A free local port for a multi-GPU step's rendezvous (two such steps at once must not share 29500)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multi_process_launch(cfg: Config, python: str | None, processes: int) -> list[str]:
    """The launcher of a training step on several devices. With CUDA: `accelerate launch` with
    flow.accelerate_config (DDP, DeepSpeed ZeRO-3). Without (flow.devices named on a CPU machine, e.g. to
    rehearse the multi-GPU path): torchrun, one process per named device, the trainers on gloo — the
    accelerate configs are GPU ones (bf16 mixed precision, DeepSpeed), and accelerate's own MULTI_CPU
    launcher wants MPI for more than one process. Either way the steps read the same WORLD_SIZE /
    LOCAL_RANK and the configured batch stays the global one (trainers.per_process)."""
    import torch  # is_available() asks the driver (NVML) only: no CUDA context in the flow process

    python = str(python or sys.executable)
    if torch.cuda.is_available():
        return [python, "-m", "accelerate.commands.launch", "--config_file", str(cfg.flow.accelerate_config),
                "--num_processes", str(processes), "--main_process_port", str(_free_port())]
    return [python, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(processes),
            "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]


_SLOTS: dict[str, DeviceSlots] = {}  # per flow run (its MLflow parent run id): the steps are its threads


def step_logs() -> Path:
    """.semrl/logs/steps/<flow run id>/<step>.log: each step's whole output (in the project, also for a
    `dvc exp run --temp`, whose workspace is deleted afterwards)."""
    from semrl.core.servers import state_dir

    return state_dir() / "logs" / "steps"


def step_logger() -> logging.Logger:
    """Sends a step's output lines to the Prefect run's logs (the UI), not to the console: the raw output
    already reaches the terminal (semrl.ops.steps.Tail). Called in the task's thread, so Prefect's API
    handler finds the task run it belongs to."""
    from prefect.logging.handlers import APILogHandler

    log = logging.getLogger("semrl.step")
    if not log.handlers:
        log.addHandler(APILogHandler())
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


# The pipeline's steps as the flow runs them: plain library functions, each in a process of its own
# (semrl.ops.steps), never the CLI. `semrl <name>` runs the same functions.
STEPS = {"train": "semrl.training.run:step", "evaluate": "semrl.evaluation.evaluate:step",
         "transfer": "semrl.training.transfer:step", "report": "semrl.evaluation.report:step"}


def _run_step(name: str, kwargs: dict[str, Any], parent_run_id: str, label: str, priority: tuple = (),
              group: Any = None) -> dict[str, Any]:
    """Run one step (STEPS[name] with kwargs, whose `params` is the params file), on a device or CPU slot
    where the flow has them (DeviceSlots); its output goes to the terminal, to
    .semrl/logs/steps/<flow run>/<label>.log and to the Prefect run's logs; past flow.step_timeout_s it is
    stopped. When it ran (after any wait for a slot) and where."""
    from prefect.runtime import flow_run

    cfg = load_config(kwargs["params"])
    log_path = step_logs() / str(flow_run.get_id() or "local") / f"{label}.log"
    log = step_logger()
    io = {"log_path": log_path, "on_line": log.info, "timeout_s": cfg.flow.step_timeout_s}
    slots = _SLOTS.get(parent_run_id) or DeviceSlots([])
    with slots.take(priority, group) as slot:
        start = time.time()
        env = {**os.environ, PARENT_RUN_ENV: parent_run_id, FLOW_PID_ENV: this_process()}
        # flow.step_python: a training step in another environment's interpreter, a process of its own (no fork)
        python = cfg.flow.step_python if name == "train" else None
        own = [str(python), "-m", "semrl.ops.steps", STEPS[name], json.dumps(kwargs)] if python else None
        if slot is None:
            returncode = steps.run_command(own, env, **io) if own else steps.run_call(STEPS[name], kwargs, env, **io)
        else:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(slot)
            print(f"{label}: on GPU {env['CUDA_VISIBLE_DEVICES']}")
            if len(slot) == 1 or name != "train":  # evaluation and transfer use the slot's first device
                env["CUDA_VISIBLE_DEVICES"] = slot[0]
                returncode = steps.run_command(own, env, **io) if own else steps.run_call(STEPS[name], kwargs, env, **io)
            else:  # a training step on several devices: data parallel, one process each (rank 0 tracks and saves)
                launch = multi_process_launch(cfg, python, len(slot))
                print(f"{label}: {len(slot)} processes under {launch[2]}")
                returncode = steps.run_command([*launch, "-m", "semrl.ops.steps", STEPS[name], json.dumps(kwargs)],
                                               env, **io)
    if returncode == steps.TIMED_OUT:
        raise StepFailed(f"{label} timed out after {cfg.flow.step_timeout_s:g} s (flow.step_timeout_s); its log: "
                         f"{log_path}", returncode)
    if returncode != 0:
        raise StepFailed(f"{label} exited with {returncode}; its log: {log_path}", returncode)
    return {"start": start, "end": time.time(), "devices": list(slot) if slot else None}


AFTER_TRAINING = float("inf")  # evaluation and the report wait behind every training step in line


def step_priority(method: Method, seed: int) -> tuple:
    """A training step's place in line for a slot (DeviceSlots: lowest first). Seed by seed: a seed's cold
    start, then GRPO (the longest), then strong SFT, then the reward ablations, all before the next seed's
    cold start: so the two slots a seed's branches get first go to SFT and GRPO side by side (measured in a
    full run: with SFT submitted first, SFT and GRPO of a seed overlapped for 2 s of GRPO's 190)."""
    if method.name == COLDSTART:
        return (seed, 0)
    return (seed, 1, 0 if method.trainer == "grpo" and not method.ablation else 1 if method.trainer == "sft" else 2)


@task(name="train-step", task_run_name="{task_name}-{method}-s{seed}", cache_policy=None,
      retry_condition_fn=transient)
def train_step(task_name: str, method: str, seed: int, params_path: str, parent_run_id: str) -> dict[str, Any]:
    """One (task, method, seed): skipped when it is a branch and its seed's cold start failed its gate (the
    report says so per seed; evaluation scores the seeds it has), reused when its outputs came from exactly
    these inputs (no process, no MLflow run: semrl.training.run.prior_outputs), else trained in a step
    process of its own."""
    import shutil

    from semrl.training.gate import gate_failure
    from semrl.training.run import prior_outputs

    cfg = load_config(params_path)
    out = output_dir(cfg, task_name, method, seed)
    if method != COLDSTART and (why := gate_failure(cfg, output_dir(cfg, task_name, COLDSTART, seed) / "model")):
        shutil.rmtree(out, ignore_errors=True)  # no branch of this seed is scored: not an earlier one either
        print(f"{run_name(task_name, method, seed)}: skipped, {why}")
        now = time.time()
        return {"task": task_name, "method": method, "seed": seed, "skipped": why, "reused": False, "start": now,
                "end": now, "devices": None}
    if (done := prior_outputs(cfg, task_name, method, seed)) is not None:
        now = time.time()
        print(f"{run_name(task_name, method, seed)}: reused (its inputs are unchanged; trained by MLflow run "
              f"{done.get('run_id')})")
        return {**done, "reused": True, "start": now, "end": now, "devices": None}
    priority = step_priority(get_method(cfg, method), seed)
    ran = _run_step("train", {"params": params_path, "task": task_name, "method": method, "seed": seed},
                    parent_run_id, run_name(task_name, method, seed), priority, (task_name, seed))
    summary_file = out / SUMMARY_FILE
    return {**json.loads(summary_file.read_text()), "reused": False, **ran}


@task(name="evaluate-step", task_run_name="evaluate-{task_name}", cache_policy=None, retry_condition_fn=transient)
def evaluate_step(task_name: str, params_path: str, parent_run_id: str) -> str:
    _run_step("evaluate", {"params": params_path, "task": task_name}, parent_run_id, f"evaluate-{task_name}", (AFTER_TRAINING, 0))
    return task_name


@task(name="report-step", cache_policy=None, retry_condition_fn=transient)
def report_step(params_path: str, parent_run_id: str) -> str:
    from prefect.artifacts import create_markdown_artifact

    _run_step("transfer", {"params": params_path}, parent_run_id, "transfer", (AFTER_TRAINING, 1))
    _run_step("report", {"params": params_path}, parent_run_id, "report", (AFTER_TRAINING, 1))
    path = load_config(params_path).report.out_dir / "alignment_tax.md"
    create_markdown_artifact(markdown=report_summary(path.read_text(encoding="utf-8")), key="alignment-tax",
                             description=f"The alignment-tax report's answer and main tables ({path})")
    return str(path)


def report_summary(markdown: str) -> str:
    """The report as a Prefect artifact: everything up to its per-task detail (the answer, the paired
    verdicts), then each task's first table; images are dropped (their paths are relative to the report)."""
    lines = [line for line in markdown.splitlines() if not line.startswith("![")]
    sections = "\n".join(lines).split("\n## ")
    head, rest = sections[0], sections[1:]
    kept = [head] + [s for s in rest if s.startswith("The answer")]
    for s in rest:
        if not s.startswith("The answer") and "\n|" in s:
            title, body = s.split("\n", 1)
            table = [b for b in body.split("\n\n") if b.lstrip().startswith("|")][:1]
            kept.append(title + "\n\n" + "\n\n".join(table))
    return "\n## ".join(kept)


def step_tags(kind: str, gpus: list[str]) -> list[str]:
    """A step's Prefect tags (flow.tag_limits caps them): semrl, its kind (train, evaluate, dvc), gpu on a GPU."""
    return ["semrl", kind, *(["gpu"] if gpus else [])]


def set_tag_limits(cfg: Config) -> None:
    """flow.tag_limits onto the Prefect server or database this flow run reports to (an upsert: the params
    are the truth). They hold across flow runs there: a scheduled and a manual run share one GPU's limit."""
    if not cfg.flow.tag_limits:
        return
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for tag, limit in cfg.flow.tag_limits.items():
            client.create_concurrency_limit(tag=tag, concurrency_limit=limit)
    print("tag concurrency limits: " + ", ".join(f"{t} {n}" for t, n in cfg.flow.tag_limits.items()))


def run_params(params_path: str, profile: str | None, run_id: str) -> str:
    """The params file a run uses: params_path, or it with configs/<profile>.yaml merged in (saved per run,
    so a scheduled and a manual run with different profiles never see each other's settings)."""
    params = read_yaml(params_path)
    if not profile or profile == params.get("profile"):
        return params_path
    merged = deep_merge(params, {**read_yaml(profile_overlay(profile)), "profile": profile})
    path = Path(".semrl") / "params" / f"{run_id}.yaml"
    write_config(path, merged)
    load_config(path)  # validated before any step starts
    return str(path)


def prune_outputs(cfg: Config, task: str, seeds: list[int]) -> list[Path]:
    """Remove what the params no longer make from a task's training folders (DVC keeps them between runs,
    `persist`, so that unchanged branches are reused): other seeds' folders, disabled ablations'. Returns
    what it removed."""
    import shutil

    keep = {output_dir(cfg, task, m, s).resolve() for m in [get_method(cfg, COLDSTART), *branches(cfg)] for s in seeds}
    removed = []
    for stage_name in TRAINING_STAGES:
        root = stage_dir(cfg, task, stage_name)
        for folder in sorted(root.glob("seed*")) + sorted(root.glob("*/seed*")):
            if folder.is_dir() and folder.resolve() not in keep:
                shutil.rmtree(folder)
                removed.append(folder)
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not any(p.iterdir())) if root.is_dir() else []:
            folder.rmdir()  # an ablation's folder left empty
    return removed


def flow_records(cfg: Config, task: str, stage_name: str, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """models/<task>/<stage>/flow_run.json's new content: each step's record, where a reused step keeps the
    record of the run that made its outputs (so unchanged branches leave their DVC output unchanged)."""
    path = stage_dir(cfg, task, stage_name) / "flow_run.json"
    before = {(r["method"], r["seed"]): r for r in json.loads(path.read_text(encoding="utf-8"))} if path.is_file() else {}
    mine = {(r["method"], r["seed"]): before.get((r["method"], r["seed"]), r) if r["reused"] else r
            for r in results if r["task"] == task and get_method(cfg, r["method"]).stage == stage_name}
    known = methods(cfg)
    for key, r in before.items():  # seeds this run left alone (`semrl flow --seed 0`) keep their records
        if key not in mine and key[0] in known and output_dir(cfg, task, key[0], key[1]).is_dir():
            mine[key] = r
    return [mine[k] for k in sorted(mine)]


@flow(name="expansion", log_prints=True)
def expansion(tasks: list[str] | None = None, seeds: list[int] | None = None, params_path: str = "params.yaml",
              profile: str | None = None, evaluate: bool = False, prune: bool = False) -> list[dict[str, Any]]:
    """Cold start -> {strong SFT || GRPO || ablations} for every task x seed, then (evaluate=True) each
    task's evaluation and the report. A step whose outputs came from exactly its inputs is reused, not rerun
    (semrl.training.run.prior_outputs): the DVC stage train@<task> runs this flow for its task, and a GRPO-only
    change retrains GRPO alone. prune=True (the DVC stage) first removes outputs of seeds and ablations the
    params no longer have. Returns each training step's summary with start/end times (and `reused`), also
    written per stage folder to models/<task>/<stage>/flow_run.json."""
    from prefect.runtime import flow_run

    from semrl.core import tracking

    run_id = str(flow_run.get_id() or "local")
    params_path = run_params(params_path, profile, run_id)
    cfg = load_config(params_path)
    tasks = list(tasks or cfg.train.tasks)
    seeds = [int(s) for s in (seeds if seeds is not None else cfg.train.seeds)]
    problems, _ = data_problems(cfg, tasks)
    if problems:  # before any cold start runs: a split too small for the branches fails here, not hours later
        raise SemrlError(f"{params_path}: " + "; ".join(problems))
    # Submitted in their order in line (step_priority), so GRPO's step usually asks for a slot first.
    names = [m.name for m in sorted(branches(cfg), key=lambda m: step_priority(m, 0))]
    for task_name in tasks if prune else []:
        for folder in prune_outputs(cfg, task_name, seeds):
            print(f"pruned {folder}: not among the params' seeds and methods")
    retry = {"retries": cfg.flow.retries, "retry_delay_seconds": cfg.flow.retry_delay_s}
    gpus = visible_gpus(cfg)
    set_tag_limits(cfg)
    step = train_step.with_options(**retry, tags=step_tags("train", gpus))
    name = f"expansion-{flow_run.get_name() or 'local'}"
    with tracking.run(cfg, name, tags={"semrl.flow_run_id": run_id, "semrl.kind": "flow",
                                       "mlflow.parentRunId": tracking.pipeline_parent(cfg)},
                      log_params={"tasks": tasks, "seeds": seeds, "methods": [COLDSTART, *names],
                                  "profile": profile, "params_path": params_path}) as parent:
        parent_id = parent.info.run_id
        _SLOTS[parent_id] = DeviceSlots(gpus, cfg.flow.gpus_per_step, cfg.flow.steps_per_gpu, cpu_step_limit(cfg))
        futures, by_task = [], {}
        for task_name in tasks:
            for seed in seeds:
                cold = [step.submit(task_name, COLDSTART, seed, params_path, parent_id)]
                branch = [step.submit(task_name, m, seed, params_path, parent_id, wait_for=cold) for m in names]
                futures += [*cold, *branch]
                by_task.setdefault(task_name, []).extend([*cold, *branch])
        later = {**retry, "tags": step_tags("evaluate", gpus)}
        evals = [evaluate_step.with_options(**later).submit(t, params_path, parent_id, wait_for=by_task[t])
                 for t in tasks] if evaluate else []
        report = [report_step.with_options(**later).submit(params_path, parent_id, wait_for=evals)] if evaluate else []
        try:
            with watch_prefect_api(cfg.flow.api_grace_s, flow_run.get_id(), parent_id):
                wait(futures + evals + report)
        except BaseException:  # SIGTERM or Ctrl-C: the steps end too (their runs KILLED), no orphan keeps training
            with tracking.sigterm_ignored():  # the run's handler repeats SIGTERM; stopping must not be cut short
                print(f"stopping: {steps.stop_all()} running step(s) sent SIGTERM", file=sys.stderr)
            raise
        _SLOTS.pop(parent_id, None)
        results, failures = [], []
        for f in futures + evals + report:
            if f.state.is_completed():
                if f in futures:
                    results.append(f.result())
            else:
                failures.append(f.state.message or f.state.name)
        for task_name in tasks:
            for stage_name in TRAINING_STAGES:
                atomic_write_text(stage_dir(cfg, task_name, stage_name) / "flow_run.json",
                                  json.dumps(flow_records(cfg, task_name, stage_name, results), indent=2) + "\n")
        reused, skipped = sum(r["reused"] for r in results), sum("skipped" in r for r in results)
        print(f"{len(results)} training steps: {len(results) - reused - skipped} trained, {reused} reused (inputs "
              f"unchanged)" + (f", {skipped} skipped (their cold start failed its gate)" if skipped else ""))
        if failures:
            raise StepFailed(f"{len(failures)} of {len(futures + evals + report)} steps failed: " + "; ".join(failures),
                             1)
    return results


def configured(cfg: Config):
    """The expansion flow with the params' concurrency (`flow.max_workers` steps at a time)."""
    return expansion.with_options(task_runner=ThreadPoolTaskRunner(max_workers=cfg.flow.max_workers))


# ---------------------------------------------------------------- the deployment: the pipeline as a DVC experiment


def experiment_overrides(params_path: str, tasks: list[str] | None, seeds: list[int] | None,
                         profile: str | None) -> list[str]:
    """The `-S` overrides of a deployment run: the profile's overlay, then its tasks and seeds; validated
    on a copy of the params file first (a bad parameter fails before DVC starts)."""
    import tempfile

    from dvc.utils.hydra import apply_overrides

    from semrl.core.config import overlay_overrides, profile_overlay

    sets = overlay_overrides(params_path, profile_overlay(profile)) if profile else []
    if tasks:
        sets.append("train.tasks=[" + ",".join(tasks) + "]")
    if seeds is not None:
        sets.append("train.seeds=[" + ",".join(str(s) for s in seeds) + "]")
    with tempfile.TemporaryDirectory() as tmp:
        trial = Path(tmp) / "params.yaml"
        trial.write_bytes(Path(params_path).read_bytes())
        apply_overrides(str(trial), sets)
        load_config(trial)
    return sets


@task(name="dvc-exp-run", task_run_name="dvc-exp-run-{name}", cache_policy=None)
def dvc_exp_step(command: list[str], name: str, timeout_s: float | None) -> None:
    """`dvc exp run` as one step: its output in the task run's logs and .semrl/logs/steps/<flow run>/."""
    from prefect.runtime import flow_run

    log_path = step_logs() / str(flow_run.get_id() or "local") / f"dvc-exp-run-{name}.log"
    print(" ".join(command))
    code = steps.run_command(command, dict(os.environ), log_path, step_logger().info, timeout_s)
    if code != 0:
        raise StepFailed(f"dvc exp run {name} exited with {code}; its log: {log_path}", code)


def experiment_report(name: str) -> str | None:
    """The report the experiment committed (reports/alignment_tax.md is a git-tracked DVC output)."""
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], capture_output=True,
                          text=True).stdout.split()
    ref = next((r for r in refs if r.rsplit("/", 1)[-1] == name), None)
    shown = subprocess.run(["git", "show", f"{ref}:reports/alignment_tax.md"], capture_output=True, text=True) if ref else None
    return shown.stdout if shown and shown.returncode == 0 else None


@flow(name="experiment", log_prints=True)
def experiment(tasks: list[str] | None = None, seeds: list[int] | None = None, profile: str | None = None,
               evaluate: bool = True, params_path: str = "params.yaml", name: str | None = None) -> str:
    """The pipeline as a DVC experiment — what the deployment runs. `dvc exp run --temp` from the project's
    last commit, with the profile, tasks and seeds as `-S` overrides: DVC stays the owner of every output
    and a scheduled run never touches the workspace (its models and reports are experiment `name` in
    `dvc exp show`; `dvc exp apply <name>` brings them in); unchanged stages come from DVC's cache; MLflow
    runs and checkpoints land in the project (semrl.core.env.state_root). Each training stage is a flow run
    of `expansion` of its own. evaluate=False stops after training. Returns the experiment's name."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.runtime import deployment, flow_run

    cfg = load_config(params_path)
    sets = experiment_overrides(params_path, tasks, seeds, profile)
    name = name or f"{deployment.get_name() or 'experiment'}-{flow_run.get_name() or int(time.time())}"
    targets = [] if evaluate else [f"train@{t}" for t in (tasks or cfg.train.tasks)]
    command = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", name,
               *[a for s in sets for a in ("-S", s)], *targets]
    set_tag_limits(cfg)
    try:
        with watch_prefect_api(cfg.flow.api_grace_s, flow_run.get_id()):
            dvc_exp_step.with_options(tags=step_tags("dvc", []))(command, name, cfg.flow.step_timeout_s)
    except BaseException:  # stopped: DVC and its stages end too
        steps.stop_all()
        raise
    if evaluate and (report := experiment_report(name)):
        create_markdown_artifact(markdown=report_summary(report), key="alignment-tax",
                                 description=f"The alignment-tax report of DVC experiment {name}")
    return name
