"""Operations against real servers started on free loopback ports: `semrl up/status/down`, the
`expansion/nightly` deployment with its schedule, a triggered run, concurrent runs, a failing branch."""
import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import mlflow
import pytest
import yaml

from conftest import REPO, child_env, run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def semrl(args, cwd, env=None, check=True):
    return run([sys.executable, "-m", "semrl.cli", *args], cwd, env, check=check)


@pytest.fixture(scope="module")
def live(trained_repo):
    """trained_repo with `semrl up` run on free ports; `semrl down` afterwards."""
    params = yaml.safe_load((trained_repo / "params.yaml").read_text())
    params["servers"] = {"host": "127.0.0.1", "prefect_port": free_port(), "mlflow_port": free_port()}
    (trained_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    t0 = time.time()
    out = semrl(["up"], trained_repo).stdout
    print(f"servers up in {time.time() - t0:.1f} s:\n{out}")
    urls = {"prefect": f"http://127.0.0.1:{params['servers']['prefect_port']}",
            "mlflow": f"http://127.0.0.1:{params['servers']['mlflow_port']}"}
    env = {"PREFECT_API_URL": urls["prefect"] + "/api", "MLFLOW_TRACKING_URI": urls["mlflow"]}
    yield trained_repo, urls, env
    semrl(["down"], trained_repo)


def test_up_is_idempotent_and_status_reports_health(live, monkeypatch):
    repo, urls, _ = live
    assert "already running" in semrl(["up"], repo).stdout
    status = semrl(["status"], repo).stdout
    assert "healthy" in status and urls["prefect"] in status and urls["mlflow"] in status
    for name in ("prefect", "mlflow"):
        pid = int((repo / ".semrl" / "run" / f"{name}.pid").read_text())
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
def served(live):
    """`semrl serve` running: the deployment expansion/nightly, served from the project folder."""
    repo, urls, env = live
    os.environ.update(env)
    proc = subprocess.Popen([sys.executable, "-m", "semrl.cli", "serve", "--cron", "30 3 * * *"], cwd=repo,
                            env=child_env(env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    dep, schedules = asyncio.run(_deployment(env["PREFECT_API_URL"], "expansion/nightly"))
    yield repo, urls, env, dep, schedules
    proc.terminate()
    proc.wait(timeout=60)
    for key in env:
        os.environ.pop(key, None)


def test_deployment_has_an_active_cron_schedule_and_parameters(served):
    _, _, _, dep, schedules = served
    assert dep.name == "nightly" and dep.parameters["tasks"] == ["mt"] and dep.parameters["evaluate"] is True
    assert len(schedules) == 1 and schedules[0].active and schedules[0].schedule.cron == "30 3 * * *"


def test_triggered_and_concurrent_runs_complete_with_separate_outputs(served):
    from prefect.deployments import run_deployment

    repo, urls, env, _, _ = served
    runs = [run_deployment("expansion/nightly", parameters={"seeds": [seed], "evaluate": False}, timeout=0)
            for seed in (1, 2)]  # a second, concurrent run with other parameters, as from the UI
    states = _wait_runs([r.id for r in runs])
    assert all(s.is_completed() for s in states), states
    # Each step's output is in its task run's logs in the UI, and in a log file per step.
    lines = _step_lines(runs[0].id, "mt-sft-s1")
    assert any(line.startswith("train: task mt, method sft, seed 1") for line in lines), lines[-5:]
    assert (repo / ".semrl" / "logs" / "steps" / str(runs[0].id) / "mt-sft-s1.log").is_file()
    for seed in (1, 2):
        for method in ("coldstart", "sft", "grpo"):
            summary = json.loads((repo / "models" / "mt" / method / f"seed{seed}" / "summary.json").read_text())
            assert summary["seed"] == seed
    mlflow.set_tracking_uri(urls["mlflow"])
    found = mlflow.search_runs(experiment_names=["semrl"], output_format="list",
                               filter_string="tags.`semrl.method` = 'grpo'")
    by_seed = {r.data.tags["semrl.seed"]: r for r in found}
    assert {"1", "2"} <= set(by_seed)
    parents = {by_seed[s].data.tags["mlflow.parentRunId"] for s in ("1", "2")}
    assert len(parents) == 2  # each flow run has its own parent run
    for pid in parents:
        assert mlflow.get_run(pid).data.tags["semrl.kind"] == "flow"


def test_a_failing_branch_fails_alone_and_is_not_retried(live, tmp_path):
    repo, urls, env = live
    params = yaml.safe_load((repo / "params.yaml").read_text())
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


def test_second_run_of_the_same_outputs_is_refused(trained_repo):
    from semrl.core.config import load_config
    from semrl.training.run import exclusive

    cfg = load_config(trained_repo / "params.yaml")
    cfg.train.checkpoint_dir = trained_repo / "checkpoints"
    with exclusive(cfg, "mt", "sft", 9):
        proc = semrl(["train", "--method", "sft", "--seed", "9"], trained_repo, check=False)
    assert proc.returncode == 1 and "is being trained by another run" in proc.stderr
