"""Evaluation and the report stage on the smoke outputs, through `dvc repro report`."""
import csv
import json
import re
import sys

import mlflow
import pytest

from conftest import copy_project, mlflow_runs, read_jsonl, run


@pytest.fixture(scope="module")
def reported(tmp_path_factory, reported_project):
    """This worker's copy of the trained smoke project after `dvc repro report` (evaluate@mt and the report),
    built once a session (conftest), so that every test here reads the same report whichever worker runs it."""
    return copy_project(reported_project, tmp_path_factory.mktemp("reported") / "repo")


def test_evaluate_and_report_stages(reported):
    trained_repo = reported
    reports = trained_repo / "reports"

    ev = json.loads((reports / "eval" / "mt.json").read_text())
    methods = [(r["method"], r["seed"]) for r in ev["results"]]
    trained = [(m, s) for m in ("coldstart", "sft", "grpo", "grpo_bleu_language") for s in (0, 1)]
    assert methods == [("base", None), *trained, ("copy_input", None), ("copy_lead", None)]
    base = ev["results"][0]
    assert base["nll_increase_mean"] == 0.0 and base["kl_p90"] < 1e-6  # the base does not drift from itself
    for r in ev["results"]:  # trivial baselines have no model: task metrics only
        keys = ("bleu", "chrf", "sim_reward", "sim_eval", "language_consistency", "mean_length_chars", "empty_rate",
                "distinct_rate")
        if not r.get("baseline"):
            keys += ("cmrc_em", "cmrc_f1", "cmrc_avg", "nll_increase_p90", "kl_p90")
        for key in keys:
            assert key in r and r[key] == r[key], key
    assert {r["method"] for r in ev["results"] if r.get("baseline")} == {"copy_input", "copy_lead"}
    assert ev["results"][3]["kl_p90"] > 0  # a trained model has moved
    # The LM probe: plain held-out Chinese text, per line, against the base and the seed's cold start.
    by = {r["method"]: r for r in ev["results"] if r["seed"] in (None, 0)}
    assert by["base"]["lm_nll_increase_vs_base_mean"] == 0.0 and by["base"]["lm_kl_vs_base_mean"] < 1e-6
    assert by["coldstart"]["lm_kl_vs_coldstart_mean"] < 1e-6 and by["coldstart"]["lm_kl_vs_base_mean"] > 0
    assert by["sft"]["lm_kl_vs_coldstart_mean"] > 0 and "lm_nll_mean" in by["grpo"]
    items = ev["items"]
    assert len(items["ids"]) == len(items["sources"]) == ev["test_examples"]
    sft_items = items["variants"]["sft/0"]
    assert len(sft_items["chrf"]) == ev["test_examples"] and len(sft_items["lm_kl_vs_coldstart"]) == ev["lm_probe_texts"] > 0
    assert "lm_nll" not in items["variants"]["copy_input/-"] and "chrf" in items["variants"]["copy_input/-"]
    assert "not an LLM judge" in ev["preference"]["judge"] and ev["preference"]["pairs"] == 2 * ev["test_examples"]
    assert len(read_jsonl(reports / "eval" / "mt_outputs.jsonl")) == 9 * 4
    # The general skill probe: the same items for every model variant, 0/1 per item.
    assert ev["skill_items"] == 8 and ev["skill_chance"] == 0.25
    for key in ("base/-", "coldstart/0", "sft/1", "grpo/0"):
        assert len(items["variants"][key]["skill_acc"]) == 8 and set(items["variants"][key]["skill_acc"]) <= {0, 1}
    # Trajectories: every branch and ablation of every seed, from step 0 (the shared cold start) to the last.
    traj = ev["trajectories"]
    assert set(traj) == {f"{m}/{s}" for m, s in trained if m != "coldstart"}
    for key, points in traj.items():
        assert [p["step"] for p in points] == [0, 2, 3], key
        assert {"chrf", "lm_nll", "sim_eval", "length_ratio", "reward"} <= set(points[0])
    for seed in (0, 1):  # both branches start from the same model, scored the same way
        assert traj[f"sft/{seed}"][0] == {**traj[f"grpo/{seed}"][0], "reward": None}
    assert traj["grpo/0"][-1]["reward"] is not None and traj["sft/0"][-1]["reward"] is None

    md = (reports / "alignment_tax.md").read_text()
    for heading in ("### Cold start vs GRPO", "### Strong SFT vs GRPO", "### Preference",
                    "### Drift on general Chinese text", "### Paired comparisons", "## Trade-off"):
        assert heading in md
    assert "### Verdicts" not in md and "CIs overlap" not in md  # one verdict rule: the paired one
    # The cold-start gate per seed (the smoke profile turns it on), as each cold start recorded it.
    ev = json.loads((reported / "reports" / "eval" / "mt.json").read_text())
    for seed in ("0", "1"):
        gate = json.loads((reported / "models" / "mt" / "coldstart" / f"seed{seed}" / "gate.json").read_text())
        summary = json.loads((reported / "models" / "mt" / "coldstart" / f"seed{seed}" / "summary.json").read_text())
        assert ev["gate"][seed]["steps"] == gate["steps"] == summary["steps"] and ev["gate"][seed]["passed"] == gate["passed"]
        assert ev["gate"][seed]["checked_steps"] == [c["step"] for c in gate["checks"]]
        assert any(line.startswith(f"| {seed} | ") and f"| {gate['steps']} | cldr_dates |" in line for line in md.splitlines())
    assert "### Cold-start gate" in md and "input-dependent |" in md
    for heading in ("## The answer at this scale", "### General skill (chat format)", "task gain vs tax along training"):
        assert heading in md
    # Two seeds: every paired comparison has an interval; the verdict is whatever the data say.
    assert "| sft − grpo | chrf | all | 2 × " in md and "one seed: no estimate" not in md
    assert "| coldstart − base | skill_acc | all | 2 × 8 |" in md
    assert "Both branches learnt the task" in md
    # The hacking flags the report shows are exactly those of its evaluation (their rules: test_metrics, on
    # constructed results); either outcome is the data's, but it must be the one this evaluation gives.
    from semrl.evaluation.report import hacking_flags, render_macro

    flags = [render_macro("flag", f) for f in hacking_flags(ev)] or [render_macro("no_flag")]
    assert all(line in md for line in flags), flags
    # What GRPO climbed: the reward's order inside each prompt's group, per source and seed (2 seeds here).
    climb = next(line for line in md.splitlines() if line.startswith("- What GRPO had to climb"))
    assert re.search(r"as chrF does in \S+ (\d+%|–) / (\d+%|–)[;\s]", climb), climb
    assert "Inside a group (4 dev prompts × 2 completions" in md and "| reward ~ chrF: agreement |" in md
    assert "CMRC 2018 dev" in md and "bit for bit" in md
    meta = json.loads((reports / "run_meta.json").read_text())
    assert meta["machine"] and f"report written on {meta['machine']}" in md
    paired = json.loads((reports / "metrics.json").read_text())["tasks"]["mt"]["paired"]
    assert {"low", "high", "estimate"} <= set(paired["sft-grpo.lm_nll_increase_vs_coldstart"])
    curve = list(csv.DictReader((reports / "plots" / "trajectory.csv").open()))
    assert {(r["method"], r["seed"], r["step"]) for r in curve} == {
        (m, str(s), str(step)) for m, s in trained if m != "coldstart" for step in (0, 2, 3)}
    assert all(float(r["task_gain"]) == 0 == float(r["tax_lm_nll"]) for r in curve if r["step"] == "0")
    lock_version = json.loads((reports / "run_meta.json").read_text())["data_version"]
    assert f"data version `{lock_version}`" in md

    def numbers_only(node):  # metrics.json: what `dvc exp show` lists, so no strings
        return all(numbers_only(v) for v in node.values()) if isinstance(node, dict) else \
            isinstance(node, (int, float)) and not isinstance(node, bool)
    assert numbers_only(json.loads((reports / "metrics.json").read_text()))
    # The training curves as data too (one CSV per run), for `dvc plots show/diff`.
    loss = (reports / "curves" / "loss" / "mt-sft-s0.csv").read_text().splitlines()
    assert loss[0] == "step,loss" and len(loss) >= 3
    assert (reports / "curves" / "reward" / "mt-grpo-s1.csv").read_text().startswith("step,reward\n")
    shown = json.loads(run(["dvc", "plots", "show", "--json"], trained_repo).stdout)
    assert any("reports/curves/loss/mt-sft-s0.csv" in key for key in json.dumps(shown).split('"'))
    rows = list(csv.DictReader((reports / "alignment_tax.csv").open()))
    assert {"task", "method", "n_seeds", "bleu", "bleu_ci", "cmrc_avg", "tax_cmrc_avg", "task_gain"} <= set(rows[0])
    assert [r["method"] for r in rows] == ["base", "coldstart", "sft", "grpo", "grpo_bleu_language", "copy_input",
                                           "copy_lead"]
    assert rows[2]["n_seeds"] == "2" and rows[2]["chrf_ci"]
    for png in (reports / "plots" / "tradeoff.png", reports / "plots" / "trajectory.png",
                reports / "curves" / "training_mt.png"):
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000

    report = mlflow_runs(trained_repo)["report"]
    assert report.info.status == "FINISHED" and report.data.tags["semrl.kind"] == "report"
    linked = set(report.data.tags["semrl.report.runs"].split(","))
    runs = mlflow_runs(trained_repo)
    evaluated = {f"{r['method']}/{r['seed']}": r for r in ev["results"] if r.get("run_ids")}
    history = [h.step for run_id in evaluated["grpo/1"]["run_ids"]
               for h in mlflow.MlflowClient().get_metric_history(run_id, "trajectory/chrf")]
    assert sorted(set(history)) == [0, 2, 3]  # the trajectory is in MLflow too
    files = {a.path for a in mlflow.MlflowClient().list_artifacts(report.info.run_id)}
    assert {"alignment_tax.json", "alignment_tax.md", "plots"} <= files
    # Nested under the pipeline's run, beside the evaluation's run; curves from exactly the evaluated runs.
    client = mlflow.MlflowClient()
    pipeline = client.get_run(report.data.tags["mlflow.parentRunId"])
    assert pipeline.data.tags["semrl.kind"] == "pipeline"
    assert runs["evaluate-mt"].data.tags["mlflow.parentRunId"] == pipeline.info.run_id
    assert set(evaluated) == {f"{m}/{s}" for m, s in trained}
    assert {r["run_ids"][-1] for r in evaluated.values()} <= linked
    # Every training run carries its own evaluation under shared keys (MLflow's Compare shows the result).
    for key, row in evaluated.items():
        logged = client.get_run(row["run_ids"][-1]).data.metrics
        assert logged["eval/chrf"] == row["chrf"] and logged["eval/cldr_dates/chrf"] == row["by_source"]["cldr_dates"]["chrf"]
        assert logged["tax/lm_nll_increase_vs_base"] == row["lm_nll_increase_vs_base_mean"] and "skill/accuracy" in logged
    # `champion`: the GRPO seed best by chrF.
    best = max((evaluated[f"grpo/{s}"] for s in (0, 1)), key=lambda r: r["chrf"])
    champion = client.get_model_version_by_alias("semrl-mt-grpo", "champion")
    assert champion.run_id == best["run_ids"][-1]
    assert "up to date" in run(["dvc", "status", "report"], trained_repo).stdout


