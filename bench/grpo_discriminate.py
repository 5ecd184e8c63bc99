"""The discriminating experiment of issue 30: why does GRPO not learn at tiny scale? Arms on dev, per seed,
budgets matched (every GRPO arm: train.grpo.max_steps optimiser steps x prompts_per_step prompts; more
generations per prompt where an arm says so), each scored against its cold start and the noise floor with
paired intervals over seeds x dev items (semrl.evaluation.stats.paired_bootstrap). The dev rows the cold-start
gate reads (the first train.coldstart.gate.dev_samples per source) are not among those scored.

    arm  cold start  GRPO settings                                    reward
    D    default     today's (G 4, T 0.8, top-p 0.9, grpo loss, std-scaled per group, 32 tokens)   the paper's R
    N    default     today's                                          the paper's R, shuffled across the batch
    S    gated       today's                                          the paper's R
    W+   default     G 8, T 1.0, top-p 1.0, dr_grpo, no std scaling, completion = eval length     the paper's R
    S+   gated       as W+                                            the paper's R
    N+   gated       as W+                                            the paper's R, shuffled across the batch
    O+   gated       as W+                                            oracle: the task metric (chrF / ROUGE-L)
    S+_lr3e-5, N+_lr3e-5, O+_lr3e-5: S+, N+, O+ at GRPO lr 3e-5 (the rest: 1e-4)

Reading: D ~ N: no usable signal; S beats D: the cold start was the cause; W+ beats D: the settings; O+ fails:
capacity. Each (seed, arm) runs in a process of its own (`job`), one torch thread, `--jobs` at a time; its
result is a JSON file in --work, so an interrupted experiment resumes where it stopped. The pipeline's own
code trains (train_one) and scores (generation, item_scores, output_stats) on the base and embedders of a
workspace where `dvc repro embedder` ran.

    python bench/grpo_discriminate.py run --workspace ../ws --task mt --seeds 0,1,2 --jobs 2 \\
        --work /tmp/discriminate-mt --out bench/results/discriminate_mt.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WIDE = {"num_generations": 8, "temperature": 1.0, "top_p": 1.0, "loss_type": "dr_grpo", "scale_rewards": "none"}
ORACLE = {"mt": "chrf", "mt_bo2zh": "chrf", "headline": "rouge_l"}
GATED_CAP = int(os.environ.get("SEMRL_GATED_CAP", 400))  # the gated cold start's schedule: it stops at the first
# gate check it passes, else here (the MT experiment: 400; the environment variable, for a pilot of another cap)
COLD_STARTS = {"C0": False, "CG": True}  # name: gated
ARMS = {  # name: (cold start, GRPO overrides, reward: paper | shuffled | oracle | sft | graded | graded_shuffled)
    "D": ("C0", {}, "paper"),
    "N": ("C0", {}, "shuffled"),
    "S": ("CG", {}, "paper"),
    "W+": ("C0", WIDE, "paper"),
    "S+": ("CG", WIDE, "paper"),
    "N+": ("CG", WIDE, "shuffled"),
    "O+": ("CG", WIDE, "oracle"),
}
# The second experiment: the "+" arms at a lower GRPO learning rate (the first ran all arms at train.grpo.lr 1e-4,
# where the noise floor alone cost 0.074 chrF: update noise, not the reward, dominated).
for _lr in ("3e-5",):
    for _arm in ("S+", "N+", "O+"):
        _cold, _over, _reward = ARMS[_arm]
        ARMS[f"{_arm}_lr{_lr}"] = (_cold, {**_over, "lr": float(_lr)}, _reward)
# The third: strong SFT from the gated cold start at its default lr (train.sft.lr 1e-3, chosen on the ungated
# cold start) and lower ones, budgets as the GRPO arms (train.sft.max_steps x batch_size rows).
for _lr in ("1e-3", "3e-4", "1e-4"):
    ARMS[f"F_lr{_lr}"] = ("CG", {"lr": float(_lr)}, "sft")
# The fourth: the one reward form that met the branch-point goals in bench/reward_diagnostics.py on the gated
# cold start (1.5 R_sim + a graded language reward: zero-spread 0.02, input-dependent 0.57, agreement 0.67),
# trained with the pipeline's GRPO settings, against its own noise floor (the same reward, shuffled).
ARMS["Sg"] = ("CG", {}, "graded")
ARMS["Ng"] = ("CG", {}, "graded_shuffled")
GRADED = [{"name": "semantic", "weight": 1.5}, {"name": "language", "weight": 1.0, "graded": True}]
SHUFFLED = {"paper": "shuffled", "oracle": "shuffled", "graded": "graded_shuffled"}  # a reward -> its floor's


def noise_floor_of(name: str) -> str | None:
    """The arm with the same cold start and GRPO settings whose rewards are shuffled (None for a floor itself)."""
    cold, over, reward = ARMS[name]
    if reward not in SHUFFLED:
        return None
    return next((n for n, (c, o, r) in ARMS.items() if r == SHUFFLED[reward] and c == cold and o == over), None)


def arm_params(ws: Path, work: Path, task: str, seed: int, name: str) -> dict:
    """The workspace's params with this arm's changes; outputs in work/<name>/, the workspace's base and
    embedders as they are."""
    from semrl.core.config import read_yaml

    p = read_yaml(ws / "params.yaml")
    for key in ("prepare",):
        p[key]["out_dir"] = str(ws / "data" / "prepared")
    p["base"]["out_dir"] = str(ws / "models" / "base")
    p["embedder"]["reward"]["out_dir"] = str(ws / "models" / "embedder")
    p["embedder"]["eval"]["out_dir"] = str(ws / "models" / "eval_embedder")
    t = p["train"]
    t.update(tasks=[task], seeds=[seed], out_dir=str(work / name / "models"), checkpoint_dir=str(work / "checkpoints"),
             torch_threads=1, save_steps=100_000)
    t["trajectory"]["every"] = 0  # scored on dev at the end instead
    p["tracking"].update(uri=f"sqlite:///{work / name / 'mlflow.db'}", artifact_root=str(work / name / "mlartifacts"))
    gate = t["coldstart"].setdefault("gate", {})  # a workspace's params may predate the gate: its defaults
    if name in COLD_STARTS:
        gate["enabled"] = COLD_STARTS[name]
        if COLD_STARTS[name]:
            t["coldstart"]["max_steps"] = GATED_CAP
        return p
    cold, grpo, reward = ARMS[name]
    gate.update(enabled=COLD_STARTS[cold], require=False)  # the gate's outcome is reported
    if reward == "sft":
        t["sft"].update(grpo)
        return p
    t["grpo"].update(grpo)
    if "num_generations" in grpo:
        t["grpo"]["max_completion_tokens"] = p["eval"]["max_new_tokens"]
    if reward.startswith("graded"):
        p["rewards"]["components"] = GRADED
    if reward.endswith("shuffled"):  # trained as the grpo_noise_floor branch (job: arm_method)
        p["rewards"]["ablations"]["noise_floor"] = {"enabled": True, "components": None, "shuffle": True}
    if reward == "oracle":
        p["rewards"]["components"] = [{"name": ORACLE[task], "weight": 1.0}]
    return p


def arm_method(name: str) -> str:
    """The pipeline method an arm trains: the cold start, GRPO, GRPO's noise-floor branch or strong SFT."""
    if name in COLD_STARTS:
        return "coldstart"
    reward = ARMS[name][2]
    return "grpo_noise_floor" if reward.endswith("shuffled") else "sft" if reward == "sft" else "grpo"


