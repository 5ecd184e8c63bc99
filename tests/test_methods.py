"""Methods and tasks beyond the default run, on the smoke model: the bo→zh and headline tasks with a reward
ablation branch, a numeric tau and two seeds through the flow, evaluation and the report; full fine-tuning;
a changed config never resuming a stale checkpoint; a step killed by a signal retried by Prefect."""
import json
import os
import shutil
import signal
from pathlib import Path

import mlflow
import yaml
from safetensors.torch import load_file

from conftest import REPO, mlflow_runs, read_jsonl, run


def variant(trained_repo: Path, tmp_path: Path, **changes) -> tuple[Path, dict]:
    """A params file like the trained repo's whose outputs, checkpoints, reports and MLflow runs go to tmp_path
    (the trained repo's own store stays as the other tests expect it)."""
    params = yaml.safe_load((trained_repo / "params.yaml").read_text())
    params["train"].update(out_dir=str(tmp_path / "models"), checkpoint_dir=str(tmp_path / "ckpt"))
    params["tracking"].update(uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "mlartifacts"))
    params["eval"]["out_dir"] = str(tmp_path / "eval")
    params["report"]["out_dir"] = str(tmp_path / "reports")
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = params
        for p in parents:
            node = node[p]
        node[key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, allow_unicode=True))
    return path, params


def semrl(args, cwd, env=None, check=True):
    return run(["semrl", *args], cwd, {**(env or {}), "PYTHONPATH": f"{REPO / 'tests'}:{os.environ.get('PYTHONPATH', '')}"},
               check=check)


def test_another_task_an_ablation_branch_a_numeric_tau_and_two_seeds(trained_repo, tmp_path):
    """Headlines (the smoke project trained MT), two seeds in one flow, another reward ablation, tau a number.
    bo→zh is the third task record (tests/test_config.py) and its Chinese language reward a unit test
    (tests/test_rewards.py): training it here as well cost ~80 s of the suite and checked nothing more."""
    path, params = variant(trained_repo, tmp_path, rewards__tau=0.2, train__tasks=["headline"],
                           train__seeds=[0, 1], transfer__enabled=False)
    params["rewards"]["ablations"]["bleu_semantic"]["enabled"] = True
    params["rewards"]["ablations"]["bleu_language"]["enabled"] = False  # the smoke run's ablation: another here
    path.write_text(yaml.safe_dump(params, allow_unicode=True))
    semrl(["flow", "--task", "headline", "--seed", "0", "--seed", "1", "--params", str(path)], trained_repo)
    models = tmp_path / "models"
    methods = ("coldstart", "sft", "grpo", "grpo_bleu_semantic")
    for seed in (0, 1):
        for method in methods:
            folder = models / "headline" / ("grpo/" + method if method.startswith("grpo_") else method) / f"seed{seed}"
            summary = json.loads((folder / "summary.json").read_text())
            assert (summary["task"], summary["method"], summary["seed"]) == ("headline", method, seed)
            if method.startswith("grpo"):
                assert summary["tau"] == 0.2  # the number in rewards.tau, no calibration
                assert json.loads((folder / "tau.json").read_text()) == {"tau": 0.2, "tau_setting": 0.2}
    runs = mlflow_runs(tmp_path)
    ablation = runs["headline-grpo_bleu_semantic-s0"]
    assert json.loads(ablation.data.params["rewards"].replace("'", '"')) == [
        {"name": "bleu", "weight": 1.0}, {"name": "semantic", "weight": 1.5}]
    assert "rewards/bleu/mean" in ablation.data.metrics and "rewards/language/mean" not in ablation.data.metrics
    grpo = runs["headline-grpo-s1"]
    assert grpo.data.params["task"] == "headline" and "rewards/language/mean" in grpo.data.metrics

    semrl(["evaluate", "--task", "headline", "--params", str(path)], trained_repo)
    ev = json.loads((tmp_path / "eval" / "headline.json").read_text())
    assert [(r["method"], r["seed"]) for r in ev["results"]] == [("base", None)] + [
        (m, s) for m in methods for s in (0, 1)] + [("copy_input", None), ("copy_lead", None)]
    assert all("rouge_l" in r and "bleu" not in r for r in ev["results"])  # the task record's metrics
    assert ev["preference"]["seeds"] == [0, 1] and ev["preference"]["pairs"] == 2 * ev["test_examples"]
    samples = read_jsonl(tmp_path / "eval" / "headline_outputs.jsonl")
    test = {r["id"]: r["title"] for r in read_jsonl(trained_repo / "data" / "prepared" / "headline" / "test.jsonl")}
    assert all(s["reference"] == test[s["id"]] for s in samples)  # headlines are scored against real titles

    semrl(["report", "--params", str(path)], trained_repo)
    md = (tmp_path / "reports" / "alignment_tax.md").read_text()
    assert "## headline" in md and "| ROUGE-L |" in md and "one seed, no estimate" not in md
    assert "### Reward ablations" in md and "| grpo_bleu_semantic | 2 |" in md
    rows = json.loads((tmp_path / "reports" / "metrics.json").read_text())["tasks"]["headline"]
    assert set(rows) >= {"base", "coldstart", "sft", "grpo", "grpo_bleu_semantic"}
    assert "rouge_l" in rows["sft"] and "task_gain" in rows["sft"]
    # Paired comparisons over 2 seeds x 8 items: an interval from the t and from the bootstrap, a verdict
    # that is one of the allowed outcomes (not asserted: who wins is the experiment's to say).
    paired_rows = [line for line in md.splitlines() if line.startswith("| sft − grpo | rouge_l | all | 2 × 8 |")]
    assert len(paired_rows) == 1
    cells = [c.strip() for c in paired_rows[0].strip("|").split("|")]
    assert cells[7].startswith("[") and cells[8].startswith("[")
    assert cells[9] in ("higher", "lower", "no difference shown (95 % interval holds 0)", "not informative: both at the floor")
    assert "| sft − grpo | lm_kl_vs_coldstart | all | 2 × " in md


