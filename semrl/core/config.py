"""The typed configuration: every knob of the pipeline with its type and default, in one place.

`params.yaml` mirrors these defaults key for key (a test holds them equal), so what a run uses is what a
reader sees there. `load_config` reads a params file (plus a profile overlay from `configs/`), rejects
unknown keys with their full dotted path, file line and the nearest valid name, and reports every problem
at once. Stages receive a `Config` and read typed attributes; nothing casts or defaults where it is used.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from semrl import SemrlError

PROFILES_DIR = Path("configs")
Script = Literal["bo", "zh"]
MetricName = Literal["bleu", "chrf", "rouge_l"]


class Section(BaseModel):
    """A params section: unknown keys are errors, assignments are type-checked (tests and overlays)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


# ---------------------------------------------------------------- data


class FetchConfig(Section):
    sources: Path = Path("data/sources.tsv")
    dest: Path = Path("data/raw")
    mirror: Path | None = None
    workers: int = Field(8, ge=1)
    timeout_s: float = Field(30.0, gt=0)
    retries: int = Field(4, ge=0)
    backoff_s: float = Field(1.0, ge=0)
    cldr: bool = True
    tables: list[dict[str, Any]] = []  # validated by semrl.data.tables.read_tables (its own messages)


class PrepareMT(Section):
    pairs_glob: str = "lotsawa/text-pairs/*-bo.txt"
    dev_frac: float = Field(0.1, ge=0, lt=1)
    test_frac: float = Field(0.1, ge=0, lt=1)
    strip_openers: bool = True
    zh_min_han_ratio: float = Field(0.5, ge=0, le=1)
    cldr_pairs: bool = True
    cldr_file: str = "cldr/bo_zh_pairs.tsv"
    cldr_dates: bool = True
    cldr_dates_file: str = "cldr/bo_zh_dates.tsv"


class PrepareHeadline(Section):
    files_glob: str = "nanhai/news/*.txt"
    dev_frac: float = Field(0.1, ge=0, lt=1)
    test_frac: float = Field(0.1, ge=0, lt=1)
    max_label_segments: int = Field(2, ge=0)
    label_max_syllables: int = Field(2, ge=0)
    title_min_syllables: int = Field(4, ge=1)
    title_max_syllables: int = Field(50, ge=1)
    title_min_tibetan_ratio: float = Field(0.9, ge=0, le=1)
    body_min_chars: int = Field(200, ge=0)
    body_max_chars: int = Field(20000, ge=1)


class PrepareLM(Section):
    cmrc_trial: str = "cmrc2018/cmrc2018_trial.json"
    xiehouyu: str = "xiehouyu/xiehouyu.json"
    xiehouyu_separator: str = "——"
    bo_glob: str = "nanhai/childrens_lit/*.txt"
    bo_min_tibetan_ratio: float = Field(0.9, ge=0, le=1)


class PrepareGeneral(Section):
    cmrc_dev: str = "cmrc2018/cmrc2018_dev.json"


class PrepareConfig(Section):
    raw_dir: Path = Path("data/raw")
    out_dir: Path = Path("data/prepared")
    seed: int = 20260527
    mt: PrepareMT = PrepareMT()
    headline: PrepareHeadline = PrepareHeadline()
    lm: PrepareLM = PrepareLM()
    general: PrepareGeneral = PrepareGeneral()


class TaskConfig(Section):
    """One task: which prepared data it reads, which field is the input and which the reference, the
    script its outputs must be in, the prompt, and the metrics it is scored by."""

    data: Literal["mt", "headline"]  # folder under prepare.out_dir
    input: str
    output: str
    script: Script
    prompt: str  # `{input}` is replaced by the (truncated) input text
    metrics: list[MetricName]
    primary_metric: MetricName  # the one the report's task gain and verdicts use

    @field_validator("prompt")
    @classmethod
    def _has_input(cls, v: str) -> str:
        if "{input}" not in v:
            raise ValueError("the prompt must contain {input}")
        return v

    @model_validator(mode="after")
    def _primary_is_a_metric(self) -> "TaskConfig":
        if self.primary_metric not in self.metrics:
            raise ValueError(f"primary_metric {self.primary_metric!r} is not in metrics {self.metrics}")
        return self


def _default_tasks() -> dict[str, TaskConfig]:
    return {
        "mt": TaskConfig(data="mt", input="zh", output="bo", script="bo", prompt="把下面的中文翻译成藏文：\n{input}",
                         metrics=["bleu", "chrf"], primary_metric="chrf"),
        "mt_bo2zh": TaskConfig(data="mt", input="bo", output="zh", script="zh",
                               prompt="把下面的藏文翻译成中文：\n{input}", metrics=["bleu", "chrf"], primary_metric="chrf"),
        "headline": TaskConfig(data="headline", input="body", output="title", script="bo",
                               prompt="为下面的藏文新闻写一个藏文标题：\n{input}", metrics=["rouge_l"],
                               primary_metric="rouge_l"),
    }


