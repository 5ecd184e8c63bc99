"""TRL trainers for a Method record: the data it trains on, its TrainingArguments, LoRA, and the SFT or GRPO
trainer with its rewards. One function per concern; `semrl.training.run.train_one` puts them together."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from semrl.core.config import Config, StageConfig
from semrl.core.methods import COLDSTART, Method, output_dir
from semrl.core.tasks import Task
from semrl.models.chat import render_prompts, template_kwargs


def rank() -> int:
    """This process's rank under `accelerate launch` / `torchrun` (0 when run alone)."""
    import os

    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


# ---------------------------------------------------------------- data


def seed_split(items: list[dict], n_first: int, seed: int) -> tuple[list[dict], list[dict]]:
    """The seed-shuffled items cut in two: the first n_first, and the rest."""
    items = list(items)
    random.Random(seed).shuffle(items)
    return items[:n_first], items[n_first:]


def method_items(cfg: Config, method: Method, train_items: list[dict], seed: int) -> list[dict]:
    """What a method trains on: the cold start the first `coldstart.samples` of the seed-shuffled train
    split, the branches the rest ("remaining"), a few-shot method the first `samples` of its own task's."""
    cold, remaining = seed_split(train_items, cfg.train.coldstart.samples, seed)
    if method.data == "coldstart":
        return cold
    if method.data == "remaining":
        return remaining
    return seed_split(train_items, method.hparams.samples, seed)[0]  # fewshot


def sft_dataset(items: list[dict], chat_kwargs: dict[str, Any] | None = None):
    """Prompt-completion conversations; chat_kwargs (thinking off for Qwen3) ride along per row, where
    TRL's SFTTrainer reads them when it renders the template."""
    from datasets import Dataset

    extra = {"chat_template_kwargs": chat_kwargs} if chat_kwargs else {}
    return Dataset.from_list([{"prompt": [{"role": "user", "content": x["prompt"]}],
                               "completion": [{"role": "assistant", "content": x["reference"]}], **extra}
                              for x in items])


def grpo_dataset(items: list[dict], reference_column: str):
    """Prompts with the reference under `reference_column` and the task input under `input`: a reward
    component may compare with either (e.g. R_sim against the zh source, cross-lingually)."""
    from datasets import Dataset

    if reference_column == "input":
        raise ValueError("rewards.reference_column cannot be 'input': that column holds the task input")
    return Dataset.from_list([{"prompt": [{"role": "user", "content": x["prompt"]}], reference_column: x["reference"],
                               "input": x["input"]} for x in items])


# ---------------------------------------------------------------- arguments


def init_model_dir(cfg: Config, task: str, method: Method, seed: int) -> Path:
    """The model a method starts from: the base, or the trained model of `method.init` (same seed)."""
    from semrl import SemrlError
    from semrl.core.methods import get_method
    from semrl.models.base import base_reference

    if method.init == "base":
        return Path(base_reference(cfg.base.out_dir)["model"])
    source_task = method.init_task or task
    path = output_dir(cfg, source_task, get_method(cfg, method.init), seed) / "model"
    if not (path / "config.json").is_file():
        raise SemrlError(f"{path}: no starting model for {task}-{method.name}-s{seed}; train "
                         f"{source_task}-{method.init}-s{seed} first")
    return path


def lora_config(cfg: Config, method: Method):
    lora = cfg.train.lora
    if not method.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), task_type="CAUSAL_LM")


def common_args(cfg: Config, hp: StageConfig, ckpt: Path, seed: int, grad_accum: int) -> dict[str, Any]:
    import torch

    t = cfg.train
    return dict(
        output_dir=str(ckpt), learning_rate=hp.lr, num_train_epochs=hp.epochs, max_steps=hp.max_steps,
        lr_scheduler_type=hp.scheduler, warmup_steps=hp.warmup, gradient_accumulation_steps=grad_accum,
        # two checkpoints: when the newest is damaged (a full disk, a crash while saving) the one before resumes
        logging_steps=t.logging_steps, save_steps=t.save_steps, save_total_limit=2,
        seed=seed, report_to=[], bf16=t.bf16, fp16=False,
        gradient_checkpointing=t.gradient_checkpointing, use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        # CPU data parallel (torchrun) needs gloo; set only when launched multi-process, or a lone
        # process waits for a process group that never forms.
        ddp_backend="gloo" if world_size() > 1 and not torch.cuda.is_available() else None,
    )


def model_init_kwargs(cfg: Config, method: Method) -> dict[str, Any]:
    """How the starting model is loaded: the base's pinned revision and remote-code choice when starting
    from a named model, and bf16 weights when training in bf16 (TRL's default is float32, twice the memory
    of a frozen 4B base under LoRA)."""
    return {"dtype": cfg.weights_dtype, **source_kwargs(cfg, method)}