def dev_rows(cfg, task, tokenizer, n: int) -> list[dict]:
    """Up to n dev rows per source, after the first train.coldstart.gate.dev_samples of each: the gate chose
    when the gated cold start stopped by those, so the arms are scored on others."""
    from collections import Counter

    skip, seen, rows = cfg.train.coldstart.gate.dev_samples, Counter(), []
    for x in task.examples("dev", tokenizer, cfg.train.max_input_tokens):
        seen[x["source"]] += 1
        if skip < seen[x["source"]] <= skip + n:
            rows.append(x)
    return rows


def job(args) -> None:
    """Train one cold start or arm for one seed, score it on dev, write work/<name>/seed<k>.json."""
    import torch

    from semrl.core.config import Config
    from semrl.core.methods import get_method, output_dir
    from semrl.core.tasks import get_task
    from semrl.training.run import train_one

    torch.set_num_threads(1)
    work, name, seed = args.work, args.name, args.seed
    cfg = Config.model_validate(arm_params(args.workspace.resolve(), work, args.task, seed, name))
    method = arm_method(name)
    if method != "coldstart":  # the arm starts from its cold start: linked into its own output tree
        cold = output_dir(cfg, args.task, get_method(cfg, "coldstart"), seed)
        src = work / ARMS[name][0] / "models" / args.task / "coldstart" / f"seed{seed}"
        cold.parent.mkdir(parents=True, exist_ok=True)
        if not cold.exists():
            cold.symlink_to(src.resolve(), target_is_directory=True)
    t0 = time.time()
    summary = train_one(cfg, args.task, method, seed)
    train_s = time.time() - t0
    out_dir = output_dir(cfg, args.task, get_method(cfg, method), seed)
    result = {"name": name, "seed": seed, "task": args.task, "train_s": round(train_s, 1), "summary": summary,
              **score_model(cfg, get_task(cfg, args.task), out_dir / "model", args.dev_rows)}
    if method != "coldstart":  # the training reward and its parts (SFT: loss), per logged step (its MLflow run)
        import mlflow

        client = mlflow.MlflowClient(cfg.tracking.uri)
        result["history"] = {key: [round(m.value, 5) for m in sorted(client.get_metric_history(summary["run_id"], key),
                                                                      key=lambda m: m.step)]
                             for key in (("loss",) if method == "sft" else
                                         ("reward", "reward_std", "kl", "completions/mean_length",
                                          "frac_reward_zero_std"))}
    for extra in ("gate.json", "tau.json"):
        if (out_dir / extra).is_file():
            result[extra.removesuffix(".json")] = json.loads((out_dir / extra).read_text(encoding="utf-8"))
    path = work / name / f"seed{seed}.json"
    path.write_text(json.dumps(result, ensure_ascii=False) + "\n", encoding="utf-8")


