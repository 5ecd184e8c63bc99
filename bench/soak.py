"""Soak test (kept out of CI): the training flow run N times back to back against the local servers of
`semrl up`, then a check that nothing leaked — processes, file handles, server memory (RSS growth < 10 %),
MLflow runs left RUNNING — and that the disk growth is accounted for by what the runs were meant to write.

    python bench/soak.py [--runs 5] [--params params.yaml] [--json bench/results/soak.json]

Run it from a project whose `dvc repro` has built models/base and the embedders. Each run trains one task
and seed with the smoke overlay's step counts (configs/smoke.yaml: train, rewards, eval) into a scratch
folder, so the project's own outputs are not touched; the servers are the project's (`semrl up`; started
here when not running, stopped again at the end only then).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from semrl.core.config import deep_merge, load_config, read_yaml  # noqa: E402
from semrl.core.servers import pid_of, servers  # noqa: E402


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def server_stats(cfg) -> dict[str, dict[str, float]]:
    """Per server: processes, RSS (MiB) and open file descriptors, summed over its process tree."""
    out = {}
    for s in servers(cfg.servers, cfg.tracking):
        procs = tree(pid_of(s) or -1)
        rss = fds = 0
        for p in procs:
            try:
                rss += p.memory_info().rss
                fds += p.num_fds()
            except psutil.Error:
                pass
        out[s.name] = {"processes": len(procs), "rss_mib": round(rss / 2**20, 1), "fds": fds}
    return out


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--task", default="mt")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    os.chdir(ROOT)
    cfg = load_config(args.params)
    env = {**os.environ}
    started_here = not all(pid_of(s) for s in servers(cfg.servers, cfg.tracking))
    if started_here:
        subprocess.run([sys.executable, "-m", "semrl.cli", "up", "--params", args.params], check=True)
    for s in servers(cfg.servers, cfg.tracking):
        env["PREFECT_API_URL" if s.name == "prefect" else "MLFLOW_TRACKING_URI"] = s.url + (
            "/api" if s.name == "prefect" else "")

    scratch = Path(tempfile.mkdtemp(prefix="semrl-soak-"))
    smoke = read_yaml(ROOT / "configs" / "smoke.yaml")
    params = deep_merge(read_yaml(args.params), {k: smoke[k] for k in ("train", "rewards", "eval")})
    params["train"].update(tasks=[args.task], seeds=[0], out_dir=str(scratch / "models"),
                           checkpoint_dir=str(scratch / "checkpoints"))
    variant = scratch / "params.yaml"
    variant.write_text(yaml.safe_dump(params, allow_unicode=True))
    watched = {"scratch models": scratch / "models", "scratch checkpoints": scratch / "checkpoints",
               "mlflow.db": Path(cfg.tracking.uri.removeprefix("sqlite:///")),
               "MLflow artifacts": cfg.tracking.artifact_root, "Prefect database": ROOT / ".prefect",
               "step logs": ROOT / ".semrl" / "logs"}
    system_before = {p.pid for p in psutil.process_iter()}
    disk0 = {k: size(v) if v.is_dir() else (v.stat().st_size if v.exists() else 0) for k, v in watched.items()}
    rows = []
    for i in range(1, args.runs + 1):
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "semrl.cli", "flow", "--task", args.task, "--seed", "0",
                               "--params", str(variant)], env=env, capture_output=True, text=True)
        wall = time.time() - t0
        time.sleep(2)  # let children exit
        leaked = [p for p in psutil.process_iter(["pid", "cmdline"])
                  if p.pid not in system_before and p.info["cmdline"]
                  and any(str(variant) in c or "forkserver" in c for c in p.info["cmdline"])]
        stats = server_stats(cfg)
        row = {"run": i, "exit": proc.returncode, "wall_s": round(wall, 1), "leaked_processes": len(leaked),
               **{f"{n}_{k}": v for n, d in stats.items() for k, v in d.items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)

    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    running = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list",
                                 filter_string="attributes.status = 'RUNNING'")
    disk1 = {k: size(v) if v.is_dir() else (v.stat().st_size if v.exists() else 0) for k, v in watched.items()}
    growth = {k: disk1[k] - disk0[k] for k in watched}
    first, last = rows[0], rows[-1]
    result = {
        "runs": rows,
        "all_exit_0": all(r["exit"] == 0 for r in rows),
        "leaked_processes": sum(r["leaked_processes"] for r in rows),
        "runs_left_running": len(running),
        "rss_growth_pct": {n: round(100 * (last[f"{n}_rss_mib"] - first[f"{n}_rss_mib"]) / first[f"{n}_rss_mib"], 1)
                           for n in ("prefect", "mlflow") if first.get(f"{n}_rss_mib")},
        "fd_growth": {n: last[f"{n}_fds"] - first[f"{n}_fds"] for n in ("prefect", "mlflow") if f"{n}_fds" in first},
        "disk_growth_mib": {k: round(v / 2**20, 2) for k, v in growth.items()},
        "disk_growth_per_run_mib": round(sum(growth.values()) / 2**20 / args.runs, 2),
    }
    result["ok"] = (result["all_exit_0"] and result["leaked_processes"] == 0 and result["runs_left_running"] == 0
                    and all(v < 10 for v in result["rss_growth_pct"].values()))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if started_here:
        subprocess.run([sys.executable, "-m", "semrl.cli", "down", "--params", args.params])
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