def train_from_the_cold_start(trained_repo: Path, tmp_path: Path, path: Path, method: str):
    """Train one branch for 2 steps from the trained repo's cold start, as a full model (no adapter saved);
    the cold start's weights and the branch's, by tensor name."""
    shutil.copytree(trained_repo / "models" / "mt" / "coldstart", tmp_path / "models" / "mt" / "coldstart")
    semrl(["train", "--task", "mt", "--method", method, "--params", str(path)], trained_repo)
    out = tmp_path / "models" / "mt" / method / "seed0"
    assert not (out / "adapter").exists() and json.loads((out / "summary.json").read_text())["steps"] == 2
    before = load_file(tmp_path / "models" / "mt" / "coldstart" / "seed0" / "model" / "model.safetensors")
    return before, load_file(out / "model" / "model.safetensors")


def test_full_fine_tuning_trains_every_weight(trained_repo, tmp_path):
    path, _ = variant(trained_repo, tmp_path, train__lora__enabled=False, train__sft__max_steps=2,
                      train__match_budgets=False)
    before, after = train_from_the_cold_start(trained_repo, tmp_path, path, "sft")
    assert set(before) == set(after)
    changed = [k for k in before if not (before[k] == after[k]).all()]
    assert "model.norm.weight" in changed and len(changed) > len(before) // 2  # not only LoRA targets


def test_grpo_alone_can_train_every_weight(trained_repo, tmp_path):
    """train.grpo.lora: false next to train.lora.enabled: true (the smoke profile): the cold start and SFT
    keep their adapters, GRPO trains every weight."""
    from semrl.core.config import Config
    from semrl.core.methods import methods

    path, params = variant(trained_repo, tmp_path, train__grpo__lora=False, train__grpo__max_steps=2,
                           train__match_budgets=False)
    assert {m.name: m.lora for m in methods(Config.model_validate(params)).values() if not m.group} == {
        "coldstart": True, "sft": True, "grpo": False, "grpo_bleu_language": False}
    before, after = train_from_the_cold_start(trained_repo, tmp_path, path, "grpo")
    assert "model.norm.weight" in [k for k in before if not (before[k] == after[k]).all()]


def test_a_changed_config_never_resumes_a_stale_checkpoint(trained_repo, tmp_path):
    shutil.copytree(trained_repo / "models" / "mt" / "coldstart", tmp_path / "models" / "mt" / "coldstart")
    path, _ = variant(trained_repo, tmp_path, train__sft__max_steps=4, train__save_steps=2,
                      train__match_budgets=False)
    semrl(["train", "--task", "mt", "--method", "sft", "--params", str(path)], trained_repo)
    summary = tmp_path / "models" / "mt" / "sft" / "seed0" / "summary.json"
    assert json.loads(summary.read_text())["resumed_from_step"] == 0
    first = json.loads(summary.read_text())
    again = semrl(["train", "--task", "mt", "--method", "sft", "--params", str(path)], trained_repo)
    assert "reused: its inputs are unchanged" in again.stdout  # the same inputs: nothing trains, no MLflow run
    assert json.loads(summary.read_text()) == first
    params = yaml.safe_load(path.read_text())
    params["tasks"]["mt"]["prompt"] = "请翻译成藏文：\n{input}"  # another prompt is another run
    path.write_text(yaml.safe_dump(params, allow_unicode=True))
    semrl(["train", "--task", "mt", "--method", "sft", "--params", str(path)], trained_repo)
    assert json.loads(summary.read_text())["resumed_from_step"] == 0
    assert len(list((tmp_path / "ckpt" / "mt" / "sft").iterdir())) == 2


def kill_once(marker: str):
    """A GRPO reward that SIGKILLs its own process the first time (as the OOM killer would), then works."""
    def reward(prompts, completions, **columns):
        if not Path(marker).exists():
            Path(marker).write_text("killed once")
            os.kill(os.getpid(), signal.SIGKILL)
        return [0.0] * len(completions)

    reward.__name__ = "kill_once"
    return reward


def test_a_step_killed_by_a_signal_is_retried_and_its_run_closed(trained_repo, tmp_path):
    marker = tmp_path / "killed"
    # No ablation branch: the first GRPO step of a seed to take the tau lock calibrates tau and runs the
    # reward-signal check with the configured rewards, so with a sibling the kill could land in either.
    path, params = variant(trained_repo, tmp_path, flow__retries=1, flow__retry_delay_s=0,
                           rewards__components=[{"name": "test_methods.kill_once", "marker": str(marker)}],
                           rewards__ablations__bleu_language__enabled=False)
    semrl(["flow", "--seed", "3", "--params", str(path)], trained_repo)
    assert marker.read_text() == "killed once"
    summary = json.loads((tmp_path / "models" / "mt" / "grpo" / "seed3" / "summary.json").read_text())
    assert summary["steps"] == params["train"]["grpo"]["max_steps"]
    mlflow_runs(tmp_path)  # points MLflow at the variant's store
    runs = mlflow.search_runs(experiment_names=["semrl"], output_format="list",
                              filter_string="tags.`semrl.run_key` = 'mt-grpo-s3'")
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]  # the killed try is not left RUNNING
