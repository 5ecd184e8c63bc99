"""`semrl check` on both profiles, on broken profiles, and `semrl profile` applying an overlay."""
import json
from pathlib import Path

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
    import importlib.util

    import torch
    from trl import GRPOConfig

    from semrl.core.config import GRPOStage
    from semrl.training.trainers import vllm_args

    cfg = unprepared(load_config("params.yaml"), tmp_path)
    assert cfg.train.grpo.vllm == "off"  # params.yaml's `"off"`; a bare YAML 1.1 `off` (false) means the same
    assert GRPOStage.model_validate({"vllm": False}).vllm == "off"
    with pytest.raises(ValueError, match="say which vLLM mode: colocate or server"):
        GRPOStage.model_validate({"vllm": True})
    assert vllm_args(cfg.train.grpo) == {"use_vllm": False}  # transformers' generate by default
    cfg.train.grpo.vllm = "colocate"
    problems, _ = check(cfg)
    missing = []
    if not torch.cuda.is_available():
        missing.append("train.grpo.vllm: colocate: vLLM generation needs CUDA and none is visible")
    if importlib.util.find_spec("vllm") is None:
        missing.append("train.grpo.vllm: colocate: the vllm package is not installed")
    assert [p for p in problems if p.startswith("train.grpo.vllm")] == [
        p for p in problems if any(p.startswith(m) for m in missing)] and len(missing) == sum(
        p.startswith("train.grpo.vllm") for p in problems)
    if missing:  # asked for where it cannot run: the trainer's arguments refuse, saying why, before any model loads
        with pytest.raises(SemrlError, match="train.grpo.vllm: colocate: "):
            vllm_args(cfg.train.grpo)
        return
    server = GRPOConfig(output_dir=str(tmp_path / "out"), **vllm_args(
        cfg.train.grpo.model_copy(update={"vllm": "server", "vllm_server_port": 8123})))
    assert (server.use_vllm, server.vllm_mode, server.vllm_server_host, server.vllm_server_port) == (
        True, "server", "127.0.0.1", 8123)
    colocate = GRPOConfig(output_dir=str(tmp_path / "out"), **vllm_args(cfg.train.grpo))
    assert colocate.vllm_mode == "colocate" and colocate.vllm_gpu_memory_utilization == 0.3


def test_check_warns_when_remote_code_would_run(in_repo, tmp_path):
    cfg = unprepared(load_config("params.yaml"), tmp_path)
    _, facts = check(cfg)
    assert not any("trust_remote_code" in f for f in facts)
    cfg.embedder.eval.trust_remote_code = True
    problems, facts = check(cfg)
    assert problems == [] and any(f.startswith("warning: embedder.eval.trust_remote_code is on") for f in facts)


def test_budget_counts_grpo_and_sft_tokens_as_a_hand_count_does(in_repo, tmp_path):
    from semrl.core.methods import get_method
    from semrl.ops.budget import Work, estimate, grpo_work

    cfg = unprepared(load_config("params.yaml"), tmp_path)
    cfg.train.tasks, cfg.train.seeds = ["mt"], [0, 1]
    cfg.train.max_input_tokens, cfg.train.max_target_tokens = 50, 20
    cfg.check.memory.prompt_overhead_tokens = 10
    b = cfg.check.budget
    b.length_fill, b.reward_embedder_cost, b.rows = 0.5, 0.1, {"mt": {"train": 1000, "test": 40}}
    b.throughput = b.throughput.model_copy(update=dict(train_tokens_per_s=100, forward_tokens_per_s=1000,
                                                       generate_tokens_per_s=10, overhead=0))
    g = cfg.train.grpo  # 80 steps x 8 prompts x 4 completions (params.yaml)
    completions = g.max_steps * g.prompts_per_step * g.num_generations
    assert completions == 2560
    # prefill 60 x 0.5, decoding 20 x 0.5, the reward embedder over 10 decoded tokens x 0.1, the reference pass
    # (beta 0.04) and the update over 80 x 0.5 tokens, per completion
    expected = Work(train=2560 * 40, forward=2560 * (30 + 1 + 40), generate=2560 * 10)
    assert grpo_work(cfg, get_method(cfg, "grpo"), 640) == expected
    assert expected.hours(cfg) == pytest.approx((2560 * 40 / 100 + 2560 * 71 / 1000 + 2560 * 10 / 10) / 3600)
    g.vllm = "colocate"  # the same decoding, counted at vLLM's rate
    assert grpo_work(cfg, get_method(cfg, "grpo"), 640) == Work(train=2560 * 40, forward=2560 * 71, vllm=2560 * 10)
    g.vllm = "off"
    cfg.train.trajectory.every = 0
    lines, rows = estimate(cfg)
    by_stage = {line.stage: line for line in lines}
    assert by_stage["GRPO"].runs == 2 and by_stage["GRPO"].work == expected * 2
    assert by_stage["strong SFT"].work == Work(train=2 * 80 * 8 * 80 * 0.5)  # 80 steps x 8 examples x 80 x 0.5
    assert by_stage["evaluation"].runs == 2 * 5  # per seed: base, cold start, SFT, GRPO and its noise floor
    assert rows == ["mt: train 1,000, test 40 rows (check.budget.rows)"]


