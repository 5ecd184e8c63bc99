"""Training on the smoke configuration: the Prefect flow through `dvc repro`, concurrent branches, loadable
outputs, MLflow runs and registry, resume after kill -9, FAILED/KILLED runs."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import mlflow
import numpy as np
import pytest
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import child_env, mlflow_runs, read_jsonl, run

METHODS = ("coldstart", "sft", "grpo")


def test_the_training_stage_runs_siblings_and_outputs_load(trained_repo):
    """`dvc repro train@mt`: one flow run; each seed's SFT and GRPO start from its finished cold start and
    overlap in time (the smoke overlay lets every step run at once)."""
    base = trained_repo / "models" / "mt"
    ran = {stage: json.loads((base / stage / "flow_run.json").read_text()) for stage in METHODS}
    assert {stage: {(r["method"], r["seed"]) for r in rows} for stage, rows in ran.items()} == {
        "coldstart": {("coldstart", 0), ("coldstart", 1)}, "sft": {("sft", 0), ("sft", 1)},
        "grpo": {(m, s) for m in ("grpo", "grpo_bleu_language") for s in (0, 1)}}  # an ablation: the GRPO stage's
    assert (base / "grpo" / "grpo_bleu_language" / "seed0" / "model" / "config.json").is_file()
    by = {(r["method"], r["seed"]): r for rows in ran.values() for r in rows}
    for seed in (0, 1):
        cold, sft, grpo = by[("coldstart", seed)], by[("sft", seed)], by[("grpo", seed)]
        assert cold["end"] <= min(sft["start"], grpo["start"])
        assert sft["start"] < grpo["end"] and grpo["start"] < sft["end"], f"seed {seed}: SFT and GRPO did not overlap"
        assert not (cold["reused"] or sft["reused"] or grpo["reused"])
    tok = AutoTokenizer.from_pretrained(base / "coldstart" / "seed0" / "model")
    for method in METHODS:
        merged = AutoModelForCausalLM.from_pretrained(base / method / "seed0" / "model", use_safetensors=True)
        assert merged.config.model_type == "qwen3"
        assert (base / method / "seed0" / "adapter" / "adapter_config.json").is_file()
    # A branch adapter applies to the cold-start model it was trained from and reproduces the merged model.
    cold_model = AutoModelForCausalLM.from_pretrained(base / "coldstart" / "seed0" / "model")
    grpo_model = PeftModel.from_pretrained(cold_model, base / "grpo" / "seed0" / "adapter").merge_and_unload()
    merged = AutoModelForCausalLM.from_pretrained(base / "grpo" / "seed0" / "model")
    ids = tok("把下面的中文翻译成藏文：你好", return_tensors="pt")
    assert (grpo_model(**ids).logits - merged(**ids).logits).abs().max() < 1e-4
    tau = json.loads((base / "grpo" / "seed0" / "tau.json").read_text())  # calibrated on the cold-start model
    assert json.loads((base / "grpo" / "grpo_bleu_language" / "seed0" / "tau.json").read_text()) == tau  # once
    assert json.loads((base / "grpo" / "seed0" / "summary.json").read_text())["tau"] == tau["tau"]
    check_tau_calibration(tau, quantile=0.5, dev_samples=8, prompts=4, generations=2)


def concordance(x, y) -> tuple[int, int]:
    """(pairs whose x and y both differ, of them those ordered alike), counted directly."""
    pairs = agree = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            if x[i] != x[j] and y[i] != y[j]:
                pairs += 1
                agree += (x[i] < x[j]) == (y[i] < y[j])
    return pairs, agree


def check_tau_calibration(tau: dict, quantile: float, dev_samples: int, prompts: int, generations: int):
    """Every number of the calibration recomputed from its recorded samples, independently of semrl's code:
    tau the quantile of the similarities (clipped at 0), their mean and spread, the Spearman correlations
    (scipy) and, per group of a prompt's completions, the pair agreement of reward and metric (counted here)."""
    from scipy.stats import spearmanr

    samples = tau["samples"]
    sims, chrf, eval_sims = samples["similarity"], samples["chrf"], samples["eval_similarity"]
    assert tau["tau_setting"] == "auto" and tau["dev_samples"] == len(sims) == len(chrf) == dev_samples
    assert tau["similarity_against"] == "reference"
    assert tau["tau"] == round(max(0.0, float(np.quantile(sims, quantile))), 6)
    assert tau["dev_similarity_mean"] == round(float(np.mean(sims)), 6)
    assert tau["dev_similarity_std"] == round(float(np.std(sims)), 6)
    for key, x in (("spearman_similarity_chrf", sims), ("spearman_eval_similarity_chrf", eval_sims)):
        expected = None if len(set(x)) < 2 or len(set(chrf)) < 2 else round(float(spearmanr(x, chrf).statistic), 4)
        assert tau[key] == expected, key
    groups = tau["within_group"]
    assert (groups["prompts"], groups["generations"]) == (prompts, generations)
    assert len(groups["groups"]) == prompts and all(len(g["reward"]) == generations for g in groups["groups"])
    for source, check in [("all", groups["all"]), *groups["by_source"].items()]:
        members = [g for g in groups["groups"] if source in ("all", g["source"])]
        for name, (a, b) in {"reward_vs_metric": ("reward", "metric"), "reward_vs_length": ("reward", "length"),
                             "metric_vs_length": ("metric", "length")}.items():
            counted = [concordance(g[a], g[b]) for g in members]
            pairs, agree = sum(p for p, _ in counted), sum(k for _, k in counted)
            flat = sum(len(set(g[a])) < 2 or len(set(g[b])) < 2 for g in members)
            assert (check[name]["pairs"], check[name]["groups_flat"]) == (pairs, flat), (source, name)
            assert check[name]["groups_ranked"] == len(members) - flat
            assert check[name]["pair_agreement"] == (round(agree / pairs, 4) if pairs else None), (source, name)


