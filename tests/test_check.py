"""`semrl check` on both profiles, on broken profiles, and `semrl profile` applying an overlay."""
import copy

import pytest
import yaml

from semrl.check import check, profile_params
from semrl.io import apply_overlay, load_params

from conftest import REPO, run


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_both_profiles_pass(in_repo):
    problems, facts = check(profile_params("params.yaml", None))
    assert problems == [] and any("3.9 M parameters" in f for f in facts)
    problems, facts = check(profile_params("params.yaml", "paper"))
    assert problems == [], problems
    assert any("4,022.5 M parameters" in f for f in facts)  # Qwen3-4B, from its config
    assert any("8 generations = 32 completions" in f for f in facts)
    assert any("cmhg: hf KEVVVV/CMHG -> headline (split)" in f for f in facts)
    assert any("warning: fetch.tables cmhg: revision 'main' is not a commit" in f for f in facts)


def test_broken_profile_lists_every_problem(in_repo):
    params = copy.deepcopy(profile_params("params.yaml", None))
    params["train"]["grpo"].update(num_generations=1, loss_type="ppo")
    params["train"]["lora"]["target_modules"] = ["q_proj", "c_attn"]
    params["train"]["tasks"] = ["mt", "summarise"]
    params["rewards"]["components"] = [{"name": "semantc"}, {"name": "mypkg.missing"}]
    params["fetch"]["cldr"] = False
    params["check"] = {"gpu_memory_gib": 0.0001}
    params["fetch"]["tables"] = [{"name": "pairs", "type": "file", "url": "https://x.org/p.tsv", "task": "mt",
                                  "columns": {"bo": "bo"}}]
    problems, _ = check(params)
    text = "\n".join(problems)
    for expected in ("num_generations: GRPO needs at least 2", "loss_type: 'ppo' unknown", "['c_attn'] not in",
                     "unknown task 'summarise'", "reward 'semantc'", "reward 'mypkg.missing'",
                     "cldr_pairs needs fetch.cldr", "exceeds check.gpu_memory_gib",
                     "fetch.tables[0] (pairs): columns lacks ['zh']", "(pairs): a URL needs sha256"):
        assert expected in text, expected


def test_cli_check_exit_codes_and_profile_apply(tmp_path):
    assert "0 problem(s)" in run(["semrl", "check"], REPO).stdout
    params = load_params(REPO / "params.yaml")
    params["train"]["grpo"]["num_generations"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    proc = run(["semrl", "check", "--params", str(tmp_path / "params.yaml")], REPO, check=False)
    assert proc.returncode == 1 and "problem: train.grpo.num_generations" in proc.stdout
    merged = apply_overlay(tmp_path / "params.yaml", REPO / "configs" / "paper.yaml")
    assert merged["profile"] == "paper" and merged["base"]["pretrained"] == "Qwen/Qwen3-4B"
    assert merged["train"]["lora"]["r"] == 64 and merged["train"]["grpo"]["lr"] == 5.0e-7
    assert merged["rewards"]["ablations"]["bleu_language"]["components"]  # merged, not replaced
    assert merged["prepare"] == params["prepare"]  # untouched sections stay


def test_flow_run_params_apply_a_profile_per_run(tmp_path, monkeypatch):
    from semrl.flows import run_params

    monkeypatch.chdir(REPO)
    assert run_params("params.yaml", None, "r1") == "params.yaml"
    assert run_params("params.yaml", "tiny", "r1") == "params.yaml"  # already the profile in force
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "paper.yaml").write_text((REPO / "configs" / "paper.yaml").read_text())
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    path = run_params("params.yaml", "paper", "r2")
    merged = load_params(path)
    assert path.endswith("r2.yaml") and merged["profile"] == "paper" and merged["train"]["lora"]["r"] == 64
    assert load_params("params.yaml")["profile"] == "tiny"  # the shared params file is untouched
