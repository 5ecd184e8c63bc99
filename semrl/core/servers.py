"""Local Prefect and MLflow servers for the UIs: `semrl up`, `semrl down`, `semrl status`.

Both bind to 127.0.0.1, keep their state inside the project (SQLite databases, the artifact folder),
run with telemetry/analytics and MLflow's job execution off, log to `.semrl/logs/` and record in
`.semrl/run/<name>.pid` their PID with its start time and command line (psutil), so `down` stops only the
process it started — never one that reused the number — and every process of its group. `up` returns once each answers its health endpoint and is idempotent; pipelines find
running servers through `discover()` and fall back to the embedded defaults (SQLite file, ephemeral
Prefect) when none runs."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from semrl import SemrlError
from semrl.core.config import ServersConfig, TrackingConfig
from semrl.core.env import QUIET_ENV, state_root
from semrl.core.io import process_alive, process_start, started_since


def state_dir() -> Path:
    """.semrl/ of the project (its root under a `dvc exp run --temp`: the servers are the project's)."""
    return state_root() / ".semrl"


AUTH_ENV = "SEMRL_SERVER_AUTH"  # user:password for both servers; never in params.yaml (it is committed)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def server_auth() -> tuple[str, str] | None:
    """(user, password) from SEMRL_SERVER_AUTH, or None; a malformed value is an error."""
    value = os.environ.get(AUTH_ENV)
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or len(password) < 12:
        raise SemrlError(f"{AUTH_ENV} must be user:password with a password of at least 12 characters "
                         "(MLflow's basic-auth app refuses shorter ones)")
    return user, password


def exposure_problem(cfg: ServersConfig) -> str | None:
    """Why `semrl up` must not start: an address beyond loopback without authentication."""
    if cfg.host in LOOPBACK or server_auth():
        return None
    return (f"servers.host {cfg.host} would expose Prefect and MLflow beyond this machine without a password: "
            f"set {AUTH_ENV}=user:password (at least 12 characters; Prefect's basic auth and MLflow's basic-auth "
            "app then require it, and every semrl command sends it), or keep 127.0.0.1 and reach the UIs "
            "through an SSH tunnel (ssh -L 4200:127.0.0.1:4200 -L 5000:127.0.0.1:5000 <host>)")


def auth_env() -> dict[str, str]:
    """What a client of the servers needs to authenticate (Prefect and MLflow read these)."""
    auth = server_auth()
    if not auth:
        return {}
    return {"PREFECT_API_AUTH_STRING": f"{auth[0]}:{auth[1]}", "MLFLOW_TRACKING_USERNAME": auth[0],
            "MLFLOW_TRACKING_PASSWORD": auth[1]}


@dataclass
class Server:
    name: str
    port: int
    host: str = "127.0.0.1"
    backend: str | None = None  # MLflow: the store `tracking.uri` names (sqlite), and its artifact root
    artifacts: str | None = None

    @property
    def url(self) -> str:
        """Where clients on this machine reach it (a server on every address answers on loopback too)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

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
                "--default-artifact-root", self.artifacts or (root / "mlartifacts").as_uri(), "--workers", "1",
                *(["--app-name", "basic-auth"] if server_auth() else [])]

    def env(self, root: Path) -> dict[str, str]:
        env = {**os.environ, **QUIET_ENV}
        if self.name == "prefect" and not any(k in env for k in ("PREFECT_HOME", "PREFECT_SERVER_DATABASE_CONNECTION_URL",
                                                                 "PREFECT_API_DATABASE_CONNECTION_URL")):
            # the database flows without a server record into (prefect_target): the UI shows every run
            env["PREFECT_HOME"] = str(root.resolve() / ".prefect")
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{project_prefect_db()}"
        env.pop("PREFECT_API_URL", None)  # the server must not try to reach another API
        if auth := server_auth():
            if self.name == "prefect":
                env["PREFECT_SERVER_API_AUTH_STRING"] = f"{auth[0]}:{auth[1]}"
            else:  # the admin user is created from these on first start; its store lives with the run state
                config = state_dir() / "mlflow_auth.ini"
                config.parent.mkdir(parents=True, exist_ok=True)
                config.write_text(f"[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                                  f"database_uri = sqlite:///{(state_dir() / 'mlflow_auth.db').resolve()}\n"
                                  f"admin_username = {auth[0]}\n"
                                  "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
                secret = state_dir() / "mlflow_flask_secret"  # CSRF key of the auth app: random, kept per project
                if not secret.is_file():
                    import secrets

                    secret.touch(mode=0o600)
                    secret.write_text(secrets.token_hex(32))
                env.update(MLFLOW_AUTH_CONFIG_PATH=str(config.resolve()), MLFLOW_AUTH_ADMIN_PASSWORD=auth[1],
                           MLFLOW_FLASK_SERVER_SECRET_KEY=secret.read_text().strip())
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
    import base64

    request = urllib.request.Request(server.health_url)
    if auth := server_auth():
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


@dataclass
class PidRecord:
    pid: int
    started: float  # semrl.core.io.process_start (a psutil create_time in records older than it)
    cmdline: list[str]


def read_pid(server: Server) -> PidRecord | None:
    """The server's PID record, or None (no file, or one this version cannot read: treated as stale)."""
    import json

    try:
        data = json.loads(server.pid_file.read_text())
        return PidRecord(int(data["pid"]), float(data["started"]), list(data["cmdline"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _matches(rec: PidRecord) -> bool:
    """The recorded process still runs: same PID, same start time, same command line."""
    import psutil

    if not process_alive(rec.pid, rec.started):
        return False
    try:
        return psutil.Process(rec.pid).cmdline() == rec.cmdline
    except psutil.Error:
        return False


def pid_of(server: Server) -> int | None:
    rec = read_pid(server)
    return rec.pid if rec and _matches(rec) else None


def stale_pid_file(server: Server) -> str | None:
    """Why the PID file does not name the running server, in words (None: no file, or it matches)."""
    import psutil

    if not server.pid_file.is_file():
        return None
    rec = read_pid(server)
    if rec is None:
        return f"{server.pid_file}: unreadable or from an older version"
    if _matches(rec):
        return None
    try:
        now = " ".join(psutil.Process(rec.pid).cmdline())[:80] or "?"
        return f"{server.pid_file}: PID {rec.pid} is now another process ({now}), not the {server.name} server started then"
    except psutil.Error:
        return f"{server.pid_file}: PID {rec.pid} no longer runs"


def _group(rec: PidRecord) -> list:
    """The processes of the server's process group (it was started as a group leader, pgid = PID) that
    started with or after it: its workers, even once the leader itself is gone. A zombie (dead, not yet
    reaped by its parent — PID 1 in a container may never reap it) is not a live member."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE or os.getpgid(proc.pid) != rec.pid:
                continue
            if started_since(proc.pid, rec.started):
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


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
    import json

    import psutil

    if stale := stale_pid_file(server):
        print(f"{server.name}: stale PID file replaced ({stale})", file=sys.stderr)
    with server.log_file.open("ab") as log:
        proc = subprocess.Popen(server.command(root), stdout=log, stderr=subprocess.STDOUT, cwd=root,
                                env=server.env(root), start_new_session=True)
    server.pid_file.write_text(json.dumps({"pid": proc.pid, "started": process_start(proc.pid),
                                           "cmdline": psutil.Process(proc.pid).cmdline()}))
    while time.time() - t0 < timeout_s:
        if proc.poll() is not None:
            raise SemrlError(f"{server.name} exited with {proc.returncode} while starting; see {server.log_file}")
        if healthy(server):
            return time.time() - t0
        time.sleep(0.5)
    stop(server)
    raise SemrlError(f"{server.name} did not answer {server.health_url} within {timeout_s:.0f} s; "
                     f"see {server.log_file}")


def stop(server: Server, timeout_s: float = 20.0) -> tuple[bool, str]:
    """Stop the server `up` started: SIGTERM to its process group, SIGKILL to what remains after
    `timeout_s`; (stopped anything, what happened). A stale PID file (another process has that PID now,
    or none) is removed and said so, and nothing is signalled — but the recorded group's own processes
    (workers left behind when the leader was killed) are still stopped."""
    import psutil

    rec = read_pid(server)
    if rec is None:
        if server.pid_file.is_file():  # unreadable, or a plain number from an older version: no start time to check
            server.pid_file.unlink()
            return False, f"was not running (stale PID file removed: {server.pid_file} had no start time to check)"
        return False, "was not running"
    stale = stale_pid_file(server)
    # Linux never hands out a PID while a process group of that number has members: if another process
    # holds the recorded PID now, our group is empty and any group of that number is the stranger's.
    reused = stale is not None and process_alive(rec.pid)
    targets = [] if reused else _group(rec)
    if stale and not targets:
        server.pid_file.unlink(missing_ok=True)
        return False, f"was not running (stale PID file removed: {stale.split(': ', 1)[1]})"
    for p in targets:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(targets, timeout=timeout_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    server.pid_file.unlink(missing_ok=True)
    how = f"stopped ({len(targets)} process{'es' if len(targets) != 1 else ''}" + (
        f", {len(alive)} killed after {timeout_s:g} s" if alive else "") + ")"
    return True, how + ("; its leader was already gone, these were left behind" if stale else "")


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
        return {**found, **auth_env()}, f"Prefect API {found['PREFECT_API_URL']} (the running `semrl up` server)"
    if "home" in settings.model_fields_set or "connection_url" in settings.server.database.model_fields_set:
        return {}, f"Prefect without a server, its database from Prefect settings (PREFECT_HOME {settings.home})"
    db = project_prefect_db()
    db.parent.mkdir(parents=True, exist_ok=True)
    return ({"PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{db}"},
            f"Prefect without a server: flow runs recorded in {db} (`semrl up` shows them)")
