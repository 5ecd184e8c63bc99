"""Method records: how each training method trains — trainer kind, starting model, data subset,
hyper-parameter section and (GRPO) reward components. Resolved once from the config; the trainer, the
Prefect flow, evaluation, the report and `semrl check` read these records, never method-name prefixes.

Adding a method is one record in `methods()` plus its params section (see docs/pipeline.md "Add a task or a method").
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from semrl import SemrlError
from semrl.core.config import Config, RewardComponent, StageConfig

COLDSTART = "coldstart"


@dataclass(frozen=True)
class Method:
    name: str
    trainer: Literal["sft", "grpo"]
    init: str  # "base", or the method whose trained model it starts from
    data: Literal["coldstart", "remaining", "fewshot"]  # which part of the seed-shuffled train split
    section: str  # the params section of its hyper-parameters
    hparams: StageConfig
    rewards: tuple[RewardComponent, ...] = ()  # GRPO: the reward components
    ablation: bool = False  # a reward ablation of GRPO (reported apart)
    init_task: str | None = None  # the task whose `init` model it starts from (None: its own task)
    group: str | None = None  # its own output folder models/<group>/<task>/ (a DVC output of its own stage)
    lora: bool = False  # trains a LoRA adapter (train.lora) rather than every weight
    shuffled: bool = False  # GRPO's noise floor: rewards permuted across each batch (rewards.ablations.noise_floor)
    label: str = ""  # how the report names it ("strong SFT"); its name when empty

    @property
    def title(self) -> str:
        return self.label or self.name

    @property
    def is_branch(self) -> bool:
        """A sibling branch after the cold start (runs concurrently in the flow)."""
        return self.init == COLDSTART and self.init_task is None

    @property
    def stage(self) -> str:
        """Its training folder, models/<task>/<stage>/ (a DVC output of train@<task>): coldstart, sft, grpo
        (GRPO and its reward ablations: they share train.grpo and the rewards), or transfer (its own stage)."""
        if self.group:
            return self.group
        return "grpo" if self.trainer == "grpo" else self.name


def methods(cfg: Config) -> dict[str, Method]:
    """Every method this config defines, in run order: the cold start, its branches (strong SFT, GRPO,
    each enabled reward ablation) and the few-shot transfer methods."""
    t = cfg.train
    lora, grpo_lora = t.lora.enabled, t.lora.enabled if t.grpo.lora is None else t.grpo.lora
    found = [
        Method(COLDSTART, "sft", "base", "coldstart", "train.coldstart", t.coldstart, lora=lora, label="cold start"),
        Method("sft", "sft", COLDSTART, "remaining", "train.sft", t.sft, lora=lora, label="strong SFT"),
        Method("grpo", "grpo", COLDSTART, "remaining", "train.grpo", t.grpo, tuple(cfg.rewards.components),
               lora=grpo_lora, label="GRPO"),
    ]
    found += [Method(f"grpo_{name}", "grpo", COLDSTART, "remaining", "train.grpo", t.grpo,
                     tuple(cfg.rewards.components if a.components is None else a.components), ablation=True,
                     lora=grpo_lora, shuffled=a.shuffle,
                     label="GRPO's noise floor" if a.shuffle else f"GRPO ({name.replace('_', ' + ')})")
              for name, a in cfg.rewards.ablations.items() if a.enabled]
    found += [Method(f"transfer_from_{source}", "sft", source, "fewshot", "transfer", cfg.transfer,
                     init_task=cfg.transfer.source_task, group="transfer", lora=lora, label=f"from {source}")
              for source in cfg.transfer.sources]
    return {m.name: m for m in found}


def get_method(cfg: Config, name: str) -> Method:
    known = methods(cfg)
    if name not in known:
        raise SemrlError(f"unknown method {name!r} (known: {', '.join(known)}; a reward ablation runs once "
                         "rewards.ablations.<name>.enabled is true)")
    return known[name]


def branches(cfg: Config) -> list[Method]:
    return [m for m in methods(cfg).values() if m.is_branch]


def main_branches(cfg: Config) -> list[Method]:
    """The branches the research question compares (strong SFT, GRPO): every branch but the reward ablations."""
    return [m for m in branches(cfg) if not m.ablation]


def compared_with(cfg: Config, ablation: Method) -> Method | None:
    """The main branch a reward ablation (or noise floor) varies: the one with its trainer and params section."""
    return next((m for m in main_branches(cfg) if (m.trainer, m.section) == (ablation.trainer, ablation.section)), None)


def transfer_methods(cfg: Config) -> list[Method]:
    """The few-shot transfer methods (trained and scored by the `transfer` stage)."""
    return [m for m in methods(cfg).values() if m.group == "transfer"]


TRAINING_STAGES = (COLDSTART, "sft", "grpo")  # a task's training folders, each a DVC output of train@<task>


def stage_dir(cfg: Config, task: str, stage: str) -> Path:
    """models/<task>/<stage>/: one DVC output of train@<task> per training stage (grpo: GRPO and its
    reward ablations)."""
    return cfg.train.out_dir / task / stage


def output_dir(cfg: Config, task: str, method: str | Method, seed: int) -> Path:
    """models/<task>/<method>/seed<k>/; a reward ablation lives in its GRPO stage's folder,
    models/<task>/grpo/<ablation>/seed<k>/; methods with a stage of their own (transfer) in
    models/<group>/<task>/<method>/seed<k>/."""
    m = method if isinstance(method, Method) else get_method(cfg, method)
    if m.group:
        return cfg.train.out_dir / m.group / task / m.name / f"seed{seed}"
    if m.ablation:
        return stage_dir(cfg, task, m.stage) / m.name / f"seed{seed}"
    return stage_dir(cfg, task, m.name) / f"seed{seed}"


def run_name(task: str, method: str, seed: int) -> str:
    return f"{task}-{method}-s{seed}"
