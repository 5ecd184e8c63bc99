"""How good is `semrl check`'s time estimate? Its per-stage prediction for a finished run's own params against
the training seconds the run recorded (models/**/summary.json), and the throughput those seconds imply: what
to put in check.budget.throughput for that machine. Works on any finished workspace — the tiny `make run`,
the rehearsal, a GPU run of the paper profile.

    python bench/budget_vs_run.py --workspace /path/to/finished/project [--out result.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", type=Path, required=True)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    out = args.out.resolve() if args.out else None  # before moving into the workspace
    os.chdir(args.workspace)

    from semrl.core.config import load_config
    from semrl.core.methods import COLDSTART, methods
    from semrl.ops.budget import estimate

    cfg = load_config("params.yaml")
    found = methods(cfg)
    stage_of = {m.name: ("cold start" if m.name == COLDSTART else "GRPO reward ablations" if m.ablation else
                         "GRPO" if m.trainer == "grpo" else "transfer" if m.group else m.title) for m in found.values()}
    measured: dict[str, float] = defaultdict(float)
    tokens: dict[str, float] = defaultdict(float)
    for path in sorted(Path(cfg.train.out_dir).rglob("summary.json")):
        s = json.loads(path.read_text(encoding="utf-8"))
        stage = stage_of.get(s.get("method"))
        if stage and s.get("train_seconds") and s.get("task") in cfg.train.tasks + [cfg.transfer.target_task]:
            measured[stage] += s["train_seconds"]
            tokens[stage] += s.get("tokens") or 0
    lines, rows = estimate(cfg)
    overhead = 1 + cfg.check.budget.throughput.overhead
    table = []
    for line in lines:
        if line.stage not in measured:
            continue
        predicted = line.work.hours(cfg) * 3600 / overhead  # train_seconds excludes loading and saving
        table.append({"stage": line.stage, "runs": line.runs, "predicted_s": round(predicted, 3),
                      "measured_s": round(measured[line.stage], 1), "ratio": round(measured[line.stage] / predicted, 2),
                      "measured_tokens_per_s": round(tokens[line.stage] / measured[line.stage], 1)
                      if tokens[line.stage] else None})
    print(f"budget vs run: {args.workspace} (profile {cfg.profile}; {'; '.join(rows)})")
    print(f"{'stage':<24}{'runs':>5}{'predicted s':>13}{'measured s':>12}{'measured/predicted':>20}{'tokens/s':>10}")
    for r in table:
        print(f"{r['stage']:<24}{r['runs']:>5}{r['predicted_s']:>13,.0f}{r['measured_s']:>12,.0f}{r['ratio']:>20}"
              f"{r['measured_tokens_per_s'] or '':>10}")
    if out:
        out.write_text(json.dumps({"workspace": str(args.workspace), "profile": cfg.profile, "stages": table},
                                       indent=2) + "\n")


if __name__ == "__main__":
    main()
