"""GPU placement of flow steps (semrl.ops.flows.DeviceSlots) and the reward embedder's device: slots per
device, steps that wait for a free one, and the flow keeping branches as siblings while they queue."""
import json
import threading
import time

import pytest

from semrl import SemrlError
from semrl.core.config import load_config
from semrl.ops.flows import DeviceSlots, cpu_step_limit, visible_gpus
from semrl.training.rewards import reward_device

from conftest import REPO


def test_slots_group_devices_and_make_the_rest_wait():
    slots = DeviceSlots(["0", "1", "2", "3"], gpus_per_step=2, steps_per_gpu=1)
    assert slots.groups == [("0", "1"), ("2", "3")]
    with slots.take() as a, slots.take() as b:
        assert {a, b} == {("0", "1"), ("2", "3")}
    with pytest.raises(SemrlError, match="gpus_per_step 2, but only 1 GPU"):
        DeviceSlots(["0"], gpus_per_step=2)
    with DeviceSlots([]).take() as none:  # no GPU: no placement
        assert none is None


def test_one_gpu_runs_steps_one_after_another():
    slots, spans = DeviceSlots(["0"], steps_per_gpu=1), []

    def step():
        with slots.take() as slot:
            start = time.monotonic()
            time.sleep(0.2)
            spans.append((slot, start, time.monotonic()))

    threads = [threading.Thread(target=step) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans.sort(key=lambda s: s[1])
    assert [s[0] for s in spans] == [("0",)] * 3
    assert all(prev[2] <= nxt[1] for prev, nxt in zip(spans, spans[1:]))  # never two at once
    shared = DeviceSlots(["0"], steps_per_gpu=2)
    with shared.take(), shared.take():
        assert not shared.free  # two steps share the device, a third would wait


def test_cpu_slots_cap_concurrent_steps():
    slots, running, peak, lock = DeviceSlots([], cpu_steps=2), [0], [0], threading.Lock()

    def step():
        with slots.take() as slot:
            assert slot is None  # no device to hand out
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.15)
            with lock:
                running[0] -= 1

    threads = [threading.Thread(target=step) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 2
    # A freed slot goes first to a step whose sibling runs, then to the lowest priority, not the first to ask.
    two, order, hold = DeviceSlots([], cpu_steps=2), [], threading.Event()

    def ask(priority, group, name):
        with two.take(priority, group):
            order.append(name)

    def sibling_running():  # grpo-s1 holds a slot for the whole test
        with two.take((1, 1, 0), "s1"):
            hold.wait()

    runner = threading.Thread(target=sibling_running)
    runner.start()
    time.sleep(0.05)
    with two.take():  # the other slot, held while three steps queue up
        waiters = [threading.Thread(target=ask, args=a) for a in (((1, 0, 0), "s0", "grpo-s0"),
                                                                 ((0,), "s2", "coldstart-s2"),
                                                                 ((1, 1, 1), "s1", "sft-s1"))]
        for t in waiters:
            t.start()
            time.sleep(0.05)
    for t in waiters:
        t.join()
    hold.set()
    runner.join()
    assert order == ["sft-s1", "coldstart-s2", "grpo-s0"]
    assert DeviceSlots(["0"], cpu_steps=1).cpu_steps is None  # GPU slots decide where there are GPUs
    cfg = load_config(REPO / "params.yaml")
    cfg.flow.cpu_steps = 0
    assert cpu_step_limit(cfg) is None  # 0: no limit
    cfg.flow.cpu_steps, cfg.train.torch_threads = None, 1
    import os

    cores = len(os.sched_getaffinity(0))
    assert cpu_step_limit(cfg) == cores + 1  # one step per core at one thread each, and one more (make -j N+1)
    cfg.train.torch_threads = cores
    assert cpu_step_limit(cfg) == 1  # a step that takes every core: one at a time


def test_visible_gpus_and_the_reward_device(monkeypatch):
    cfg = load_config(REPO / "params.yaml")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert visible_gpus(cfg) == ["2", "5"]
    cfg.flow.devices = ["7"]
    assert visible_gpus(cfg) == ["7"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    cfg.flow.devices = None
    assert visible_gpus(cfg) == []
    import torch

    if not torch.cuda.is_available():
        assert reward_device(cfg) == "cpu"
    cfg.embedder.reward.device = "cuda:3"
    assert reward_device(cfg) == "cuda:3"


def test_the_flow_queues_branches_on_one_device(trained_repo, tmp_path):
    """flow.devices ["0"] on this CPU machine: each step gets CUDA_VISIBLE_DEVICES=0 (torch sees no GPU there
    and trains on the CPU), one step at a time; the flow still submits the branches as siblings."""
    from test_methods import semrl, variant

    path, _ = variant(trained_repo, tmp_path, flow__devices=["0"], flow__steps_per_gpu=1, train__seeds=[0],
                      train__coldstart__max_steps=2, train__sft__max_steps=2, train__grpo__max_steps=2,
                      train__match_budgets=False, train__trajectory__every=0, rewards__tau=0.2)  # no calibration
    proc = semrl(["flow", "--task", "mt", "--seed", "0", "--params", str(path)], trained_repo)
    steps = {r["method"]: r for stage in ("coldstart", "sft", "grpo")
             for r in json.loads((tmp_path / "models" / "mt" / stage / "flow_run.json").read_text())}
    assert set(steps) == {"coldstart", "sft", "grpo", "grpo_bleu_language"}
    assert all(r["devices"] == ["0"] for r in steps.values())
    spans = sorted((r["start"], r["end"]) for r in steps.values())
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans  # one step on the device at a time
    assert "on GPU 0" in proc.stdout + proc.stderr


@pytest.mark.rehearsal  # the paper's multi-GPU placement rehearsed on CPU: ~90 s that make test does not have
def test_the_flow_runs_a_step_on_two_devices_as_two_processes(trained_repo, tmp_path):
    """flow.devices ["0", "1"] with gpus_per_step 2 on this CPU machine: every training step of the flow runs
    as two data-parallel processes under torchrun on gloo (accelerate's CPU launcher wants MPI; on GPUs the
    same slot goes to `accelerate launch`), with the configured global batch, the gate's and the trajectory's
    decoding on both ranks, one step at a time on the pair, and one MLflow run per step, not one per rank."""
    from test_methods import semrl, variant

    path, params = variant(trained_repo, tmp_path, flow__devices=["0", "1"], flow__gpus_per_step=2, train__seeds=[0],
                           train__coldstart__max_steps=2, train__sft__max_steps=2, train__grpo__max_steps=2,
                           train__match_budgets=False, rewards__tau=0.2,
                           rewards__ablations__bleu_language__enabled=False)
    proc = semrl(["flow", "--task", "mt", "--seed", "0", "--params", str(path)], trained_repo)
    out = proc.stdout + proc.stderr
    steps = {r["method"]: r for stage in ("coldstart", "sft", "grpo")
             for r in json.loads((tmp_path / "models" / "mt" / stage / "flow_run.json").read_text())}
    assert set(steps) == {"coldstart", "sft", "grpo"}
    t = params["train"]
    configured = {"coldstart": t["coldstart"]["batch_size"] * t["coldstart"]["grad_accum"],
                  "sft": t["sft"]["batch_size"] * t["sft"]["grad_accum"],
                  "grpo": t["grpo"]["num_generations"] * t["grpo"]["prompts_per_step"] * t["grpo"]["grad_accum"]}
    for method, record in steps.items():
        assert f"mt-{method}-s0: 2 processes under torch.distributed.run" in out
        assert record["devices"] == ["0", "1"] and record["world_size"] == 2 and record["steps"] == 2
        assert record["global_batch"] == configured[method], (method, record)
        assert record["per_device_batch"] * record["grad_accum"] * 2 == configured[method]
    spans = sorted((r["start"], r["end"]) for r in steps.values())
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans  # one step on the device pair at a time
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = [r for r in mlflow.search_runs(experiment_names=["semrl"], output_format="list")
            if r.info.run_name.startswith("mt-")]
    assert sorted(r.info.run_name for r in runs) == ["mt-coldstart-s0", "mt-grpo-s0", "mt-sft-s0"]  # rank 0 tracks
    assert all(r.info.status == "FINISHED" and r.data.params["world_size"] == "2" for r in runs)


def test_one_prefect_database_and_tag_limits_across_the_flow(trained_repo, tmp_path):
    """Without a server or Prefect settings of the user's, a flow run is recorded in the project's
    .prefect/prefect.db (what `semrl up`'s UI serves), not a per-user ~/.prefect; flow.tag_limits caps the
    steps with a tag there: {train: 1} runs the siblings one at a time."""
    import sqlite3
    import subprocess
    import sys

    from conftest import child_env
    from test_methods import variant

    path, _ = variant(trained_repo, tmp_path, flow__tag_limits={"train": 1}, train__seeds=[0],
                      train__coldstart__max_steps=2, train__trajectory__every=0, rewards__tau=0.2,
                      rewards__ablations__bleu_language__enabled=False)
    env = {k: v for k, v in child_env().items() if not k.startswith("PREFECT_")}
    env["HOME"] = str(tmp_path / "home")  # no profile of the user's
    db = trained_repo / ".prefect" / "prefect.db"
    before = sqlite3.connect(db).execute("select count(*) from flow_run").fetchone()[0] if db.is_file() else 0
    try:
        proc = subprocess.run([sys.executable, "-m", "semrl.cli", "flow", "--task", "mt", "--params", str(path)],
                              cwd=trained_repo, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert f"flow runs recorded in {db.resolve()}" in proc.stderr
        assert "tag concurrency limits: train 1" in proc.stdout + proc.stderr
        with sqlite3.connect(db) as con:
            assert con.execute("select count(*) from flow_run").fetchone()[0] == before + 1
            assert con.execute("select \"limit\" from concurrency_limit_v2 where name = 'tag:train'").fetchone() == (1,)
        steps = [r for stage in ("coldstart", "sft", "grpo")
                 for r in json.loads((tmp_path / "models" / "mt" / stage / "flow_run.json").read_text())]
        spans = sorted((r["start"], r["end"]) for r in steps)
        assert len(spans) == 3 and all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans
    finally:
        with sqlite3.connect(db) as con:  # the project's database outlives the test: leave no limit behind
            con.execute("delete from concurrency_limit_v2 where name = 'tag:train'")


def test_a_seeds_grpo_then_sft_come_before_its_ablations_and_the_next_cold_start():
    """The order in line for slots: seed 0's cold start, GRPO, strong SFT, ablations; then seed 1's. With two
    free slots a seed's SFT and GRPO run side by side, not SFT beside an ablation."""
    from semrl.core.config import Config
    from semrl.core.methods import get_method
    from semrl.ops.flows import step_priority

    cfg = Config.model_validate({"rewards": {"ablations": {"noise_floor": {"enabled": True, "shuffle": True}}}})
    order = sorted([(m, s) for s in (1, 0) for m in ("grpo_noise_floor", "sft", "coldstart", "grpo")],
                   key=lambda ms: step_priority(get_method(cfg, ms[0]), ms[1]))
    assert order == [("coldstart", 0), ("grpo", 0), ("sft", 0), ("grpo_noise_floor", 0),
                     ("coldstart", 1), ("grpo", 1), ("sft", 1), ("grpo_noise_floor", 1)]

