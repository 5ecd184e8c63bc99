"""Pilot: does the reward rank completions *of the same prompt* as the task metric does? GRPO learns only from
differences inside a group (advantage = reward minus the group's mean), so a reward can correlate with the
metric across prompts (pooled Spearman, what tau calibration reports) and still carry no signal GRPO can use.

On an existing workspace (`dvc repro` done), per seed: the cold start samples `--generations` completions per
dev prompt exactly as GRPO samples them (temperature, top-p, completion budget); each reward candidate and the
task's primary metric score them; printed per candidate and data source (semrl.evaluation.stats.within_group;
the pipeline runs the same check for the configured reward: tau.json `within_group`, the report):
- within-group Spearman: the mean over prompts of Spearman(reward, metric) among that prompt's completions
  (groups where either is constant are left out; their count is printed),
- pair agreement: over pairs of completions of one prompt whose metric and reward both differ, the share the
  reward orders as the metric does (0.5 = a coin),
- the same two numbers for the completion's length (does the reward prefer longer outputs inside a group?).

    python bench/pilot_group_signal.py --workspace /path/to/repro --task mt --seeds 0 1 2 \\
        --out bench/results/pilot_group_signal_mt.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, default=Path("."))
    ap.add_argument("--task", default="mt")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--prompts", type=int, default=64, help="dev prompts, shared out over the data sources")
    ap.add_argument("--generations", type=int, default=None, help="completions per prompt (train.grpo.num_generations)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    os.chdir(args.workspace)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from semrl.core.config import load_config
    from semrl.core.methods import output_dir
    from semrl.core.tasks import get_task, per_source
    from semrl.evaluation.metrics import item_scores
    from semrl.evaluation.stats import within_group
    from semrl.models.embedder import Similarity
    from semrl.models.generation import generate
    from semrl.training.rewards import LanguageReward, rescale

    cfg = load_config("params.yaml")
    task, g = get_task(cfg, args.task), cfg.train.grpo
    k = args.generations or g.num_generations
    reward_sim, eval_sim = Similarity(cfg.embedder.reward.out_dir), Similarity(cfg.embedder.eval.out_dir)
    lang = LanguageReward(task.script, next((c.options.get("min_share", 0.5) for c in cfg.rewards.components
                                             if c.name == "language"), 0.5))
    result = {"task": task.name, "metric": task.primary_metric, "generations": k, "seeds": {}}
    for seed in args.seeds:
        path = output_dir(cfg, task.name, "coldstart", seed) / "model"
        tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
        dev_all = task.examples("dev", tok, cfg.train.max_input_tokens)
        n_sources = len({x["source"] for x in dev_all}) or 1
        dev = per_source(dev_all, -(-args.prompts // n_sources))[: args.prompts]
        rows = [x for x in dev for _ in range(k)]
        outs = generate(model, tok, [x["prompt"] for x in rows], cfg.train.max_target_tokens, do_sample=True,
                        temperature=g.temperature, top_p=g.top_p, seed=seed, desc=f"cold start s{seed}")
        metric = item_scores(task.primary_metric, outs, [x["reference"] for x in rows], task.script)
        tau_file = output_dir(cfg, task.name, "grpo", seed) / "tau.json"
        tau = json.loads(tau_file.read_text())["tau"] if tau_file.is_file() else 0.0
        sim_ref = reward_sim.similarity(outs, [x["reference"] for x in rows])
        candidates = {
            "R_sim (reward embedder vs reference)": [rescale(s, tau) for s in sim_ref],
            "cosine (reward embedder vs reference), unrescaled": sim_ref,
            "R = 1.5 R_sim + R_lang (the default reward)": [1.5 * rescale(s, tau) + lang.value(o)
                                                             for s, o in zip(sim_ref, outs)],
            "evaluation embedder vs reference (never a reward)": eval_sim.similarity(outs, [x["reference"] for x in rows]),
            "length (characters)": [float(len(o)) for o in outs],
        }
        if task.name.startswith("mt"):
            sim_in = reward_sim.similarity(outs, [x["input"] for x in rows])
            candidates["R_sim (reward embedder vs the source)"] = [rescale(s, tau) for s in sim_in]
        per_seed = {"tau": tau, "prompts": len(dev), "candidates": {}}
        for name, values in candidates.items():
            by_source = defaultdict(list)
            for i in range(0, len(rows), k):
                by_source[rows[i]["source"]].append((values[i:i + k], metric[i:i + k]))
            stats = {"all": within_group([grp for grps in by_source.values() for grp in grps])}
            stats.update({s: within_group(grps) for s, grps in sorted(by_source.items())})
            per_seed["candidates"][name] = stats
            print(f"s{seed} {name:52s} " + " | ".join(
                f"{s}: ρ̄ {v['spearman_mean']} agree {v['pair_agreement']} ({v['pairs']} pairs)"
                for s, v in stats.items()), flush=True)
        result["seeds"][seed] = per_seed
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
