"""`semrl check` on both profiles, on broken profiles, and `semrl profile` applying an overlay."""
import pytest
import yaml

from semrl import SemrlError
from semrl.core.config import Config, apply_overlay, load_config, read_yaml
from semrl.ops.check import check

from conftest import REPO, run


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_both_profiles_pass(in_repo):
    problems, facts = check(load_config("params.yaml"))
    assert problems == [] and any("3.9 M parameters" in f for f in facts)
    assert "methods: coldstart, sft, grpo, transfer_from_sft, transfer_from_grpo" in facts
    problems, facts = check(load_config("params.yaml", "paper"))
    assert problems == [], problems
    assert any("4,022.5 M parameters" in f for f in facts)  # Qwen3-4B, from its config
    assert any("8 generations = 32 completions" in f for f in facts)
    assert any("cmhg: hf KEVVVV/CMHG -> headline (split)" in f for f in facts)
    assert any("warning: fetch.tables cmhg: revision 'main' is not a commit" in f for f in facts)
    assert "methods: coldstart, sft, grpo, grpo_bleu_language, grpo_bleu_semantic_language, grpo_bleu_semantic, " \
           "transfer_from_sft, transfer_from_grpo" in facts  # the paper's reward ablations are branches there


def test_broken_profile_lists_every_problem(in_repo):
    """What the schema cannot know (the architecture, importable rewards, the source files) `check` finds."""
    params = read_yaml("params.yaml")
    params["train"]["lora"].update(enabled=True, target_modules=["q_proj", "c_attn"])  # LoRA is the paper path
    params["rewards"]["components"] = [{"name": "semantc"}, {"name": "mypkg.missing"}]
    params["fetch"]["cldr"] = False
    params["check"]["gpu_memory_gib"] = 0.0001
    params["fetch"]["tables"] = [{"name": "pairs", "type": "file", "url": "https://x.org/p.tsv", "task": "mt",
                                  "columns": {"bo": "bo"}}]
    problems, _ = check(Config.model_validate(params))
    text = "\n".join(problems)
    for expected in ("['c_attn'] not in", "train.grpo (grpo): reward 'semantc'", "reward 'mypkg.missing'",
                     "cldr_pairs needs fetch.cldr", "cldr_dates needs fetch.cldr", "exceeds check.gpu_memory_gib",
                     "fetch.tables[0] (pairs): columns lacks ['zh']", "(pairs): a URL needs sha256"):
        assert expected in text, expected
    assert len(problems) == 8, problems


def test_cli_check_exit_codes_and_profile_apply(tmp_path):
    assert "0 problem(s)" in run(["semrl", "check"], REPO).stdout
    params = read_yaml(REPO / "params.yaml")
    params["train"]["grpo"]["num_generations"] = 1
    params["train"]["grpo"]["loss_type"] = "ppo"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    proc = run(["semrl", "check", "--params", str(tmp_path / "params.yaml")], REPO, check=False)
    assert proc.returncode == 1, proc.stdout
    assert "problem: " in proc.stdout and "train.grpo.num_generations: Input should be greater than or equal to 2" \
        in proc.stdout and "train.grpo.loss_type: Input should be 'grpo', 'dapo', 'dr_grpo' or 'bnpo'" in proc.stdout
    params["train"]["grpo"].update(num_generations=2, loss_type="grpo")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    before = read_yaml(tmp_path / "params.yaml")
    merged = apply_overlay(tmp_path / "params.yaml", REPO / "configs" / "paper.yaml")
    after = read_yaml(tmp_path / "params.yaml")
    assert merged.profile == "paper" == after["profile"] and merged.base.pretrained == "Qwen/Qwen3-4B"
    assert merged.train.lora.r == 64 and merged.train.grpo.lr == 5.0e-7
    assert merged.rewards.ablations["bleu_language"].components  # merged, not replaced
    assert after["tracking"] == before["tracking"]  # untouched sections stay
    assert after["prepare"]["mt"] == {**before["prepare"]["mt"], "cldr_dates": False}  # no synthetic pairs
    assert {k: v for k, v in after["prepare"].items() if k != "mt"} == {
        k: v for k, v in before["prepare"].items() if k != "mt"}


def test_profile_overlay_with_a_bad_key_is_refused_before_writing(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "bad.yaml").write_text("train:\n  grpo:\n    temprature: 0.7\n")
    with pytest.raises(SemrlError, match=r"bad.yaml:3: train.grpo.temprature: unknown key; did you mean "
                                         r"'temperature'\?"):
        apply_overlay(tmp_path / "params.yaml", tmp_path / "bad.yaml")
    assert (tmp_path / "params.yaml").read_text() == (REPO / "params.yaml").read_text()


def test_flow_run_params_apply_a_profile_per_run(tmp_path, monkeypatch):
    from semrl.ops.flows import run_params

    monkeypatch.chdir(REPO)
    assert run_params("params.yaml", None, "r1") == "params.yaml"
    assert run_params("params.yaml", "tiny", "r1") == "params.yaml"  # already the profile in force
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "paper.yaml").write_text((REPO / "configs" / "paper.yaml").read_text())
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    path = run_params("params.yaml", "paper", "r2")
    merged = load_config(path)
    assert path.endswith("r2.yaml") and merged.profile == "paper" and merged.train.lora.r == 64
    assert load_config("params.yaml").profile == "tiny"  # the shared params file is untouched
