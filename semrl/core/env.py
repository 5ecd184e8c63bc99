"""The quiet, offline-safe environment every semrl process and the servers it starts run with: no
telemetry or analytics, no tokenizer fork warnings, Prefect's ephemeral server given time to start on a
busy 2-core machine. One place; the CLI, the servers and the test suite apply it."""
from __future__ import annotations

import os

QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def apply_quiet_env(force: bool = False) -> None:
    """Set the quiet environment in this process (a user's own values win unless force)."""
    for key, value in QUIET_ENV.items():
        if force:
            os.environ[key] = value
        else:
            os.environ.setdefault(key, value)
