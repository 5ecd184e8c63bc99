"""DVC stage `evaluate@<task>`: every variant (base, cold start, strong SFT, GRPO, ablations) x seed on the
task's test split and on CMRC 2018 dev (general competence = the alignment tax), plus the pairwise
preference of strong SFT vs GRPO outputs. Writes reports/eval/<task>.json and <task>_outputs.jsonl.
`evaluate_transfer` scores the few-shot transfer models the same way (reports/eval/transfer.json)."""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np

from semrl import SemrlError
from semrl.core.config import Config, EvalConfig
from semrl.core.io import atomic_write_text, read_jsonl, write_jsonl
from semrl.core.methods import methods, output_dir, transfer_methods
from semrl.core.tasks import Task, get_task


def variants(cfg: Config, task: str) -> list[tuple[str, int | None, Path | None]]:
    """(method, seed, merged-model folder) for base and every trained method x seed found on disk, in the
    order the methods are defined (cold start, branches, ablations)."""
    found = [("base", None, None)]
    for method in methods(cfg).values():
        if method.group:  # trained and scored by its own stage (transfer)
            continue
        root = output_dir(cfg, task, method, 0).parent
        for seed_dir in sorted(root.glob("seed*"), key=lambda p: int(p.name.removeprefix("seed"))):
            if (seed_dir / "model" / "config.json").is_file():
                found.append((method.name, int(seed_dir.name.removeprefix("seed")), seed_dir / "model"))
    return found


def task_metrics(task: Task, outputs: list[str], references: list[str], reward_emb, eval_emb) -> dict[str, float]:
    from semrl.evaluation.metrics import TASK_METRICS, output_stats
    from semrl.models.embedder import Similarity

    m: dict[str, float] = {name: TASK_METRICS[name](outputs, references, task.script) for name in task.metrics}
    m["sim_reward"] = float(np.mean(Similarity(reward_emb).similarity(outputs, references)))
    m["sim_eval"] = float(np.mean(Similarity(eval_emb).similarity(outputs, references)))
    m.update(output_stats(outputs, task.script))
    return m


def general_competence(model, base, tokenizer, cmrc: list[dict], e: EvalConfig) -> tuple[dict, list[str]]:
    from semrl.evaluation.metrics import answer_nll_and_kl, cmrc_scores, drift_summary
    from semrl.models.generation import generate

    nll_m, nll_b, kls = answer_nll_and_kl(model, base, tokenizer, cmrc, e.cmrc_prompt, e.cmrc_max_context_tokens,
                                          e.batch_size)
    limit = e.cmrc_max_context_tokens
    prompts = [e.cmrc_prompt.format(
        context=tokenizer.decode(tokenizer(x["context"], add_special_tokens=False)["input_ids"][:limit]),
        question=x["question"]) for x in cmrc]
    preds = generate(model, tokenizer, prompts, e.cmrc_max_new_tokens, batch_size=e.batch_size, desc="cmrc")
    return {**cmrc_scores(preds, [x["answers"] for x in cmrc]), **drift_summary(nll_m, nll_b, kls)}, preds


def preference(outputs: dict[tuple[str, int], list[str]], references: list[str], eval_emb, seed: int,
               tie_margin: float, a: str = "sft", b: str = "grpo") -> dict[str, Any]:
    """Pairwise preference of a vs b per seed. Tiny profile: a proxy judge — whichever output the
    *independent evaluation embedder* places closer to the reference; a difference under tie_margin is a
    tie. Presentation order is randomised as it would be for an LLM judge (the proxy is order-blind)."""
    from semrl.models.embedder import Similarity

    sim = Similarity(eval_emb)
    rng = random.Random(seed)
    wins = {a: 0, b: 0, "tie": 0}
    seeds = sorted({s for (m, s) in outputs if m == a} & {s for (m, s) in outputs if m == b})
    for s in seeds:
        sa, sb = sim.similarity(outputs[(a, s)], references), sim.similarity(outputs[(b, s)], references)
        for x, y in zip(sa, sb):
            first_is_a = rng.random() < 0.5  # what a judge would see first
            first, second = (x, y) if first_is_a else (y, x)
            if abs(first - second) < tie_margin:
                wins["tie"] += 1
            else:
                wins[(a if first_is_a else b) if first > second else (b if first_is_a else a)] += 1
    n = max(1, sum(wins.values()))
    return {"judge": "proxy: independent evaluation embedder, closer to the reference (not an LLM judge)",
            "pairs": sum(wins.values()), "seeds": seeds, **{f"{k}_rate": v / n for k, v in wins.items()}}


