"""Pilot: which reward-embedder training pairs make R_sim rank the cold start's outputs as the task metric
does? On an existing workspace (`dvc repro` done: data, base, embedders, each seed's cold start), it draws
the cold start's dev samples exactly as tau calibration does, trains one static reward embedder per
variant (the pipeline's own build_model/training_pairs/train) and prints the Spearman correlation of the
cosine with sentence chrF (MT) or ROUGE-L (headlines), pooled and per data source.

    python bench/pilot_reward_signal.py --workspace . --task mt --seeds 0 1 --out bench/results/pilot_reward_signal_mt.json

Variants: bo-zh pairs only (the pipeline before round 2), the same with the zh source as the reference,
and + monolingual view pairs dropping 15 / 30 / 50 % of the units (the default: one pair, 50 %).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {  # name: (embedder.reward overrides, compare with)
    "bo-zh pairs only": ({"views": 0}, "reference"),
    "bo-zh pairs only, zh source as the reference": ({"views": 0}, "input"),
    "+ views dropping 15 %": ({"views": 1, "view_drop": 0.15}, "reference"),
    "+ views dropping 30 %": ({"views": 1, "view_drop": 0.3}, "reference"),
    "+ views dropping 50 % (default)": ({"views": 1, "view_drop": 0.5}, "reference"),
}


def samples(cfg, task_name: str, seed: int) -> list[dict]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from semrl.core.methods import output_dir
    from semrl.core.tasks import get_task, per_source
    from semrl.models.generation import generate

    task, g, r = get_task(cfg, task_name), cfg.train.grpo, cfg.rewards
    path = output_dir(cfg, task_name, "coldstart", seed) / "model"
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    dev_all = task.examples("dev", tok, cfg.train.max_input_tokens)
    n_sources = len({x["source"] for x in dev_all}) or 1
    dev = per_source(dev_all, -(-r.tau_dev_samples // n_sources))[: r.tau_dev_samples]
    outs = generate(model, tok, [x["prompt"] for x in dev], cfg.train.max_target_tokens, do_sample=True,
                    temperature=g.temperature, top_p=g.top_p, seed=seed, desc=f"cold start s{seed}")
    return [{**x, "output": o} for x, o in zip(dev, outs)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, default=Path("."))
    ap.add_argument("--task", default="mt")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    os.chdir(args.workspace)
    from scipy.stats import spearmanr

    from semrl.core.config import load_config
    from semrl.core.tasks import get_task
    from semrl.evaluation.metrics import item_scores
    from semrl.models.base import base_reference
    from semrl.models.embedder import Similarity, build_model, train, training_pairs

    cfg = load_config("params.yaml")
    task = get_task(cfg, args.task)
    base_dir = Path(base_reference(cfg.base.out_dir)["model"])
    drawn = {s: samples(cfg, args.task, s) for s in args.seeds}
    rho = lambda a, b: round(float(spearmanr(a, b).statistic), 3) if len(set(a)) > 1 and len(set(b)) > 1 else None
    results = []
    for name, (overrides, against) in VARIANTS.items():
        if against == "input" and args.task != "mt":
            continue  # the zh source is a reference only for zh->bo MT
        ecfg = cfg.embedder.reward.model_copy(update=overrides)
        start = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            model = build_model(ecfg, base_dir, Path(tmp))
            pairs = [p for group in training_pairs(cfg.prepare.out_dir, ecfg).values() for p in group]
            train(model, pairs, ecfg, Path(tmp))
            sim = Similarity(model)
            row = {"variant": name, "train_pairs": len(pairs), "seconds": round(time.time() - start, 1), "seeds": {}}
            for seed, dev in drawn.items():
                outs = [x["output"] for x in dev]
                quality = item_scores(task.primary_metric, outs, [x["reference"] for x in dev], task.script)
                s = sim.similarity(outs, [x[against] for x in dev])
                per = {"all": rho(s, quality)}
                for source in sorted({x["source"] for x in dev}):
                    idx = [i for i, x in enumerate(dev) if x["source"] == source]
                    per[source] = rho([s[i] for i in idx], [quality[i] for i in idx])
                row["seeds"][seed] = per
        results.append(row)
        print(f"{name:48s} " + " | ".join(f"s{k}: " + ", ".join(f"{s} {v}" for s, v in per.items())
                                          for k, per in row["seeds"].items()), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"task": args.task, "metric": task.primary_metric, "seeds": args.seeds,
                                        "dev_samples": {s: len(d) for s, d in drawn.items()}, "results": results},
                                       indent=1) + "\n")


if __name__ == "__main__":
    main()
