"""The quiet, offline-safe environment every semrl process and the servers it starts run with: no
telemetry or analytics, no tokenizer fork warnings, Prefect's ephemeral server given time to start on a
busy 2-core machine; and where run state lives (state_root). One place; the CLI, the servers and the test
suite apply it."""
from __future__ import annotations

import os
from pathlib import Path

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
}


def apply_quiet_env(force: bool = False) -> None:
    """Set the quiet environment in this process (a user's own values win unless force)."""
    for key, value in QUIET_ENV.items():
        if force:
            os.environ[key] = value
        else:
            os.environ.setdefault(key, value)


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


def bf16_native() -> bool:
    """Whether this machine computes in bf16 natively: a CUDA device that supports it, else a CPU with
    AVX512-BF16 or AMX (oneDNN's bf16 kernels); elsewhere torch emulates it (~10x slower than float32 on
    a 2-core AVX2 CPU: a 2048x64 @ 64x151,936 product with its backward took 374 s against 29 s)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
