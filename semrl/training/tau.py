"""The adequacy threshold tau of R_sim: a number from params, or (auto) calibrated once per task and seed
on the cold-start model's own dev samples and read back by every GRPO branch of that seed."""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from semrl import SemrlError
from semrl.core.config import Config
from semrl.core.methods import COLDSTART, output_dir
from semrl.core.tasks import Task, per_source

TAU_FILE = "tau.json"


def calibrate_tau(cfg: Config, task: Task, model, tokenizer, seed: int) -> dict[str, Any]:
    """tau = auto: the cold-start model's semantic similarity on dev, sampled as GRPO will sample. The same
    samples check that the reward carries signal: the spread of the similarity and its Spearman
    correlation with the task's primary metric per completion (a reward that does not rank completions
    as the metric does cannot teach the task, however it is scaled)."""
    from scipy.stats import spearmanr

    from semrl.evaluation.metrics import item_scores
    from semrl.models.embedder import Similarity
    from semrl.models.generation import generate
    from semrl.training.rewards import SemanticReward, tau_from_similarities

    g, r = cfg.train.grpo, cfg.rewards
    if r.tau != "auto":
        return {"tau": float(r.tau), "tau_setting": r.tau}
    # Every data source gets its share of the sample (in split order the first source would fill it).
    dev_all = task.examples("dev", tokenizer, cfg.train.max_input_tokens)
    n_sources = len({x["source"] for x in dev_all}) or 1
    dev = per_source(dev_all, -(-r.tau_dev_samples // n_sources))[: r.tau_dev_samples]
    outs = generate(model, tokenizer, [x["prompt"] for x in dev], cfg.train.max_target_tokens,
                    do_sample=True, temperature=g.temperature, top_p=g.top_p, seed=seed, desc="calibrate tau")
    refs = [x["reference"] for x in dev]
    semantic = next((c for c in r.components if c.name == "semantic"), None)
    against = "input" if semantic is not None and semantic.options.get("reference_column") == "input" else "reference"
    sims = SemanticReward(cfg.embedder.reward.out_dir).similarity(outs, [x[against] for x in dev])
    tau = tau_from_similarities(sims, r.tau_quantile)
    quality = item_scores(task.primary_metric, outs, refs, task.script)
    # The evaluation embedder's agreement with the metric on the same samples (it never rewards).
    eval_sims = Similarity(cfg.embedder.eval.out_dir).similarity(outs, refs)
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
    return {"tau": round(tau, 6), "tau_setting": r.tau, "dev_samples": len(dev), "similarity_against": against,
            "by_source": by_source,
            "dev_similarity_mean": round(float(np.mean(sims)), 6), "dev_similarity_std": round(float(np.std(sims)), 6),
            f"dev_{task.primary_metric}_mean": round(float(np.mean(quality)), 6),
            f"spearman_similarity_{task.primary_metric}": rho(sims),
            f"spearman_eval_similarity_{task.primary_metric}": rho(eval_sims)}


def grpo_tau(cfg: Config, task: str, seed: int) -> float:
    """The tau a GRPO run uses: the number in rewards.tau, or (auto) the one its cold start calibrated."""
    if cfg.rewards.tau != "auto":
        return float(cfg.rewards.tau)
    tau_file = output_dir(cfg, task, COLDSTART, seed) / TAU_FILE
    if not tau_file.is_file():
        raise SemrlError(f"{tau_file}: missing; the cold start writes it (rewards.tau is auto)")
    return float(json.loads(tau_file.read_text())["tau"])