def source_kwargs(cfg: Config, method: Method) -> dict[str, Any]:
    """The pinned revision and remote-code choice of a named base, for everything loaded from it (model and
    tokenizer alike: a tokenizer from another revision than its weights would be a silent mismatch); {} for
    a method that starts from a trained folder."""
    if method.init != "base":
        return {}
    from semrl.models.base import base_reference

    ref = base_reference(cfg.base.out_dir)
    return {"revision": ref.get("revision"), "trust_remote_code": bool(ref.get("trust_remote_code"))}


# ---------------------------------------------------------------- trainers


def with_shuffled_rewards(trainer_class, seed: int):
    """The noise-floor control (rewards.ablations.noise_floor): each batch's rewards — every component by the same
    permutation — moved to other completions, groups too, before the advantages are computed. The rewards'
    values and mean are unchanged; only their link to the completion that earned them is gone, so whatever
    such a run still "learns" does not come from the reward. The permutation comes from a generator seeded
    alike on every rank (the rewards are gathered from all ranks before each takes its slice)."""
    import torch

    class ShuffledRewards(trainer_class):
        def _calculate_rewards(self, *args, **kwargs):
            rewards = super()._calculate_rewards(*args, **kwargs)
            if not hasattr(self, "_reward_shuffle"):
                self._reward_shuffle = torch.Generator().manual_seed(seed)
            return rewards[torch.randperm(rewards.size(0), generator=self._reward_shuffle).to(rewards.device)]

    ShuffledRewards.__name__ = f"ShuffledRewards{trainer_class.__name__}"
    return ShuffledRewards


def vllm_problems(mode: str) -> list[str]:
    """What stops train.grpo.vllm `mode` on this machine: vLLM needs CUDA and the `vllm` package (TRL 1.16
    supports 0.22-0.31). [] for off."""
    import importlib.util
    import sys

    import torch

    if mode == "off":
        return []
    problems = []
    if not torch.cuda.is_available():
        problems.append(f"train.grpo.vllm: {mode}: vLLM generation needs CUDA and none is visible; set vllm: off "
                        "(transformers' generate) on this machine")
    if importlib.util.find_spec("vllm") is None:
        problems.append(f"train.grpo.vllm: {mode}: the vllm package is not installed in {sys.executable}; it "
                        "cannot be beside Prefect: install the vllm extra in an environment of its own (pip install "
                        "-e '.[vllm]') and name its python in flow.step_python (docs/scale-out.md \"vLLM\"), or set "
                        "vllm: off")
    return problems


def vllm_args(hp) -> dict[str, Any]:
    """GRPOConfig's vLLM arguments: nothing unless train.grpo.vllm names a mode (transformers' generate is
    the default). Asked for where it cannot run, it fails here, before a model is loaded, saying why."""
    if hp.vllm == "off":
        return {"use_vllm": False}
    from semrl import SemrlError

    if problems := vllm_problems(hp.vllm):
        raise SemrlError("; ".join(problems))
    args = {"use_vllm": True, "vllm_mode": hp.vllm, "vllm_tensor_parallel_size": hp.vllm_tensor_parallel_size}
    if hp.vllm == "colocate":
        return {**args, "vllm_gpu_memory_utilization": hp.vllm_gpu_memory_utilization}
    return {**args, "vllm_server_host": hp.vllm_server_host, "vllm_server_port": hp.vllm_server_port}


def per_process(batch: int, grad_accum: int, processes: int) -> tuple[int, int]:
    """(per-device batch, gradient accumulation) that keep a stage's global batch, batch x grad_accum as
    configured for one process, across `processes` data-parallel processes: an optimiser step sees as many
    examples (GRPO: completions) on 2 GPUs as on 1, so learning rates and step counts keep their meaning. The
    per-device batch stays as large as the configured one allows (fewer accumulation steps before a smaller
    batch)."""
    from semrl import SemrlError

    total = batch * grad_accum
    if total % processes:
        raise SemrlError(f"a global batch of {batch} x {grad_accum} = {total} does not split over {processes} "
                         "processes: make batch x grad_accum a multiple of the process count (flow.gpus_per_step)")
    share = total // processes
    device_batch = next(b for b in range(min(batch, share), 0, -1) if share % b == 0)
    return device_batch, share // device_batch


