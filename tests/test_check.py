"""`semrl check` on both profiles, on broken profiles, and `semrl profile` applying an overlay."""
import json

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
    return monkeypatch


def unprepared(cfg, tmp_path):
    cfg.prepare.out_dir = tmp_path / "not-prepared"  # the data checks wait for `prepare`
    return cfg


def test_both_profiles_pass(in_repo, tmp_path):
    problems, facts = check(unprepared(load_config("params.yaml"), tmp_path))
    assert problems == [] and any("3.9 M parameters" in f for f in facts)
    assert "methods: coldstart, sft, grpo, grpo_noise_floor, transfer_from_sft, transfer_from_grpo" in facts
    assert "data mt: not prepared yet (checked again when training starts)" in facts
    problems, facts = check(unprepared(load_config("params.yaml", "paper"), tmp_path))
    assert [p for p in problems if "not in the local Hugging Face cache" not in p] == [], problems
    assert any("4,022.5 M parameters" in f for f in facts)  # Qwen3-4B, from its config
    assert "GRPO trains a LoRA adapter at lr 5e-07" in facts
    assert any(f.startswith("warning: train.grpo: LoRA at lr 5e-07 < 1e-6") for f in facts)
    assert any("8 generations = 32 completions" in f for f in facts)
    assert any("cmhg: hf KEVVVV/CMHG -> headline (split)" in f for f in facts)
    assert any("warning: fetch.tables cmhg: revision 'main' is not a commit" in f for f in facts)
    assert "methods: coldstart, sft, grpo, grpo_bleu_language, grpo_bleu_semantic_language, grpo_bleu_semantic, " \
           "transfer_from_sft, transfer_from_grpo" in facts  # the paper's reward ablations are branches there
    # evaluation holds base, cold start, SFT, GRPO and 3 ablations: 7 x 4,022.5 M x 2 bytes (bf16)
    assert "evaluation holds 7 models at once (base, cold start, 5 branches): ~52.43 GiB of weights" in facts


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
                     "fetch.tables[0] (pairs): columns lacks ['zh']", "(pairs): a URL needs sha256",
                     "evaluation holds 5 models of a seed at once"):
        assert expected in text, expected
    assert len(problems) == 11, problems  # the reward problems twice: GRPO's and its noise floor's


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


def test_offline_mode_names_each_uncached_hub_model(in_repo, tmp_path):
    """`make` sets HF_HUB_OFFLINE only with a corpus mirror; where it is set, the paper's hub models must be
    cached, or `semrl check paper` (run by `make run PROFILE=paper` before params.yaml is rewritten) fails."""
    from semrl.ops.check import hub_problems

    in_repo.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    cfg = unprepared(load_config("params.yaml", "paper"), tmp_path)
    problems, _ = check(cfg)
    assert [p.split(":")[0] for p in problems] == ["base.pretrained 'Qwen/Qwen3-4B'",
                                                    "embedder.reward.model 'KEVVVV/bo2zh-embedding'",
                                                    "embedder.eval.model 'sentence-transformers/LaBSE'",
                                                    "eval.judge.model 'Qwen/Qwen3-8B'"]
    assert all("HF_HUB_OFFLINE=1" in p for p in problems)
    in_repo.delenv("HF_HUB_OFFLINE")
    assert hub_problems(cfg) == []  # online they download when first used
    makefile = (REPO / "Makefile").read_text()
    block = makefile[makefile.index("ifneq ($(SEMRL_DATA_MIRROR),)"):]
    assert block.index("export HF_HUB_OFFLINE := 1") < block.index("endif")  # only with a mirror


def _splits(root, rows):
    for split, n in rows.items():
        path = root / "mt" / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"id": f"{split}-{i}", "zh": "你好", "bo": "བོད"}) + "\n" for i in range(n)))


def test_check_names_a_train_split_too_small_for_the_branches(in_repo, tmp_path):
    """The paper profile on the mirrored MT data: ~1,371 training pairs for a 5,000-example cold start."""
    from semrl.core.tasks import data_problems

    cfg = load_config("params.yaml", "paper")
    cfg.prepare.out_dir = tmp_path
    cfg.train.tasks = ["mt"]
    _splits(tmp_path, {"train": 1371, "dev": 5, "test": 0})
    problems, facts = check(cfg)
    assert "data mt: train 1,371, dev 5, test 0" in facts
    assert [p for p in problems if p.startswith("task ")] == [
        "task mt: the train split has 1,371 rows, fewer than train.coldstart.samples 5,000 + "
        "check.min_branch_examples 100 = 5,100: add a corpus (fetch.tables; configs/paper.yaml shows an MT slot) "
        "or lower coldstart.samples",
        "task mt: the test split is empty"]
    _splits(tmp_path, {"train": 5100, "test": 3})
    assert data_problems(cfg) == ([], ["data mt: train 5,100, dev 5, test 3"])


def test_the_training_flow_fails_before_its_first_step_on_too_little_data(smoke_repo, tmp_path):
    params = read_yaml(smoke_repo / "params.yaml")
    params["train"]["coldstart"]["samples"] = 10 ** 6
    (smoke_repo / "too-big.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    proc = run(["semrl", "flow", "--task", "mt", "--seed", "0", "--params", "too-big.yaml"], smoke_repo, check=False)
    assert proc.returncode != 0
    assert "task mt: the train split has" in proc.stdout + proc.stderr and "1,000,000 + check.min_branch_examples" \
        in proc.stdout + proc.stderr
    assert "mt-coldstart-s0" not in proc.stdout + proc.stderr  # no step was started
    (smoke_repo / "too-big.yaml").unlink()


def test_vllm_generation_is_refused_without_cuda_and_its_knobs_reach_trl(in_repo, tmp_path):
    import torch
    from trl import GRPOConfig

    from semrl.training.trainers import vllm_args

    cfg = unprepared(load_config("params.yaml"), tmp_path)
    cfg.train.grpo.use_vllm = True
    problems, _ = check(cfg)
    if not torch.cuda.is_available():
        assert any(p.startswith("train.grpo.use_vllm: vLLM generation needs CUDA") for p in problems)
    assert vllm_args(load_config("params.yaml").train.grpo) == {"use_vllm": False}  # HF generation by default
    g = cfg.train.grpo.model_copy(update={"vllm_mode": "server", "vllm_server_port": 8123})
    args = GRPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, **vllm_args(g))
    assert (args.use_vllm, args.vllm_mode, args.vllm_server_host, args.vllm_server_port) == (
        True, "server", "127.0.0.1", 8123)
    colocate = GRPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, **vllm_args(cfg.train.grpo))
    assert colocate.vllm_mode == "colocate" and colocate.vllm_gpu_memory_utilization == 0.3


def test_check_warns_when_remote_code_would_run(in_repo, tmp_path):
    cfg = unprepared(load_config("params.yaml"), tmp_path)
    _, facts = check(cfg)
    assert not any("trust_remote_code" in f for f in facts)
    cfg.embedder.eval.trust_remote_code = True
    problems, facts = check(cfg)
    assert problems == [] and any(f.startswith("warning: embedder.eval.trust_remote_code is on") for f in facts)
