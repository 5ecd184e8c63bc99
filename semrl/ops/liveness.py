"""Liveness across the flow's processes: a flow whose Prefect server stops answering stops its steps and
exits with one clear line (instead of training on unseen, then hanging minutes in Prefect's retries); a
step whose flow was killed (kill -9) ends its MLflow run KILLED instead of training on as an orphan; a
flow run left Running by a dead flow process is marked Crashed by the next `semrl up` or `semrl status`."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from semrl import SemrlError

FLOW_PID_ENV = "SEMRL_FLOW_PID"  # "<pid>:<semrl.core.io.process_start>" of the flow a step belongs to
PARENT_POLL_S = 2.0
API_POLL_S = 5.0


def flow_records() -> Path:
    """.semrl/run/flows/<flow run id>.json: the process of each flow run in progress in this project."""
    from semrl.core.servers import state_dir

    return state_dir() / "run" / "flows"


def this_process() -> str:
    from semrl.core.io import process_start

    return f"{os.getpid()}:{process_start()!r}"


@contextlib.contextmanager
def watch_prefect_api(grace_s: float, flow_run_id: str | None, mlflow_run_id: str | None = None) -> Iterator[None]:
    """While the body runs: record this flow run's process (for `mark_crashed`), and poll the Prefect API;
    once it has not answered for `grace_s` seconds, stop every step (SIGTERM: their MLflow runs end KILLED),
    end this flow's MLflow run KILLED, print why and exit 1. Exiting is the only way out: Prefect's own
    engine would retry each state report for minutes and then fail with a connection traceback."""
    import httpx
    from prefect.client.orchestration import get_client

    from semrl.core.io import atomic_write_text

    record = None
    if flow_run_id:
        record = flow_records() / f"{flow_run_id}.json"
        pid, started = this_process().split(":")
        import mlflow

        atomic_write_text(record, json.dumps({"flow_run_id": flow_run_id, "pid": int(pid), "started": float(started),
                                              "argv": sys.argv, "mlflow_run_id": mlflow_run_id,
                                              "tracking_uri": mlflow.get_tracking_uri()}) + "\n")
    with get_client(sync_client=True) as prefect_client:  # its URL (also an ephemeral server's) and auth header
        url = str(prefect_client.api_url).rstrip("/")
        headers = {k: v for k, v in prefect_client._client.headers.items() if k.lower() == "authorization"}
    # A plain client: Prefect's own retries a refused connection for a minute before answering.
    client = httpx.Client(base_url=url, headers=headers, timeout=API_POLL_S)
    done = threading.Event()
    # Set before the steps are stopped: a stopped step makes the body raise, and its unwinding (the finally
    # below) must keep the record, or `mark_crashed` never learns that this run, Running on the server, died.
    giving_up = threading.Event()

    def poll() -> None:
        down_since = None
        while not done.wait(API_POLL_S):
            try:
                client.get("/health").raise_for_status()
                down_since = None
                continue
            except httpx.HTTPError as e:
                problem = e
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since >= grace_s and not done.is_set():
                giving_up.set()
                _give_up(url, grace_s, problem, mlflow_run_id)

    watcher = threading.Thread(target=poll, name="prefect-api-watch", daemon=True)
    with client:
        watcher.start()
        try:
            yield
        finally:
            done.set()
            if record is not None and not giving_up.is_set():
                record.unlink(missing_ok=True)


def _give_up(url: str, grace_s: float, problem: Exception, mlflow_run_id: str | None) -> None:
    from semrl.ops import steps

    print(f"error: the Prefect server at {url} has not answered for {grace_s:g} s (flow.api_grace_s; "
          f"{type(problem).__name__}: {str(problem)[:120]}): stopping the flow", file=sys.stderr, flush=True)
    stopped = steps.stop_all()
    if mlflow_run_id:
        with contextlib.suppress(Exception):  # a dead MLflow server too: its rerun closes the run (close_stale_runs)
            import mlflow

            mlflow.MlflowClient().set_terminated(mlflow_run_id, "KILLED")
    print(f"error: {stopped} running step(s) stopped, their MLflow runs KILLED; start the server again "
          "(`semrl up`) and rerun: finished steps are kept, training resumes from its last checkpoint, and "
          "`semrl up` or `semrl status` marks this flow run Crashed", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)


def watch_flow_process() -> None:
    """In a step: if the flow that started it (FLOW_PID_ENV) is gone — killed with SIGKILL, so it could not
    stop its steps — SIGTERM this process, which ends its MLflow run KILLED (semrl.core.tracking.run)."""
    from semrl.core.io import process_alive

    owner = os.environ.get(FLOW_PID_ENV)
    if not owner:
        return
    pid, started = owner.split(":")

    def poll() -> None:
        while process_alive(int(pid), float(started)):
            time.sleep(PARENT_POLL_S)
        print(f"the flow that started this step (PID {pid}) is gone: stopping", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=poll, name="flow-watch", daemon=True).start()


def mark_crashed(api_url: str) -> list[str]:
    """Flow runs recorded in this project whose process is gone (killed, or stopped when their Prefect
    server died) but which the Prefect API at `api_url` still shows Running or Pending: set them Crashed, and
    say so. Records of runs that API does not know stay (another server's)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Crashed

    from semrl.core.io import process_alive

    folder = flow_records()
    if not folder.is_dir():
        return []
    lines = []
    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        if client.api_healthcheck() is not None:
            return []
        for record in sorted(folder.glob("*.json")):
            try:
                rec = json.loads(record.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                lines.append(f"flow run record {record} unreadable ({e}); removed")
                record.unlink(missing_ok=True)
                continue
            if process_alive(rec["pid"], rec["started"]):
                continue
            if rec.get("mlflow_run_id"):
                lines += _close_mlflow_run(rec["tracking_uri"], rec["mlflow_run_id"])
            try:
                run = client.read_flow_run(rec["flow_run_id"])
            except ObjectNotFound:  # another server's flow run: the record stays for that one
                continue
            if run.state is not None and not run.state.is_final():
                client.set_flow_run_state(run.id, Crashed(message=f"its process (PID {rec['pid']}) ended without "
                                                                  "reporting: killed, or its Prefect server died"),
                                          force=True)
                lines.append(f"flow run {run.name} ({run.id}) was {run.state.name} with its process gone: marked Crashed")
            record.unlink(missing_ok=True)
    return lines


def _close_mlflow_run(tracking_uri: str, run_id: str) -> list[str]:
    """The dead flow's own MLflow run (its steps close theirs): KILLED if it is still RUNNING."""
    import mlflow

    try:
        client = mlflow.MlflowClient(tracking_uri)
        run = client.get_run(run_id)
        if run.info.status != "RUNNING":
            return []
        client.set_terminated(run_id, "KILLED")
        return [f"MLflow run {run.info.run_name} ({run_id}) was RUNNING with its flow gone: marked KILLED"]
    except Exception as e:  # MLflow down: said, and the record stays for the next time
        raise SemrlError(f"MLflow at {tracking_uri}: cannot close run {run_id} of a dead flow ({e})") from None
