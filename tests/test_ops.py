"""Operations against real servers started on free loopback ports: `semrl up/status/down`, the
`experiment/nightly` deployment with its schedule, triggered runs as DVC experiments, a work pool and its
worker, Late runs explained, a failing branch."""
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import mlflow
import pytest
import yaml

from semrl.core.config import read_yaml  # YAML as DVC reads it: a bare `off` stays a string

from conftest import REPO, child_env, copy_project, run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def semrl(args, cwd, env=None, check=True):
    return run([sys.executable, "-m", "semrl.cli", *args], cwd, env, check=check)


@pytest.fixture(scope="module")
def live(trained_project, tmp_path_factory):
    """A copy of the trained smoke project with `semrl up` run on free ports; `semrl down` afterwards. A copy:
    these tests change its params and run flows that write models and flow records into it."""
    repo = copy_project(trained_project, tmp_path_factory.mktemp("live") / "repo",
                        ignore=shutil.ignore_patterns(".semrl"))  # no server state
    params = read_yaml(repo / "params.yaml")
    params["servers"] = {"host": "127.0.0.1", "prefect_port": free_port(), "mlflow_port": free_port()}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    t0 = time.time()
    out = semrl(["up"], repo).stdout
    print(f"servers up in {time.time() - t0:.1f} s:\n{out}")
    urls = {"prefect": f"http://127.0.0.1:{params['servers']['prefect_port']}",
            "mlflow": f"http://127.0.0.1:{params['servers']['mlflow_port']}"}
    env = {"PREFECT_API_URL": urls["prefect"] + "/api", "MLFLOW_TRACKING_URI": urls["mlflow"]}
    yield repo, urls, env
    semrl(["down"], repo)


def test_up_is_idempotent_and_status_reports_health(live, monkeypatch):
    repo, urls, _ = live
    assert "already running" in semrl(["up"], repo).stdout
    status = semrl(["status"], repo).stdout
    assert "healthy" in status and urls["prefect"] in status and urls["mlflow"] in status
    for name in ("prefect", "mlflow"):
        pid = json.loads((repo / ".semrl" / "run" / f"{name}.pid").read_text())["pid"]  # with start time, command
        os.kill(pid, 0)
        assert (repo / ".semrl" / "logs" / f"{name}.log").is_file()
    # pipelines pick the running servers up by themselves
    from semrl.core.config import load_config
    from semrl.core.servers import discover

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri exports it
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.chdir(repo)
    assert discover(load_config("params.yaml").servers) == {"PREFECT_API_URL": urls["prefect"] + "/api",
                                                    "MLFLOW_TRACKING_URI": urls["mlflow"]}


async def _deployment(api_url: str, name: str, timeout: float = 120):
    from prefect.client.orchestration import get_client

    deadline = time.time() + timeout
    async with get_client() as client:
        while time.time() < deadline:
            try:
                dep = await client.read_deployment_by_name(name)
                schedules = await client.read_deployment_schedules(dep.id)
                return dep, schedules
            except Exception:
                await asyncio.sleep(1)
    raise AssertionError(f"deployment {name} did not appear")


async def _flow_run_state(flow_run_id):
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        fr = await client.read_flow_run(flow_run_id)
        trs = await client.read_task_runs()
        return fr, [t for t in trs if t.flow_run_id == flow_run_id]


async def _logs(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async with get_client() as client:
        return await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))


def _step_lines(flow_run_id, task_name, timeout=30):
    """The lines of one step (task run) in the flow run's Prefect logs, as the UI shows them."""
    async def lines():
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            ids = {t.id for t in await client.read_task_runs() if t.flow_run_id == flow_run_id and t.name == task_name}
        return [log.message for log in await _logs(flow_run_id) if log.task_run_id in ids]

    deadline = time.time() + timeout
    while time.time() < deadline:  # logs reach the API in batches
        if found := asyncio.run(lines()):
            return found
        time.sleep(1)
    return []


def _wait_runs(ids, timeout=420):
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = [asyncio.run(_flow_run_state(i))[0].state for i in ids]
        if all(s.is_final() for s in states):
            return states
        time.sleep(3)
    raise AssertionError(f"flow runs not finished: {states}")