def _embedders(cfg: Config):
    from semrl.models.embedder import load_embedder

    return load_embedder(cfg.embedder.reward.out_dir), load_embedder(cfg.embedder.eval.out_dir)


def run(cfg: Config, task_name: str) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from semrl.models.base import load_base
    from semrl.models.generation import accelerator, generate

    task, e = get_task(cfg, task_name), cfg.eval
    dtype, device = cfg.weights_dtype, accelerator()
    base, tokenizer = load_base(cfg.base.out_dir, dtype=dtype)
    base.to(device)
    test = task.examples("test", tokenizer, cfg.train.max_input_tokens)[: e.test_samples]
    cmrc_path = cfg.prepare.out_dir / "general" / "cmrc_dev.jsonl"
    cmrc = read_jsonl(cmrc_path)[: e.cmrc_samples]
    if not test or not cmrc:
        raise SemrlError(f"{task_name}: nothing to evaluate (test {len(test)}, CMRC {len(cmrc)})")
    reward_emb, eval_emb = _embedders(cfg)
    refs = [x["reference"] for x in test]
    results, outputs, samples = [], {}, []
    for method, seed, path in variants(cfg, task_name):
        model = base if path is None else \
            AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, dtype=dtype).to(device)
        torch.manual_seed(e.seed)
        outs = generate(model, tokenizer, [x["prompt"] for x in test], e.max_new_tokens, batch_size=e.batch_size,
                        desc=f"{task_name}-{method}")
        metrics = task_metrics(task, outs, refs, reward_emb, eval_emb)
        general, preds = general_competence(model, base, tokenizer, cmrc, e)
        results.append({"task": task_name, "method": method, "seed": seed, **metrics, **general})
        outputs[(method, seed if seed is not None else -1)] = outs
        samples += [{"task": task_name, "method": method, "seed": seed, "id": x["id"], "output": o,
                     "reference": x["reference"]} for x, o in zip(test[: e.samples_to_keep], outs)]
    pref = preference(outputs, refs, eval_emb, seed=e.seed, tie_margin=e.tie_margin)
    report = {"task": task_name, "test_examples": len(test), "cmrc_questions": len(cmrc),
              "decoding": {"do_sample": False, "max_new_tokens": e.max_new_tokens},
              "results": results, "preference": pref}
    atomic_write_text(e.out_dir / f"{task_name}.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_jsonl(e.out_dir / f"{task_name}_outputs.jsonl", samples)
    return report


def evaluate_transfer(cfg: Config) -> dict[str, Any]:
    """The target task's metrics on its test split for every transfer model x seed (paper: MT -> 1,000
    headlines, similarity 0.5690 from RL vs 0.5456 from SFT). Writes reports/eval/transfer.json."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from semrl.models.generation import accelerator, generate

    t, e = cfg.transfer, cfg.eval
    path = e.out_dir / "transfer.json"
    if not t.enabled:
        report = {"enabled": False, "results": []}
        atomic_write_text(path, json.dumps(report, indent=2) + "\n")
        return report
    target = get_task(cfg, t.target_task)
    reward_emb, eval_emb = _embedders(cfg)
    results = []
    for seed in cfg.train.seeds:
        for method in transfer_methods(cfg):
            model_dir = output_dir(cfg, target.name, method, seed) / "model"
            if not (model_dir / "config.json").is_file():
                raise SemrlError(f"{model_dir}: no transfer model (run `semrl transfer`)")
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True,
                                                         dtype=cfg.weights_dtype).to(accelerator())
            test = target.examples("test", tokenizer, cfg.train.max_input_tokens)[: e.test_samples]
            outs = generate(model, tokenizer, [x["prompt"] for x in test], e.max_new_tokens,
                            batch_size=e.batch_size, desc=method.name)
            results.append({"task": target.name, "method": method.name, "source_task": t.source_task,
                            "source": method.init, "seed": seed, "samples": t.samples,
                            **task_metrics(target, outs, [x["reference"] for x in test], reward_emb, eval_emb)})
    report = {"enabled": True, "source_task": t.source_task, "target_task": target.name, "results": results}
    atomic_write_text(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report
