"""The quiet, offline-safe environment every semrl process and the servers it starts run with: no
telemetry or analytics, no tokenizer fork warnings, Prefect's ephemeral server given time to start on a
busy 2-core machine, glibc's allocator kept from handing tensor memory back to the kernel every step; and
where run state lives (state_root). One place; the CLI, the servers and the test suite apply it."""
from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

# glibc serves allocations above its mmap threshold (128 KiB, rising to at most 32 MiB) with fresh mmap'd
# pages and returns them on free, so a training step on the CPU page-faults its activations, logits and
# gradients back in every time: ~45,000 minor faults and ~9 % of the step's time in the kernel (bench/
# allocator.py). Serving them from the heap and never trimming it keeps the pages: the same results bit for
# bit; the process holds its peak heap between steps, which it reaches every step anyway. Both or neither:
# a trim threshold alone switches the dynamic mmap threshold off and makes it worse. Read by glibc when a
# process starts (the fork server of the flow steps, the servers); `tune_allocator` sets the running one.
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc malloc.h)

QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # A tracking server that stops answering fails a step within seconds, with a clear error (cli.run_step),
    # instead of minutes of MLflow's default retries (7, backoff 2).
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    **ALLOCATOR_ENV,
}


def apply_quiet_env(force: bool = False) -> None:
    """Set the quiet environment in this process (a user's own values win unless force)."""
    for key, value in QUIET_ENV.items():
        if force:
            os.environ[key] = value
        else:
            os.environ.setdefault(key, value)
    tune_allocator()


def tune_allocator() -> bool:
    """Apply ALLOCATOR_ENV's thresholds (as set in the environment: a user's own win) to this running
    process, which read the variables, if at all, before they were set. glibc only (Linux); False where
    there is no glibc or a value is not a number."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim = int(os.environ.get("MALLOC_TRIM_THRESHOLD_", ALLOCATOR_ENV["MALLOC_TRIM_THRESHOLD_"]))
        mmap = int(os.environ.get("MALLOC_MMAP_THRESHOLD_", ALLOCATOR_ENV["MALLOC_MMAP_THRESHOLD_"]))
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim))
    except (OSError, AttributeError, ValueError):  # musl, no libc.so.6, a value that is not a number
        return False


def state_root() -> Path:
    """Where run state lives — the tracking store, checkpoints, step logs, server PID files, Prefect's home:
    the project root. `dvc exp run --temp` and queued experiments run the stages in a temporary copy of the
    workspace that DVC deletes afterwards; DVC then sets DVC_ROOT to the project the experiment came from,
    so state goes there and outlives the copy (outputs such as models/ and reports/ stay in the working
    directory: DVC collects them from it). Elsewhere: the working directory, as a relative path."""
    root = os.environ.get("DVC_ROOT")
    if root and Path(root).resolve() != Path.cwd().resolve():
        return Path(root).resolve()
    return Path(".")
