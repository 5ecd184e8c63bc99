"""Local Prefect and MLflow servers for the UIs: `semrl up`, `semrl down`, `semrl status`.

Both bind to 127.0.0.1, keep their state inside the project (SQLite databases, the artifact folder),
run with telemetry/analytics and MLflow's job execution off, log to `.semrl/logs/` and record their PID
in `.semrl/run/`. `up` returns once each answers its health endpoint and is idempotent; pipelines find
running servers through `discover()` and fall back to the embedded defaults (SQLite file, ephemeral
Prefect) when none runs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from semrl import SemrlError
from semrl.core.config import ServersConfig, TrackingConfig
from semrl.core.env import QUIET_ENV, state_root
from semrl.core.io import pid_alive


def state_dir() -> Path:
    """.semrl/ of the project (its root under a `dvc exp run --temp`: the servers are the project's)."""
    return state_root() / ".semrl"


@dataclass
class Server:
    name: str
    port: int
    host: str = "127.0.0.1"
    backend: str | None = None  # MLflow: the store `tracking.uri` names (sqlite), and its artifact root
    artifacts: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def health_url(self) -> str:
        return self.url + ("/api/health" if self.name == "prefect" else "/health")

    @property
    def pid_file(self) -> Path:
        return state_dir() / "run" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return state_dir() / "logs" / f"{self.name}.log"

    def command(self, root: Path) -> list[str]:
        if self.name == "prefect":
            return [sys.executable, "-m", "prefect", "server", "start", "--host", self.host, "--port", str(self.port)]
        return [sys.executable, "-m", "mlflow", "server", "--host", self.host, "--port", str(self.port),
                "--backend-store-uri", self.backend or f"sqlite:///{root / 'mlflow.db'}",
                "--default-artifact-root", self.artifacts or (root / "mlartifacts").as_uri(), "--workers", "1"]

    def env(self, root: Path) -> dict[str, str]:
        env = {**os.environ, **QUIET_ENV}
        if self.name == "prefect" and not any(k in env for k in ("PREFECT_HOME", "PREFECT_SERVER_DATABASE_CONNECTION_URL",
                                                                 "PREFECT_API_DATABASE_CONNECTION_URL")):
            # the database flows without a server record into (prefect_target): the UI shows every run
            env["PREFECT_HOME"] = str(root.resolve() / ".prefect")
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{project_prefect_db()}"
        env.pop("PREFECT_API_URL", None)  # the server must not try to reach another API
        return env


def servers(cfg: ServersConfig, tracking: TrackingConfig | None = None) -> list[Server]:
    """The two servers; MLflow's serves exactly the store `tracking:` names (its sqlite file and artifact
    root), so runs land in the same place whether or not `semrl up` is running."""
    backend = artifacts = None
    if tracking is not None:
        if not tracking.uri.startswith("sqlite:///"):
            raise SemrlError(f"tracking.uri {tracking.uri}: `semrl up` serves a local sqlite store; for another "
                             "tracking server set MLFLOW_TRACKING_URI instead")
        path = tracking.uri.removeprefix("sqlite:///")
        backend = "sqlite:///" + str(Path(path if path.startswith("/") else path).resolve())
        artifacts = tracking.artifact_root.resolve().as_uri()
    return [Server("prefect", cfg.prefect_port, cfg.host),
            Server("mlflow", cfg.mlflow_port, cfg.host, backend, artifacts)]


def healthy(server: Server, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(server.health_url, timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def pid_of(server: Server) -> int | None:
    try:
        pid = int(server.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def start(server: Server, root: Path, timeout_s: float = 90.0) -> float:
    """Start one server detached and wait for its health endpoint; returns the seconds it took."""
    if pid_of(server) and healthy(server):
        return 0.0
    if healthy(server):
        raise SemrlError(f"{server.name}: something else already answers on {server.url}; choose another port "
                         f"(servers.{server.name}_port)")
    server.pid_file.parent.mkdir(parents=True, exist_ok=True)
    server.log_file.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with server.log_file.open("ab") as log:
        proc = subprocess.Popen(server.command(root), stdout=log, stderr=subprocess.STDOUT, cwd=root,
                                env=server.env(root), start_new_session=True)
    server.pid_file.write_text(str(proc.pid))
    while time.time() - t0 < timeout_s:
        if proc.poll() is not None:
            raise SemrlError(f"{server.name} exited with {proc.returncode} while starting; see {server.log_file}")
        if healthy(server):
            return time.time() - t0
        time.sleep(0.5)
    stop(server)
    raise SemrlError(f"{server.name} did not answer {server.health_url} within {timeout_s:.0f} s; "
                     f"see {server.log_file}")


def stop(server: Server, timeout_s: float = 20.0) -> bool:
    pid = pid_of(server)
    server.pid_file.unlink(missing_ok=True)
    if not pid:
        return False
    os.killpg(pid, signal.SIGTERM)  # the whole group: uvicorn/gunicorn workers too
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)
    return True


def discover(cfg: ServersConfig, names: tuple[str, ...] = ("prefect", "mlflow")) -> dict[str, str]:
    """Environment for running pipelines: the running servers' URLs, unless the user set their own."""
    env = {}
    for s in servers(cfg):
        var = "PREFECT_API_URL" if s.name == "prefect" else "MLFLOW_TRACKING_URI"
        if s.name in names and var not in os.environ and pid_of(s) and healthy(s, timeout=0.5):
            env[var] = s.url + ("/api" if s.name == "prefect" else "")
    return env


def project_prefect_db() -> Path:
    return (state_root() / ".prefect" / "prefect.db").resolve()


def use_prefect(cfg: ServersConfig) -> str:
    """Put prefect_target's environment in place in this process (Prefect re-reads its settings), and
    return where flow runs go."""
    from prefect.context import refresh_global_settings_context

    env, where = prefect_target(cfg)
    os.environ.update(env)
    refresh_global_settings_context()
    return where


def prefect_target(cfg: ServersConfig) -> tuple[dict[str, str], str]:
    """(environment, where flow runs go) for a process that runs or schedules flows: one place for
    `dvc repro`, `make`, `semrl flow` and the UI of `semrl up`. Prefect's own settings win — PREFECT_API_URL,
    PREFECT_HOME or a database URL, from the environment or a profile (`prefect config set`); else the
    running `semrl up` server; else Prefect's ephemeral server on the project's database
    (.prefect/prefect.db, the one `semrl up` serves), never a per-user ~/.prefect the UI does not show."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if "url" in settings.api.model_fields_set:
        return {}, f"Prefect API {settings.api.url} (Prefect settings: PREFECT_API_URL)"
    if found := discover(cfg, ("prefect",)):
        return found, f"Prefect API {found['PREFECT_API_URL']} (the running `semrl up` server)"
    if "home" in settings.model_fields_set or "connection_url" in settings.server.database.model_fields_set:
        return {}, f"Prefect without a server, its database from Prefect settings (PREFECT_HOME {settings.home})"
    db = project_prefect_db()
    db.parent.mkdir(parents=True, exist_ok=True)
    return ({"PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{db}"},
            f"Prefect without a server: flow runs recorded in {db} (`semrl up` shows them)")
