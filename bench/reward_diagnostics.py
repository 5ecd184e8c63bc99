"""Reward variants at the branch point (issue 30): for cold-start models, the share of zero-spread groups, the
input-dependent share of the reward's within-group variation and its pair agreement with the task metric —
the pipeline's own group check (semrl.training.tau.group_samples / group_signal) — for the paper's reward and
candidate changes, each on the same sampled groups. Goals: zero spread <= 30 %, input-dependent >= 0.5,
agreement >= 65 %. tau (for R_sim) is the given quantile of the samples' own cosine to their references, as
the pipeline's calibration takes it from the cold start's dev samples.

    python bench/reward_diagnostics.py --workspace ../ws --task mt \\
        --model C0=/tmp/d/C0/models/mt/coldstart/seed{seed}/model --model CG=... --seeds 0,1,2 \\
        --out bench/results/reward_diagnostics_mt.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LANG = {"name": "language", "weight": 1.0, "min_share": 0.5}
VARIANTS = {  # name: (components, tau quantile or None)
    "paper (1.5 R_sim + R_lang)": ([{"name": "semantic", "weight": 1.5}, LANG], 0.5),
    "paper, tau at the 10 % quantile": ([{"name": "semantic", "weight": 1.5}, LANG], 0.1),
    "R_sim alone": ([{"name": "semantic", "weight": 1.0}], 0.5),
    "1.5 R_sim + graded R_lang": ([{"name": "semantic", "weight": 1.5},
                                   {"name": "language", "weight": 1.0, "graded": True}], 0.5),
    "1.5 contrast + R_lang": ([{"name": "semantic_contrast", "weight": 1.5}, LANG], None),
    "contrast alone": ([{"name": "semantic_contrast", "weight": 1.0}], None),
    "contrast + graded R_lang + repetition": ([{"name": "semantic_contrast", "weight": 1.5},
                                              {"name": "language", "weight": 1.0, "graded": True},
                                              {"name": "repetition", "weight": 1.0}], None),
}
ORACLE = {"chrf": "oracle chrF (diagnosis only)", "rouge_l": "oracle ROUGE-L (diagnosis only)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, required=True)
    ap.add_argument("--task", default="mt")
    ap.add_argument("--model", action="append", required=True, help="LABEL=PATH, {seed} in PATH filled per seed")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--set", action="append", default=[], help="dotted.key=yaml-value on params (e.g. the wide "
                    "settings: train.grpo.num_generations=8)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    import numpy as np
    import torch
    import yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from semrl.core.config import Config, read_yaml
    from semrl.core.tasks import get_task
    from semrl.training.rewards import SemanticReward
    from semrl.training.tau import group_samples, group_signal

    torch.set_num_threads(1)
    ws = args.workspace.resolve()
    p = read_yaml(ws / "params.yaml")
    p["prepare"]["out_dir"] = str(ws / "data" / "prepared")
    p["embedder"]["reward"]["out_dir"] = str(ws / "models" / "embedder")
    p["embedder"]["eval"]["out_dir"] = str(ws / "models" / "eval_embedder")
    p["base"]["out_dir"] = str(ws / "models" / "base")
    for item in args.set:
        key, _, value = item.partition("=")
        node = p
        *path, last = key.split(".")
        for k in path:
            node = node.setdefault(k, {})
        node[last] = yaml.safe_load(value)
    cfg = Config.model_validate(p)
    task = get_task(cfg, args.task)
    variants = {**VARIANTS, ORACLE[task.primary_metric]: ([{"name": task.primary_metric, "weight": 1.0}], None)}
    result = {"task": task.name, "set": args.set, "generations": cfg.train.grpo.num_generations,
              "temperature": cfg.train.grpo.temperature, "top_p": cfg.train.grpo.top_p,
              "completion_tokens": cfg.train.completion_tokens, "models": {}}
    for spec in args.model:
        label, _, pattern = spec.partition("=")
        for seed in (int(s) for s in args.seeds.split(",")):
            path = Path(pattern.format(seed=seed))
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True).eval()
            dev = task.examples("dev", tokenizer, cfg.train.max_input_tokens)
            rows, outs = group_samples(cfg, task, model, tokenizer, dev, seed)
            cos = SemanticReward(cfg.embedder.reward.out_dir).similarity(outs, [x["reference"] for x in rows])
            found = {}
            for name, (components, q) in variants.items():
                tau = max(0.0, float(np.quantile(cos, q))) if q is not None else 0.0
                sig = group_signal(cfg, task, tokenizer, rows, outs, components, tau)
                pick = lambda c: {"zero_spread_groups": c["zero_spread_groups"],
                                  "input_dependent_share": c["input_dependent_share"],
                                  "pair_agreement": c["reward_vs_metric"]["pair_agreement"]}
                found[name] = {"tau": round(tau, 4), "all": pick(sig["all"]),
                               "by_source": {s: pick(c) for s, c in sig["by_source"].items()}}
                print(f"{label} s{seed} {name}: {found[name]['all']}", flush=True)
            result["models"][f"{label}/{seed}"] = found
    print(table(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        args.out.with_suffix(".md").write_text(table(result) + "\n", encoding="utf-8")


def table(result: dict) -> str:
    """Per model label and reward variant, the mean over seeds (pooled over sources, then per source)."""
    import numpy as np

    labels = sorted({k.split("/")[0] for k in result["models"]})
    names = list(next(iter(result["models"].values())))
    sources = sorted(next(iter(next(iter(result["models"].values())).values()))["by_source"])
    head = ("| cold start | reward | " + " | ".join(f"{s}: zero spread / input-dependent / agreement"
                                                    for s in ["all", *sources]) + " |")
    lines = [f"Reward diagnostics, {result['task']}: G {result['generations']}, T {result['temperature']}, top-p "
             f"{result['top_p']}, {result['completion_tokens']} tokens; mean over seeds "
             f"(goals: ≤ 30 % / ≥ 0.5 / ≥ 65 %)", "", head, "|---|---|" + "---|" * (len(sources) + 1)]
    fmt = lambda v: "–" if v is None or v != v else f"{v:.2f}"
    for label in labels:
        runs = [v for k, v in result["models"].items() if k.split("/")[0] == label]
        for name in names:
            cells = []
            for s in ["all", *sources]:
                part = [r[name]["all"] if s == "all" else r[name]["by_source"].get(s, {}) for r in runs]
                mean = lambda key: np.mean([x[key] for x in part if x.get(key) is not None]) if any(
                    x.get(key) is not None for x in part) else None
                cells.append(" / ".join(fmt(mean(k)) for k in ("zero_spread_groups", "input_dependent_share",
                                                               "pair_agreement")))
            lines.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
