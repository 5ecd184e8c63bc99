"""Benchmark: glibc's allocator kept from handing tensor memory back to the kernel, against its defaults,
on training steps of the tiny profile's model shape (base.arch of params.yaml, random weights): wall, user
and kernel CPU seconds and minor page faults per step, and whether both settings end at the same weights.

glibc serves allocations above its mmap threshold (128 KiB, rising to at most 32 MiB) with fresh mmap'd
pages and returns them on free, so a CPU training step page-faults its activations, logits and gradients
back in every time. ALLOCATOR_ENV serves them from the heap and never trims it (both or neither: a trim
threshold alone switches the dynamic mmap threshold off and makes it worse). Measured, not adopted as the
default: docs/performance.md says why.

Each setting runs in fresh processes (glibc reads the variables at start), `--procs` of them at once, as
the flow's CPU step slots run one step per seed beside each other; the settings alternate `--repeats` times.

    python bench/allocator.py --steps 15 --procs 3 --repeats 2 --json allocator.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}

WORKER = r"""
import hashlib, json, resource, sys, time
import torch
from transformers import Qwen3ForCausalLM
from semrl.core.config import load_config
from semrl.models.base import qwen3_config
params, steps, batch, seq = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
base = load_config(params).base
torch.set_num_threads(1)
torch.manual_seed(0)
model = Qwen3ForCausalLM(qwen3_config(base.arch, base.tokenizer.vocab_size))
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
ids = torch.randint(0, base.tokenizer.vocab_size, (batch, seq))
def step():  # a policy pass with its backward and update, then a no-grad pass (reference, decoding)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step(); opt.zero_grad()
    with torch.no_grad():
        model(input_ids=ids)
for _ in range(2):
    step()
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(steps):
    step()
r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
print(json.dumps({"wall": (t1 - t0) / steps, "user": (r1.ru_utime - r0.ru_utime) / steps,
                  "sys": (r1.ru_stime - r0.ru_stime) / steps, "minflt": (r1.ru_minflt - r0.ru_minflt) / steps,
                  "weights_sha256": digest}))
"""


def run(setting: str, args) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV}
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(REPO), env.get("PYTHONPATH")) if x)
    if setting == "tuned":
        env.update(ALLOCATOR_ENV)
    cmd = [sys.executable, "-c", WORKER, args.params, str(args.steps), str(args.batch), str(args.seq)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(args.procs)]
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode:
            sys.exit(f"worker ({setting}) exited {p.returncode}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=32, help="sequences per step (GRPO: 8 prompts x 4 completions)")
    ap.add_argument("--seq", type=int, default=72, help="tokens per sequence")
    ap.add_argument("--procs", type=int, default=3, help="processes at once (the flow's CPU step slots)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    results: dict[str, list[dict]] = {"default": [], "tuned": []}
    for r in range(args.repeats):
        for setting in ("default", "tuned"):
            rows = run(setting, args)
            results[setting] += rows
            print(f"repeat {r + 1} {setting}: " + ", ".join(f"{x['wall']:.3f} s/step" for x in rows), flush=True)
    summary = {}
    for setting, rows in results.items():
        summary[setting] = {k: round(statistics.median(x[k] for x in rows), 4) for k in ("wall", "user", "sys", "minflt")}
    digests = {x["weights_sha256"] for rows in results.values() for x in rows}
    print(f"\n{args.procs} process(es) at once, {args.batch} x {args.seq} tokens, median per step:")
    print("| allocator | wall s | user s | kernel s | minor faults |\n|---|---|---|---|---|")
    for setting, s in summary.items():
        print(f"| {setting} | {s['wall']:.3f} | {s['user']:.3f} | {s['sys']:.3f} | {s['minflt']:.0f} |")
    ratio = summary["tuned"]["wall"] / summary["default"]["wall"]
    print(f"tuned / default wall: {ratio:.2f}; the same weights in every run: {len(digests) == 1}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "allocator_env": ALLOCATOR_ENV, "median": summary,
                                               "wall_ratio": round(ratio, 3), "same_weights": len(digests) == 1,
                                               "runs": results}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