def test_runs_compare_and_the_champion_loads_through_a_real_server(reported):
    trained_repo = reported
    """`semrl up` serves the store `tracking:` names; through it, two training runs compared show their
    evaluation, and `models:/semrl-mt-grpo@champion` loads with MLflow's transformers flavour and generates."""
    import socket

    import yaml

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    params = yaml.safe_load((trained_repo / "params.yaml").read_text())
    params["servers"] = {"host": "127.0.0.1", "prefect_port": free_port(), "mlflow_port": free_port()}
    (trained_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    cli = [sys.executable, "-m", "semrl.cli"]
    run([*cli, "up"], trained_repo)
    try:
        url = f"http://127.0.0.1:{params['servers']['mlflow_port']}"
        client = mlflow.MlflowClient(tracking_uri=url, registry_uri=url)
        rows = {f"{r['method']}/{r['seed']}": r for r in json.loads(
            (trained_repo / "reports" / "eval" / "mt.json").read_text())["results"] if r.get("run_ids")}
        compared = [client.get_run(rows[k]["run_ids"][-1]).data.metrics for k in ("sft/0", "grpo/0")]
        for metrics, key in zip(compared, ("sft/0", "grpo/0")):
            assert metrics["eval/chrf"] == rows[key]["chrf"] and "tax/lm_kl_vs_coldstart" in metrics
        status = run([*cli, "status"], trained_repo)
        assert "MLFLOW_TRACKING_URI=" + url in status.stderr  # switching to the server is printed, not silent
        mlflow.set_tracking_uri(url)
        pipe = mlflow.transformers.load_model("models:/semrl-mt-grpo@champion")
        out = pipe("把下面的中文翻译成藏文：你好", max_new_tokens=4, do_sample=False)
        assert isinstance(out[0]["generated_text"], str) and out[0]["generated_text"]
    finally:
        run([*cli, "down"], trained_repo)


def test_the_prefect_artifact_keeps_the_answer_and_main_tables(reported):
    trained_repo = reported
    from semrl.ops.flows import report_summary

    md = (trained_repo / "reports" / "alignment_tax.md").read_text()
    summary = report_summary(md)
    assert summary.startswith("# Alignment-tax report") and "## The answer at this scale" in summary
    assert "strong SFT − GRPO" in summary and "## mt" in summary and "\n| method |" in summary
    assert "![" not in summary and len(summary) < len(md)


def test_report_without_cmrc_generation(reported, tmp_path):
    trained_repo = reported
    """The tiny default (eval.cmrc_generate: false): no CMRC EM/F1 in the evaluation, the report still has
    its trade-off plot, on the tax measures there are."""
    import shutil

    import yaml

    shutil.copytree(trained_repo / "reports" / "eval", tmp_path / "eval")
    for path in (tmp_path / "eval").glob("*.json"):
        ev = json.loads(path.read_text())
        for r in ev.get("results", []):
            for key in ("cmrc_em", "cmrc_f1", "cmrc_avg"):
                r.pop(key, None)
        path.write_text(json.dumps(ev))
    params = yaml.safe_load((trained_repo / "params.yaml").read_text())
    params["eval"].update(out_dir=str(tmp_path / "eval"), cmrc_generate=False)
    params["report"]["out_dir"] = str(tmp_path / "reports")
    params["tracking"].update(uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "art"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    run([sys.executable, "stages/report.py", "--params", str(tmp_path / "params.yaml")], trained_repo)
    curve = list(csv.DictReader((tmp_path / "reports" / "plots" / "tradeoff.csv").open()))
    assert curve and "tax_cmrc_avg" not in curve[0] and {"lm_nll_increase_vs_base_mean", "task_gain"} <= set(curve[0])
    assert "not generated (`eval.cmrc_generate: false`)" in (tmp_path / "reports" / "alignment_tax.md").read_text()