@pytest.fixture(scope="module")
def project(live, tmp_path_factory):
    """A copy of the live repo as a git commit: the deployment runs the pipeline as a DVC experiment from
    the project's last commit (the trained repo itself stays uncommitted for the other tests)."""
    repo, urls, env = live
    dest = tmp_path_factory.mktemp("deployed") / "repo"
    copy_project(repo, dest, ignore=shutil.ignore_patterns(".semrl"))
    run(["git", "add", "-A"], dest)
    run(["git", "-c", "user.name=semrl", "-c", "user.email=semrl@localhost", "commit", "-qm", "baseline"], dest)
    return dest, urls, env


@pytest.fixture(scope="module")
def served(project):
    """`semrl serve` running: the deployment experiment/nightly, served from the project folder."""
    repo, urls, env = project
    os.environ.update(env)
    proc = subprocess.Popen([sys.executable, "-m", "semrl.cli", "serve", "--cron", "30 3 * * *"], cwd=repo,
                            env=child_env(env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    dep, schedules = asyncio.run(_deployment(env["PREFECT_API_URL"], "experiment/nightly"))
    yield repo, urls, env, dep, schedules
    proc.terminate()
    proc.wait(timeout=60)
    for key in env:
        os.environ.pop(key, None)


def test_deployment_has_an_active_cron_schedule_and_parameters(served):
    _, _, _, dep, schedules = served
    assert dep.name == "nightly" and dep.parameters["tasks"] == ["mt"] and dep.parameters["evaluate"] is True
    assert len(schedules) == 1 and schedules[0].active and schedules[0].schedule.cron == "30 3 * * *"


def _task_runs(flow_run_id):
    return asyncio.run(_flow_run_state(flow_run_id))[1]


def test_triggered_runs_become_dvc_experiments_one_at_a_time(served):
    """Two runs triggered at once (as from the UI): each is `dvc exp run --temp`, so the workspace stays as DVC
    left it; flow.tag_limits {dvc: 1} runs them one after the other. One trains a new seed; the other asks for
    the workspace's own seeds, so DVC has nothing to rerun (an experiment all the same, and a short one)."""
    from prefect.deployments import run_deployment

    repo, urls, env, _, _ = served
    lock_before = (repo / "dvc.lock").read_text()
    seeds = read_yaml(repo / "params.yaml")["train"]["seeds"]
    runs = [run_deployment("experiment/nightly", parameters={"seeds": s, "evaluate": False}, timeout=0)
            for s in ([2], seeds)]
    states = _wait_runs([r.id for r in runs], timeout=900)
    assert all(s.is_completed() for s in states), states
    spans = sorted((t.start_time, t.end_time) for r in runs for t in _task_runs(r.id) if t.name.startswith("dvc-exp-run"))
    assert len(spans) == 2 and spans[0][1] <= spans[1][0], spans  # one experiment at a time
    names = run(["dvc", "exp", "list", "--name-only"], repo).stdout.split()
    for r in runs:
        assert f"nightly-{r.name}" in names
    # The workspace is untouched: no seed-2 model, the lock file as it was, DVC up to date.
    assert not (repo / "models" / "mt" / "sft" / "seed2").exists()
    assert (repo / "dvc.lock").read_text() == lock_before
    assert "up to date" in run(["dvc", "status", "train@mt"], repo).stdout
    # The experiment's output is in its task run's logs in the UI (the stages' own flows nest in it).
    lines = _step_lines(runs[0].id, f"dvc-exp-run-nightly-{runs[0].name}")
    assert any(line.startswith("train: task mt, method sft, seed 2") for line in lines), lines[-5:]
    mlflow.set_tracking_uri(urls["mlflow"])
    found = mlflow.search_runs(experiment_names=["semrl"], output_format="list",
                               filter_string="tags.`semrl.method` = 'grpo'")
    assert "2" in {r.data.tags["semrl.seed"] for r in found}  # tracked in the project's store


def test_a_worker_runs_the_deployment_and_status_explains_late_runs(project):
    """`semrl deploy` registers the deployment to a process work pool; with no worker a due run goes Late
    and `semrl status` says why; `semrl worker --run-once` picks it up and finishes it. The run asks for the
    workspace's own seeds: the worker's part is the same, DVC's is short (training in an experiment is
    test_triggered_runs_become_dvc_experiments_one_at_a_time's)."""
    from prefect.deployments import run_deployment

    repo, urls, env = project
    out = semrl(["deploy", "--name", "pooled"], repo, env).stdout
    assert "deployment experiment/pooled" in out and "work pool semrl" in out
    seeds = read_yaml(repo / "params.yaml")["train"]["seeds"]
    os.environ.update(env)
    try:
        due = run_deployment("experiment/pooled", parameters={"seeds": seeds, "evaluate": False}, timeout=0)
        deadline = time.time() + 120
        while time.time() < deadline and asyncio.run(_flow_run_state(due.id))[0].state.name != "Late":
            time.sleep(2)  # the server marks a run Late some seconds after it was due
        status = semrl(["status"], repo, env).stdout
        pooled = status.split("deployment  experiment/pooled")[1].split("deployment  ")[0]
        assert "work pool semrl" in pooled and "0 online in work pool semrl" in pooled, status
        assert "1 scheduled run(s) Late" in pooled, status
        assert "no worker polls work pool semrl: start one with `semrl worker`" in pooled, status
        worker = semrl(["worker", "--run-once"], repo, env, check=False)
        state = _wait_runs([due.id], timeout=600)[0]
        assert state.is_completed(), worker.stdout[-3000:] + worker.stderr[-3000:]
    finally:
        for key in env:
            os.environ.pop(key, None)
    assert f"pooled-{due.name}" in run(["dvc", "exp", "list", "--name-only"], repo).stdout.split()
    pooled = semrl(["status"], repo, env).stdout.split("deployment  experiment/pooled")[1].split("deployment  ")[0]
    # No run is Late any more. (Once the run-once worker's heartbeat lapses, status may again note that
    # *future* runs "will go Late" with no worker: that depends on how long the run took, not a late run.)
    assert "scheduled run(s) Late" not in pooled, pooled


def test_a_failing_branch_fails_alone_and_is_not_retried(live, tmp_path):
    repo, urls, env = live
    params = read_yaml(repo / "params.yaml")
    params["rewards"]["components"] = [{"name": "test_train.broken_reward"}]
    params["rewards"]["ablations"]["bleu_language"]["enabled"] = False  # three steps: cold start, sft, grpo
    params["flow"]["retries"] = 2
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(params, allow_unicode=True))
    pythonpath = f"{REPO / 'tests'}:{os.environ.get('PYTHONPATH', '')}"
    proc = semrl(["flow", "--seed", "5", "--params", str(path)], repo, {**env, "PYTHONPATH": pythonpath}, check=False)
    assert proc.returncode == 1 and "1 of 3 steps failed" in proc.stderr and "Traceback" not in proc.stderr.split(
        "error:")[-1]
    mlflow.set_tracking_uri(urls["mlflow"])
    found = {r.data.tags["semrl.method"]: r for r in mlflow.search_runs(
        experiment_names=["semrl"], output_format="list", filter_string="tags.`semrl.seed` = '5'")}
    assert found["grpo"].info.status == "FAILED" and found["sft"].info.status == "FINISHED"
    assert (repo / "models" / "mt" / "sft" / "seed5" / "model" / "config.json").is_file()
    from prefect.client.orchestration import get_client

    async def grpo_runs():
        async with get_client() as client:
            return [t for t in await client.read_task_runs() if t.name == "mt-grpo-s5"]

    os.environ.update(env)
    try:
        [grpo] = asyncio.run(grpo_runs())
    finally:
        for key in env:
            os.environ.pop(key, None)
    assert grpo.state.is_failed() and grpo.run_count == 1  # deterministic: no retry
    os.environ.update(env)
    try:  # the failing step's error is in its task run's logs in the UI, not only on a terminal
        lines = _step_lines(grpo.flow_run_id, "mt-grpo-s5")
    finally:
        for key in env:
            os.environ.pop(key, None)
    assert any("raise ValueError(\"reward service unavailable" in line for line in lines), lines[-5:]


def test_second_run_of_the_same_outputs_is_refused(trained_repo, monkeypatch):
    from semrl.core.config import load_config
    from semrl.training.run import exclusive

    monkeypatch.chdir(trained_repo)  # the lock is per output folder, models/... relative to the project
    cfg = load_config(trained_repo / "params.yaml")
    cfg.train.checkpoint_dir = trained_repo / "checkpoints"
    with exclusive(cfg, "mt", "sft", 9):
        proc = semrl(["train", "--method", "sft", "--seed", "9"], trained_repo, check=False)
    assert proc.returncode == 1 and "is being trained by another run" in proc.stderr
    assert f"pid {os.getpid()} on" in proc.stderr and "holding it for 0 min" in proc.stderr  # who, and how long
