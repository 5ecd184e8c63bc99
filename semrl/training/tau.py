"""The adequacy threshold tau of R_sim: a number from params, or (auto) calibrated once per task and seed
on the cold-start model's own dev samples, by the first GRPO run of that seed (the GRPO stage), and read
back by the others (its reward ablations, a resumed run)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from semrl.core.checkpoints import model_identity
from semrl.core.config import Config
from semrl.core.io import atomic_write_text
from semrl.core.tasks import Task, per_source


def calibrate_tau(cfg: Config, task: Task, model, tokenizer, seed: int) -> dict[str, Any]:
    """tau = auto: the cold-start model's semantic similarity on dev, sampled as GRPO will sample. The same
    samples check that the reward carries signal: the spread of the similarity and its Spearman
    correlation with the task's primary metric per completion (a reward that does not rank completions
    as the metric does cannot teach the task, however it is scaled)."""
    from scipy.stats import spearmanr

    from semrl.evaluation.metrics import item_scores
    from semrl.models.embedder import Similarity
    from semrl.models.generation import generate, step_device
    from semrl.training.rewards import SemanticReward, reward_device, tau_from_similarities

    g, r = cfg.train.grpo, cfg.rewards
    if r.tau != "auto":
        return {"tau": float(r.tau), "tau_setting": r.tau}
    # Every data source gets its share of the sample (in split order the first source would fill it).
    dev_all = task.examples("dev", tokenizer, cfg.train.max_input_tokens)
    n_sources = len({x["source"] for x in dev_all}) or 1
    dev = per_source(dev_all, -(-r.tau_dev_samples // n_sources))[: r.tau_dev_samples]
    outs = generate(model, tokenizer, [x["prompt"] for x in dev], cfg.train.completion_tokens,
                    do_sample=True, temperature=g.temperature, top_p=g.top_p, seed=seed, desc="calibrate tau")
    refs = [x["reference"] for x in dev]
    semantic = next((c for c in r.components if c.name == "semantic"), None)
    against = "input" if semantic is not None and semantic.options.get("reference_column") == "input" else "reference"
    reward_model = SemanticReward(cfg.embedder.reward.out_dir, device=reward_device(cfg))
    sims = reward_model.similarity(outs, [x[against] for x in dev])
    tau = tau_from_similarities(sims, r.tau_quantile)
    quality = item_scores(task.primary_metric, outs, refs, task.script)
    # The evaluation embedder's agreement with the metric on the same samples (it never rewards).
    eval_sims = Similarity(cfg.embedder.eval.out_dir, device=step_device()).similarity(outs, refs)
    def rho(x, q=None):
        q = quality if q is None else q
        return round(float(spearmanr(x, q).statistic), 4) if len(set(x)) > 1 and len(set(q)) > 1 else None

    # Per source too: pooled over sources, a correlation can come from the sources' different levels alone.
    by_source = {}
    for source in sorted({x["source"] for x in dev}):
        idx = [i for i, x in enumerate(dev) if x["source"] == source]
        sub = lambda v: [v[i] for i in idx]
        by_source[source] = {"n": len(idx), "spearman_similarity": rho(sub(sims), sub(quality)),
                             "spearman_eval_similarity": rho(sub(eval_sims), sub(quality))}
    # The samples themselves, so every number here can be checked and re-analysed (JSON keeps floats exactly).
    samples = {"source": [x["source"] for x in dev], "similarity": [float(v) for v in sims],
               "eval_similarity": [float(v) for v in eval_sims], task.primary_metric: [float(v) for v in quality]}
    return {"tau": round(tau, 6), "tau_setting": r.tau, "dev_samples": len(dev), "similarity_against": against,
            "samples": samples,
            "by_source": by_source, "within_group": group_check(cfg, task, model, tokenizer, dev_all, tau, seed),
            "dev_similarity_mean": round(float(np.mean(sims)), 6), "dev_similarity_std": round(float(np.std(sims)), 6),
            f"dev_{task.primary_metric}_mean": round(float(np.mean(quality)), 6),
            f"spearman_similarity_{task.primary_metric}": rho(sims),
            f"spearman_eval_similarity_{task.primary_metric}": rho(eval_sims)}


def grpo_tau(cfg: Config, task: Task, seed: int, init: Path, tokenizer, model_kwargs: dict) -> dict[str, Any]:
    """The tau a GRPO run of this task and seed uses, with its reward-signal check: the number in
    rewards.tau, or (auto) the calibration on the cold-start model `init`. Calibrated once and kept under
    train.checkpoint_dir, keyed by everything it depends on (rewards, sampling, data, the cold-start model
    and the reward embedder); concurrent GRPO runs of one seed (ablations, data-parallel ranks) wait on a
    lock for the first one's result, so all of them use the same tau."""
    import fcntl

    if cfg.rewards.tau != "auto":
        return {"tau": float(cfg.rewards.tau), "tau_setting": cfg.rewards.tau}
    from semrl.core.tracking import data_version

    g = cfg.train.grpo
    key_src = json.dumps([cfg.rewards.model_dump(mode="json"), cfg.tasks[task.name].model_dump(mode="json"),
                          g.temperature, g.top_p, cfg.train.max_input_tokens, cfg.train.completion_tokens, g.num_generations, seed,
                          data_version(), model_identity(init), model_identity(cfg.embedder.reward.out_dir),
                          model_identity(cfg.embedder.eval.out_dir)], sort_keys=True, default=str)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    path = cfg.train.checkpoint_dir / task.name / "tau" / f"seed{seed}-{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_suffix(".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            info = calibrate_tau(cfg, task, _load(init, model_kwargs), tokenizer, seed)
            atomic_write_text(path, json.dumps(info, indent=2) + "\n")
    return json.loads(path.read_text(encoding="utf-8"))


