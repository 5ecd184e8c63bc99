"""Benchmark: GRPO step time against model size and completion length, to predict a bigger profile's cost
from the tiny one. Qwen3-architecture models at a few widths (random weights: the time does not depend on
them) with the base's tokenizer, TRL's GRPOTrainer on the task's real train prompts, every completion forced
to the given length (min_new_tokens), a constant reward. Prints median step time, generated tokens per step
and tokens/s per (size, length), on each device asked for, and the CPU/CUDA ratio when both ran.

    python bench/grpo_scaling.py --devices cpu --hidden 128,256,512 --lengths 16,32,64 --steps 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path


def constant_reward(completions, **kwargs) -> list[float]:
    return [0.0] * len(completions)


def model_dir(base: Path, hidden: int, scratch: Path) -> tuple[Path, int]:
    """A randomly initialised Qwen3 of the base's depth at this width, saved with the base's tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(base)
    heads = max(1, hidden // 64)
    config.update(dict(hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=heads,
                       num_key_value_heads=max(1, heads // 2), head_dim=64,
                       use_cache=True))  # the base's config says False (training); generation needs its KV cache
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    out = scratch / f"qwen3-h{hidden}"
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out, sum(p.numel() for p in model.parameters())


def run_one(args, device: str, which: str, path: Path, params: int, length: int, dataset, scratch: Path) -> dict:
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from semrl.training.shared_prefix import SharedPrefixGRPOTrainer

    g = args.generations
    forced = {"generation_kwargs": {"min_new_tokens": length}} if which == "trl" else {}
    conf = GRPOConfig(
        output_dir=str(scratch / "out"), max_steps=args.steps, learning_rate=1e-5, report_to=[],
        per_device_train_batch_size=g * args.prompts_per_step, num_generations=g, max_completion_length=length,
        beta=0.04, logging_steps=1, save_strategy="no", use_cpu=device == "cpu", seed=0, temperature=0.8, top_p=0.9,
        gradient_checkpointing=False,  # TRL 1.16 defaults to True; the tiny profile trains without (params.yaml)
        bf16=device == "cuda" and args.bf16, **forced)  # TRL defaults to bf16: emulated, 3x slower on this CPU
    trainer_class = SharedPrefixGRPOTrainer if which == "ours" else GRPOTrainer
    trainer = trainer_class(model=str(path), reward_funcs=constant_reward, args=conf, train_dataset=dataset,
                            processing_class=AutoTokenizer.from_pretrained(path))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "step_time" in h]
    step = statistics.median([h["step_time"] for h in logs[1:] or logs])
    mean_length = statistics.mean(h["completions/mean_length"] for h in logs)
    tokens = round(g * args.prompts_per_step * mean_length)
    print(f"  {device:4} {which:4} hidden {path.name} ({params / 1e6:.1f} M) length {length:3} (mean {mean_length:.1f}): "
          f"step {step:.3f} s, {tokens / step:,.0f} generated tokens/s", flush=True)
    return {"device": device, "trainer": which, "hidden": int(path.name.split("-h")[1]), "params": params,
            "length": length, "mean_length": round(mean_length, 1), "step_s": round(step, 3),
            "generated_tokens": tokens, "tokens_per_s": round(tokens / step, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", default="cpu", help="comma-separated: cpu, cuda")
    ap.add_argument("--hidden", default="128,256,512")
    ap.add_argument("--lengths", default="16,32,64")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--prompts-per-step", type=int, default=4)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--task", default="mt")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (a branch's share)")
    ap.add_argument("--bf16", action="store_true", help="bf16 on CUDA (the paper profile's precision)")
    ap.add_argument("--trainers", default="ours", help="comma-separated: ours (shared prefixes), trl")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer

    from semrl.core.config import load_config
    from semrl.core.tasks import get_task

    torch.set_num_threads(args.threads)
    cfg = load_config("params.yaml")
    base = Path("models/base")
    task = get_task(cfg, args.task)
    rows = task.examples("train", AutoTokenizer.from_pretrained(base), cfg.train.max_input_tokens)
    n = args.prompts_per_step * args.steps
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}]} for r in rows[:n]])
    results = []
    with tempfile.TemporaryDirectory(prefix="semrl-scaling-") as tmp:
        scratch = Path(tmp)
        for device in args.devices.split(","):
            if device == "cuda" and not torch.cuda.is_available():
                sys.exit("no CUDA device visible to torch")
            for hidden in map(int, args.hidden.split(",")):
                path, params = model_dir(base, hidden, scratch)
                for length in map(int, args.lengths.split(",")):
                    for which in args.trainers.split(","):
                        results.append(run_one(args, device, which, path, params, length, dataset, scratch))
    print("\n| device | trainer | hidden | params (M) | completion tokens | step (s) | generated tokens/step | tokens/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['device']} | {r['trainer']} | {r['hidden']} | {r['params'] / 1e6:.1f} | {r['length']} | "
              f"{r['step_s']} | {r['generated_tokens']} | {r['tokens_per_s']:,.0f} |")
    devices = {r["device"] for r in results}
    if {"cpu", "cuda"} <= devices:
        by = {(r["device"], r["trainer"], r["hidden"], r["length"]): r["step_s"] for r in results}
        print("\nCPU / CUDA step time:")
        for (d, t, h, l), s in by.items():
            if d == "cpu":
                print(f"  {t} hidden {h} length {l}: x{s / by[('cuda', t, h, l)]:.1f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
