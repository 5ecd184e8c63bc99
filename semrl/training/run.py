"""Train one (task, method, seed): the Prefect flow, the CLI and the transfer stage all call `train_one`.

Data per task and seed: the task's train split is shuffled with the seed; the first `coldstart.samples`
examples are the cold start; the rest ("remaining") is what both branches train on: strong SFT imitates
its references for `sft.epochs` epochs, GRPO sees only its prompts and the rewards for `grpo.epochs`.
With LoRA, each stage trains a fresh adapter; the cold start's adapter is merged into its output model,
which is both branches' starting point and GRPO's KL reference. A killed run resumes from its last
complete checkpoint, which is keyed by everything that shapes the run.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from semrl import SemrlError
from semrl.core.artifacts import GATE_FILE, INPUTS_FILE, SUMMARY_FILE, TAU_FILE, TRAJECTORY_FILE
from semrl.core.checkpoints import last_complete_checkpoint, model_identity, require_whole_model, step_of
from semrl.core.config import Config
from semrl.core.io import atomic_write_text, process_start
from semrl.core.methods import COLDSTART, Method, get_method, output_dir, run_name
from semrl.core.tasks import Task, get_task
from semrl.training.gate import CHECKS_FILE, gate_summary, read_checks, require_passed
from semrl.training.tau import grpo_tau
from semrl.training.trainers import (init_model_dir, make_trainer, method_items, model_init_kwargs, rank, source_kwargs,
                                     world_size)


# What the trajectory (the branch scored along training) reads of the evaluation settings.
TRAJECTORY_EVAL = ("max_new_tokens", "batch_size", "lm_probe_min_chars", "lm_probe_max_tokens", "lm_probe_cmrc_contexts")


def branch_inputs(cfg: Config, task: Task, method: Method, init: Path) -> dict[str, Any]:
    """Everything that shapes one (task, method, seed)'s outputs, by name: the task record, the method's
    hyper-parameters (GRPO: its reward, tau and shuffling), the shared training settings, the cold start's
    sample count (the branches train on the rest), what the trajectory reads, the data, the starting model,
    the embedders it scores with, and the code it runs. Settings of other methods are not in it: a GRPO-only
    change leaves SFT's inputs as they were. Locations are not either: a `dvc exp run --temp` trains in a
    temporary copy of the workspace."""
    from semrl.core.code import code_fingerprint
    from semrl.core.tracking import data_version

    grpo = method.trainer == "grpo"
    embedders = {"eval": model_identity(cfg.embedder.eval.out_dir)} if cfg.train.trajectory.every else {}
    if grpo:
        embedders["reward"] = model_identity(cfg.embedder.reward.out_dir)
    return {
        "task": cfg.tasks[task.name].model_dump(mode="json"),
        "method": {"name": method.name, "trainer": method.trainer, "lora": method.lora,
                   "hparams": method.hparams.model_dump(mode="json")},
        "rewards": {"components": [c.model_dump() for c in method.rewards], "shuffled": method.shuffled,
                    **cfg.rewards.model_dump(mode="json", exclude={"components", "ablations"})} if grpo else None,
        "shared": cfg.train.model_dump(mode="json", exclude={"tasks", "seeds", "coldstart", "sft", "grpo", "out_dir",
                                                             "checkpoint_dir"}),
        "coldstart_samples": cfg.train.coldstart.samples,
        "trajectory_eval": {k: getattr(cfg.eval, k) for k in TRAJECTORY_EVAL} if cfg.train.trajectory.every else None,
        "data": data_version(),
        "init": model_identity(init),
        "embedders": embedders,
        "code": code_fingerprint(["semrl.training.run"]),
    }


def inputs_key(inputs: dict[str, Any], with_code: bool = True) -> str:
    kept = inputs if with_code else {k: v for k, v in inputs.items() if k != "code"}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_dir(cfg: Config, task: Task, method: Method, seed: int, init: Path) -> Path:
    """Checkpoints live outside the DVC outputs, keyed by the branch's inputs but its code: a changed config
    starts afresh, never resuming a stale checkpoint; a code fix resumes where a crashed run stopped."""
    key = inputs_key(branch_inputs(cfg, task, method, init), with_code=False)[:12]
    return cfg.train.checkpoint_dir / task.name / method.name / f"seed{seed}-{key}"


def reusable(out: Path, key: str) -> dict[str, Any] | None:
    """The recorded summary when `out` holds a whole, finished run of exactly these inputs (its INPUTS_FILE,
    written last, has this key); else None."""
    record, summary = out / INPUTS_FILE, out / SUMMARY_FILE
    if not (record.is_file() and summary.is_file()):
        return None
    try:
        if json.loads(record.read_text(encoding="utf-8"))["key"] != key:
            return None
        require_whole_model(out / "model", str(out))
        return json.loads(summary.read_text(encoding="utf-8"))
    except (ValueError, KeyError, SemrlError):
        return None


def _last_logged(history: list[dict], key: str) -> float | None:
    """The last value the trainer logged for key, across resumes (a resumed run's own average is partial)."""
    values = [h[key] for h in history if key in h]
    return round(float(values[-1]), 6) if values else None


def trainable_fingerprint(model) -> str:
    """A hash of the trainable weights. Data-parallel ranks must agree bit for bit after training (their
    gradients are all-reduced); under ZeRO-3 each rank holds only its partition, so they differ."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def save_outputs(cfg: Config, method: Method, trainer, init: Path, out: Path, main: bool):
    """Save the trained weights and return (on rank 0) the full model with any adapter merged in.

    Every rank calls this: Trainer.save_model gathers ZeRO-3 partitions from all ranks (a collective),
    and only rank 0 writes. The merged model is rebuilt from the saved files, never from the in-memory
    (possibly sharded) training model, so it is the same under one process, DDP, ZeRO-2 and ZeRO-3."""
    from transformers import AutoModelForCausalLM

    lora = method.lora
    saved = out / ("adapter" if lora else "model")
    trainer.save_model(str(saved))
    if not main:
        return None
    (saved / "training_args.bin").unlink(missing_ok=True)  # a pickle; the run's arguments are in MLflow
    kwargs = model_init_kwargs(cfg, method)
    if not lora:
        model = AutoModelForCausalLM.from_pretrained(saved, use_safetensors=True, dtype=kwargs["dtype"])
        return model.to(trainer.args.device)
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(str(init), **kwargs)
    merged = PeftModel.from_pretrained(base, saved).merge_and_unload()
    merged.save_pretrained(out / "model", safe_serialization=True)
    return merged.to(trainer.args.device)


@contextlib.contextmanager
def exclusive(cfg: Config, task: str, method: str, seed: int):
    """One process at a time per output folder: two flow runs that would write the same (task, method,
    seed) are refused clearly instead of clobbering each other (different seeds run side by side, and so do
    queued DVC experiments, each in a workspace of its own)."""
    import fcntl

    out = output_dir(cfg, task, method, seed).resolve()
    path = cfg.train.checkpoint_dir / "locks" / f"{run_name(task, method, seed)}-{hashlib.sha256(str(out).encode()).hexdigest()[:8]}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            try:
                holder = json.loads(f.read())
                age = time.time() - holder["since"]
                who = (f"pid {holder['pid']} on {holder['host']} ({holder['command'][:120]}), holding it for "
                       f"{int(age // 60)} min {int(age % 60)} s")
            except (ValueError, KeyError, TypeError):
                who = "another process"
            raise SemrlError(f"{run_name(task, method, seed)} is being trained by another run: {who}; refusing to "
                             f"write the same outputs ({out}); lock file {path}") from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                            "command": " ".join(sys.argv)}))
        f.flush()
        yield


def train_one(cfg: Config, task_name: str, method_name: str, seed: int) -> dict[str, Any]:
    """Train one (task, method, seed) to its output folder, resuming from its last checkpoint. Under a
    multi-process launch every rank trains; rank 0 alone locks, tracks and saves."""
    task, method = get_task(cfg, task_name), get_method(cfg, method_name)  # unknown names fail before the lock
    if rank() != 0:
        return _train_one(cfg, task, method, seed)
    with exclusive(cfg, task.name, method.name, seed):
        return _train_one(cfg, task, method, seed)


def starting_point(cfg: Config, task: Task, method: Method, seed: int) -> tuple[Path, dict[str, Any], str]:
    """(the model it starts from, its inputs, their key), once the preconditions hold: a whole starting
    model, and for a branch a cold start that passed its gate (train.coldstart.gate.require)."""
    init = init_model_dir(cfg, task.name, method, seed)
    if init.is_dir():  # a named hub model (paper base) is the hub's to verify
        require_whole_model(init, "base" if method.init == "base" else f"{method.init}@{method.init_task or task.name}")
    if method.is_branch:
        require_passed(cfg, init, task.name, method.name, seed)
    inputs = branch_inputs(cfg, task, method, init)
    return init, inputs, inputs_key(inputs)


def prior_outputs(cfg: Config, task_name: str, method_name: str, seed: int) -> dict[str, Any] | None:
    """The summary of the outputs on disk when exactly these inputs made them (nothing to train), else None.
    The flow asks before it starts a step process; train_one asks too (`semrl train`)."""
    task, method = get_task(cfg, task_name), get_method(cfg, method_name)
    _, _, key = starting_point(cfg, task, method, seed)
    return reusable(output_dir(cfg, task.name, method, seed), key)


def _train_one(cfg: Config, task: Task, method: Method, seed: int) -> dict[str, Any]:
    import mlflow
    from transformers import AutoTokenizer

    from semrl.core import tracking

    if cfg.train.torch_threads:
        import torch

        torch.set_num_threads(cfg.train.torch_threads)
    init, inputs, key = starting_point(cfg, task, method, seed)
    out = output_dir(cfg, task.name, method, seed)
    if (done := reusable(out, key)) is not None:  # no training, no MLflow run: the outputs stand
        print(f"train: {run_name(task.name, method.name, seed)} reused: its inputs are unchanged "
              f"({out / INPUTS_FILE}, key {key})")
        return {**done, "reused": True}
    (out / INPUTS_FILE).unlink(missing_ok=True)  # outputs about to change: no record until they are whole
    tokenizer = AutoTokenizer.from_pretrained(init, **source_kwargs(cfg, method))  # a named base: its pinned revision
    train_items = task.examples("train", tokenizer, cfg.train.max_input_tokens)
    items = method_items(cfg, method, train_items, seed)
    if not items:
        raise SemrlError(f"{task.name}: no training examples for {method.name} (train split {len(train_items)}, "
                         f"cold start {cfg.train.coldstart.samples})")
    ckpt = checkpoint_dir(cfg, task, method, seed, init)
    last = last_complete_checkpoint(ckpt)
    name = run_name(task.name, method.name, seed)
    tags = {"semrl.task": task.name, "semrl.method": method.name, "semrl.seed": str(seed), "semrl.run_key": name,
            "semrl.pid": str(os.getpid()), "semrl.pid_start": repr(process_start()),
            "semrl.host": socket.gethostname()}
    if os.environ.get(tracking.PARENT_RUN_ENV):  # a flow's step; a `semrl train` of its own stays a top-level run
        tags["mlflow.parentRunId"] = os.environ[tracking.PARENT_RUN_ENV]
    main = rank() == 0
    logged = {"task": task.name, "method": method.name, "seed": seed, "train_examples": len(items),
              "trainer": method.trainer, "config": method.hparams.model_dump(mode="json"),
              "lora": {**cfg.train.lora.model_dump(mode="json"), "enabled": method.lora}, "init": str(init), "world_size": world_size()}
    if method.trainer == "grpo":
        logged.update(rewards=[c.model_dump() for c in method.rewards])
    if main:
        tracking.close_stale_runs(cfg, name)
    tracked = tracking.run(cfg, name, tags=tags, log_params=logged) if main else contextlib.nullcontext()
    with tracked as active:
        # GRPO's tau (auto: calibrated once per task and seed on the cold-start model, shared by the ablations).
        # Inside the run: the calibration and its reward-signal check call the reward functions, so a reward
        # that raises or a kill during them ends this run FAILED/KILLED instead of leaving no run at all.
        signal = grpo_tau(cfg, task, seed, init, tokenizer, model_init_kwargs(cfg, method)) if method.trainer == "grpo" else None
        tau = signal["tau"] if signal else None
        if main and tau is not None:
            mlflow.log_param("tau", tau)
        if main:
            log_dataset(cfg, task, method, items)
            ckpt.mkdir(parents=True, exist_ok=True)
            with (ckpt / RUNS_FILE).open("a", encoding="utf-8") as f:  # the runs that trained this checkpoint
                f.write(active.info.run_id + "\n")
        trainer = make_trainer(cfg, task, method, seed, items, init, ckpt, tokenizer, tau)
        if finished(last):  # killed after its last step (while saving or merging): no step more, only the outputs
            from transformers.trainer_callback import TrainerState

            trainer._load_from_checkpoint(last)
            trainer.state = TrainerState.load_from_json(str(Path(last) / "trainer_state.json"))
            train_seconds = 0.0
        else:
            try:
                train_seconds = trainer.train(resume_from_checkpoint=last).metrics["train_runtime"]
            except RuntimeError as e:
                if not failed_write(e):
                    raise
                raise SemrlError(f"{ckpt}: writing a checkpoint failed ({str(e).strip().splitlines()[-1][:200]}): the "
                                 "disk is full or a file size limit was hit; free space and rerun (training resumes "
                                 "from the last complete checkpoint)") from e
        fingerprint = trainable_fingerprint(trainer.model)
        merged = save_outputs(cfg, method, trainer, init, out, main)
        if not main:
            return {"rank": rank(), "steps": trainer.state.global_step, "trainable_sha256": fingerprint}
        resumed = step_of(last)
        summary = {"task": task.name, "method": method.name, "seed": seed, "train_examples": len(items),
                   "world_size": world_size(), "steps": trainer.state.global_step, "resumed_from_step": resumed,
                   # examples (GRPO: completions) per optimiser step over every process: as configured for one
                   "per_device_batch": trainer.args.per_device_train_batch_size,
                   "grad_accum": trainer.args.gradient_accumulation_steps,
                   "global_batch": trainer.args.per_device_train_batch_size
                   * trainer.args.gradient_accumulation_steps * world_size(),
                   "final_loss": _last_logged(trainer.state.log_history, "loss"),
                   "tokens": _last_logged(trainer.state.log_history, "num_tokens"),
                   "train_seconds": round(train_seconds, 2), "run_id": active.info.run_id,
                   # every run that trained these weights, oldest first (a resumed run continues an earlier one)
                   "run_ids": (ckpt / RUNS_FILE).read_text(encoding="utf-8").split(),
                   "trainable_sha256": fingerprint}
        if tau is not None:
            summary["tau"] = tau
        tokenizer.save_pretrained(out / "model")
        if method.name == COLDSTART and cfg.train.coldstart.gate.enabled:
            gate = gate_summary(cfg, read_checks(ckpt / CHECKS_FILE), summary["steps"], trainer.state.max_steps)
            summary["gate"] = {k: gate[k] for k in ("passed", "passed_at_step", "steps", "cap")}
            atomic_write_text(out / GATE_FILE, json.dumps(gate, indent=2) + "\n")
            mlflow.log_metrics({"gate/passed": float(gate["passed"]), "gate/steps": summary["steps"]})
        if (ckpt / TRAJECTORY_FILE).is_file():
            atomic_write_text(out / TRAJECTORY_FILE, (ckpt / TRAJECTORY_FILE).read_text(encoding="utf-8"))
        if signal is not None:  # the tau it used and (auto) the reward-signal check of its calibration
            atomic_write_text(out / TAU_FILE, json.dumps(signal, indent=2) + "\n")
            mlflow.log_metrics({k: v for k, v in signal.items() if isinstance(v, (int, float))})
        atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        mlflow.log_metrics({"resumed_from_step": resumed, "train_seconds": summary["train_seconds"]})
        for extra in (TAU_FILE, TRAJECTORY_FILE, GATE_FILE, SUMMARY_FILE):
            if (out / extra).is_file():
                mlflow.log_artifact(str(out / extra), artifact_path="outputs")
        logged_model = tracking.log_model(*loadable_model(cfg, method, merged, init, out), name="model")
        description = (f"{task.name} · {method.name} ({method.trainer}{', LoRA adapter on ' + str(init) if method.lora else ''})"
                       f" · seed {seed} · {summary['steps']} steps from {init} · profile {cfg.profile} · "
                       f"data {tracking.data_version()} · MLflow run {active.info.run_id}")
        tracking.register(f"semrl-{task.name}-{method.name}", logged_model.model_uri, description,
                          tags={"task": task.name, "method": method.name, "seed": str(seed)})
        # Last: the record that these outputs are whole and what made them (reusable reads it).
        atomic_write_text(out / INPUTS_FILE, json.dumps({"key": key, "inputs": inputs}, indent=2, default=str) + "\n")
    return summary


RUNS_FILE = "mlflow_runs.txt"


def failed_write(error: RuntimeError) -> bool:
    """torch's own file writer (torch.save of the optimizer state) reports a short write (ENOSPC, EFBIG) as a
    RuntimeError from its zip container, without an errno."""
    text = str(error)
    return "PytorchStreamWriter failed" in text or "unexpected pos" in text or "file write failed" in text


def finished(checkpoint: str | None) -> bool:
    """A checkpoint of the run's last step. Resuming from it, the Trainer would take one step more than
    planned (transformers 5): a budget-matched comparison must not get 4 steps where 3 were set."""
    if checkpoint is None:
        return False
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    return bool(state.get("max_steps")) and int(state["global_step"]) >= int(state["max_steps"])


def log_dataset(cfg: Config, task: Task, method: Method, items: list[dict[str, Any]]) -> None:
    """The examples this run trains on, as an MLflow dataset input (the run's Dataset column): source = the
    prepared split, digest = a hash of exactly these rows (the subset a method takes differs per method)."""
    import mlflow
    import pandas as pd

    from semrl.core.tracking import data_version

    cols = ["id", "source", "input", "reference"]
    df = pd.DataFrame([{c: str(x.get(c, "")) for c in cols} for x in items], columns=cols)
    digest = hashlib.sha256(df.to_json(orient="records", force_ascii=False).encode()).hexdigest()[:12]
    dataset = mlflow.data.from_pandas(df, source=str(task.split_file("train")), digest=digest,
                                      name=f"{task.name}-train-{method.name}")
    mlflow.log_input(dataset, context="training", tags={"data_version": data_version(),
                                                        "rows": str(len(df))})


def loadable_model(cfg: Config, method: Method, merged, init: Path, out: Path):
    """(model, tokenizer) as MLflow logs it: the trained model, or for LoRA the adapter on its starting
    model (PEFT; MLflow stores the adapter and the base's folder, not a merged copy per run)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    if not method.lora:
        return merged, tokenizer
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(str(init), **model_init_kwargs(cfg, method))
    return PeftModel.from_pretrained(base, out / "adapter"), tokenizer


def step(params: str, task: str, method: str, seed: int) -> dict[str, Any]:
    """The pipeline step `train` as a flow's step process and `semrl train` run it: one (task, method, seed)
    from a params file, its summary printed."""
    from semrl.core.config import load_config

    summary = train_one(load_config(params), task, method, seed)
    print("train: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    return summary
