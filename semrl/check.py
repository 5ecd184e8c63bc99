"""`semrl check [PROFILE]`: validate a profile before anything is downloaded or trained — GRPO batch
shapes, LoRA target modules against the real architecture, reward names, tasks, sources — and estimate
the accelerator memory a step needs."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from semrl import SemrlError
from semrl.io import deep_merge, load_params

KNOWN_LOSSES = ("grpo", "dapo", "dr_grpo", "bnpo")


def profile_params(params_path: str | Path, profile: str | None) -> dict[str, Any]:
    params = load_params(params_path)
    if profile and profile != params.get("profile"):
        params = deep_merge(params, load_params(Path("configs") / f"{profile}.yaml"))
    return params


def architecture(params: dict[str, Any]):
    """The base model's config: the named model's (from the hub cache or the hub), else the tiny arch."""
    from transformers import AutoConfig, Qwen3Config

    b = params["base"]
    if b.get("pretrained"):
        try:
            return AutoConfig.from_pretrained(b["pretrained"], revision=b.get("revision"),
                                              trust_remote_code=bool(b.get("trust_remote_code")))
        except (OSError, ValueError):
            if "qwen3" in b["pretrained"].lower():  # offline: Qwen3's module names hold at every size
                return Qwen3Config(**params.get("check", {}).get("qwen3_config", {}))
            raise SemrlError(f"base.pretrained {b['pretrained']!r}: config not available offline") from None
    a = b["arch"]
    return Qwen3Config(vocab_size=b["tokenizer"]["vocab_size"], hidden_size=a["hidden_size"],
                       intermediate_size=a["intermediate_size"], num_hidden_layers=a["num_hidden_layers"],
                       num_attention_heads=a["num_attention_heads"], num_key_value_heads=a["num_key_value_heads"],
                       head_dim=a["head_dim"], tie_word_embeddings=True)


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


def memory_estimate(params: dict[str, Any], config, n_params: int, shapes: dict[str, tuple[int, int]]) -> dict:
    """A rough peak for the heaviest step (GRPO generation + update), in GiB."""
    t = params["train"]
    bytes_w = 2 if t["bf16"] else 4
    lora = t["lora"]
    layers = config.num_hidden_layers
    if lora["enabled"]:
        trainable = sum(int(lora["r"]) * (shapes[m][0] + shapes[m][1]) for m in lora["target_modules"] if m in shapes)
        trainable *= layers
    else:
        trainable = n_params
    g = t["grpo"]
    batch = int(g["num_generations"]) * int(g["prompts_per_step"])
    seq = int(t["max_input_tokens"]) + int(t["max_target_tokens"]) + 64
    hidden = config.hidden_size
    kv_heads = getattr(config, "num_key_value_heads", config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    gib = 2 ** 30
    est = {
        "weights": n_params * bytes_w / gib,
        "reference_model": 0.0 if lora["enabled"] or float(g["beta"]) == 0 else n_params * bytes_w / gib,
        "trainable_params_m": trainable / 1e6,
        "optimizer_and_grads": trainable * (4 + 4 + 4 + bytes_w) / gib,  # fp32 master, Adam m and v, grads
        "kv_cache": batch * seq * layers * 2 * kv_heads * head_dim * bytes_w / gib,
        # activations kept for backward: ~34 bytes per hidden unit per token per layer, /sqrt(layers) with
        # checkpointing; plus the logits in fp32
        "activations": batch * seq * hidden * layers * 34 / (layers ** 0.5 if t["gradient_checkpointing"] else 1) / gib
        + batch * seq * config.vocab_size * 4 / gib,
    }
    est["total"] = sum(v for k, v in est.items() if k != "trainable_params_m")
    return {k: round(v, 2) for k, v in est.items()}


def check(params: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(problems, facts). No problem means the profile is ready to run."""
    from semrl.rewards import REGISTRY
    from semrl.sources import read_sources
    from semrl.tables import read_tables, unpinned
    from semrl.train import TASKS, methods, reward_components

    problems, facts = [], [f"profile: {params.get('profile')}"]
    t, r = params["train"], params["rewards"]
    for task in t["tasks"]:
        if task not in TASKS:
            problems.append(f"train.tasks: unknown task {task!r} (known: {', '.join(TASKS)})")
    if not t["seeds"] or not all(isinstance(s, int) for s in t["seeds"]):
        problems.append(f"train.seeds: a non-empty list of integers, got {t['seeds']!r}")
    g = t["grpo"]
    if int(g["num_generations"]) < 2:
        problems.append(f"train.grpo.num_generations: GRPO needs at least 2 per prompt, got {g['num_generations']}")
    per_device = int(g["num_generations"]) * int(g["prompts_per_step"])
    if per_device % int(g["num_generations"]):
        problems.append("train.grpo: per-device batch must be divisible by num_generations")
    facts.append(f"GRPO: {g['prompts_per_step']} prompts x {g['num_generations']} generations = {per_device} "
                 "completions per device step")
    if g["loss_type"] not in KNOWN_LOSSES:
        problems.append(f"train.grpo.loss_type: {g['loss_type']!r} unknown (known: {', '.join(KNOWN_LOSSES)})")
    if not 0 < float(g["top_p"]) <= 1 or float(g["temperature"]) <= 0:
        problems.append("train.grpo: need temperature > 0 and 0 < top_p <= 1")
    if r["tau"] != "auto" and not 0 <= float(r["tau"]) < 1:
        problems.append(f"rewards.tau: a number in [0, 1) or auto, got {r['tau']!r}")
    for method in methods(params):
        if not method.startswith("grpo"):
            continue
        for comp in reward_components(params, method):
            name = comp.get("name")
            if name in REGISTRY:
                continue
            if name and "." in name:
                module, _, attr = name.replace(":", ".").rpartition(".")
                try:
                    getattr(importlib.import_module(module), attr)
                    continue
                except (ImportError, AttributeError, ValueError):
                    pass
            problems.append(f"{method}: reward {name!r} is neither registered ({', '.join(REGISTRY)}) "
                            "nor an importable dotted path")
    if params["prepare"]["mt"]["cldr_pairs"] and not params["fetch"]["cldr"]:
        problems.append("prepare.mt.cldr_pairs needs fetch.cldr: true")
    try:
        facts.append(f"sources: {len(read_sources(params['fetch']['sources']))} files in {params['fetch']['sources']}")
    except SemrlError as e:
        problems.append(str(e))
    try:
        tables = read_tables(params)
        facts.append(f"tables: {len(tables)}" + "".join(
            f"\n    {t.name}: {t.type} {t.dataset or t.url} -> {t.task} ({t.use})" for t in tables))
        facts += [f"warning: fetch.tables {t.name}: revision {t.revision!r} is not a commit; pin the one fetch "
                  f"records in data/raw/{t.provenance}" for t in tables if unpinned(t)]
    except SemrlError as e:
        problems += str(e).splitlines()
    try:
        config = architecture(params)
        names, shapes, n_params = _linear_modules(config)
        facts.append(f"base: {config.model_type}, {n_params / 1e6:,.1f} M parameters, linear layers "
                     f"{', '.join(sorted(names))}")
        if t["lora"]["enabled"]:
            missing = [m for m in t["lora"]["target_modules"] if m not in names]
            if missing:
                problems.append(f"train.lora.target_modules: {missing} not in the architecture ({sorted(names)})")
        est = memory_estimate(params, config, n_params, shapes)
        budget = float(params.get("check", {}).get("gpu_memory_gib", 24))
        facts.append("memory estimate (GiB): " + ", ".join(f"{k} {v}" for k, v in est.items()))
        if est["total"] > budget:
            problems.append(f"estimated peak {est['total']} GiB exceeds check.gpu_memory_gib {budget}: lower "
                            "prompts_per_step or max lengths, or enable gradient checkpointing")
    except SemrlError as e:
        problems.append(str(e))
    return problems, facts
