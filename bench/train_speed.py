"""Benchmark: training speed of each branch (cold start, strong SFT, GRPO) of the current profile, per
device: median step time, wall time and tokens/s, the CPU/CUDA ratio when both ran, and the cost per token
the targets name: GRPO's seconds per completion token (generated, then trained on) against SFT's per token
it trains on — both its processed tokens (prompt + target, TRL's num_tokens) and its target tokens alone (the
tokens with a loss, as GRPO's completion tokens are). Target (2026-12 decision): GRPO ≤ 2× SFT per token.

Each branch runs alone (`semrl train`, a fresh process) for a fixed number of steps into a scratch
folder with its own MLflow store; the step time is the median gap between consecutive logged steps
(logging_steps 1), so start-up and the first step's warm-up do not count. Needs models/base and
models/embedder (`dvc repro embedder`).

    python bench/train_speed.py --devices cuda,cpu --sft-steps 30 --grpo-steps 12 --out speed.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

BRANCHES = ("coldstart", "sft", "grpo")


def scratch_params(params_path: Path, scratch: Path, sft_steps: int, grpo_steps: int) -> Path:
    params = yaml.safe_load(params_path.read_text(encoding="utf-8"))
    t = params["train"]
    t.update(out_dir=str(scratch / "models"), checkpoint_dir=str(scratch / "checkpoints"), logging_steps=1,
             save_steps=100_000, match_budgets=False)  # the branches' step counts are the benchmark's
    t["coldstart"]["max_steps"] = t["sft"]["max_steps"] = sft_steps
    t["grpo"]["max_steps"] = grpo_steps
    params["tracking"].update(uri=f"sqlite:///{scratch}/mlflow.db", artifact_root=str(scratch / "mlartifacts"))
    path = scratch / "params.yaml"
    path.write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    return path


def step_seconds(tracking_uri: str, run_id: str) -> list[float]:
    """Gaps between consecutive logged steps (MLflow timestamps of the per-step loss)."""
    from mlflow.tracking import MlflowClient

    history = sorted(MlflowClient(tracking_uri).get_metric_history(run_id, "loss"), key=lambda m: m.step)
    return [(b.timestamp - a.timestamp) / 1000 / max(1, b.step - a.step) for a, b in zip(history, history[1:])]


def loss_tokens(params_path: Path, task: str, method: str, summary: dict, tracking_uri: str, step_s: float) -> dict:
    """Tokens with a loss per step, and seconds per such token at the median step: GRPO's completion tokens
    (its logged mean completion length x prompts_per_step x num_generations), SFT's target tokens (the mean
    templated reference length in tokens, cut at max_target_tokens, over the rows it trains on, x batch_size:
    an expectation, as the sampler's order is the trainer's)."""
    from mlflow.tracking import MlflowClient

    from semrl.core.config import load_config
    from semrl.core.methods import get_method
    from semrl.core.tasks import get_task
    from semrl.training.trainers import method_items

    cfg = load_config(params_path)
    m = get_method(cfg, method)
    if m.trainer == "grpo":
        lengths = [h.value for h in MlflowClient(tracking_uri).get_metric_history(summary["run_id"],
                                                                                    "completions/mean_length")]
        per_step = statistics.mean(lengths) * cfg.train.grpo.prompts_per_step * cfg.train.grpo.num_generations
        return {"loss_tokens_per_step": round(per_step, 1), "ms_per_loss_token": round(1000 * step_s / per_step, 3)}
    from transformers import AutoTokenizer

    from semrl.models.base import base_reference

    tokenizer = AutoTokenizer.from_pretrained(base_reference(cfg.base.out_dir)["model"])  # every model's tokenizer
    t = get_task(cfg, task)
    items = method_items(cfg, m, t.examples("train", tokenizer, cfg.train.max_input_tokens), 0)
    target = statistics.mean(min(len(tokenizer(x["reference"], add_special_tokens=False)["input_ids"]) + 1,
                                 cfg.train.max_target_tokens) for x in items)  # + the end-of-turn token
    per_step = target * m.hparams.batch_size * m.hparams.grad_accum
    processed = summary.get("tokens", 0) / max(summary["steps"], 1)
    return {"loss_tokens_per_step": round(per_step, 1), "ms_per_loss_token": round(1000 * step_s / per_step, 3),
            "ms_per_processed_token": round(1000 * step_s / processed, 3) if processed else None}


def run_device(device: str, params_path: Path, task: str, sft_steps: int, grpo_steps: int) -> list[dict]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the trainers fall back to the CPU
    rows = []
    with tempfile.TemporaryDirectory(prefix=f"semrl-speed-{device}-") as tmp:
        scratch = Path(tmp)
        params = scratch_params(params_path, scratch, sft_steps, grpo_steps)
        for method in BRANCHES:
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "semrl.cli", "train", "--task", task, "--method", method,
                                   "--seed", "0", "--params", str(params)], env=env, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                sys.exit(f"{device} {method} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            summary = json.loads((scratch / "models" / task / method / "seed0" / "summary.json").read_text())
            gaps = step_seconds(f"sqlite:///{scratch}/mlflow.db", summary["run_id"])
            tokens = summary.get("tokens") or 0
            step_s = statistics.median(gaps) if gaps else summary["train_seconds"] / summary["steps"]
            rows.append({
                "device": device, "branch": method, "steps": summary["steps"], "wall_s": round(wall, 1),
                "train_s": summary["train_seconds"],
                "step_s_median": round(step_s, 4) if gaps else None,
                "tokens": int(tokens), "tokens_per_s": round(tokens / summary["train_seconds"], 1),
                **loss_tokens(params, task, method, summary, f"sqlite:///{scratch}/mlflow.db", step_s),
            })
            print(f"  {device:4} {method:9} {rows[-1]['steps']:4d} steps  wall {wall:6.1f} s  "
                  f"step {rows[-1]['step_s_median']} s  {rows[-1]['tokens_per_s']:,.0f} tokens/s", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", default="cuda,cpu", help="comma-separated: cuda, cpu")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--task", default="mt")
    ap.add_argument("--sft-steps", type=int, default=30, help="steps for the cold start and for SFT")
    ap.add_argument("--grpo-steps", type=int, default=12)
    ap.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args()

    import torch

    devices = args.devices.split(",")
    if "cuda" in devices and not torch.cuda.is_available():
        sys.exit("no CUDA device visible to torch (run with --devices cpu, or on a GPU machine)")
    if "cuda" in devices:
        print(f"cuda: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(f"cpu: {os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}")
    rows = []
    for device in devices:
        rows += run_device(device, args.params, args.task, args.sft_steps, args.grpo_steps)

    print("\n| device | branch | steps | median step (s) | tokens/s | train (s) | wall (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['device']} | {r['branch']} | {r['steps']} | {r['step_s_median']} | {r['tokens_per_s']:,.0f} | "
              f"{r['train_s']} | {r['wall_s']} |")
    by = {(r["device"], r["branch"]): r for r in rows}
    for device in devices:  # the 2026-12 target: GRPO's cost per completion token <= 2x SFT's per token
        grpo, sft = by[(device, "grpo")], by[(device, "sft")]
        print(f"\n{device}: GRPO {grpo['ms_per_loss_token']} ms per completion token; SFT "
              f"{sft['ms_per_processed_token']} ms per processed token, {sft['ms_per_loss_token']} ms per target token "
              f"-> GRPO / SFT {grpo['ms_per_loss_token'] / sft['ms_per_processed_token']:.2f}x per processed token, "
              f"{grpo['ms_per_loss_token'] / sft['ms_per_loss_token']:.2f}x per target token (target <= 2x)")
    if {"cuda", "cpu"} <= set(devices):
        print("\nCPU / CUDA:")
        for b in BRANCHES:
            cpu, gpu = by[("cpu", b)], by[("cuda", b)]
            print(f"  {b:9} step time x{cpu['step_s_median'] / gpu['step_s_median']:.1f}, "
                  f"tokens/s x{gpu['tokens_per_s'] / max(cpu['tokens_per_s'], 1e-9):.1f}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
