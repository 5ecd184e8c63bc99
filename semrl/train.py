"""Training on TRL: cold-start SFT, then strong SFT and GRPO (plus reward ablations) from the cold-start
checkpoint. One function trains one (task, method, seed); the Prefect flow and the CLI both call it.

Data per task and seed: the task's train split is shuffled with the seed; the first `coldstart.samples`
examples are the cold start; the rest ("remaining") is what both branches train on: strong SFT imitates
its references for `sft.epochs` epochs, GRPO sees only its prompts and the rewards for `grpo.epochs`.
With LoRA, each stage trains a fresh adapter; the cold start's adapter is merged into its output model,
which is both branches' starting point and GRPO's KL reference.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semrl import SemrlError
from semrl.checkpoints import last_complete_checkpoint, step_of
from semrl.io import atomic_write_text, read_jsonl

PARENT_RUN_ENV = "SEMRL_PARENT_RUN_ID"


@dataclass(frozen=True)
class Task:
    name: str
    split_dir: str  # folder under data/prepared
    source: str  # input field
    target: str  # reference field
    script: str  # script the output must be in
    instruction: str


TASKS = {
    "mt": Task("mt", "mt", "zh", "bo", "bo", "把下面的中文翻译成藏文：\n"),
    "mt_bo2zh": Task("mt_bo2zh", "mt", "bo", "zh", "zh", "把下面的藏文翻译成中文：\n"),
    "headline": Task("headline", "headline", "body", "title", "bo", "为下面的藏文新闻写一个藏文标题：\n"),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise SemrlError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return TASKS[name]


def methods(params: dict[str, Any]) -> list[str]:
    """The branches after the cold start: sft, grpo, and every enabled reward ablation (grpo_<name>)."""
    ablations = params["rewards"].get("ablations", {}) or {}
    return ["sft", "grpo"] + [f"grpo_{name}" for name, a in ablations.items() if a.get("enabled")]


TRANSFER_PREFIX = "transfer_from_"


def method_config(params: dict[str, Any], method: str) -> dict[str, Any]:
    t = params["train"]
    if method in ("coldstart", "sft"):
        return t[method]
    if method.startswith(TRANSFER_PREFIX):
        return params["transfer"]
    if method == "grpo" or method.startswith("grpo_"):
        return t["grpo"]
    raise SemrlError(f"unknown method {method!r} (known: coldstart, {', '.join(methods(params))})")


def reward_components(params: dict[str, Any], method: str) -> list[dict[str, Any]]:
    if method == "grpo":
        return params["rewards"]["components"]
    name = method.removeprefix("grpo_")
    ablations = params["rewards"].get("ablations", {}) or {}
    if name not in ablations:
        raise SemrlError(f"no reward ablation {name!r} in rewards.ablations (known: {', '.join(ablations)})")
    return ablations[name]["components"]


# ---------------------------------------------------------------- paths


def output_dir(params: dict[str, Any], task: str, method: str, seed: int) -> Path:
    if method.startswith(TRANSFER_PREFIX):  # its own DVC output, apart from models/<task>/
        return Path(params["train"]["out_dir"]) / "transfer" / task / method / f"seed{seed}"
    return Path(params["train"]["out_dir"]) / task / method / f"seed{seed}"


def run_name(task: str, method: str, seed: int) -> str:
    return f"{task}-{method}-s{seed}"


def init_model_dir(params: dict[str, Any], task: str, method: str, seed: int) -> Path:
    if method == "coldstart":
        from semrl.base import base_reference

        return Path(base_reference(params["base"]["out_dir"])["model"])
    if method.startswith(TRANSFER_PREFIX):  # few-shot transfer starts from a trained source-task model
        source = params["transfer"]["source_task"]
        path = output_dir(params, source, method.removeprefix(TRANSFER_PREFIX), seed) / "model"
    else:
        path = output_dir(params, task, "coldstart", seed) / "model"
    if not (path / "config.json").is_file():
        raise SemrlError(f"{path}: no starting model for {task}-{method}-s{seed}; train it first")
    return path


def _fingerprint(path: Path) -> str:
    """Cheap identity of a model folder (names, sizes, mtimes), so checkpoints never resume onto another init."""
    if not path.is_dir():
        return str(path)
    files = sorted(p for p in path.iterdir() if p.is_file())
    return ";".join(f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in files)


def checkpoint_dir(params: dict[str, Any], task: str, method: str, seed: int) -> Path:
    """Checkpoints live outside the DVC outputs, keyed by everything that shapes the run."""
    from semrl.tracking import data_version

    key_src = json.dumps([params["train"], params["rewards"], data_version(),
                          _fingerprint(init_model_dir(params, task, method, seed))], sort_keys=True, default=str)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    return Path(params["train"]["checkpoint_dir"]) / task / method / f"seed{seed}-{key}"


# ---------------------------------------------------------------- data


def _truncate(tokenizer, text: str, max_tokens: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


def examples(params: dict[str, Any], task: Task, split: str, tokenizer) -> list[dict[str, str]]:
    """{id, prompt, reference} per record; the input is truncated to `max_input_tokens` (prompts are ours
    to truncate: TRL no longer does)."""
    path = Path(params["prepare"]["out_dir"]) / task.split_dir / f"{split}.jsonl"
    if not path.is_file():
        raise SemrlError(f"{path}: missing (run `dvc repro prepare`)")
    limit = int(params["train"]["max_input_tokens"])
    return [{"id": r["id"], "prompt": task.instruction + _truncate(tokenizer, r[task.source], limit),
             "reference": r[task.target]} for r in read_jsonl(path)]


def seed_split(items: list[dict], n_coldstart: int, seed: int) -> tuple[list[dict], list[dict]]:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items[:n_coldstart], items[n_coldstart:]


def sft_dataset(items: list[dict]):
    from datasets import Dataset

    return Dataset.from_list([{"prompt": [{"role": "user", "content": x["prompt"]}],
                               "completion": [{"role": "assistant", "content": x["reference"]}]} for x in items])


def grpo_dataset(items: list[dict], reference_column: str):
    from datasets import Dataset

    return Dataset.from_list([{"prompt": [{"role": "user", "content": x["prompt"]}], reference_column: x["reference"]}
                              for x in items])


# ---------------------------------------------------------------- trainers


def lora_config(params: dict[str, Any]):
    lora = params["train"]["lora"]
    if not lora["enabled"]:
        return None
    from peft import LoraConfig

    return LoraConfig(r=int(lora["r"]), lora_alpha=int(lora["alpha"]), lora_dropout=float(lora["dropout"]),
                      target_modules=list(lora["target_modules"]), task_type="CAUSAL_LM")


def _common_args(params: dict[str, Any], cfg: dict[str, Any], ckpt: Path, seed: int) -> dict[str, Any]:
    import torch

    t = params["train"]
    return dict(
        output_dir=str(ckpt), learning_rate=float(cfg["lr"]), num_train_epochs=float(cfg["epochs"]),
        max_steps=int(cfg.get("max_steps", -1)), lr_scheduler_type=cfg.get("scheduler", "cosine"),
        warmup_steps=float(cfg.get("warmup", 0.0)), gradient_accumulation_steps=int(cfg.get("grad_accum", 1)),
        logging_steps=int(t["logging_steps"]), save_steps=int(t["save_steps"]), save_total_limit=1,
        seed=seed, report_to=[], bf16=bool(t["bf16"]), fp16=False,
        gradient_checkpointing=bool(t["gradient_checkpointing"]), use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        # CPU data parallel (torchrun) needs gloo; set only when launched multi-process, or a lone
        # process waits for a process group that never forms.
        ddp_backend="gloo" if world_size() > 1 and not torch.cuda.is_available() else None,
    )


def model_init_kwargs(params: dict[str, Any], method: str) -> dict[str, Any]:
    """How the starting model is loaded: the base's pinned revision and remote-code choice for a cold
    start from a named model, and bf16 weights when training in bf16 (TRL's default is float32, twice
    the memory of a frozen 4B base under LoRA)."""
    from semrl.generation import weights_dtype

    kwargs: dict[str, Any] = {"dtype": weights_dtype(params)}
    if method == "coldstart":
        from semrl.base import base_reference

        ref = base_reference(params["base"]["out_dir"])
        kwargs.update(revision=ref.get("revision"), trust_remote_code=bool(ref.get("trust_remote_code")))
    return kwargs


def make_trainer(params: dict[str, Any], task: Task, method: str, seed: int, train_items: list[dict],
                 ckpt: Path, tokenizer, tau: float | None):
    from semrl import tracking

    cfg = method_config(params, method)
    model_path = str(init_model_dir(params, task.name, method, seed))
    init_kwargs = model_init_kwargs(params, method)
    callbacks = [tracking.metrics_callback()]
    if method in ("coldstart", "sft") or method.startswith(TRANSFER_PREFIX):
        from trl import SFTConfig, SFTTrainer

        # Room for the longest templated prompt (instruction, truncated input, chat markup: its length in
        # tokens depends on the tokenizer) plus the target budget, so no example loses its completion.
        prompts = tokenizer.apply_chat_template([[{"role": "user", "content": x["prompt"]}] for x in train_items],
                                                add_generation_prompt=True, tokenize=False)
        longest = max(len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"])
        args = SFTConfig(**_common_args(params, cfg, ckpt, seed), per_device_train_batch_size=int(cfg["batch_size"]),
                         max_length=longest + int(params["train"]["max_target_tokens"]), model_init_kwargs=init_kwargs)
        return SFTTrainer(model=model_path, args=args, train_dataset=sft_dataset(train_items),
                          processing_class=tokenizer, peft_config=lora_config(params), callbacks=callbacks)

    from trl import GRPOConfig, GRPOTrainer

    from semrl.rewards import build_rewards

    r = params["rewards"]
    context = {"embedder": params["embedder"]["reward"]["out_dir"], "tau": tau, "script": task.script,
               "reference_column": r["reference_column"]}
    funcs, weights = build_rewards(reward_components(params, method), context)
    g = int(cfg["num_generations"])
    args = GRPOConfig(
        **_common_args(params, cfg, ckpt, seed), per_device_train_batch_size=g * int(cfg["prompts_per_step"]),
        num_generations=g, max_completion_length=int(params["train"]["max_target_tokens"]),
        temperature=float(cfg["temperature"]), top_p=float(cfg["top_p"]), beta=float(cfg["beta"]),
        loss_type=cfg["loss_type"], epsilon=float(cfg["epsilon"]), reward_weights=weights,
        use_vllm=bool(cfg["use_vllm"]), scale_rewards=cfg["scale_rewards"], model_init_kwargs=init_kwargs,
    )
    return GRPOTrainer(model=model_path, reward_funcs=funcs, args=args,
                       train_dataset=grpo_dataset(train_items, r["reference_column"]),
                       processing_class=tokenizer, peft_config=lora_config(params), callbacks=callbacks)


# ---------------------------------------------------------------- one (task, method, seed)


def calibrate_tau(params: dict[str, Any], task: Task, model, tokenizer, seed: int) -> dict[str, Any]:
    """tau = auto: the cold-start model's own semantic similarity on dev, sampled as GRPO will sample."""
    from semrl.generation import generate
    from semrl.rewards import SemanticReward, resolve_tau

    g = params["train"]["grpo"]
    dev = examples(params, task, "dev", tokenizer)[: int(params["rewards"]["tau_dev_samples"])]
    outs = generate(model, tokenizer, [x["prompt"] for x in dev], int(params["train"]["max_target_tokens"]),
                    do_sample=True, temperature=float(g["temperature"]), top_p=float(g["top_p"]), seed=seed,
                    desc="calibrate tau")
    sims = SemanticReward(params["embedder"]["reward"]["out_dir"]).similarity(outs, [x["reference"] for x in dev])
    tau = resolve_tau(params["rewards"], sims)
    return {"tau": round(tau, 6), "tau_setting": params["rewards"]["tau"], "dev_samples": len(dev),
            "dev_similarity_mean": round(sum(sims) / len(sims), 6)}


