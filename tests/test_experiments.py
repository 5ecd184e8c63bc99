"""DVC experiments on the training stage train@<task>: a GRPO-only change (`dvc exp run -S`) retrains GRPO and
nothing else (the cold starts and SFT are reused: no MLflow run, the same bytes), and experiments in a
temporary workspace (`--temp`, `--queue`) keep their MLflow runs and checkpoints in the project, where they
outlive the workspace DVC deletes."""
import mlflow
import pytest
import yaml

from semrl.core.config import read_yaml  # YAML as DVC reads it: a bare `off` stays a string

from conftest import copy_project, mlflow_runs, run


# GRPO-only: a learning rate, and the reward ablation off (fewer steps to run).
def grpo_change(lr: str) -> list[str]:
    return ["-S", f"train.grpo.lr={lr}", "-S", "rewards.ablations.bleu_language.enabled=false"]


@pytest.fixture(scope="module")
def exp_repo(trained_project, tmp_path_factory):
    """A copy of the trained smoke project as a git commit (experiments start from one), its MLflow store with it."""
    dest = copy_project(trained_project, tmp_path_factory.mktemp("exp") / "repo")
    run(["git", "add", "-A"], dest)
    run(["git", "-c", "user.name=semrl", "-c", "user.email=semrl@localhost", "commit", "-qm", "baseline"], dest)
    return dest


def grpo_runs(repo, lr: float) -> list:
    mlflow_runs(repo)
    return [r for r in mlflow.search_runs(experiment_names=["semrl"], output_format="list",
                                          filter_string="tags.`semrl.method` = 'grpo'")
            if float(r.data.params["config.lr"]) == lr]


def method_runs(repo, method: str) -> set[str]:
    mlflow_runs(repo)
    return {r.info.run_id for r in mlflow.search_runs(experiment_names=["semrl"], output_format="list",
                                                      filter_string=f"tags.`semrl.method` = '{method}'")}


def test_a_grpo_only_change_retrains_grpo_and_reuses_the_rest(exp_repo):
    params = read_yaml(exp_repo / "params.yaml")
    params["train"]["grpo"]["lr"] = 2e-4
    (exp_repo / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    status = run(["dvc", "status", "train@mt", "evaluate@mt"], exp_repo).stdout
    assert status.startswith("train@mt:") and "train.grpo" in status and "train.sft" not in status, status
    run(["git", "checkout", "params.yaml"], exp_repo)
    before = {m: method_runs(exp_repo, m) for m in ("coldstart", "sft", "grpo")}
    weights = {m: (exp_repo / "models" / "mt" / m / "seed0" / "model" / "model.safetensors").read_bytes()
               for m in ("coldstart", "sft")}
    out = run(["dvc", "exp", "run", "-n", "grpo-lr", *grpo_change("0.0002"), "train@mt"], exp_repo)
    log = out.stdout + out.stderr
    assert "Running stage 'train@mt'" in log
    for name in ("mt-coldstart-s0", "mt-coldstart-s1", "mt-sft-s0", "mt-sft-s1"):
        assert f"{name}: reused" in log, name
    assert "6 training steps: 2 trained, 4 reused" in log, log[-3000:]
    assert {m: method_runs(exp_repo, m) for m in ("coldstart", "sft")} == {m: before[m] for m in ("coldstart", "sft")}
    for m, data in weights.items():  # byte for byte the same weights
        assert (exp_repo / "models" / "mt" / m / "seed0" / "model" / "model.safetensors").read_bytes() == data, m
    assert {r.data.tags["semrl.seed"] for r in grpo_runs(exp_repo, 2e-4)} == {"0", "1"}
    assert len(method_runs(exp_repo, "grpo") - before["grpo"]) == 2
    assert not (exp_repo / "models" / "mt" / "grpo" / "grpo_bleu_language").exists()  # disabled: pruned
    assert "up to date" in run(["dvc", "status", "train@mt"], exp_repo).stdout
    assert "grpo-lr" in run(["dvc", "exp", "list", "--name-only"], exp_repo).stdout.split()


@pytest.mark.parametrize("mode", ["temp", "queue"])
def test_temporary_workspace_experiments_track_into_the_project(exp_repo, mode):
    lr = {"temp": "0.0003", "queue": "0.0004"}[mode]
    before = {p.name for p in (exp_repo / "checkpoints" / "mt" / "grpo").iterdir()}
    if mode == "temp":
        run(["dvc", "exp", "run", "--temp", "-n", f"grpo-{mode}", *grpo_change(lr), "train@mt"], exp_repo)
    else:  # queued, then run by DVC's queue worker (--run-all waits for it)
        run(["dvc", "exp", "run", "--queue", "-n", f"grpo-{mode}", *grpo_change(lr), "train@mt"], exp_repo)
        run(["dvc", "exp", "run", "--run-all"], exp_repo)
    assert f"grpo-{mode}" in run(["dvc", "exp", "list", "--name-only"], exp_repo).stdout.split()
    runs = grpo_runs(exp_repo, float(lr))  # in the project's store: the temporary copy is gone
    assert {r.data.tags["semrl.seed"] for r in runs} == {"0", "1"} and all(r.info.status == "FINISHED" for r in runs)
    artifacts = mlflow.MlflowClient().list_artifacts(runs[0].info.run_id, "outputs")
    assert {a.path for a in artifacts} >= {"outputs/summary.json"}  # artifacts too
    after = {p.name for p in (exp_repo / "checkpoints" / "mt" / "grpo").iterdir()}
    assert len(after - before) == 2  # each seed's checkpoints, keyed by the new config, kept in the project
    assert not list((exp_repo / ".dvc" / "tmp" / "exps").glob(f"**/{'models'}/mt/grpo"))  # the copy is gone


def test_a_local_remote_restores_data_and_models_in_a_fresh_clone(exp_repo, tmp_path):
    """`dvc push` to a directory remote, then `git clone` + `dvc pull`: every stage's outputs come back and
    DVC finds nothing to recompute."""
    remote, clone = tmp_path / "remote", tmp_path / "clone"
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], exp_repo)
    run(["git", "add", "-A"], exp_repo)
    run(["git", "-c", "user.name=semrl", "-c", "user.email=semrl@localhost", "commit", "-qm", "the remote"], exp_repo)
    # the smoke repo ran the training stages only (its dvc.lock also holds the tiny run's later stages)
    targets = ["--with-deps", "train@mt"]
    run(["dvc", "push", *targets], exp_repo)
    run(["git", "clone", "-q", str(exp_repo), str(clone)], tmp_path)
    assert not (clone / "models" / "base").exists()  # a clone has no outputs: what follows came from the remote
    run(["dvc", "pull", *targets], clone)
    for out in ("data/prepared/mt/train.jsonl", "models/base/config.json", "models/mt/grpo/seed0/model/config.json",
                "models/mt/sft/seed1/summary.json"):
        assert (clone / out).read_bytes() == (exp_repo / out).read_bytes(), out
    assert "up to date" in run(["dvc", "status", "train@mt", "embedder"], clone).stdout
