"""The benchmark scripts run on the smoke model and print what they promise (they are not timed tests). The
`bench` tier: CI runs it, `make test` does not (docs/tests.md)."""
import json
import sys

import pytest

from conftest import REPO, run

pytestmark = pytest.mark.bench


def test_train_speed_reports_every_branch_and_gpu_smoke_refuses_without_cuda(trained_repo, tmp_path):
    out = tmp_path / "speed.json"
    summary = trained_repo / "models" / "mt" / "coldstart" / "seed0" / "summary.json"
    before = summary.read_text()
    proc = run([sys.executable, str(REPO / "bench" / "train_speed.py"), "--devices", "cpu", "--sft-steps", "3",
                "--grpo-steps", "3", "--out", str(out)], trained_repo)
    rows = json.loads(out.read_text())
    assert [(r["device"], r["branch"], r["steps"]) for r in rows] == [
        ("cpu", "coldstart", 3), ("cpu", "sft", 3), ("cpu", "grpo", 3)]
    for r in rows:
        assert r["step_s_median"] > 0 and r["tokens_per_s"] > 0 and r["wall_s"] >= r["train_s"]
    assert "| cpu | grpo | 3 |" in proc.stdout
    # The trained repo's own models and MLflow store are untouched: the benchmark works in a scratch folder.
    assert summary.read_text() == before

    import torch

    if torch.cuda.is_available():  # on a GPU host the smoke would run for real: that is the device tool's job
        return
    smoke = run(["bash", str(REPO / "bench" / "gpu_smoke.sh")], trained_repo, check=False)
    assert smoke.returncode == 2 and "torch sees no CUDA device" in smoke.stderr


def test_orchestration_overhead_runs_the_same_grpo_both_ways(trained_repo, tmp_path):
    out = tmp_path / "overhead.json"
    summary = trained_repo / "models" / "mt" / "grpo" / "seed0" / "summary.json"
    before = summary.read_text()
    proc = run([sys.executable, str(REPO / "bench" / "orchestration_overhead.py"), "--steps", "2", "--repeats", "1",
                "--out", str(out)], trained_repo)
    result = json.loads(out.read_text())
    assert [(r["name"], r["steps"]) for r in result["runs"]] == [("ours_flow_step", 2), ("ours_fresh", 2), ("bare", 2)]
    for r in result["runs"]:
        assert len(r["step_times"]) == 2 and r["wall_s"] > sum(r["step_times"]) > 0
    assert result["summary"]["ratio_wall"] > 0 and result["summary"]["ratio_step"] > 0
    assert "end to end (best of 1): ours as a flow step" in proc.stdout and "median GRPO step: ours" in proc.stdout
    assert summary.read_text() == before  # the repo's own GRPO run is untouched (scratch folder)


def test_reward_signal_pilot_scores_every_variant(trained_repo, tmp_path):
    out = tmp_path / "signal.json"
    proc = run([sys.executable, str(REPO / "bench" / "pilot_reward_signal.py"), "--workspace", str(trained_repo),
                "--task", "mt", "--seeds", "0", "--out", str(out)], trained_repo)
    data = json.loads(out.read_text())
    names = [r["variant"] for r in data["results"]]
    assert names[0] == "bo-zh pairs only" and names[-1] == "+ views dropping 50 % (default)" and len(names) == 5
    only, default = data["results"][0], data["results"][-1]
    assert default["train_pairs"] > only["train_pairs"]  # the view pairs come on top of the translations
    for r in data["results"]:
        assert set(r["seeds"]["0"]) == {"all", "cldr_dates", "lotsawa"}, r  # pooled, and per source
    assert "bo-zh pairs only" in proc.stdout


def test_allocator_benchmark_counts_page_faults_and_compares_weights(tmp_path):
    """The allocator variables reach a fresh process (glibc reads them at start) and stop the per-step page
    faults; both settings train to the same weights. Counts, not seconds."""
    out = tmp_path / "allocator.json"
    run([sys.executable, str(REPO / "bench" / "allocator.py"), "--steps", "2", "--procs", "1", "--repeats", "1",
         "--json", str(out)], REPO)
    result = json.loads(out.read_text())
    assert result["same_weights"] is True and len(result["runs"]["tuned"]) == 1
    assert result["median"]["tuned"]["minflt"] < result["median"]["default"]["minflt"] / 4


def test_grpo_discriminating_experiment_pairs_each_arm_with_its_cold_start_and_noise_floor(trained_repo, tmp_path):
    """bench/grpo_discriminate.py with two arms on one seed: the default GRPO (D) and its noise floor (N,
    rewards shuffled), both from the default cold start (C0); paired differences per dev source."""
    out = tmp_path / "d.json"
    proc = run([sys.executable, str(REPO / "bench" / "grpo_discriminate.py"), "run", "--workspace", str(trained_repo),
                "--task", "mt", "--seeds", "0", "--arms", "D,N", "--dev-rows", "4", "--work", str(tmp_path / "work"),
                "--out", str(out)], REPO)
    result = json.loads(out.read_text())
    assert list(result["arms"]) == ["C0", "D", "N"]
    sources = sorted(result["arms"]["C0"]["by_source"])
    assert sources == ["cldr_dates", "lotsawa"]
    assert {(c["a"], c["b"], c["source"]) for c in result["comparisons"]} == {
        (a, b, s) for a, b in (("D", "C0"), ("D", "N"), ("N", "C0")) for s in ["all", *sources]}
    runs = {name: json.loads((tmp_path / "work" / name / "seed0.json").read_text()) for name in ("D", "N")}
    # Same cold start, same seed: the first batch is the same completions; a permutation keeps its mean reward.
    assert runs["D"]["history"]["reward"][0] == runs["N"]["history"]["reward"][0]
    assert runs["D"]["summary"]["steps"] == runs["N"]["summary"]["steps"] == 3
    assert (runs["D"]["summary"]["method"], runs["N"]["summary"]["method"]) == ("grpo", "grpo_noise_floor")
    assert "| D |" in proc.stdout and "| D − N | all |" in proc.stdout


def test_budget_vs_run_sets_each_trained_stage_against_its_estimate(trained_repo, tmp_path):
    """Every stage the smoke project trained gets its predicted and recorded seconds; the ratio is theirs."""
    from semrl.core.config import load_config

    out = tmp_path / "budget.json"
    proc = run([sys.executable, str(REPO / "bench" / "budget_vs_run.py"), "--workspace", str(trained_repo),
                "--out", str(out)], REPO)
    stages = {s["stage"]: s for s in json.loads(out.read_text())["stages"]}
    cfg = load_config(trained_repo / "params.yaml")
    assert set(stages) == {"cold start", "strong SFT", "GRPO", "GRPO reward ablations"}, proc.stdout
    summaries = [json.loads(p.read_text()) for p in (trained_repo / cfg.train.out_dir).rglob("summary.json")]
    cold = sum(s["train_seconds"] for s in summaries if s["method"] == "coldstart")
    assert stages["cold start"]["measured_s"] == pytest.approx(cold, abs=0.1)
    assert stages["cold start"]["runs"] == len(cfg.train.seeds)
    for s in stages.values():
        assert s["predicted_s"] > 0 and s["ratio"] == pytest.approx(s["measured_s"] / s["predicted_s"], rel=0.1, abs=0.02)