def grpo_tau(params: dict[str, Any], task: str, seed: int) -> float:
    """The τ a GRPO run uses: the number in rewards.tau, or (auto) the one its cold start calibrated."""
    if params["rewards"]["tau"] != "auto":
        return float(params["rewards"]["tau"])
    tau_file = output_dir(params, task, "coldstart", seed) / "tau.json"
    if not tau_file.is_file():
        raise SemrlError(f"{tau_file}: missing; the cold start writes it (rewards.tau is auto)")
    return float(json.loads(tau_file.read_text())["tau"])


def _last_logged(history: list[dict], key: str) -> float | None:
    """The last value the trainer logged for key, across resumes (a resumed run's own average is partial)."""
    values = [h[key] for h in history if key in h]
    return round(float(values[-1]), 6) if values else None


def trainable_fingerprint(model) -> str:
    """A hash of the trainable weights. Data-parallel ranks must agree bit for bit after training (their
    gradients are all-reduced); under ZeRO-3 each rank holds only its partition, so they differ."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def save_outputs(params: dict[str, Any], method: str, trainer, init: Path, out: Path, main: bool):
    """Save the trained weights and return (on rank 0) the full model with any adapter merged in.

    Every rank calls this: Trainer.save_model gathers ZeRO-3 partitions from all ranks (a collective),
    and only rank 0 writes. The merged model is rebuilt from the saved files, never from the in-memory
    (possibly sharded) training model, so it is the same under one process, DDP, ZeRO-2 and ZeRO-3."""
    from transformers import AutoModelForCausalLM

    lora = params["train"]["lora"]["enabled"]
    saved = out / ("adapter" if lora else "model")
    trainer.save_model(str(saved))
    if not main:
        return None
    (saved / "training_args.bin").unlink(missing_ok=True)  # a pickle; the run's arguments are in MLflow
    kwargs = model_init_kwargs(params, method)
    if not lora:
        model = AutoModelForCausalLM.from_pretrained(saved, use_safetensors=True, dtype=kwargs["dtype"])
        return model.to(trainer.args.device)
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(str(init), **kwargs)
    merged = PeftModel.from_pretrained(base, saved).merge_and_unload()
    merged.save_pretrained(out / "model", safe_serialization=True)
    return merged.to(trainer.args.device)  # the cold start samples with it next (tau calibration)


@contextlib.contextmanager
def exclusive(params: dict[str, Any], task: str, method: str, seed: int):
    """One process at a time per (task, method, seed): two flow runs that would write the same output
    folder are refused clearly instead of clobbering each other (different seeds run side by side)."""
    import fcntl

    path = Path(params["train"]["checkpoint_dir"]) / "locks" / f"{run_name(task, method, seed)}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise SemrlError(f"{run_name(task, method, seed)} is being trained by another run "
                             f"(pid {f.read().strip() or '?'}); refusing to write the same outputs") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield


def rank() -> int:
    """This process's rank under `accelerate launch` / `torchrun` (0 when run alone)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def train_one(params: dict[str, Any], task_name: str, method: str, seed: int) -> dict[str, Any]:
    """Train one (task, method, seed) to models/<task>/<method>/seed<k>/, resuming from its last checkpoint.
    Under a multi-process launch every rank trains; rank 0 alone locks, tracks and saves."""
    if rank() != 0:
        return _train_one(params, task_name, method, seed)
    with exclusive(params, task_name, method, seed):
        return _train_one(params, task_name, method, seed)