def test_the_flow_runs_sft_and_grpo_as_concurrent_siblings(trained_repo, tmp_path):
    """`semrl flow`: one flow run, the cold start, then its branches side by side."""
    from test_methods import semrl, variant

    path, _ = variant(trained_repo, tmp_path, train__seeds=[0], train__coldstart__max_steps=2,
                      train__trajectory__every=0)
    semrl(["flow", "--task", "mt", "--params", str(path)], trained_repo)
    steps = {r["method"]: r for stage in METHODS
             for r in json.loads((tmp_path / "models" / "mt" / stage / "flow_run.json").read_text())}
    assert set(steps) == {*METHODS, "grpo_bleu_language"}
    sft, grpo, cold = steps["sft"], steps["grpo"], steps["coldstart"]
    assert cold["end"] <= min(sft["start"], grpo["start"])  # branches start from the finished cold start
    assert sft["start"] < grpo["end"] and grpo["start"] < sft["end"], "sft and grpo did not overlap in time"


def test_mlflow_holds_nested_tagged_runs_metrics_and_versions(trained_repo):
    # The stage's runs: seed 0, each nested under the stage's one flow run (other tests add standalone runs of
    # the same names), the flow run under the pipeline run.
    mlflow_runs(trained_repo)  # points MLflow at the repo's store
    nested = [r for r in mlflow.search_runs(experiment_names=["semrl"], output_format="list",
                                            filter_string="tags.`semrl.seed` = '0' and tags.`semrl.task` = 'mt'")
              if "mlflow.parentRunId" in r.data.tags]
    runs = {r.info.run_name: r for r in nested}
    parents = {m: mlflow.get_run(runs[f"mt-{m}-s0"].data.tags["mlflow.parentRunId"]) for m in METHODS}
    assert len({p.info.run_id for p in parents.values()}) == 1  # one flow run: the methods are its siblings
    for method, parent in parents.items():
        assert parent.info.status == "FINISHED" and parent.info.run_name.startswith("expansion-")
    [pipeline_id] = {p.data.tags["mlflow.parentRunId"] for p in parents.values()}
    pipeline = mlflow.get_run(pipeline_id)  # the flows nest under the pipeline's run
    assert pipeline.data.tags["semrl.kind"] == "pipeline" and pipeline.info.run_name.startswith("pipeline-")
    experiment = mlflow.get_experiment_by_name("semrl")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not MLflow's GenAI view
    lock = yaml.safe_load((trained_repo / "dvc.lock").read_text())
    assert "prepare" in lock["stages"]
    client = mlflow.MlflowClient()
    for method in METHODS:
        r = runs[f"mt-{method}-s0"]
        assert r.info.status == "FINISHED"
        assert r.data.tags["mlflow.parentRunId"] == parents[method].info.run_id
        tags = r.data.tags
        assert (tags["semrl.task"], tags["semrl.method"], tags["semrl.seed"]) == ("mt", method, "0")
        assert r.data.tags["semrl.profile"] == "tiny" and len(r.data.tags["semrl.data_version"]) == 12
        assert r.data.tags["semrl.git_commit"] and r.data.params["config.lr"]
        assert len(client.get_metric_history(r.info.run_id, "loss")) >= 2
        assert {a.path for a in client.list_artifacts(r.info.run_id, "outputs")} >= {"outputs/summary.json"}
        [version] = [v for v in client.search_model_versions(f"name = 'semrl-mt-{method}'")
                     if v.run_id == r.info.run_id]
        assert version.description.startswith(f"mt · {method} (") and "seed 0" in version.description
        [dataset] = client.get_run(r.info.run_id).inputs.dataset_inputs  # the run's Dataset column
        assert dataset.dataset.name == f"mt-train-{method}" and len(dataset.dataset.digest) == 12
        assert dataset.dataset.source_type == "local" and "train.jsonl" in dataset.dataset.source
        assert {t.key: t.value for t in dataset.tags}["mlflow.data.context"] == "training"
        summary = json.loads((trained_repo / "models" / "mt" / method / "seed0" / "summary.json").read_text())
        assert summary["run_ids"][-1] == summary["run_id"] == r.info.run_id
    grpo = runs["mt-grpo-s0"]
    # the dev completions along training, as an MLflow table: one row per point and item
    mlflow.set_experiment(experiment_id=grpo.info.experiment_id)  # load_table searches the active experiment
    table = mlflow.load_table("trajectory_completions.json", run_ids=[grpo.info.run_id])
    assert {"step", "source", "input", "output", "reference", "chrf"} <= set(table.columns)
    assert table.step.nunique() >= 2 and len(table) == table.step.nunique() * table.groupby("step").size().iloc[0]
    for key in ("reward", "reward_std", "rewards/semantic/mean", "rewards/language/mean", "kl", "entropy",
                "completions/mean_length", "language_mixing_rate", "adapter/lora_B_norm", "adapter/weight_norm"):
        assert key in grpo.data.metrics, key
    assert grpo.data.metrics["adapter/lora_B_norm"] > 0  # the adapter moved off its zero initialisation
    assert json.loads(grpo.data.params["rewards"].replace("'", '"')) == [
        {"name": "semantic", "weight": 1.5}, {"name": "language", "weight": 1.0, "min_share": 0.5}]


