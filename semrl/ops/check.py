"""`semrl check [PROFILE]`: validate a profile before anything is downloaded or trained — GRPO batch
shapes, LoRA target modules against the real architecture, reward names, tasks, sources — and estimate
the accelerator memory a step needs."""
from __future__ import annotations

from pathlib import Path

from semrl import SemrlError
from semrl.core.config import Config
from semrl.core.env import bf16_native
from semrl.core.io import import_dotted


def architecture(cfg: Config):
    """The base model's config: the named model's (from the hub cache or the hub), else the tiny arch."""
    from transformers import AutoConfig, Qwen3Config

    from semrl.models.base import qwen3_config

    b = cfg.base
    if b.pretrained:
        try:
            return AutoConfig.from_pretrained(b.pretrained, revision=b.revision, trust_remote_code=b.trust_remote_code)
        except (OSError, ValueError):
            if "qwen3" in b.pretrained.lower():  # offline: Qwen3's module names hold at every size
                return Qwen3Config(**cfg.check.qwen3_config)
            raise SemrlError(f"base.pretrained {b.pretrained!r}: config not available offline") from None
    return qwen3_config(b.arch, b.tokenizer.vocab_size)


def _linear_modules(config) -> tuple[set[str], dict[str, tuple[int, int]], int]:
    """Names (last component) of the Linear layers, their shapes, and the parameter count, on the meta
    device (no memory, no download)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shapes = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            shapes.setdefault(name.rsplit(".", 1)[-1], (module.in_features, module.out_features))
    return set(shapes), shapes, sum(p.numel() for p in model.parameters())


def memory_estimate(cfg: Config, config, n_params: int, shapes: dict[str, tuple[int, int]]) -> dict:
    """A rough peak for the heaviest step (GRPO generation + update), in GiB; the constants of the model
    are `check.memory`."""
    from semrl.core.methods import get_method

    t, mm = cfg.train, cfg.check.memory
    bytes_w = 2 if t.bf16 else 4
    lora = t.lora
    grpo_lora = get_method(cfg, "grpo").lora
    layers = config.num_hidden_layers
    if grpo_lora:
        trainable = sum(lora.r * (shapes[m][0] + shapes[m][1]) for m in lora.target_modules if m in shapes)
        trainable *= layers
    else:
        trainable = n_params
    g = t.grpo
    batch = g.num_generations * g.prompts_per_step
    seq = t.max_input_tokens + t.max_target_tokens + mm.prompt_overhead_tokens
    hidden = config.hidden_size
    kv_heads = getattr(config, "num_key_value_heads", config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    gib = 2 ** 30
    est = {
        "weights": n_params * bytes_w / gib,
        "reference_model": 0.0 if grpo_lora or g.beta == 0 else n_params * bytes_w / gib,  # LoRA: adapter off
        "trainable_params_m": trainable / 1e6,
        "optimizer_and_grads": trainable * (4 + 4 + 4 + bytes_w) / gib,  # fp32 master, Adam m and v, grads
        "kv_cache": batch * seq * layers * 2 * kv_heads * head_dim * bytes_w / gib,
        # activations kept for backward: check.memory.activation_bytes per hidden unit per token per layer,
        # /sqrt(layers) with checkpointing; plus the logits in fp32
        "activations": batch * seq * hidden * layers * mm.activation_bytes
        / (layers ** 0.5 if t.gradient_checkpointing else 1) / gib
        + batch * seq * config.vocab_size * 4 / gib,
    }
    e = cfg.embedder.reward
    # GRPO's reward embedder lives on the trainer's device too (embedder.reward.device null)
    est["reward_embedder"] = (0.0 if e.device == "cpu" else
                              config.vocab_size * e.dim * 4 / gib if e.kind == "static" else mm.reward_embedder_gib)
    est["per_step"] = sum(v for k, v in est.items() if k != "trainable_params_m")
    # what shares one GPU at a time (flow.steps_per_gpu steps; on CPU-only machines this is the RAM estimate)
    est["steps_at_once"] = cfg.flow.steps_per_gpu
    est["total"] = est["per_step"] * cfg.flow.steps_per_gpu
    return {k: round(v, 2) for k, v in est.items()}


def step_vllm_problems(cfg: Config) -> list[str]:
    """train.grpo.vllm's needs, checked where the training steps run: this interpreter, or flow.step_python's
    (the environment with the vllm extra) for the package."""
    import subprocess

    from semrl.training.trainers import vllm_problems

    problems = vllm_problems(cfg.train.grpo.vllm)
    python = cfg.flow.step_python
    if python is None or cfg.train.grpo.vllm == "off":
        return problems
    problems = [p for p in problems if "package is not installed" not in p]
    try:
        found = subprocess.run([str(python), "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec("
                                "'vllm') is None)"], capture_output=True, timeout=120).returncode == 0
    except OSError as e:
        return problems + [f"flow.step_python {python}: cannot run it ({e})"]
    if not found:
        problems.append(f"train.grpo.vllm: {cfg.train.grpo.vllm}: flow.step_python {python} has no vllm package "
                        "(pip install -e '.[vllm]' in that environment)")
    return problems


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def named_models(cfg: Config) -> dict[str, tuple[str, str | None]]:
    """The models a profile names by hub id or path: {setting: (name, revision)}."""
    named = {}
    if cfg.base.pretrained:
        named["base.pretrained"] = (cfg.base.pretrained, cfg.base.revision)
    for role in ("reward", "eval"):
        e = getattr(cfg.embedder, role)
        if e.model and e.kind in ("pretrained", "transformer"):
            named[f"embedder.{role}.model"] = (e.model, e.revision)
    if cfg.eval.judge.kind == "local" and cfg.eval.judge.model:
        named["eval.judge.model"] = (cfg.eval.judge.model, cfg.eval.judge.revision)
    return named


def hub_problems(cfg: Config) -> list[str]:
    """With HF_HUB_OFFLINE set, every named hub model must already be in the local cache: otherwise the
    run would fail at its first download, after hours of earlier stages (or after `semrl profile` rewrote
    params.yaml). `make` sets the variable only where a corpus mirror is configured."""
    import os

    from huggingface_hub import try_to_load_from_cache

    if not _truthy(os.environ.get("HF_HUB_OFFLINE")):
        return []
    problems = []
    for setting, (name, revision) in named_models(cfg).items():
        if Path(name).exists():
            continue
        if not isinstance(try_to_load_from_cache(name, "config.json", revision=revision), str):
            problems.append(f"{setting} {name!r}: not in the local Hugging Face cache and HF_HUB_OFFLINE=1; unset "
                            "HF_HUB_OFFLINE to download it (make sets it only when SEMRL_DATA_MIRROR is set)")
    return problems


def check(cfg: Config) -> tuple[list[str], list[str]]:
    """(problems, facts) beyond what the typed config already validated (which `load_config` reports):
    rewards that resolve, sources and tables that parse, LoRA targets in the real architecture, the
    memory a step needs. No problem means the profile is ready to run."""
    from semrl.core.methods import methods
    from semrl.core.tasks import data_problems, tasks
    from semrl.data.sources import read_sources
    from semrl.data.tables import read_tables, unpinned
    from semrl.training.rewards import REGISTRY

    problems, facts = [], [f"profile: {cfg.profile}"]
    t = cfg.train
    g = t.grpo
    facts.append(f"tasks: {', '.join(t.tasks)} (defined: {', '.join(tasks(cfg))})")
    facts.append(f"methods: {', '.join(methods(cfg))}")
    facts.append(f"GRPO: {g.prompts_per_step} prompts x {g.num_generations} generations = "
                 f"{g.prompts_per_step * g.num_generations} completions per device step")
    for method in methods(cfg).values():
        for comp in method.rewards:
            if comp.name in REGISTRY:
                continue
            if "." in comp.name:
                try:
                    import_dotted(comp.name)
                    continue
                except SemrlError:
                    pass
            problems.append(f"{method.section} ({method.name}): reward {comp.name!r} is neither registered "
                            f"({', '.join(REGISTRY)}) nor an importable dotted path")
    problems += step_vllm_problems(cfg)
    grpo = methods(cfg)["grpo"]
    facts.append(f"GRPO trains {'a LoRA adapter' if grpo.lora else 'every weight'} at lr {g.lr:g}")
    if grpo.lora and g.lr < 1e-6:
        facts.append(f"warning: train.grpo: LoRA at lr {g.lr:g} < 1e-6 barely moves a fresh adapter (B = 0), and "
                     "an unmoved policy pays no tax trivially; set train.grpo.lora: false for full-parameter GRPO "
                     "or raise the lr (MLflow logs adapter/lora_B_norm and kl to show whether it moved)")
    if t.bf16 and not bf16_native():
        facts.append("warning: train.bf16 on a machine without native bf16 (no CUDA bf16, no AVX512-BF16/AMX CPU): "
                     "bf16 matrix products are emulated, ~10x slower than float32; set train.bf16: false here")
    for where, section in (("base", cfg.base), ("embedder.reward", cfg.embedder.reward),
                           ("embedder.eval", cfg.embedder.eval)):
        if section.trust_remote_code:
            facts.append(f"warning: {where}.trust_remote_code is on: loading its model runs Python code from the "
                         "model's repository (pin its revision to a commit you have read)")
    from semrl.core.servers import exposure_problem

    if problem := exposure_problem(cfg.servers):
        problems.append(problem)
    for key in ("cldr_pairs", "cldr_dates"):
        if getattr(cfg.prepare.mt, key) and not cfg.fetch.cldr:
            problems.append(f"prepare.mt.{key} needs fetch.cldr: true")
    try:
        facts.append(f"sources: {len(read_sources(cfg.fetch.sources))} files in {cfg.fetch.sources}")
    except SemrlError as e:
        problems.append(str(e))
    try:
        tables = read_tables(cfg.fetch.tables)
        facts.append(f"tables: {len(tables)}" + "".join(
            f"\n    {t.name}: {t.type} {t.dataset or t.url} -> {t.task} ({t.use})" for t in tables))
        facts += [f"warning: fetch.tables {t.name}: revision {t.revision!r} is not a commit; pin the one fetch "
                  f"records in data/raw/{t.provenance}" for t in tables if unpinned(t)]
    except SemrlError as e:
        problems += str(e).splitlines()
    try:
        arch = architecture(cfg)
        names, shapes, n_params = _linear_modules(arch)
        facts.append(f"base: {arch.model_type}, {n_params / 1e6:,.1f} M parameters, linear layers "
                     f"{', '.join(sorted(names))}")
        if any(m.lora for m in methods(cfg).values()):
            missing = [m for m in t.lora.target_modules if m not in names]
            if missing:
                problems.append(f"train.lora.target_modules: {missing} not in the architecture ({sorted(names)})")
        est = memory_estimate(cfg, arch, n_params, shapes)
        budget = cfg.check.gpu_memory_gib
        facts.append("memory estimate (GiB): " + ", ".join(f"{k} {v}" for k, v in est.items()))
        from semrl.ops.budget import report as budget_report

        facts += budget_report(cfg, n_params, round(est["trainable_params_m"] * 1e6))
        if est["total"] > budget:
            problems.append(f"estimated peak {est['total']} GiB ({est['per_step']} per step x flow.steps_per_gpu "
                            f"{cfg.flow.steps_per_gpu}) exceeds check.gpu_memory_gib {budget}: lower "
                            "flow.steps_per_gpu, prompts_per_step or max lengths, or enable gradient checkpointing")
        # Evaluation holds a seed's models together (semrl.evaluation.evaluate.run): base, cold start, branches.
        held = 2 + sum(m.is_branch for m in methods(cfg).values())
        eval_gib = round(held * est["weights"], 2)
        facts.append(f"evaluation holds {held} models at once (base, cold start, {held - 2} branches): "
                     f"~{eval_gib} GiB of weights")
        if eval_gib > budget:
            problems.append(f"evaluation holds {held} models of a seed at once, ~{eval_gib} GiB of weights, beyond "
                            f"check.gpu_memory_gib {budget}: enable fewer rewards.ablations or evaluate on a larger device")
    except SemrlError as e:
        problems.append(str(e))
    problems += hub_problems(cfg)
    data_issues, data_facts = data_problems(cfg)
    return problems + data_issues, facts + data_facts
