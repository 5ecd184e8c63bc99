"""Benchmark: what our stack costs on top of TRL. The same GRPO run (cold-start model, prompts, rewards, tau,
steps, seed, TRL arguments) trained (a) by our stack: `semrl train --method grpo` with MLflow tracking,
checkpoints, model registry and saved outputs, both as the Prefect flow runs a step (forked from the flow's
warm step server, semrl.ops.steps, whose one-off start-up is printed apart) and as a fresh process; and
(b) by a bare TRL script of ~30 lines written the way TRL's GRPO docs show (GRPOConfig + GRPOTrainer, the
same reward functions and prompts, no tracking), a fresh process as a user would run it. Prints the wall
times, the median TRL `step_time` and the ratios, alternating the runs so that machine noise hits all.

Needs a trained cold start (models/<task>/coldstart/seed<k>, from `dvc repro`). Our stack's trajectory
callback (dev decoding along training) is turned off: the bare script has no such thing. The bare script
reads prompts the benchmark built with our code (same truncation, same seed split); our step builds them
itself (~1-2 s of tokenisation), which counts against us.

    python bench/orchestration_overhead.py --task mt --steps 10 --repeats 2
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

BARE_TRL = '''"""A GRPO run written the way TRL's docs show; prompts, rewards and arguments from the benchmark."""
import json
import sys

from datasets import Dataset
from transformers import AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from semrl.training.rewards import build_rewards  # the same reward functions as our stack

spec = json.load(open(sys.argv[1]))
if spec["torch_threads"]:  # the same threads as our step (train.torch_threads: branches share the cores)
    import torch

    torch.set_num_threads(spec["torch_threads"])
rows = [json.loads(line) for line in open(spec["prompts"])]
dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "reference": r["reference"],
                              "input": r["input"]} for r in rows])
reward_funcs, reward_weights = build_rewards(spec["components"], spec["reward_context"])
args = GRPOConfig(output_dir=spec["output_dir"], reward_weights=reward_weights, **spec["args"])
trainer = GRPOTrainer(model=spec["model"], reward_funcs=reward_funcs, args=args, train_dataset=dataset,
                      processing_class=AutoTokenizer.from_pretrained(spec["model"]))
