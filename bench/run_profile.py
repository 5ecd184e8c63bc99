"""Benchmark: wall time and peak resident memory of a whole command, all its child processes summed
(DVC stages, Prefect's server, concurrent training branches), sampled every 0.2 s.

    python bench/run_profile.py -- dvc repro
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import psutil


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def main() -> None:
    cmd = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
    if not cmd:
        sys.exit(__doc__)
    start = time.perf_counter()
    child = subprocess.Popen(cmd)
    root, peak, done = psutil.Process(child.pid), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(root))
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    code = child.wait()
    done.set()
    wall = time.perf_counter() - start
    print(f"\n{' '.join(cmd)}: exit {code}, wall {wall:.1f} s, peak RSS (process tree) {peak[0] / 2**30:.2f} GiB",
          file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