def _load(init: Path, model_kwargs: dict):
    """The cold-start model on this process's device (a data-parallel rank: its own GPU)."""
    from transformers import AutoModelForCausalLM

    from semrl.models.generation import step_device

    return AutoModelForCausalLM.from_pretrained(str(init), **model_kwargs).to(step_device()).eval()


def group_check(cfg: Config, task: Task, model, tokenizer, dev_all: list[dict], tau: float, seed: int) -> dict | None:
    """The reward signal GRPO can use: rewards.group_check_prompts dev prompts, each sampled num_generations
    times as GRPO samples them, scored by the configured reward (every component, weighted, with this tau)
    and the task's primary metric. Per data source and pooled: how the reward ranks a prompt's completions
    against the metric (semrl.evaluation.stats.within_group), and how the reward and the metric each rank
    them against their length (a reward that prefers longer completions where the metric does not invites
    length hacking). Pooled correlations (calibrate_tau) can come from differences between prompts alone."""
    if cfg.rewards.group_check_prompts == 0:
        return None
    rows, outs = group_samples(cfg, task, model, tokenizer, dev_all, seed)
    return group_signal(cfg, task, tokenizer, rows, outs, cfg.rewards.components, tau)


def group_samples(cfg: Config, task: Task, model, tokenizer, dev_all: list[dict], seed: int) -> tuple[list[dict], list[str]]:
    """rewards.group_check_prompts dev prompts (each source its share), each sampled num_generations times as
    GRPO samples them: (one row per completion, the completions), a prompt's group consecutive."""
    from semrl.models.generation import generate

    g, r = cfg.train.grpo, cfg.rewards
    n_sources = len({x["source"] for x in dev_all}) or 1
    dev = per_source(dev_all, -(-r.group_check_prompts // n_sources))[: r.group_check_prompts]
    rows = [x for x in dev for _ in range(g.num_generations)]
    outs = generate(model, tokenizer, [x["prompt"] for x in rows], cfg.train.completion_tokens, do_sample=True,
                    temperature=g.temperature, top_p=g.top_p, seed=seed + 1, desc="reward signal in groups")
    return rows, outs


def group_signal(cfg: Config, task: Task, tokenizer, rows: list[dict], outs: list[str], components, tau: float) -> dict:
    """The group check of one reward (`components`, with this tau) on sampled groups (group_samples)."""
    from collections import defaultdict

    from semrl.evaluation.metrics import item_scores
    from semrl.evaluation.stats import within_group
    from semrl.training.rewards import grpo_rewards, score

    r, k = cfg.rewards, cfg.train.grpo.num_generations
    funcs, weights = grpo_rewards(cfg, components, task.script, tau)  # a NaN stops here as in training
    columns = {r.reference_column: [x["reference"] for x in rows], "input": [x["input"] for x in rows],  # as in GRPO
               "completion_ids": tokenizer(outs, add_special_tokens=False)["input_ids"]}  # re-encoded text
    reward = score(funcs, weights, [x["prompt"] for x in rows], outs, **columns)["total"]
    general = input_independent_part(funcs, weights, rows, outs, columns, r.reference_column, k)
    metric = item_scores(task.primary_metric, outs, [x["reference"] for x in rows], task.script)
    length = [float(len(o)) for o in outs]
    groups = defaultdict(list)
    for i in range(0, len(rows), k):
        part = slice(i, i + k)
        groups[rows[i]["source"]].append((reward[part], metric[part], length[part], general[part]))

    def check(gs):
        return {"reward_vs_metric": within_group([(a, b) for a, b, _, _ in gs]),
                "reward_vs_length": within_group([(a, c) for a, _, c, _ in gs]),
                "metric_vs_length": within_group([(b, c) for _, b, c, _ in gs]),
                **reward_diagnostics([(a, g) for a, _, _, g in gs])}

    return {"prompts": len(rows) // k, "generations": k, "all": check([x for gs in groups.values() for x in gs]),
            "by_source": {source: check(gs) for source, gs in sorted(groups.items())},
            "groups": [{"source": source, "reward": list(a), "metric": list(b), "length": list(c),
                        "input_independent": list(g)}
                       for source, gs in sorted(groups.items()) for a, b, c, g in gs]}


OTHER_REFERENCES = 8  # other prompts' references a completion is scored against for its input-independent part


def input_independent_part(funcs, weights, rows: list[dict], outs: list[str], columns: dict, reference_column: str,
                           k: int) -> list[float]:
    """g(y): each completion's reward (every component, weighted) averaged over the references and inputs of up
    to OTHER_REFERENCES other prompts of its data source — what the reward pays whatever the input. The rest,
    h = R - g, is what depends on this completion's own input; only h can teach the task (a reward with h = 0
    is earned by one good-looking output for every prompt)."""
    from semrl.training.rewards import score

    starts = list(range(0, len(rows), k))
    idx, others = [], []
    for s in starts:
        same = [t for t in starts if rows[t]["source"] == rows[s]["source"]]  # s among them
        pos = same.index(s)
        pick = [same[(pos + j) % len(same)] for j in range(1, min(OTHER_REFERENCES + 1, len(same)))]  # the next ones
        for i in range(s, s + k):
            for t in pick:
                idx.append(i)
                others.append(t)
    if not idx:
        return [float("nan")] * len(outs)
    swapped = {reference_column: [rows[t]["reference"] for t in others], "input": [rows[t]["input"] for t in others],
               "completion_ids": [columns["completion_ids"][i] for i in idx]}
    values = score(funcs, weights, [rows[t]["prompt"] for t in others], [outs[i] for i in idx], **swapped)["total"]
    sums, counts = np.zeros(len(outs)), np.zeros(len(outs))
    np.add.at(sums, idx, values)
    np.add.at(counts, idx, 1)
    return [float(v) for v in np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)]


def reward_diagnostics(groups) -> dict[str, Any]:
    """What GRPO's advantages can see in a reward, over groups of (reward, input-independent part g) per
    completion: the share of groups whose reward has no spread (their advantages are all zero: no gradient),
    and h's share of the within-group variance, h = R - g the input-dependent part (sum over groups of the
    squared deviations from the group mean, h's over g's plus h's; the cross term left out, so the share is of
    the two parts' own variation). Goals (issue 30): zero-spread groups <= 30 %, h share >= 0.5."""
    flat, var_g, var_h, n = 0, 0.0, 0.0, 0
    for reward, general in groups:
        reward, general = np.asarray(reward, dtype=float), np.asarray(general, dtype=float)
        n += 1
        if np.ptp(reward) < 1e-9:
            flat += 1
        if np.isnan(general).any():
            continue
        h = reward - general
        var_g += float(((general - general.mean()) ** 2).sum())
        var_h += float(((h - h.mean()) ** 2).sum())
    return {"zero_spread_groups": round(flat / n, 4) if n else None,
            "input_dependent_share": round(var_h / (var_g + var_h), 4) if var_g + var_h > 0 else None}
