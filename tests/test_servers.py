"""Server lifecycle on psutil (`semrl up/down/status`): a PID file is trusted only while its process is the
one `up` started, `down` leaves no process of the servers behind even when their leader was killed first,
and an address beyond loopback needs a password."""
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil
import pytest
import yaml

from conftest import REPO, run

pytestmark = pytest.mark.pipeline  # starts MLflow and Prefect servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def project(tmp_path):
    """A project folder with the repo's params and free ports; `semrl down` afterwards, whatever happened."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["servers"].update(prefect_port=free_port(), mlflow_port=free_port())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    yield tmp_path, params["servers"]
    semrl(["down"], tmp_path, check=False)


def semrl(args, cwd, env=None, check=True):
    return run([sys.executable, "-m", "semrl.cli", *args], cwd, env, check=check)


def group_of(pid: int) -> list[int]:
    found = []
    for p in psutil.process_iter():
        try:  # a killed leader may linger as a zombie where PID 1 does not reap (containers): not a live process
            if os.getpgid(p.pid) == pid and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="start stamps from /proc are Linux's")
def test_a_process_is_known_by_its_start_even_when_the_wall_clock_is_stepped(monkeypatch):
    from semrl.core.io import process_alive, process_start, same_start, started_since

    child = subprocess.Popen(["sleep", "60"])
    try:
        stamp, legacy = process_start(child.pid), psutil.Process(child.pid).create_time()
        assert process_start() <= stamp  # this process started first
        assert process_alive(child.pid, stamp) and same_start(child.pid, stamp)
        assert not process_alive(child.pid, stamp - 0.01)  # another start: a reused PID
        assert started_since(child.pid, stamp) and not started_since(os.getpid(), stamp)
        assert process_alive(child.pid, legacy)  # a record written before the stamps were boot-relative
        # Step the wall clock as psutil sees it (a VM resumed from a pause): its create_time moves with it,
        # the process's start stamp does not — a live server or flow must not turn into "another process".
        import psutil._pslinux as pslinux

        boot = pslinux.boot_time()
        monkeypatch.setattr(pslinux, "boot_time", lambda: boot + 5.0)
        assert psutil.Process(child.pid).create_time() > legacy + 4  # the step took
        assert process_start(child.pid) == stamp and process_alive(child.pid, stamp)
    finally:
        child.kill()
        child.wait()
    assert not process_alive(child.pid, stamp)


def test_down_never_kills_a_process_that_reused_a_recorded_pid(project):
    root, _ = project
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        run_dir = root / ".semrl" / "run"
        run_dir.mkdir(parents=True)
        # the PID of a live, unrelated process: recorded with another start time and command (PID reuse)
        (run_dir / "prefect.pid").write_text(json.dumps({"pid": stranger.pid, "started": time.time() - 86400,
                                                         "cmdline": ["python", "-m", "prefect", "server"]}))
        (run_dir / "mlflow.pid").write_text(str(stranger.pid))  # an old plain-number file
        status = semrl(["status"], root).stdout
        assert "stale PID file" in status and f"PID {stranger.pid} is now another process (sleep 300)" in status
        out = semrl(["down"], root).stdout
        assert "stale PID file removed" in out and "was not running" in out, out
        assert stranger.poll() is None  # alive: never signalled
        assert not (run_dir / "prefect.pid").exists() and not (run_dir / "mlflow.pid").exists()
        assert semrl(["down"], root).stdout.count("was not running") == 2  # and again: nothing to do, no traceback
    finally:
        stranger.kill()
        stranger.wait()


def test_down_stops_what_the_servers_left_behind_when_their_leader_was_killed(project):
    root, _ = project
    semrl(["up"], root)
    records = {n: json.loads((root / ".semrl" / "run" / f"{n}.pid").read_text()) for n in ("prefect", "mlflow")}
    groups = {n: group_of(r["pid"]) for n, r in records.items()}
    assert len(groups["mlflow"]) >= 2, groups  # MLflow's server runs its app in a child process
    for r in records.values():
        os.kill(r["pid"], signal.SIGKILL)  # the leaders die; their workers are orphaned in the group
    time.sleep(1)
    assert group_of(records["mlflow"]["pid"])  # something was left behind
    out = semrl(["down"], root).stdout
    assert "mlflow   stopped" in out and "leader was already gone, these were left behind" in out, out
    assert "prefect  was not running (stale PID file removed" in out or "prefect  stopped" in out, out
    deadline = time.time() + 30
    while time.time() < deadline and any(group_of(r["pid"]) for r in records.values()):
        time.sleep(0.5)
    assert not any(group_of(r["pid"]) for r in records.values())  # no orphan left


def test_an_address_beyond_loopback_needs_a_password(project):
    root, servers = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["servers"]["host"] = "0.0.0.0"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    refused = semrl(["up"], root, {"SEMRL_SERVER_AUTH": ""}, check=False)
    assert refused.returncode == 1 and "SEMRL_SERVER_AUTH=user:password" in refused.stderr
    assert "Traceback" not in refused.stderr and not (root / ".semrl" / "run" / "prefect.pid").exists()
    assert "would expose Prefect and MLflow" in semrl(["check"], root, {"SEMRL_SERVER_AUTH": ""}, check=False).stdout
    auth = {"SEMRL_SERVER_AUTH": "semrl:a-long-enough-secret"}
    assert semrl(["up"], root, {"SEMRL_SERVER_AUTH": "semrl:short"}, check=False).returncode == 1
    semrl(["up"], root, auth)
    try:
        token = base64.b64encode(b"semrl:a-long-enough-secret").decode()
        for url in (f"http://127.0.0.1:{servers['prefect_port']}/api/flows/filter",
                    f"http://127.0.0.1:{servers['mlflow_port']}/api/2.0/mlflow/experiments/search?max_results=1"):
            method = "POST" if "prefect" in url or "/flows/" in url else "GET"
            data = b"{}" if method == "POST" else None
            with pytest.raises(urllib.error.HTTPError) as denied:
                urllib.request.urlopen(urllib.request.Request(url, data=data, method=method,
                                                              headers={"Content-Type": "application/json"}), timeout=10)
            assert denied.value.code == 401, url
            ok = urllib.request.Request(url, data=data, method=method, headers={
                "Authorization": f"Basic {token}", "Content-Type": "application/json"})
            with urllib.request.urlopen(ok, timeout=10) as r:
                assert r.status == 200, url
        assert semrl(["status"], root, auth).stdout.count("healthy") == 2
    finally:
        semrl(["down"], root, auth)
