"""Pilot: can the tiny model learn a task at all, and at which learning rates? Cold start, then strong SFT
and GRPO with the same number of optimiser steps over the same prompts, each scored against the cold
start and trivial baselines on held-out rows, per data source (real vs synthetic kept apart).

It runs the pipeline's own code (prepare, train_one, generation, the task metrics) in a scratch folder,
on the base model and embedders of an existing workspace (`dvc repro embedder` done there). Numbers are
printed and written as JSON; the committed results live in bench/results/.

    python bench/pilot_tasks.py --workspace . --task mt --set prepare.mt.cldr_dates=true \\
        --steps 100 --sft-lr 1e-3 --grpo-lr 1e-4 --seed 0 --out bench/results/pilot_mt.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def set_dotted(d: dict, dotted: str, value: str) -> None:
    *path, last = dotted.split(".")
    for k in path:
        d = d.setdefault(k, {})
    d[last] = yaml.safe_load(value)


def scratch_config(args, scratch: Path):
    from semrl.core.config import Config, read_yaml

    ws = args.workspace.resolve()
    p = read_yaml(ws / "params.yaml")
    p["prepare"].update(raw_dir=str(scratch / "raw"), out_dir=str(scratch / "prepared"))
    p["base"]["out_dir"] = str(scratch / "base" if args.train_base else ws / "models" / "base")
    p["base"]["metrics_file"] = str(scratch / "base.json")
    p["base"]["checkpoint_dir"] = str(scratch / "checkpoints")
    p["embedder"]["reward"]["out_dir"] = str(scratch / "embedder" if args.train_reward_embedder
                                             else ws / "models" / "embedder")
    p["embedder"]["eval"]["out_dir"] = str(ws / "models" / "eval_embedder")
    t = p["train"]
    t.update(out_dir=str(scratch / "models"), checkpoint_dir=str(scratch / "checkpoints"), torch_threads=args.threads,
             save_steps=100_000)
    t["sft"].update(max_steps=args.steps, lr=args.sft_lr, batch_size=args.prompts_per_step)
    t["grpo"].update(max_steps=args.steps, lr=args.grpo_lr, prompts_per_step=args.prompts_per_step)
    p["tracking"].update(uri=f"sqlite:///{scratch}/mlflow.db", artifact_root=str(scratch / "mlartifacts"))
    for item in args.set:
        key, _, value = item.partition("=")
        set_dotted(p, key, value)
    return Config.model_validate(p)


def raw_tree(ws: Path, scratch: Path) -> None:
    """The workspace's raw data plus every generated CLDR file the current code knows (new ones included)."""
    from semrl.data.cldr import GENERATED

    shutil.copytree(ws / "data" / "raw", scratch / "raw", symlinks=True)
    for name, make in GENERATED.items():
        (scratch / "raw" / name).write_bytes(make())


