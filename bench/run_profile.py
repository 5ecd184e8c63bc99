"""Benchmark: wall time and peak memory of a whole command, all its child processes summed (DVC stages,
Prefect's server, concurrent training branches), sampled every second; for `dvc repro`, the same per stage
(a stage runs from DVC's "Running stage" line to the next one). Memory twice: RSS summed (what the issue's
target names; it counts a page shared by forked processes once per process) and PSS summed (each shared
page split among its sharers: the memory the tree really holds; the training steps fork from one warm server).
Reading a process's memory walks its page tables in the kernel: at 5 samples a second the sampler took
~20 % of a core from the run it measured (2026-12-02), so it samples once a second (`--interval`) and
prints the CPU time it took itself.

    python bench/run_profile.py -- dvc repro
    python bench/run_profile.py --json profile.json -- dvc repro
"""
from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
import threading
import time

import psutil

STAGE = re.compile(r"Running stage '([^']+)'")


def tree_memory(proc: psutil.Process) -> tuple[int, int]:
    """(RSS, PSS) summed over the process and its descendants."""
    rss = pss = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            info = p.memory_full_info()
            rss, pss = rss + info.rss, pss + getattr(info, "pss", info.rss)
        except psutil.Error:
            pass
    return rss, pss


def main() -> None:
    args = sys.argv[1:]
    out, interval = None, 1.0
    while args[:1] in (["--json"], ["--interval"]):
        if args[0] == "--json":
            out = args[1]
        else:
            interval = float(args[1])
        args = args[2:]
    cmd = args[args.index("--") + 1:] if "--" in args else args
    if not cmd:
        sys.exit(__doc__)
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    root, done = psutil.Process(child.pid), threading.Event()
    stages: list[dict] = [{"stage": "(start-up)", "start": 0.0, "peak": 0, "peak_pss": 0}]

    def sample() -> None:
        while not done.is_set():
            rss, pss = tree_memory(root)
            stages[-1]["peak"] = max(stages[-1]["peak"], rss)
            stages[-1]["peak_pss"] = max(stages[-1]["peak_pss"], pss)
            time.sleep(interval)

    threading.Thread(target=sample, daemon=True).start()
    for line in child.stdout:  # echoed as it comes, so long work still shows progress
        sys.stdout.write(line)
        match = STAGE.search(line)
        if match:
            stages.append({"stage": match.group(1), "start": time.perf_counter() - start, "peak": 0, "peak_pss": 0})
    code = child.wait()
    done.set()
    wall = time.perf_counter() - start
    rows = []
    for i, s in enumerate(stages):
        end = stages[i + 1]["start"] if i + 1 < len(stages) else wall
        rows.append({"stage": s["stage"], "seconds": round(end - s["start"], 1),
                     "peak_rss_gib": round(s["peak"] / 2**30, 2), "peak_pss_gib": round(s["peak_pss"] / 2**30, 2)})
    peak, peak_pss = max(r["peak_rss_gib"] for r in rows), max(r["peak_pss_gib"] for r in rows)
    if len(rows) > 1:
        print("\n| stage | wall (s) | share | peak RSS (GiB) | peak PSS (GiB) |\n|---|---|---|---|---|", file=sys.stderr)
        for r in rows:
            print(f"| {r['stage']} | {r['seconds']:.1f} | {100 * r['seconds'] / wall:.0f} % | {r['peak_rss_gib']:.2f} | "
                  f"{r['peak_pss_gib']:.2f} |", file=sys.stderr)
    own = resource.getrusage(resource.RUSAGE_SELF)
    own_cpu = round(own.ru_utime + own.ru_stime, 1)
    print(f"\n{' '.join(cmd)}: exit {code}, wall {wall:.1f} s, peak RSS (process tree) {peak:.2f} GiB, "
          f"peak PSS {peak_pss:.2f} GiB; the sampler took {own_cpu} s of CPU", file=sys.stderr)
    if out:
        with open(out, "w") as f:
            json.dump({"command": cmd, "exit": code, "wall_seconds": round(wall, 1), "peak_rss_gib": peak,
                       "peak_pss_gib": peak_pss, "sample_interval_s": interval,
                       "sampler_cpu_seconds": own_cpu, "stages": rows}, f, indent=1)
    sys.exit(code)


if __name__ == "__main__":
    main()