def test_paper_budget_and_its_one_gpu_day_variant(in_repo, tmp_path):
    """The two paper configs `semrl check` plans: the recipe (weeks on one GPU) and a variant that fits a day,
    with the throughput paper.yaml states; the variant is the recipe but for what it says it changes."""
    from semrl.core.methods import methods
    from semrl.ops.budget import estimate, model_count

    paper = unprepared(load_config("params.yaml", "paper"), tmp_path)
    day = unprepared(load_config("params.yaml", "paper-1gpu-day"), tmp_path)
    assert day.profile == "paper-1gpu-day" and day.base.pretrained == paper.base.pretrained == "Qwen/Qwen3-4B"
    assert day.train.seeds == [0] and day.train.grpo.max_steps == 2000 and paper.train.grpo.max_steps == -1
    assert [m for m in methods(day) if m.startswith("grpo")] == ["grpo"]
    assert day.train.lora == paper.train.lora and day.check.budget == paper.check.budget
    hours = {name: sum(line.work.hours(c) for line in estimate(c)[0]) for name, c in (("paper", paper), ("day", day))}
    assert hours["paper"] > 21 * 24 and 6 < hours["day"] <= 24, hours  # weeks; a day with room for the assumptions
    grpo_share = sum(line.work.hours(paper) for line in estimate(paper)[0] if line.stage.startswith("GRPO"))
    assert grpo_share / hours["paper"] > 0.9  # where the paper's time goes
    assert (model_count(paper), model_count(day)) == (2 * 3 * 6 + 3 * 2, 2 * 1 * 3 + 1 * 2)
    _, facts = check(day)
    assert any(f.startswith("time estimate (device-hours on one H100") for f in facts)
    assert any(f.startswith("    total: ") for f in facts) and any(f.startswith("disk estimate (GiB): 8 trained") for f in facts)


def test_a_profile_extends_another_and_a_cycle_is_refused(tmp_path, monkeypatch):
    from semrl.core import config as config_module
    from semrl.core.config import read_overlay

    monkeypatch.setattr(config_module, "PROFILES_DIR", tmp_path)
    (tmp_path / "a.yaml").write_text("profile: a\ntrain: {seeds: [0, 1], grpo: {lr: 1.0e-5, beta: 0.1}}\n")
    (tmp_path / "b.yaml").write_text("extends: a\nprofile: b\ntrain: {grpo: {beta: 0.0}}\n")
    assert read_overlay(tmp_path / "b.yaml") == {"profile": "b", "train": {"seeds": [0, 1], "grpo": {"lr": 1.0e-5,
                                                                                                      "beta": 0.0}}}
    (tmp_path / "a.yaml").write_text("extends: b\n")
    with pytest.raises(SemrlError, match=r"extends: b -> a -> b is a cycle"):
        read_overlay(tmp_path / "b.yaml")


def test_vllm_is_looked_for_in_the_training_steps_interpreter(in_repo, tmp_path):
    """flow.step_python names the environment with the vllm extra: `semrl check` looks for the package there."""
    import sys

    from semrl.ops.check import step_vllm_problems

    cfg = unprepared(load_config("params.yaml"), tmp_path)
    cfg.train.grpo.vllm = "server"
    cfg.flow.step_python = Path(sys.executable)  # this environment: no vllm
    assert any(p.startswith(f"train.grpo.vllm: server: flow.step_python {sys.executable} has no vllm package")
               for p in step_vllm_problems(cfg))
    fake = tmp_path / "bin" / "python"  # an interpreter that finds every module
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    cfg.flow.step_python = fake
    assert not [p for p in step_vllm_problems(cfg) if "vllm package" in p or "not installed" in p]
    cfg.flow.step_python = tmp_path / "missing" / "python"
    assert any("cannot run it" in p for p in step_vllm_problems(cfg))