def score(task, outputs: list[str], rows: list[dict]) -> dict:
    from semrl.evaluation.metrics import TASK_METRICS

    by_source = defaultdict(list)
    for o, r in zip(outputs, rows):
        by_source[r["source"]].append((o, r["reference"]))
    out = {}
    for source, pairs in sorted(by_source.items()):
        hyps, refs = [h for h, _ in pairs], [r for _, r in pairs]
        out[source] = {m: round(TASK_METRICS[m](hyps, refs, task.script), 4) for m in task.metrics}
        out[source]["n"] = len(pairs)
        out[source]["mean_len_ratio"] = round(sum(map(len, hyps)) / max(1, sum(map(len, refs))), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, default=ROOT)
    ap.add_argument("--task", default="mt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=100, help="optimiser steps of strong SFT and of GRPO")
    ap.add_argument("--prompts-per-step", type=int, default=4, help="GRPO prompts per step = SFT batch size")
    ap.add_argument("--sft-lr", type=float, default=1e-3)
    ap.add_argument("--grpo-lr", type=float, default=1e-4)
    ap.add_argument("--methods", default="coldstart,sft,grpo")
    ap.add_argument("--eval-rows", type=int, default=100, help="test rows per source")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="dotted.key=yaml-value on params (repeatable)")
    ap.add_argument("--train-base", action="store_true", help="pretrain the tiny base in the scratch folder "
                    "(with the --set base.* changes) instead of using the workspace's")
    ap.add_argument("--train-reward-embedder", action="store_true", help="train the reward embedder in the scratch "
                    "folder (with the --set embedder.reward.* changes) instead of using the workspace's")
    ap.add_argument("--keep", type=Path, help="keep the scratch folder here")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    scratch = args.keep or Path(tempfile.mkdtemp(prefix="semrl-pilot-"))
    scratch.mkdir(parents=True, exist_ok=True)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    import torch
    from transformers import AutoModelForCausalLM

    from semrl.core.tasks import get_task
    from semrl.data import prepare
    from semrl.models.base import load_base
    from semrl.models.generation import generate
    from semrl.training.run import train_one

    torch.set_num_threads(args.threads)
    if not (scratch / "raw").exists():
        raw_tree(args.workspace.resolve(), scratch)
    cfg = scratch_config(args, scratch)
    prepare.run(cfg)
    if args.train_base:
        from semrl.models import base as base_stage

        result_base = base_stage.run(cfg)
    if args.train_reward_embedder:
        from semrl.models import embedder

        result_embedder = embedder.build_one(cfg, "reward")
    task = get_task(cfg, args.task)
    base, tokenizer = load_base(cfg.base.out_dir)
    rows = []
    for r, ex in zip(prepare_rows(task), task.examples("test", tokenizer, cfg.train.max_input_tokens)):
        rows.append({**ex, "source": r.get("source", task.name), "input": r[task.input]})
    per_source = defaultdict(list)
    for r in rows:
        per_source[r["source"]].append(r)
    rows = [r for rs in per_source.values() for r in rs[: args.eval_rows]]

    result = {"task": task.name, "seed": args.seed, "steps": args.steps, "prompts_per_step": args.prompts_per_step,
              "sft_lr": args.sft_lr, "grpo_lr": args.grpo_lr, "set": args.set, "train": {}, "test": {}}
    if args.train_base:
        result["base"] = result_base
    if args.train_reward_embedder:
        result["reward_embedder"] = result_embedder
    result["test"]["copy_input"] = score(task, [r["input"] for r in rows], rows)
    models = {"base": None}
    for method in args.methods.split(","):
        t0 = time.time()
        summary = train_one(cfg, task.name, method, args.seed)
        result["train"][method] = {k: summary.get(k) for k in ("steps", "final_loss", "train_seconds", "tau")}
        result["train"][method]["wall_s"] = round(time.time() - t0, 1)
        models[method] = Path(cfg.train.out_dir) / task.name / method / f"seed{args.seed}" / "model"
        tau_file = models[method].parent / "tau.json"
        if tau_file.is_file() and "dev_samples" in json.loads(tau_file.read_text()):  # GRPO's reward-signal check on dev
            result["reward_signal"] = json.loads(tau_file.read_text())
    for name, path in models.items():
        model = base if path is None else AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
        torch.manual_seed(0)
        outs = generate(model, tokenizer, [r["prompt"] for r in rows], cfg.eval.max_new_tokens,
                        batch_size=cfg.eval.batch_size, desc=name)
        result["test"][name] = score(task, outs, rows)
        firsts = [i for i, r in enumerate(rows) if i == 0 or rows[i - 1]["source"] != r["source"]]
        result.setdefault("samples", {})[name] = [(rows[j]["input"], outs[j], rows[j]["reference"])
                                                  for i in firsts for j in range(i, min(i + 2, len(rows)))]
    text = json.dumps(result, indent=1, ensure_ascii=False)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)


def prepare_rows(task) -> list[dict]:
    from semrl.core.io import read_jsonl

    return read_jsonl(task.split_file("test"))


if __name__ == "__main__":
    main()
