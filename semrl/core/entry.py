"""How every entry point runs a pipeline step — the CLI, a DVC stage, a flow's step process: the validated
config, and user-facing failures (a bad params file, a full disk, SIGTERM, an unreachable MLflow) as
`error:` lines and an exit status rather than a traceback. No server, flow or liveness code: the data and
model stages import this, and an operations change must not make them stale."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

from semrl import SemrlError


def config(path: str | Path):
    """The validated config of a params file (every problem at once, as `error:` lines)."""
    from semrl.core.config import load_config

    return run_step(lambda: load_config(path))


def run_step(step: Callable[[], object]) -> object:
    """Run a step, turning user-facing errors into `error:` lines and a non-zero exit, not tracebacks."""
    from semrl.core.tracking import Terminated

    try:
        return step()
    except SemrlError as e:
        for line in str(e).splitlines():
            print(f"error: {line}", file=sys.stderr)
        raise SystemExit(1)
    except OSError as e:
        import errno

        if e.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise
        print(f"error: {e.filename or 'a file'}: cannot write ({e.strerror}: disk full or a file size limit); free "
              "space and rerun (training resumes from its last complete checkpoint)", file=sys.stderr)
        raise SystemExit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130)
    except Terminated:
        print("terminated (SIGTERM); the MLflow run is closed KILLED, a rerun resumes from the last checkpoint",
              file=sys.stderr)
        raise SystemExit(143)
    except Exception as e:
        if e.__class__.__name__ != "MlflowException" or "mlflow" not in type(e).__module__:
            raise
        where = os.environ.get("MLFLOW_TRACKING_URI", "the tracking store")
        print(f"error: MLflow at {where} failed: {str(e).splitlines()[0][:300]}", file=sys.stderr)
        print("error: the step stopped rather than train without its metrics; rerun it once MLflow answers "
              "(training resumes from its last checkpoint; a run left RUNNING is then closed KILLED)", file=sys.stderr)
        raise SystemExit(1)


def use_running_mlflow(params: Path = Path("params.yaml")) -> None:
    """Log to `semrl up`'s MLflow server when it runs (and say so: never silent), unless the user set
    MLFLOW_TRACKING_URI. A broken params file is left to the command itself to report."""
    from semrl.core.config import load_config
    from semrl.core.servers import auth_env, discover

    if not params.is_file():
        return
    try:
        cfg = load_config(params)
    except SemrlError:
        return
    found = discover(cfg.servers, ("mlflow",))
    os.environ.update({**found, **(auth_env() if found else {})})
    for var, url in found.items():
        print(f"semrl: {var}={url} (the running `semrl up` server; `semrl down` or set {var} to change)",
              file=sys.stderr)