def test_dvc_repro_does_not_retrain_unchanged(trained_repo):
    assert "up to date" in run(["dvc", "status", "train@mt"], trained_repo).stdout


def _resume_setup(trained_repo, tmp_path, method, steps):
    """A params file training `method` for `steps` steps into tmp_path, from the flow's cold start."""
    params = yaml.safe_load((trained_repo / "params.yaml").read_text())
    params["train"].update(out_dir=str(tmp_path / "models"), checkpoint_dir=str(tmp_path / "ckpt"), save_steps=4)
    params["train"][method]["max_steps"] = steps
    params["train"]["match_budgets"] = False  # one branch alone, for another step count
    shutil.copytree(trained_repo / "models" / "mt" / "coldstart", tmp_path / "models" / "mt" / "coldstart")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _train_cmd(method, params_path):
    return [sys.executable, "-m", "semrl.cli", "train", "--task", "mt", "--method", method,
            "--params", str(params_path)]


def _wait_for_checkpoint(ckpt_root, proc, at_least=4, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = [p for p in ckpt_root.glob("**/checkpoint-*") if (p / "trainer_state.json").is_file()]
        if any(int(p.name.split("-")[1]) >= at_least for p in done):
            return
        assert proc.poll() is None, "training ended before a checkpoint appeared"
        time.sleep(0.2)
    raise AssertionError("no checkpoint in time")


@pytest.mark.parametrize("method, steps", [("sft", 40), ("grpo", 24)])
def test_kill_9_mid_training_resumes_from_the_last_checkpoint(trained_repo, tmp_path, method, steps):
    params_path = _resume_setup(trained_repo, tmp_path, method, steps)
    proc = subprocess.Popen(_train_cmd(method, params_path), cwd=trained_repo, env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_checkpoint(tmp_path / "ckpt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert mlflow_runs(trained_repo)[f"mt-{method}-s0"].info.status == "RUNNING"  # what kill -9 leaves
    killed_id = mlflow_runs(trained_repo)[f"mt-{method}-s0"].info.run_id
    subprocess.run(_train_cmd(method, params_path), cwd=trained_repo, check=True, capture_output=True, env=child_env())
    summary = json.loads((tmp_path / "models" / "mt" / method / "seed0" / "summary.json").read_text())
    assert summary["resumed_from_step"] >= 4 and summary["steps"] == steps
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "models" / "mt" / method / "seed0" / "model")
    assert mlflow.MlflowClient().get_run(killed_id).info.status == "KILLED"
    assert mlflow.MlflowClient().get_run(summary["run_id"]).info.status == "FINISHED"


def test_ctrl_c_ends_the_run_killed_and_a_crash_ends_it_failed(trained_repo, tmp_path):
    params_path = _resume_setup(trained_repo, tmp_path, "sft", 400)
    # SIGINT's default disposition in the child, whatever pytest inherited: a shell starts background
    # jobs with SIGINT ignored, and Python then never raises KeyboardInterrupt (the run would finish).
    proc = subprocess.Popen(_train_cmd("sft", params_path), cwd=trained_repo, env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_checkpoint(tmp_path / "ckpt", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert mlflow_runs(trained_repo)["mt-sft-s0"].info.status == "KILLED"
    # A reward that raises: the GRPO run ends FAILED, the process exits non-zero.
    params = yaml.safe_load(params_path.read_text())
    params["rewards"]["components"] = [{"name": "test_train.broken_reward"}]
    params_path.write_text(yaml.safe_dump(params))
    env = child_env({"PYTHONPATH": f"{trained_repo / 'tests'}:{os.environ.get('PYTHONPATH', '')}"})
    proc = subprocess.run(_train_cmd("grpo", params_path), cwd=trained_repo, capture_output=True, text=True, env=env)
    assert proc.returncode != 0
    assert mlflow_runs(trained_repo)["mt-grpo-s0"].info.status == "FAILED"


def broken_reward(prompts, completions, **columns):
    raise ValueError("reward service unavailable")


def test_prompts_and_splits(trained_repo):
    from semrl.core.config import load_config
    from semrl.core.tasks import get_task
    from semrl.training.trainers import seed_split

    cfg = load_config(trained_repo / "params.yaml")
    cfg.prepare.out_dir = trained_repo / "data" / "prepared"
    tok = AutoTokenizer.from_pretrained(trained_repo / "models" / "base")
    task = get_task(cfg, "headline")
    train = task.examples("train", tok, cfg.train.max_input_tokens)
    instruction = task.prompt.removesuffix("{input}")
    assert instruction == "为下面的藏文新闻写一个藏文标题：\n" and all(x["prompt"].startswith(instruction) for x in train)
    cut = [len(tok(x["prompt"][len(instruction):])["input_ids"]) for x in train[:20]]
    assert max(cut) <= 48 + 1 and max(cut) >= 40  # bodies are long: the input budget is what cuts them
    cold, rest = seed_split(train, 24, seed=0)
    assert len(cold) == 24 and not {x["id"] for x in cold} & {x["id"] for x in rest}
    assert seed_split(train, 24, seed=1)[0] != cold  # each seed draws its own cold start
    raw = read_jsonl(trained_repo / "data" / "prepared" / "headline" / "train.jsonl")
    assert {x["reference"] for x in train} == {r["title"] for r in raw}