trainer.train()
step_times = [h["step_time"] for h in trainer.state.log_history if "step_time" in h]
json.dump({"steps": trainer.state.global_step, "step_times": step_times}, open(spec["result"], "w"))
'''


def scratch_params(repo: Path, scratch: Path, task: str, seed: int, steps: int) -> Path:
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    t = params["train"]
    t.update(out_dir=str(scratch / "models"), checkpoint_dir=str(scratch / "checkpoints"), logging_steps=1,
             save_steps=100_000, match_budgets=False, tasks=[task], seeds=[seed])
    t["grpo"]["max_steps"] = steps
    t["trajectory"]["every"] = 0
    params["tracking"].update(uri=f"sqlite:///{scratch}/mlflow.db", artifact_root=str(scratch / "mlartifacts"))
    path = scratch / "params.yaml"
    path.write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    # The GRPO branch starts from the repo's cold start (and reads the tau it calibrated).
    cold = repo / "models" / task / "coldstart" / f"seed{seed}"
    if not (cold / "model" / "config.json").is_file():
        sys.exit(f"{cold}: no cold start; run `dvc repro train@{task}` first")
    link = scratch / "models" / task / "coldstart" / f"seed{seed}"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(cold.resolve())
    return path


def bare_spec(params_path: Path, scratch: Path, task: str, seed: int, run: int) -> Path:
    """The bare script's inputs, taken from our stack's own choices so that both runs are the same run."""
    from transformers import AutoTokenizer

    from semrl.core.config import load_config
    from semrl.core.methods import get_method
    from semrl.core.tasks import get_task
    from semrl.training.tau import grpo_tau
    from semrl.training.trainers import common_args, init_model_dir, method_items, model_init_kwargs

    cfg = load_config(params_path)
    method, task_rec = get_method(cfg, "grpo"), get_task(cfg, task)
    init = init_model_dir(cfg, task, method, seed)
    tokenizer = AutoTokenizer.from_pretrained(init)
    items = method_items(cfg, method, task_rec.examples("train", tokenizer, cfg.train.max_input_tokens), seed)
    prompts = scratch / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in items), encoding="utf-8")
    hp, g = method.hparams, method.hparams.num_generations
    args = {k: v for k, v in common_args(cfg, hp, scratch / f"bare-{run}", seed, hp.grad_accum).items() if k != "output_dir"}
    args.update(per_device_train_batch_size=g * hp.prompts_per_step, num_generations=g,
                max_completion_length=cfg.train.max_target_tokens, temperature=hp.temperature, top_p=hp.top_p,
                beta=hp.beta, loss_type=hp.loss_type, epsilon=hp.epsilon, scale_rewards=hp.scale_rewards,
                save_steps=100_000)
    spec = {"model": str(init), "prompts": str(prompts), "output_dir": str(scratch / f"bare-{run}"),
            "torch_threads": cfg.train.torch_threads,
            "result": str(scratch / f"bare-{run}.json"), "args": args,
            "components": [c.model_dump() for c in method.rewards],
            "reward_context": {"embedder": str(cfg.embedder.reward.out_dir),
                               "tau": grpo_tau(cfg, task_rec, seed, init, tokenizer, model_init_kwargs(cfg, method))["tau"],
                               "script": task_rec.script, "reference_column": cfg.rewards.reference_column}}
    path = scratch / f"bare-{run}.spec.json"
    path.write_text(json.dumps(spec, indent=1, default=str))
    return path


NAMES = ("ours_flow_step", "ours_fresh", "bare")


def ours(repo: Path, params_path: Path, scratch: Path, task: str, seed: int, warm: bool) -> dict:
    import shutil

    from mlflow.tracking import MlflowClient

    from semrl.ops import steps
    from semrl.ops.flows import STEPS

    for sub in ("checkpoints", f"models/{task}/grpo"):
        shutil.rmtree(scratch / sub, ignore_errors=True)  # a fresh run each time, never a resume
    args = ["train", "--task", task, "--method", "grpo", "--seed", str(seed), "--params", str(params_path)]
    start = time.perf_counter()
    if warm:
        code = steps.run_call(STEPS["train"], {"params": str(params_path), "task": task, "method": "grpo",
                                               "seed": seed}, dict(os.environ))
        if code != 0:
            sys.exit(f"our flow step exited {code}")
    else:
        subprocess.run([sys.executable, "-m", "semrl.cli", *args], cwd=repo, check=True, capture_output=True)
    wall = time.perf_counter() - start
    summary = json.loads((scratch / "models" / task / "grpo" / f"seed{seed}" / "summary.json").read_text())
    history = MlflowClient(f"sqlite:///{scratch}/mlflow.db").get_metric_history(summary["run_id"], "step_time")
    return {"wall_s": wall, "steps": summary["steps"], "step_times": [m.value for m in sorted(history, key=lambda m: m.step)]}


def start_step_server() -> float:
    """Start the flow's warm step server as a flow run does once (seconds): not part of any one step."""
    from semrl.ops import steps

    start = time.perf_counter()
    proc = steps.context().Process(target=os.getpid)
    proc.start()
    proc.join()
    return time.perf_counter() - start


def bare(repo: Path, spec: Path, scratch: Path) -> dict:
    script = scratch / "bare_grpo.py"
    script.write_text(BARE_TRL)
    start = time.perf_counter()
    subprocess.run([sys.executable, str(script), str(spec)], cwd=repo, check=True, capture_output=True)
    wall = time.perf_counter() - start
    result = json.loads(Path(json.loads(spec.read_text())["result"]).read_text())
    return {"wall_s": wall, **result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="mt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, help="also write the numbers as JSON here")
    args = ap.parse_args()
    repo = Path.cwd()
    rows = []
    with tempfile.TemporaryDirectory(prefix="semrl-overhead-") as tmp:
        scratch = Path(tmp)
        params_path = scratch_params(repo, scratch, args.task, args.seed, args.steps)
        from semrl.core import tracking
        from semrl.core.config import load_config

        tracking.setup(load_config(params_path))  # the store exists in a real project: not a step's cost
        server_s = start_step_server()
        print(f"  flow step server start-up (once per flow run): {server_s:.1f} s", flush=True)
        for run in range(args.repeats):
            for name in NAMES:
                if name == "bare":
                    r = bare(repo, bare_spec(params_path, scratch, args.task, args.seed, run), scratch)
                else:
                    r = ours(repo, params_path, scratch, args.task, args.seed, warm=name == "ours_flow_step")
                # The first step carries one-off warm-up; the median of the rest is the step time.
                r.update(name=name, run=run, step_median_s=statistics.median(r["step_times"][1:] or r["step_times"]))
                rows.append(r)
                print(f"  {name:14} run {run}: {r['steps']} steps, wall {r['wall_s']:6.1f} s, "
                      f"median step {r['step_median_s']:.3f} s", flush=True)
    best = {n: min((r for r in rows if r["name"] == n), key=lambda r: r["wall_s"]) for n in NAMES}
    med = {n: statistics.median(r["step_median_s"] for r in rows if r["name"] == n) for n in NAMES}
    summary = {"task": args.task, "steps": args.steps, "repeats": args.repeats, "step_server_start_s": round(server_s, 1),
               "wall_s": {n: round(best[n]["wall_s"], 1) for n in NAMES},
               "step_median_s": {n: round(med[n], 3) for n in NAMES},
               "ratio_wall": round(best["ours_flow_step"]["wall_s"] / best["bare"]["wall_s"], 3),
               "ratio_wall_fresh": round(best["ours_fresh"]["wall_s"] / best["bare"]["wall_s"], 3),
               "ratio_step": round(med["ours_flow_step"] / med["bare"], 3)}
    w, m = summary["wall_s"], summary["step_median_s"]
    print(f"\nend to end (best of {args.repeats}): ours as a flow step {w['ours_flow_step']} s, ours as a fresh "
          f"process {w['ours_fresh']} s, bare TRL {w['bare']} s; ratio {summary['ratio_wall']} (target <= 1.10), "
          f"fresh {summary['ratio_wall_fresh']}")
    print(f"median GRPO step: ours {m['ours_flow_step']} s, bare TRL {m['bare']} s, ratio {summary['ratio_step']} "
          f"(target <= 1.03)")
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