# ---------------------------------------------------------------- models


class TrackingConfig(Section):
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "semrl"
    artifact_root: Path = Path("mlartifacts")


class TokenizerConfig(Section):
    vocab_size: int = Field(6000, ge=300)
    min_frequency: int = Field(2, ge=1)
    include_task_train: bool = True


class ArchConfig(Section):
    hidden_size: int = 256
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 64
    max_position: int = 1024


class PretrainConfig(Section):
    seed: int = 0
    steps: int = Field(600, ge=1)
    batch_size: int = Field(16, ge=1)
    seq_len: int = Field(128, ge=8)
    lr: float = Field(1.0e-3, gt=0)
    scheduler: str = "cosine"
    warmup_steps: int = Field(30, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    bo_share: float = Field(0.5, ge=0, lt=1)
    bo_headline_bodies: bool = True  # the headline *train* bodies join the Tibetan LM text (never dev/test)
    # The general skill probe (evaluation): riddle -> answer in chat format, taught to the tiny base on this
    # share of its training blocks, over the first `skill_riddles` riddles of its LM training lines.
    skill_share: float = Field(0.2, ge=0, lt=1)
    skill_riddles: int = Field(200, ge=1)
    heldout_frac: float = Field(0.05, gt=0, lt=1)
    logging_steps: int = Field(10, ge=1)
    save_steps: int = Field(100, ge=1)
    bf16: bool = False


class BaseConfig(Section):
    out_dir: Path = Path("models/base")
    metrics_file: Path = Path("metrics/base.json")
    checkpoint_dir: Path = Path("checkpoints")
    pretrained: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    tokenizer: TokenizerConfig = TokenizerConfig()
    arch: ArchConfig = ArchConfig()
    train: PretrainConfig = PretrainConfig()


EmbedderKind = Literal["static", "transformer", "pretrained", "char_ngram"]


class EmbedderRole(Section):
    out_dir: Path
    kind: EmbedderKind  # char_ngram: TF-IDF over character n-grams (dim = most n-grams kept), no training
    model: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    finetune: bool = False
    dim: int = Field(ge=8)
    layers: int = Field(2, ge=1)  # transformer kind
    heads: int = Field(2, ge=1)  # transformer kind
    seed: int
    epochs: float = Field(gt=0)
    batch_size: int = Field(ge=2)
    lr: float = Field(gt=0)
    warmup_steps: int = Field(0, ge=0)
    logging_steps: int = Field(10, ge=1)
    use_headlines: bool
    headline_body_chars: int = Field(500, ge=1)  # a headline pair is (title, the body's first N characters)
    max_seq_length: int = Field(128, ge=8)
    ngram_max: int = Field(3, ge=1)  # char_ngram kind: n-grams of 1..ngram_max characters
    # SimCSE-style monolingual pairs (derived, train split only): per MT training text in each of
    # view_scripts, `views` pairs of two random views that each drop a view_drop share of its units
    # (Tibetan syllables, Chinese characters). Without them a from-scratch embedder trained on bo-zh pairs
    # alone gives bo-bo cosines that do not rank outputs (docs/method.md "Rewards").
    views: int = Field(0, ge=0)
    view_drop: float = Field(0.5, ge=0.0, lt=1.0)
    view_scripts: list[Script] = Field(default_factory=lambda: ["bo"])


class RewardEmbedder(EmbedderRole):
    out_dir: Path = Path("models/embedder")
    kind: EmbedderKind = "static"
    dim: int = Field(256, ge=8)
    seed: int = 1
    epochs: float = Field(8, gt=0)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(0.05, gt=0)
    use_headlines: bool = False
    views: int = Field(1, ge=0)
    device: str | None = None  # where GRPO's reward embedder runs; null: the trainer's device (cuda:LOCAL_RANK or cpu)


class EvalEmbedder(EmbedderRole):
    out_dir: Path = Path("models/eval_embedder")
    kind: EmbedderKind = "char_ngram"
    dim: int = Field(20000, ge=8)
    seed: int = 2
    epochs: float = Field(6, gt=0)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(5.0e-4, gt=0)
    warmup_steps: int = Field(10, ge=0)
    use_headlines: bool = True


class EmbedderConfig(Section):
    metrics_file: Path = Path("metrics/embedder.json")
    reward: RewardEmbedder = RewardEmbedder()
    eval: EvalEmbedder = EvalEmbedder()


# ---------------------------------------------------------------- rewards and training


class RewardComponent(BaseModel):
    """A reward term: a registered name or a dotted import path, its weight, and options for its factory."""

    model_config = ConfigDict(extra="allow")
    name: str
    weight: float = 1.0

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Ablation(Section):
    """An extra GRPO branch: its own reward components (None: rewards.components), or the same reward with
    `shuffle` (the noise floor: each batch's rewards permuted across its completions before the advantages,
    so a branch that still moves, moves without the reward's signal)."""

    enabled: bool = False
    components: list[RewardComponent] | None = None
    shuffle: bool = False


class RewardsConfig(Section):
    tau: float | Literal["auto"] = "auto"
    tau_quantile: float = Field(0.5, ge=0, le=1)
    tau_dev_samples: int = Field(128, ge=1)
    # The reward-signal check inside a group: this many dev prompts, each sampled num_generations times as
    # GRPO samples, does the reward order a prompt's completions as the task metric does? (0: off)
    group_check_prompts: int = Field(32, ge=0)
    reference_column: str = "reference"
    components: list[RewardComponent] = [RewardComponent(name="semantic", weight=1.5),
                                         RewardComponent(name="language", weight=1.0, min_share=0.5)]
    ablations: dict[str, Ablation] = {
        "bleu_language": Ablation(components=[RewardComponent(name="bleu", weight=1.0),
                                              RewardComponent(name="language", weight=1.0)]),
        "bleu_semantic_language": Ablation(components=[RewardComponent(name="bleu", weight=1.0),
                                                       RewardComponent(name="semantic", weight=1.5),
                                                       RewardComponent(name="language", weight=1.0)]),
        "bleu_semantic": Ablation(components=[RewardComponent(name="bleu", weight=1.0),
                                              RewardComponent(name="semantic", weight=1.5)]),
        "noise_floor": Ablation(enabled=True, shuffle=True),
    }

    @field_validator("tau")
    @classmethod
    def _tau_range(cls, v):
        if v != "auto" and not 0 <= v < 1:
            raise ValueError(f"a number in [0, 1) or auto, got {v}")
        return v


class LoraConfig(Section):
    enabled: bool = False
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class StageConfig(Section):
    """Optimiser settings every training method has."""

    epochs: float = Field(2, gt=0)
    max_steps: int = -1  # > 0 caps the run (-1: the epochs decide)
    lr: float = Field(1.0e-3, gt=0)
    grad_accum: int = Field(1, ge=1)
    scheduler: str = "cosine"
    warmup: float = Field(0.03, ge=0)  # a ratio of the steps (< 1) or a step count


class SFTStage(StageConfig):
    batch_size: int = Field(8, ge=1)


class ColdStartGate(Section):
    """The cold start trains until it reads its input (semrl.training.gate): every `every` steps it decodes
    `dev_samples` dev rows per data source (greedy, eval.max_new_tokens) and stops once, on every source whose
    references are at least `min_distinct` distinct, at least `min_distinct` of its outputs are distinct, and on
    every synthetic source its primary metric beats both copy baselines (the input, the input's lead) — or at
    the end of its own schedule (coldstart.max_steps, else its epochs): the cap, which the learning-rate
    schedule spans. A passing check stops it only from `min_steps` on, so the gate lengthens a cold start, never
    shortens it. A branch starts only from a cold start that passed (train.coldstart.gate.require)."""

    enabled: bool = True
    every: int = Field(40, ge=1)
    min_steps: int = Field(76, ge=0)
    dev_samples: int = Field(48, ge=2)
    min_distinct: float = Field(0.8, ge=0, le=1)
    require: bool = True  # false: branches start from a cold start that failed the gate (the gate is recorded)


class ColdStartStage(SFTStage):
    samples: int = Field(300, ge=1)
    max_steps: int = 600  # the gate's cap (the gate stops it earlier, never before gate.min_steps)
    lr: float = Field(1.0e-4, gt=0)  # pilot: 1e-3 erased the base's general skill (bench/results)
    gate: ColdStartGate = ColdStartGate()


class GRPOStage(StageConfig):
    epochs: float = Field(1, gt=0)
    max_steps: int = 80
    lr: float = Field(1.0e-4, gt=0)
    num_generations: int = Field(4, ge=2)
    prompts_per_step: int = Field(8, ge=1)
    temperature: float = Field(0.8, gt=0)
    top_p: float = Field(0.9, gt=0, le=1)
    beta: float = Field(0.04, ge=0)
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = "grpo"
    epsilon: float = Field(0.2, gt=0)
    scale_rewards: Literal["group", "batch", "none"] = "group"
    # The completion budget of GRPO's samples (and of tau's calibration samples); null: train.max_target_tokens.
    # Evaluation decodes eval.max_new_tokens: a budget below it leaves long references no end-of-sequence to learn.
    max_completion_tokens: int | None = Field(None, ge=1)
    # DAPO's fix for rambling: a completion cut at max_target_tokens (no EOS) is left out of the loss, so a
    # repetition loop that runs to the budget is never reinforced (TRL's mask_truncated_completions).
    mask_truncated_completions: bool = False
    # GRPO's rollouts: off (transformers' generate: the default, tested on CPU), colocate (vLLM on the trainer's
    # GPU, vllm_gpu_memory_utilization of it) or server (a `trl vllm-serve` process on other GPUs at
    # vllm_server_host:vllm_server_port). vLLM needs CUDA and the `vllm` extra: docs/scale-out.md "vLLM".
    vllm: Literal["off", "colocate", "server"] = "off"
    # Each distinct prompt through the model once per pass (generation, reference, policy) instead of once per
    # completion, and only completion tokens through the LM head: the same log-probs (tested), about half the
    # step (docs/performance.md). false: TRL's own passes, e.g. to compare.
    shared_prefix: bool = True
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    vllm_tensor_parallel_size: int = Field(1, ge=1)
    vllm_server_host: str = "127.0.0.1"
    vllm_server_port: int = Field(8000, ge=1, le=65535)
    # null: as train.lora.enabled; true/false: GRPO alone with or without LoRA. The paper gives GRPO a
    # full-parameter lr (5e-7) and does not say it used LoRA: on a fresh adapter (B = 0) that rate barely
    # moves the policy, and "no tax" would be trivially true (`semrl check` warns below 1e-6).
    lora: bool | None = None
    scheduler: str = "constant"
    warmup: float = Field(0, ge=0)

    @field_validator("vllm", mode="before")
    @classmethod
    def _vllm_mode(cls, v):
        # YAML 1.1 (PyYAML) reads a bare `off` as false; `true` names no mode
        if v is False:
            return "off"
        if v is True:
            raise ValueError("say which vLLM mode: colocate or server (or off)")
        return v


class TrajectoryConfig(Section):
    """Checkpoints of the branches scored along training: task metric on a dev subset and the LM tax probe."""

    every: int = Field(20, ge=0)  # optimiser steps between points (0: off); step 0 and the last step always
    dev_samples: int = Field(16, ge=1)  # dev rows per data source, greedy decoding
    probe_samples: int = Field(48, ge=1)  # held-out general-Chinese lines of the LM probe


class TrainConfig(Section):
    tasks: list[str] = ["mt", "headline"]
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    # Strong SFT and GRPO get the same optimiser steps over the same number of prompts per step (SFT batch =
    # GRPO prompts per step), so a tax difference is not a budget difference. The paper's recipe (2 SFT
    # epochs vs 1 GRPO epoch) turns it off.
    match_budgets: bool = True
    out_dir: Path = Path("models")
    checkpoint_dir: Path = Path("checkpoints")
    max_input_tokens: int = Field(64, ge=1)
    max_target_tokens: int = Field(32, ge=1)
    logging_steps: int = Field(5, ge=1)
    save_steps: int = Field(25, ge=1)
    # bf16 weights and training (adapters stay float32); auto: where this machine computes bf16 natively
    # (a CUDA GPU that supports it, a CPU with AVX512-BF16/AMX), resolved when the config is read
    bf16: bool = False
    gradient_checkpointing: bool = False
    torch_threads: int = Field(1, ge=0)  # 0: torch's default
    lora: LoraConfig = LoraConfig()
    coldstart: ColdStartStage = ColdStartStage()
    sft: SFTStage = SFTStage(max_steps=80, lr=1.0e-4)  # params.yaml: the discriminating experiment's F arms
    grpo: GRPOStage = GRPOStage()
    trajectory: TrajectoryConfig = TrajectoryConfig()

    @property
    def completion_tokens(self) -> int:
        """GRPO's completion budget: grpo.max_completion_tokens, else max_target_tokens. Its samples and tau's
        calibration samples are drawn with it."""
        return self.grpo.max_completion_tokens or self.max_target_tokens

    @field_validator("bf16", mode="before")
    @classmethod
    def _bf16_auto(cls, v):
        if v == "auto":
            from semrl.core.env import bf16_native

            return bf16_native()
        return v

    @model_validator(mode="after")
    def _matched_budgets(self) -> "TrainConfig":
        if not self.match_budgets:
            return self
        s, g = self.sft, self.grpo
        problems = []
        if s.max_steps <= 0 or s.max_steps != g.max_steps:
            problems.append(f"train.sft.max_steps ({s.max_steps}) and train.grpo.max_steps ({g.max_steps}) "
                            "must be the same positive number")
        if s.batch_size * s.grad_accum != g.prompts_per_step * g.grad_accum:
            problems.append(f"train.sft.batch_size x grad_accum ({s.batch_size} x {s.grad_accum}) must equal "
                            f"train.grpo.prompts_per_step x grad_accum ({g.prompts_per_step} x {g.grad_accum})")
        if problems:
            raise ValueError("train.match_budgets is on: " + "; ".join(problems))
        return self


class TransferConfig(SFTStage):
    enabled: bool = True
    source_task: str = "mt"
    target_task: str = "headline"
    sources: list[str] = Field(["sft", "grpo"], alias="from")
    samples: int = Field(160, ge=1)
    # The transfer runs train one after another in one process, so each may use every core (0: torch's
    # default), unlike the flow's concurrent branches (train.torch_threads each).
    torch_threads: int = Field(0, ge=0)


# ---------------------------------------------------------------- evaluation and operations


class JudgeConfig(Section):
    """The pairwise judge of strong SFT vs GRPO outputs (semrl.evaluation.judge)."""

    kind: Literal["proxy", "local", "openai"] = "proxy"
    model: str | None = None  # local: hub id or path of a causal LM; openai: the served model's name
    revision: str | None = None
    base_url: str | None = None  # openai: e.g. http://127.0.0.1:8000/v1 (a `vllm serve`)
    api_key_env: str | None = "OPENAI_API_KEY"  # the variable holding the key, if the endpoint wants one
    timeout_s: float = Field(60, gt=0)
    max_pairs: int | None = Field(None, ge=1)  # null: every seed x test item
    prompt: str = ("You compare two outputs of a model for one task input. Task input: {source}\n"
                   "Reference output: {reference}\nOutput A: {a}\nOutput B: {b}\n"
                   "Which output is closer in meaning to the reference and better written in its language? "
                   "Answer with one letter, A or B.")


class EvalConfig(Section):
    out_dir: Path = Path("reports/eval")
    test_samples: int = Field(100, ge=1)
    max_new_tokens: int = Field(48, ge=1)
    batch_size: int = Field(16, ge=1)
    seed: int = 0  # torch seed before each variant's greedy decoding
    cmrc_samples: int = Field(64, ge=1)
    cmrc_generate: bool = False  # CMRC EM/F1 by greedy generation (the answer-NLL probe runs either way)
    cmrc_max_context_tokens: int = Field(384, ge=8)
    cmrc_max_new_tokens: int = Field(24, ge=1)
    cmrc_prompt: str = "阅读下面的文章，用文中的原话回答问题。\n文章：{context}\n问题：{question}"
    tie_margin: float = Field(0.01, ge=0)  # the proxy judge: similarity differences below this are ties
    judge: JudgeConfig = JudgeConfig()
    samples_to_keep: int = Field(20, ge=0)
    lm_probe_samples: int = Field(200, ge=1)  # held-out general-Chinese lines scored as plain text
    lm_probe_min_chars: int = Field(32, ge=1)  # shorter held-out lines (single sayings) are skipped
    # Only ~14 held-out LM lines are long enough: top the probe up with distinct CMRC 2018 dev contexts
    # (general Chinese no stage trains on; the base pretrains on the *trial* set's contexts).
    lm_probe_cmrc_contexts: bool = True
    lm_probe_max_tokens: int = Field(128, ge=2)
    # The general skill probe: riddle -> answer (xiehouyu) in chat format, multiple choice by the answer's
    # mean token NLL among `skill_choices` answers (the others drawn from other riddles); chance 1/choices.
    skill_prompt: str = "歇后语：{riddle}——"
    skill_samples: int = Field(200, ge=0)  # 0: off
    skill_choices: int = Field(4, ge=2)


class ReportConfig(Section):
    out_dir: Path = Path("reports")
    # Per task, a discriminating experiment's results (bench/grpo_discriminate.py --out): its paired
    # comparisons go into the report's answer beside the pipeline's own (the experiment is not rerun here).
    experiments: dict[str, Path] = {"mt": Path("bench/results/discriminate_mt.json")}


class ServersConfig(Section):
    host: str = "127.0.0.1"
    prefect_port: int = Field(4200, ge=1, le=65535)
    mlflow_port: int = Field(5000, ge=1, le=65535)


class FlowConfig(Section):
    retries: int = Field(1, ge=0)
    retry_delay_s: float = Field(10, ge=0)
    max_workers: int = Field(16, ge=1)  # concurrent steps of one flow run (branches, seeds)
    # GPU placement (semrl.ops.flows.DeviceSlots); none where no GPU is visible and devices is null. Each step
    # (training, evaluation, transfer) runs on gpus_per_step devices of its own (CUDA_VISIBLE_DEVICES), and at
    # most steps_per_gpu steps share a device: steps that do not fit wait, while the flow still shows the
    # branches as siblings. gpus_per_step > 1 runs a training step as one process per device: `accelerate
    # launch` with accelerate_config on GPUs, torchrun (gloo) where torch sees no CUDA (flows.multi_process_launch).
    devices: list[str] | None = None  # null: CUDA_VISIBLE_DEVICES, else every GPU torch sees
    gpus_per_step: int = Field(1, ge=1)
    steps_per_gpu: int = Field(1, ge=1)
    accelerate_config: Path = Path("configs/accelerate/ddp.yaml")
    # The Python of another environment to run the training steps in (null: the flow's own, steps forked from
    # its warm server): e.g. a venv with `pip install -e '.[vllm]'` for train.grpo.vllm, which cannot be
    # installed beside Prefect (pyproject.toml). The steps import no Prefect; evaluation stays in the flow's.
    step_python: Path | None = None
    # Without a GPU: at most this many step processes at once (null: cores / train.torch_threads; 0: no
    # limit). More processes than cores add memory (each holds the ML stack), not speed.
    cpu_steps: int | None = Field(None, ge=0)
    # A step still running after this many seconds is stopped (SIGTERM, SIGKILL 30 s later) and fails
    # without a retry; null: no limit.
    step_timeout_s: float | None = Field(None, gt=0)
    # The flow polls its Prefect server; one that has not answered for this long (killed, its machine gone)
    # stops the flow: its steps end (MLflow runs KILLED) and it exits with one line saying so, rather than
    # training on unseen and then failing in Prefect's retries (semrl.ops.liveness).
    api_grace_s: float = Field(60, ge=5)
    # Prefect tag concurrency limits, set on the flow's Prefect server (or database) as a flow run starts:
    # tag -> how many steps with that tag run at once across every flow run there (a scheduled and a manual
    # run on one GPU: {gpu: 1}). Training steps carry `train`, evaluation and report steps `evaluate`, all of
    # them `gpu` where a GPU is visible; a DVC experiment run by the deployment carries `dvc` (one at a time:
    # a second triggered run waits in the UI rather than racing the first for the machine).
    tag_limits: dict[str, int] = Field(default_factory=lambda: {"dvc": 1})

    @field_validator("tag_limits")
    @classmethod
    def _positive_limits(cls, v: dict[str, int]) -> dict[str, int]:
        bad = [f"{tag}: {n}" for tag, n in v.items() if n < 1]
        if bad:  # Prefect aborts every run of a tag limited to 0 instead of queueing it
            raise ValueError("each limit must be >= 1 (" + ", ".join(bad) + ")")
        return v


class DeploymentConfig(Section):
    name: str = "nightly"
    cron: str = "0 2 * * *"
    tasks: list[str] = ["mt"]
    seeds: list[int] = [0]
    profile: str | None = None
    evaluate: bool = True
    work_pool: str = "semrl"  # `semrl deploy` registers the deployment here, `semrl worker` polls it (type process)


class MemoryModel(Section):
    activation_bytes: float = 34  # bytes kept for backward per hidden unit, token and layer
    prompt_overhead_tokens: int = 64  # instruction and chat markup on top of the input budget
    # A named (pretrained/transformer) reward embedder's memory on the trainer's device; the tiny static
    # one is computed. KEVVVV/bo2zh-embedding is CINO-large-sized (~560 M parameters): ~2.2 GiB in float32.
    reward_embedder_gib: float = Field(2.2, ge=0)


class Throughput(Section):
    """One device's speed, in tokens per second, for the time estimate of `semrl check`: stated assumptions, not
    measurements. The defaults are the tiny model on one core of a 2-core x86 CPU (bench/results/
    train_speed_cpu.json); a profile for a GPU states its own, and bench/gpu_smoke.sh prints measured ones."""

    device: str = "1 core of a 2-core x86 CPU, the tiny model"
    train_tokens_per_s: float = Field(1300, gt=0)  # forward + backward: SFT, GRPO's policy update, pretraining
    forward_tokens_per_s: float = Field(3900, gt=0)  # forward only: GRPO's reference pass, prefill, probes, judge
    generate_tokens_per_s: float = Field(400, gt=0)  # decoded, at the profile's batch sizes (transformers)
    vllm_generate_tokens_per_s: float = Field(400, gt=0)  # decoded by vLLM (train.grpo.vllm not off)
    overhead: float = Field(0.15, ge=0)  # added for what the token counts miss: loading, checkpoints, logging


class BudgetModel(Section):
    """How `semrl check` turns a profile into device-hours and disk (semrl.ops.budget)."""

    throughput: Throughput = Throughput()
    length_fill: float = Field(0.35, gt=0, le=1)  # the mean example's share of its token budgets (1: upper bound)
    # A task's split sizes before `prepare` has written them ({task: {train: n, test: n}}); prepared data wins.
    rows: dict[str, dict[str, int]] = {}
    judge_cost: float = Field(2.0, ge=0)  # a judge token's cost in policy forward tokens (eval.judge.kind local)
    reward_embedder_cost: float = Field(0.1, ge=0)  # a reward-embedded token's cost in policy forward tokens


class CheckConfig(Section):
    gpu_memory_gib: float = Field(24, gt=0)
    # Fewer training examples than this left for strong SFT and GRPO after the cold start is no comparison:
    # `semrl check` and the training flow fail early, naming the numbers.
    min_branch_examples: int = Field(100, ge=1)
    qwen3_config: dict[str, Any] = {}  # a named Qwen3 base's config.json, for `semrl check` offline
    memory: MemoryModel = MemoryModel()
    budget: BudgetModel = BudgetModel()


class Config(Section):
    """The whole params file."""

    profile: str = "tiny"
    fetch: FetchConfig = FetchConfig()
    prepare: PrepareConfig = PrepareConfig()
    tasks: dict[str, TaskConfig] = Field(default_factory=_default_tasks)
    tracking: TrackingConfig = TrackingConfig()
    base: BaseConfig = BaseConfig()
    embedder: EmbedderConfig = EmbedderConfig()
    rewards: RewardsConfig = RewardsConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    report: ReportConfig = ReportConfig()
    transfer: TransferConfig = TransferConfig()
    servers: ServersConfig = ServersConfig()
    flow: FlowConfig = FlowConfig()
    deployment: DeploymentConfig = DeploymentConfig()
    check: CheckConfig = CheckConfig()

    @model_validator(mode="after")
    def _known_tasks(self) -> "Config":
        known = ", ".join(self.tasks)
        for where, names in (("train.tasks", self.train.tasks), ("deployment.tasks", self.deployment.tasks),
                             ("transfer.source_task", [self.transfer.source_task]),
                             ("transfer.target_task", [self.transfer.target_task])):
            for name in names:
                if name not in self.tasks:
                    raise ValueError(f"{where}: unknown task {name!r} (defined in `tasks`: {known})")
        return self

    @property
    def weights_dtype(self) -> str:
        """bf16 weights wherever a model is loaded when the profile trains in bf16 (halves a 4B model)."""
        return "bfloat16" if self.train.bf16 else "float32"

    def dump(self) -> dict[str, Any]:
        """Plain YAML/JSON-ready values (paths as strings, `transfer.from` under its params name)."""
        return self.model_dump(mode="json", by_alias=True)


# ---------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """YAML as DVC reads it (1.2): floats without a dot (`2e-05`, how DVC writes a value set with `dvc exp run
    -S`) are numbers, and only true/false are booleans — a bare `off` (train.grpo.vllm) is the string DVC
    sees and writes back, not YAML 1.1's false."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)$"), list("-+0123456789"))


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SemrlError(f"{path}: params file not found (run from the project root)")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SemrlError(f"{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise SemrlError(f"{path}: expected a mapping at the top level")
    return data


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """A copy of base with overlay's values put in, recursively for nested mappings."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _key_lines(path: Path) -> dict[tuple, int]:
    """(key, key, ...) -> 1-based line of that key in a YAML file, for error messages."""
    lines: dict[tuple, int] = {}

    def walk(node, prefix: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = prefix + (k.value,)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[prefix + (i,)] = v.start_mark.line + 1
                walk(v, prefix + (i,))

    try:
        walk(yaml.compose(path.read_text(encoding="utf-8")), ())
    except (OSError, yaml.YAMLError):
        pass
    return lines


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(the model a field holds, whether a dict key or list index comes before it) for an annotation."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    for arg in getattr(annotation, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg, getattr(annotation, "__origin__", None) in (dict, list)
    return None, False


def _fields_at(loc: tuple) -> list[str]:
    """The valid key names beside `loc` (whose last element is the offending key)."""
    model: Any = Config
    parts = list(loc[:-1])
    while parts:
        part = parts.pop(0)
        field = model.model_fields.get(part) or next(
            (f for f in model.model_fields.values() if f.alias == part), None)
        if field is None:
            return []
        model, keyed = _model_in(field.annotation)
        if model is None:
            return []
        if keyed and parts:
            parts.pop(0)
    return [f.alias or name for name, f in model.model_fields.items()]


def problems_of(error: ValidationError, lines: dict[tuple, int], source: str) -> list[str]:
    out = []
    for e in error.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
        where = f"{source}:{line}" if line else source
        if e["type"] == "extra_forbidden":
            near = difflib.get_close_matches(str(loc[-1]), _fields_at(loc), n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]!r}?" if near else f" (valid here: {', '.join(_fields_at(loc))})"
            out.append(f"{where}: {dotted}: unknown key{hint}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            out.append(f"{where}: {dotted}: {msg}" + (f" (got {e['input']!r})" if e["type"] != "missing" and
                                                       not isinstance(e["input"], dict) else ""))
    return out


def profile_overlay(profile: str) -> Path:
    path = PROFILES_DIR / f"{profile}.yaml"
    if not path.is_file():
        have = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
        raise SemrlError(f"{path}: no such profile (have: {have})")
    return path


def read_overlay(path: str | Path, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A profile overlay's values, with `extends: <profile>` resolved: the named profile's values first
    (recursively), this file's on top, so a variant states only what it changes (configs/paper-1gpu-day.yaml)."""
    path = Path(path)
    data = read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise SemrlError(f"{path}: extends: a profile name in {PROFILES_DIR}, got {parent!r}")
    if parent in _seen + (path.stem,):
        raise SemrlError(f"{path}: extends: {' -> '.join(_seen + (path.stem, parent))} is a cycle")
    return deep_merge(read_overlay(profile_overlay(parent), _seen + (path.stem,)), data)


def load_config(path: str | Path = "params.yaml", profile: str | None = None) -> Config:
    """The validated config of a params file, with `configs/<profile>.yaml` merged in when a profile other
    than the file's own is asked for. Every problem is reported at once, each with file, line and key."""
    path = Path(path)
    data = read_yaml(path)
    sources = [path]
    if profile and profile != data.get("profile"):
        overlay = profile_overlay(profile)
        data = deep_merge(data, {**read_overlay(overlay), "profile": profile})
        sources.append(overlay)
    try:
        return at_state_root(Config.model_validate(data))
    except ValidationError as e:
        # A key set by the overlay is reported against the overlay's line, else against the params file.
        lines = {**_key_lines(path), **(_key_lines(sources[-1]) if len(sources) > 1 else {})}
        problems = problems_of(e, lines, " + ".join(map(str, sources)) if len(sources) > 1 else str(path))
        raise SemrlError("\n".join(problems) + f"\n{len(problems)} problem(s) in {path}") from None


def at_state_root(cfg: Config) -> Config:
    """The config with its relative state paths (tracking store and artifacts, checkpoint folders) under
    semrl.core.env.state_root(): unchanged in a normal run, the project root in a `dvc exp run --temp` or
    queued experiment, whose temporary workspace is deleted after the run."""
    from semrl.core.env import state_root

    root = state_root()
    if root == Path("."):
        return cfg
    at = lambda p: p if Path(p).is_absolute() else root / p
    uri = cfg.tracking.uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_absolute():
        uri = f"sqlite:///{root / uri.removeprefix('sqlite:///')}"
    elif "://" not in uri:  # a local folder store
        uri = str(at(uri))
    return cfg.model_copy(update={
        "tracking": cfg.tracking.model_copy(update={"uri": uri, "artifact_root": at(cfg.tracking.artifact_root)}),
        "base": cfg.base.model_copy(update={"checkpoint_dir": at(cfg.base.checkpoint_dir)}),
        "train": cfg.train.model_copy(update={"checkpoint_dir": at(cfg.train.checkpoint_dir)}),
    })


def write_config(path: str | Path, data: dict[str, Any]) -> None:
    from semrl.core.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def overlay_overrides(params_path: str | Path, overlay_path: str | Path) -> list[str]:
    """An overlay as `dvc exp run -S` arguments (Hydra's override grammar): one `key=value` per leaf,
    `+key=value` for a key the params file lacks. So a profile runs as a DVC experiment of its own, and
    params.yaml keeps its comments (DVC edits values in place)."""
    have = read_yaml(params_path)

    def literal(v: Any) -> str:
        if v is None:
            return "null"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return repr(v)
        if isinstance(v, float):  # 2e-05 is a string to YAML and Hydra alike: 2.0e-05
            mantissa, _, exponent = repr(v).partition("e")
            return mantissa + ("" if "." in mantissa or not exponent else ".0") + (f"e{exponent}" if exponent else "")
        if isinstance(v, list):
            return "[" + ",".join(literal(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ",".join(f"{k}:{literal(x)}" for k, x in v.items()) + "}"
        return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"

    def leaves(node: dict, where: dict | None, prefix: str) -> list[str]:
        out = []
        for key, value in node.items():
            dotted, present = f"{prefix}{key}", isinstance(where, dict) and key in where
            if isinstance(value, dict) and value and present and isinstance(where[key], dict):
                out += leaves(value, where[key], dotted + ".")
            else:
                out.append(f"{'' if present else '+'}{dotted}={literal(value)}")
        return out

    return leaves(read_overlay(overlay_path), have, "")


def apply_overlay(params_path: str | Path, overlay_path: str | Path) -> Config:
    """Put an overlay (a profile such as configs/paper.yaml) into a params file, validated before anything
    is written, through DVC's own `-S` editor: values change in place and every comment stays."""
    from dvc.utils.hydra import apply_overrides

    merged = deep_merge(read_yaml(params_path), read_overlay(overlay_path))
    try:
        config = Config.model_validate(merged)
    except ValidationError as e:
        raise SemrlError("\n".join(problems_of(e, _key_lines(Path(overlay_path)), str(overlay_path)))) from None
    apply_overrides(str(params_path), overlay_overrides(params_path, overlay_path))
    if read_yaml(params_path) != merged:  # Hydra's grammar and YAML disagree on a value: say so, never drift
        raise SemrlError(f"{params_path}: applying {overlay_path} through `-S` gave other values than the overlay's")
    return config