def adapter_norms(model) -> dict[str, float]:
    """L2 norms of the LoRA weights: `adapter/lora_B_norm` starts at 0 (B is initialised to zero) and
    measures how far the adapter has moved; {} for a model without LoRA (there TRL's `kl` says it)."""
    import torch

    a = b = 0.0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                b += float(p.detach().float().pow(2).sum())
            elif "lora_A" in name:
                a += float(p.detach().float().pow(2).sum())
    return {"adapter/weight_norm": (a + b) ** 0.5, "adapter/lora_B_norm": b ** 0.5} if a or b else {}


def policy_movement_callback():
    """Logs adapter_norms with every logging step, so "did the policy move" is a curve in MLflow next to
    GRPO's KL to the reference (a GRPO lr meant for full fine-tuning leaves a LoRA adapter near zero)."""
    from transformers import TrainerCallback

    class PolicyMovement(TrainerCallback):
        def on_log(self, args, state, control, logs=None, model=None, **kwargs):
            if logs is not None and model is not None and state.is_world_process_zero:
                logs.update(adapter_norms(model))

    return PolicyMovement()


def make_trainer(cfg: Config, task: Task, method: Method, seed: int, items: list[dict], init: Path, ckpt: Path,
                 tokenizer, tau: float | None):
    from semrl.core import tracking

    hp = method.hparams
    init_kwargs = model_init_kwargs(cfg, method)
    callbacks = [policy_movement_callback(), tracking.metrics_callback()]  # adds its keys before MLflow logs them
    if method.data == "remaining" and cfg.train.trajectory.every:  # the branches, scored along training
        from semrl.core.artifacts import TRAJECTORY_FILE
        from semrl.training.trajectory import trajectory_callback

        callbacks.append(trajectory_callback(cfg, task, tokenizer, ckpt / TRAJECTORY_FILE))
    gated = method.name == COLDSTART and cfg.train.coldstart.gate.enabled
    if gated:  # trains until it reads its input, or to the end of its schedule (semrl.training.gate)
        from semrl.training.gate import CHECKS_FILE, gate_callback

        callbacks.append(gate_callback(cfg, task, tokenizer, [x["reference"] for x in items], ckpt / CHECKS_FILE))
    if method.trainer == "sft":
        from trl import SFTConfig, SFTTrainer

        # Room for the longest templated prompt (instruction, truncated input, chat markup: its length in
        # tokens depends on the tokenizer) plus the target budget, so no example loses its completion.
        prompts = render_prompts(tokenizer, [x["prompt"] for x in items])
        longest = max(len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"])
        device_batch, grad_accum = per_process(hp.batch_size, hp.grad_accum, world_size())
        args = SFTConfig(**common_args(cfg, hp, ckpt, seed, grad_accum), per_device_train_batch_size=device_batch,
                         max_length=longest + cfg.train.max_target_tokens, model_init_kwargs=init_kwargs)
        return SFTTrainer(model=str(init), args=args, train_dataset=sft_dataset(items, template_kwargs(tokenizer)),
                          processing_class=tokenizer, peft_config=lora_config(cfg, method), callbacks=callbacks)

    from trl import GRPOConfig, GRPOTrainer

    from semrl.training.shared_prefix import SharedPrefixGRPOTrainer

    from semrl.training.rewards import grpo_rewards

    funcs, weights = grpo_rewards(cfg, method.rewards, task.script, tau)
    g = hp.num_generations
    # TRL counts completions: prompts_per_step prompts x g each per device step on one process; over several
    # the groups are split, and gathered again for the advantages
    device_batch, grad_accum = per_process(g * hp.prompts_per_step, hp.grad_accum, world_size())
    args = GRPOConfig(
        **common_args(cfg, hp, ckpt, seed, grad_accum), per_device_train_batch_size=device_batch,
        num_generations=g, max_completion_length=cfg.train.completion_tokens, temperature=hp.temperature,
        top_p=hp.top_p, beta=hp.beta, loss_type=hp.loss_type, epsilon=hp.epsilon, reward_weights=weights,
        scale_rewards=hp.scale_rewards,
        mask_truncated_completions=hp.mask_truncated_completions, model_init_kwargs=init_kwargs, **vllm_args(hp),
        chat_template_kwargs=template_kwargs(tokenizer) or None,  # thinking off (Qwen3)
    )
    trainer_class = SharedPrefixGRPOTrainer if hp.shared_prefix else GRPOTrainer
    if method.shuffled:
        trainer_class = with_shuffled_rewards(trainer_class, seed)
    return trainer_class(model=str(init), reward_funcs=funcs, args=args,
                       train_dataset=grpo_dataset(items, cfg.rewards.reference_column),
                       processing_class=tokenizer, peft_config=lora_config(cfg, method), callbacks=callbacks)
