"""Benchmark: where a tiny GRPO step's time goes. Samples `semrl train --method grpo` (a fresh process, as the
flow's step runs it, trajectory off) with py-spy and sorts every sample into one phase by its Python stack:
start-up, generation, reference log-probs, policy forward, backward, optimizer, reward, TRL bookkeeping,
saving and MLflow. Prints seconds and shares (of the process and of the training loop) as a markdown table.

Needs py-spy (`pip install py-spy`) and a trained cold start (models/<task>/coldstart/seed<k>).

    python bench/profile_grpo.py --task mt --steps 10
"""
from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from orchestration_overhead import scratch_params  # noqa: E402  (same scratch set-up)

RATE = 100  # samples per second

# First match wins. A phase matches a stack (semicolon-joined frames "function (file:line)", outermost first)
# when every part of one of its patterns is in it.
PHASES = [
    ("generation", [("_generate_single_turn",)]),
    ("reward", [("_calculate_rewards",)]),
    ("reference log-probs", [("_generate_and_score_completions (", "_get_per_token_logps_and_entropies")]),
    ("TRL bookkeeping (prompts, padding, advantages)", [("_generate_and_score_completions",)]),
    ("backward", [("backward (",)]),
    ("policy forward + loss", [("compute_loss",)]),
    ("optimizer", [("optimizer.py",)]),
    ("checkpoints + outputs + MLflow", [("_save_checkpoint",), ("save_outputs",), ("log_artifacts",),
                                        ("register (",), ("log_metrics",)]),
    ("other training loop (Trainer)", [("_inner_training_loop",)]),
    ("start-up (imports, data, model load)", [("",)]),
]


def phase(stack: str) -> str:
    for name, patterns in PHASES:
        if any(all(part in stack for part in pattern) for pattern in patterns):
            return name
    return PHASES[-1][0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="mt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--raw", type=Path, help="keep py-spy's raw stacks here")
    args = ap.parse_args()
    repo = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="semrl-profile-") as tmp:
        scratch = Path(tmp)
        params = scratch_params(repo, scratch, args.task, args.seed, args.steps)
        raw = args.raw or scratch / "grpo.raw"
        subprocess.run(["py-spy", "record", "-r", str(RATE), "-f", "raw", "-o", str(raw), "--",
                        sys.executable, "-m", "semrl.cli", "train", "--task", args.task, "--method", "grpo",
                        "--seed", str(args.seed), "--params", str(params)], cwd=repo, check=True,
                       capture_output=True)
        seconds: dict[str, float] = collections.Counter()
        for line in raw.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if "Thread._bootstrap" in stack.split(";")[0]:
                continue  # idle helper threads (tqdm's monitor)
            seconds[phase(stack)] += int(n) / RATE
    total = sum(seconds.values())
    loop = sum(v for k, v in seconds.items() if not k.startswith(("start-up", "checkpoints")))
    print(f"GRPO, task {args.task}, {args.steps} steps: {total:.1f} s sampled, training loop {loop:.1f} s "
          f"({loop / args.steps:.2f} s/step)\n")
    print("| phase | s | share of process | share of training loop |")
    print("|---|---|---|---|")
    for name, _ in PHASES:
        s = seconds.get(name, 0.0)
        in_loop = "" if name.startswith(("start-up", "checkpoints")) else f"{100 * s / loop:.1f} %"
        print(f"| {name} | {s:.1f} | {100 * s / total:.1f} % | {in_loop} |")


if __name__ == "__main__":
    main()
