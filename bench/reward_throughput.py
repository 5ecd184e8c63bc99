"""Benchmark: the semantic reward as GRPO calls it (G generations x B prompts per step) — cached references
and one batched encode per call — against a naive version that encodes each completion and its reference
in separate calls. Prints the time per step of each and the speed-up.

    python bench/reward_throughput.py [--embedder models/embedder] [--generations 8] [--prompts 16]
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np

from semrl.models.embedder import load_embedder
from semrl.core.io import read_jsonl
from semrl.training.rewards import SemanticReward, rescale
from semrl.core.text import TSHEG


def naive_semantic(model, completions: list[str], references: list[str], tau: float) -> list[float]:
    out = []
    for c, r in zip(completions, references):
        a = model.encode([c], normalize_embeddings=True, show_progress_bar=False)[0]
        b = model.encode([r], normalize_embeddings=True, show_progress_bar=False)[0]
        out.append(rescale(float(np.dot(a, b)), tau))
    return out


def perturb(text: str, rng: random.Random) -> str:
    """A plausible sampled completion: the reference with some syllables dropped or repeated."""
    syllables = text.split(TSHEG)
    kept = [s for s in syllables if rng.random() > 0.2] or syllables[:1]
    if rng.random() < 0.5:
        kept += kept[-3:]
    return TSHEG.join(kept)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--embedder", default="models/embedder")
    ap.add_argument("--data", default="data/prepared/mt/train.jsonl")
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2, help="passes over the same prompts (the cache pays off here)")
    args = ap.parse_args()

    rng = random.Random(0)
    model = load_embedder(args.embedder)
    records = [r for r in read_jsonl(args.data) if r.get("source") != "cldr"]
    batches = [records[i * args.prompts:(i + 1) * args.prompts] for i in range(args.steps)]
    steps = []
    for batch in batches:
        refs = [r["bo"] for r in batch for _ in range(args.generations)]
        steps.append(([perturb(ref, rng) for ref in refs], refs))
    mean_chars = statistics.mean(len(c) for comps, _ in steps for c in comps)
    print(f"{args.steps} steps x {args.prompts} prompts x {args.generations} generations; "
          f"completions {mean_chars:.0f} characters on average; embedder {args.embedder}")

    reward = SemanticReward(model, tau=0.3)
    uncached = SemanticReward(model, tau=0.3, cache=False)
    model.encode(["warm-up"], show_progress_bar=False)
    timings = {"naive (2 encode calls per completion)": [], "batched, no cache": [], "batched + reference cache": []}
    for _ in range(args.epochs):
        for comps, refs in steps:
            t = time.perf_counter()
            slow = naive_semantic(model, comps, refs, 0.3)
            timings["naive (2 encode calls per completion)"].append(time.perf_counter() - t)
            t = time.perf_counter()
            uncached(None, comps, reference=refs)
            timings["batched, no cache"].append(time.perf_counter() - t)
            t = time.perf_counter()
            fast = reward(None, comps, reference=refs)
            timings["batched + reference cache"].append(time.perf_counter() - t)
            assert np.allclose(slow, fast, atol=1e-5), "the fast path must give the naive path's values"
    base = statistics.mean(timings["naive (2 encode calls per completion)"])
    for name, ts in timings.items():
        per_step = statistics.mean(ts)
        print(f"{name:40s} {per_step * 1000:9.1f} ms/step  {base / per_step:6.1f}x")


if __name__ == "__main__":
    main()