def _train_one(params: dict[str, Any], task_name: str, method: str, seed: int) -> dict[str, Any]:
    import mlflow
    from transformers import AutoTokenizer

    from semrl import tracking

    task = get_task(task_name)
    method_config(params, method)  # validates the method name
    threads = int(params["train"].get("torch_threads", 0))
    if threads:
        import torch

        torch.set_num_threads(threads)
    init = init_model_dir(params, task.name, method, seed)
    tokenizer = AutoTokenizer.from_pretrained(init)
    train_items = examples(params, task, "train", tokenizer)
    cold, remaining = seed_split(train_items, int(params["train"]["coldstart"]["samples"]), seed)
    items = cold if method == "coldstart" else remaining
    if method.startswith(TRANSFER_PREFIX):  # few-shot: the first `samples` of the seed-shuffled train split
        items = seed_split(train_items, int(params["transfer"]["samples"]), seed)[0]
    if not items:
        raise SemrlError(f"{task.name}: no training examples for {method} (train split {len(train_items)}, "
                         f"cold start {len(cold)})")
    out = output_dir(params, task.name, method, seed)
    tau = grpo_tau(params, task.name, seed) if method.startswith("grpo") else None

    ckpt = checkpoint_dir(params, task.name, method, seed)
    last = last_complete_checkpoint(ckpt)
    name = run_name(task.name, method, seed)
    tags = {"semrl.task": task.name, "semrl.method": method, "semrl.seed": str(seed), "semrl.run_key": name,
            "semrl.pid": str(os.getpid()), "semrl.host": socket.gethostname()}
    if os.environ.get(PARENT_RUN_ENV):
        tags["mlflow.parentRunId"] = os.environ[PARENT_RUN_ENV]
    main = rank() == 0
    logged = {"task": task.name, "method": method, "seed": seed, "train_examples": len(items),
              "config": method_config(params, method), "lora": params["train"]["lora"], "init": str(init),
              "world_size": world_size()}
    if method.startswith("grpo"):
        logged.update(rewards=reward_components(params, method), tau=tau)
    if main:
        tracking.close_stale_runs(params, name)
    tracked = tracking.run(params, name, tags=tags, log_params=logged) if main else contextlib.nullcontext()
    with tracked as active:
        trainer = make_trainer(params, task, method, seed, items, ckpt, tokenizer, tau)
        result = trainer.train(resume_from_checkpoint=last)
        fingerprint = trainable_fingerprint(trainer.model)
        merged = save_outputs(params, method, trainer, init, out, main)
        if not main:
            return {"rank": rank(), "steps": trainer.state.global_step, "trainable_sha256": fingerprint}
        resumed = step_of(last)
        summary = {"task": task.name, "method": method, "seed": seed, "train_examples": len(items),
                   "world_size": world_size(), "steps": trainer.state.global_step, "resumed_from_step": resumed,
                   "final_loss": _last_logged(trainer.state.log_history, "loss"),
                   "tokens": _last_logged(trainer.state.log_history, "num_tokens"),
                   "train_seconds": round(result.metrics["train_runtime"], 2), "run_id": active.info.run_id,
                   "trainable_sha256": fingerprint}
        if tau is not None:
            summary["tau"] = tau
        tokenizer.save_pretrained(out / "model")
        if method == "coldstart":
            info = calibrate_tau(params, task, merged, tokenizer, seed) if params["rewards"]["tau"] == "auto" else \
                {"tau": float(params["rewards"]["tau"]), "tau_setting": params["rewards"]["tau"]}
            atomic_write_text(out / "tau.json", json.dumps(info, indent=2) + "\n")
            mlflow.log_metrics({k: v for k, v in info.items() if isinstance(v, (int, float))})
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        mlflow.log_metrics({"resumed_from_step": resumed, "train_seconds": summary["train_seconds"]})
        mlflow.log_artifacts(str(out), artifact_path="model")
        tracking.register(f"semrl-{task.name}-{method}", active.info.run_id, "model")
    return summary