def score_model(cfg, task, model_dir: Path, n_rows: int) -> dict:
    """Greedy dev outputs (eval.max_new_tokens) and their scores: per item the primary metric, per source the
    corpus metric, distinct rate and length over the reference length."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from semrl.models.generation import generate

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    rows = dev_rows(cfg, task, tokenizer, n_rows)
    torch.manual_seed(cfg.eval.seed)
    outs = generate(model, tokenizer, [x["prompt"] for x in rows], cfg.eval.max_new_tokens,
                    batch_size=cfg.eval.batch_size, desc=f"dev {model_dir.parent.name}")
    return {"ids": [x["id"] for x in rows], "sources": [x["source"] for x in rows], "outputs": outs,
            **corpus_scores(task, outs, rows)}


def corpus_scores(task, outs: list[str], rows: list[dict]) -> dict:
    from semrl.core.text import metric_tokens
    from semrl.evaluation.metrics import TASK_METRICS, item_scores, output_stats

    m = task.primary_metric
    refs = [x["reference"] for x in rows]
    by_source = {}
    for source in sorted({x["source"] for x in rows}):
        idx = [i for i, x in enumerate(rows) if x["source"] == source]
        o, r = [outs[i] for i in idx], [refs[i] for i in idx]
        by_source[source] = {m: round(TASK_METRICS[m](o, r, task.script), 4), "n": len(idx),
                             "distinct_rate": round(output_stats(o, task.script)["distinct_rate"], 4),
                             "length_ratio": round(sum(len(metric_tokens(x, task.script).split()) for x in o)
                                                   / max(1, sum(len(metric_tokens(x, task.script).split()) for x in r)), 3)}
    return {"items": [round(v, 5) for v in item_scores(m, outs, refs, task.script)], "by_source": by_source}


def baselines(args) -> dict:
    """copy_input and copy_lead on the same dev rows (no model)."""
    from transformers import AutoTokenizer

    from semrl.core.config import Config
    from semrl.core.tasks import get_task
    from semrl.evaluation.metrics import trivial_baselines

    cfg = Config.model_validate(arm_params(args.workspace.resolve(), args.work, args.task, 0, "C0"))
    task = get_task(cfg, args.task)
    from semrl.models.base import base_reference

    tokenizer = AutoTokenizer.from_pretrained(base_reference(cfg.base.out_dir)["model"])
    rows = dev_rows(cfg, task, tokenizer, args.dev_rows)
    train_refs = [x["reference"] for x in task.examples("train", tokenizer, cfg.train.max_input_tokens)]
    return {name: corpus_scores(task, outs, rows)
            for name, outs in trivial_baselines(task.script, rows, train_refs).items()}


def spawn(args, name: str, seed: int) -> str:
    path = args.work / name / f"seed{seed}.json"
    if path.is_file():
        return f"{name} s{seed}: done before"
    (args.work / name).mkdir(parents=True, exist_ok=True)
    log = args.work / name / f"seed{seed}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "job", "--workspace", str(args.workspace.resolve()), "--task", args.task, "--work",
           str(args.work.resolve()), "--name", name, "--seed", str(seed), "--dev-rows", str(args.dev_rows)]
    t0 = time.time()
    with log.open("w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=args.workspace,  # its dvc.lock: data version
                            env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
    status = "ok" if rc == 0 and path.is_file() else f"FAILED (exit {rc}; {log})"
    print(f"{name} s{seed}: {status} in {time.time() - t0:.0f} s", flush=True)
    return status


def create_stores(work: Path, names: list[str]) -> None:
    """Each arm's MLflow store, made here one after another: the seeds of an arm share it, and two jobs
    creating one sqlite store at once race in its schema migration (alembic: "expected to match one row")."""
    import mlflow

    for name in names:
        (work / name).mkdir(parents=True, exist_ok=True)
        mlflow.MlflowClient(f"sqlite:///{(work / name / 'mlflow.db').resolve()}").search_experiments()


def run(args) -> None:
    args.work.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = args.arms.split(",")
    colds = sorted({ARMS[a][0] for a in arms})
    create_stores(args.work, colds + arms)
    with ThreadPoolExecutor(args.jobs) as pool:  # cold starts first: every arm starts from one
        cold = [(c, s) for s in seeds for c in colds]
        failed = {cs for cs, status in zip(cold, pool.map(lambda cs: spawn(args, *cs), cold)) if "FAILED" in status}
        # the slow arms (more generations) first, so the pool ends with short jobs
        order = sorted(arms, key=lambda a: -ARMS[a][1].get("num_generations", 4))
        todo = [(a, s) for s in seeds for a in order if (ARMS[a][0], s) not in failed]
        list(pool.map(lambda js: spawn(args, *js), todo))
    summarise(args, seeds, colds + arms)


def load(args, name: str, seeds: list[int]) -> list[dict] | None:
    found = [args.work / name / f"seed{s}.json" for s in seeds]
    return [json.loads(p.read_text(encoding="utf-8")) for p in found] if all(p.is_file() for p in found) else None


def summarise(args, seeds: list[int], names: list[str]) -> dict:
    """The table: per arm, its dev score per source and overall (mean over seeds), and paired differences
    against its cold start and its noise floor (noise_floor_of: same cold start and settings, rewards shuffled)."""
    import numpy as np

    from semrl.evaluation.stats import paired_bootstrap

    res = {n: r for n in names if (r := load(args, n, seeds))}
    out = {"task": args.task, "seeds": seeds, "dev_rows_per_source": args.dev_rows, "arms": {}, "comparisons": [],
           "baselines": baselines(args)}
    for name, runs in res.items():
        arm = {"by_source": {}, "train_s": [r["train_s"] for r in runs],
               "steps": [r["summary"]["steps"] for r in runs]}
        for source in runs[0]["by_source"]:
            arm["by_source"][source] = {k: round(float(np.mean([r["by_source"][source][k] for r in runs])), 4)
                                        for k in runs[0]["by_source"][source] if k != "n"}
        arm["item_mean"] = round(float(np.mean([np.mean(r["items"]) for r in runs])), 4)
        if "gate" in runs[0]:
            arm["gate"] = [{k: r["gate"][k] for k in ("passed", "passed_at_step", "steps")} for r in runs]
        if "tau" in runs[0]:
            arm["reward_signal"] = [reward_signal(r["tau"]) for r in runs]
        if "history" in runs[0]:  # training reward: mean of the first and the last five logged steps, per seed
            arm["train_reward"] = [(round(float(np.mean(h[:5])), 4), round(float(np.mean(h[-5:])), 4))
                                   for r in runs if (h := r["history"].get("reward"))]
        out["arms"][name] = arm

    def compare(a: str, b: str, source: str | None = None):
        if a not in res or b not in res:
            return
        ra, rb = res[a], res[b]
        assert all(x["ids"] == y["ids"] for x, y in zip(ra, rb)), (a, b)
        keep = [i for i, s in enumerate(ra[0]["sources"]) if source is None or s == source]
        ga = np.array([[r["items"][i] for i in keep] for r in ra])
        gb = np.array([[r["items"][i] for i in keep] for r in rb])
        iv = paired_bootstrap(ga, gb)
        out["comparisons"].append({"a": a, "b": b, "source": source or "all", "diff": round(iv.estimate, 4),
                                   "low": round(iv.low, 4), "high": round(iv.high, 4), "n": iv.n})

    sources = sorted(set(res[next(iter(res))][0]["sources"])) if res else []
    for name in names:
        if name not in ARMS:
            continue
        floor = noise_floor_of(name)
        for source in [None, *sources]:
            compare(name, ARMS[name][0], source)
            if floor:
                compare(name, floor, source)
    for source in [None, *sources]:
        compare("CG", "C0", source)
    text = json.dumps(out, indent=1, ensure_ascii=False)
    print(table(out))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
        args.out.with_suffix(".md").write_text(table(out) + "\n", encoding="utf-8")
    return out


def reward_signal(tau: dict) -> dict:
    """The branch-point diagnostics of one seed (semrl.training.tau.group_check), per source and pooled."""
    wg = tau.get("within_group") or {}
    pick = lambda c: {"zero_spread_groups": c.get("zero_spread_groups"),
                      "input_dependent_share": c.get("input_dependent_share"),
                      "pair_agreement": (c.get("reward_vs_metric") or {}).get("pair_agreement")}
    return {"tau": tau.get("tau"), "all": pick(wg.get("all", {})),
            "by_source": {s: pick(c) for s, c in (wg.get("by_source") or {}).items()}}


def table(out: dict) -> str:
    """Markdown: per arm the dev metric per source (mean over seeds), distinct rate and length ratio; then the
    paired differences with their 95 % intervals."""
    lines = [f"# GRPO discriminating experiment: {out['task']}, seeds {out['seeds']}, dev "
             f"({out['dev_rows_per_source']} rows per source)", ""]
    arms = out["arms"]
    sources = sorted({s for a in arms.values() for s in a["by_source"]})
    metric = next((k for a in arms.values() for s in a["by_source"].values() for k in s
                   if k not in ("distinct_rate", "length_ratio")), "metric")
    head = ("| arm | " + " | ".join(f"{s} {metric} (distinct, len ×)" for s in sources)
            + " | item mean | steps | train s | training reward first → last 5 logs |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for name, b in out["baselines"].items():
        lines.append(f"| {name} | " + " | ".join(
            f"{b['by_source'][s][metric]:.3f} ({b['by_source'][s]['distinct_rate']:.2f}, {b['by_source'][s]['length_ratio']:.2f})"
            for s in sources) + f" | {sum(b['items']) / len(b['items']):.3f} | – | – | – |")
    for name, a in arms.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{a['by_source'][s][metric]:.3f} ({a['by_source'][s]['distinct_rate']:.2f}, {a['by_source'][s]['length_ratio']:.2f})"
            for s in sources) + f" | {a['item_mean']:.3f} | {a['steps']} | {[round(x) for x in a['train_s']]} | "
            + ("; ".join(f"{x:.3f} → {y:.3f}" for x, y in a.get("train_reward", [])) or "–") + " |")
    lines += ["", "| a − b | source | diff | 95 % interval | excludes 0 |", "|---|---|---|---|---|"]
    for c in out["comparisons"]:
        excl = "yes" if c["low"] > 0 or c["high"] < 0 else "no"
        lines.append(f"| {c['a']} − {c['b']} | {c['source']} | {c['diff']:+.4f} | [{c['low']:+.4f}, {c['high']:+.4f}] | {excl} |")
    gates = {n: a["gate"] for n, a in arms.items() if "gate" in a and n in COLD_STARTS}
    if gates:
        lines += ["", "Cold-start gate per seed: " + "; ".join(
            f"{n}: " + ", ".join(f"{'passed at ' + str(g['passed_at_step']) if g['passed'] else 'failed'} ({g['steps']} steps)"
                                 for g in gs) for n, gs in gates.items())]
    signals = {n: a["reward_signal"] for n, a in arms.items() if "reward_signal" in a}
    if signals:
        lines += ["", "Reward at the branch point (per seed, pooled): zero-spread groups / input-dependent share / "
                  "pair agreement with the metric"]
        for n, ss in signals.items():
            lines.append(f"- {n}: " + "; ".join(f"{s['all']['zero_spread_groups']} / {s['all']['input_dependent_share']}"
                                                f" / {s['all']['pair_agreement']}" for s in ss))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["run", "job", "summary"])
    ap.add_argument("--workspace", type=Path, required=True, help="a folder where `dvc repro embedder` ran")
    ap.add_argument("--task", default="mt")
    ap.add_argument("--work", type=Path, required=True, help="arm outputs and results (resumable)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--dev-rows", type=int, default=100, help="dev rows per data source")
    ap.add_argument("--name")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if args.command == "job":
        job(args)
    elif args.command == "run":
        run(args)
    else:
        seeds = [int(s) for s in args.seeds.split(",")]
        arms = args.arms.split(",")
        summarise(args, seeds, sorted({ARMS[a][0] for a in arms}) + arms)


if __name__ == "__main__":
    main()
