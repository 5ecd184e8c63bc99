"""Training learns, and these tests would see it if it did not: SFT's loss falls by a stated margin; GRPO's
mean reward rises on a reward whose optimum is known (the share of one target syllable in the completion, 1.0
at best); the same GRPO run with its rewards shuffled across the batch (the noise floor) or its advantages
zeroed does not rise. Built by the project's own trainer builder (`make_trainer`: TRL's SFTTrainer, our
shared-prefix GRPO trainer, rewards from the registry by dotted path) on a two-layer Qwen3 made here from
scratch with its own tokenizer: no corpus, no subprocess — the unit tier."""
import os
import random

import numpy as np
import pytest
import torch

from semrl.core.config import Config
from semrl.core.methods import get_method
from semrl.core.tasks import get_task
from semrl.core.text import bo_syllables
from semrl.models.base import qwen3_config
from semrl.models.tokenizer import train_tokenizer
from semrl.training.shared_prefix import SharedPrefixGRPOTrainer
from semrl.training.trainers import make_trainer

SYLLABLES = ["ཀ་", "ཁ་", "ག་", "ང་", "ཅ་", "ཆ་", "ཇ་", "ཉ་"]
TARGET = SYLLABLES[0]
SFT_STEPS, GRPO_STEPS, WINDOW = 40, 24, 6  # GRPO: mean reward of the first and the last WINDOW steps
# Stated margins, measured on a 2-core AMD EPYC: SFT's loss 5.22 -> 1.73 (mean of the first and last three
# steps); GRPO's mean reward 0.197 -> 0.665; shuffled rewards (grpo_noise_floor) 0.058 -> 0.078 (a random walk:
# 24 steps of lr 2e-3 on noise); zeroed advantages 0.127 -> 0.123.
SFT_LOSS_RATIO = 0.5  # the last three steps' loss at most half the first three's
GRPO_RISE = 0.3  # the real reward: last window's mean at least this much above the first window's
FLOOR_RISE = 0.15  # the noise floor and the zeroed advantage: no more than this


def toy_items(n: int, seed: int) -> list[dict]:
    """A copy task over eight Tibetan syllables: the input's syllables are the reference."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        text = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(3, 6)))
        rows.append({"id": f"toy-{i}", "prompt": f"抄写：{text}", "input": text, "reference": text, "source": "toy"})
    return rows


def target_share(prompts, completions, **columns):
    """Share of the completion's syllables that are TARGET (0 for an empty completion): optimum 1.0."""
    out = []
    for c in completions:
        text = c[-1]["content"] if isinstance(c, list) else c
        syllables = bo_syllables(text)
        out.append(sum(s == TARGET.rstrip("་") for s in syllables) / len(syllables) if syllables else 0.0)
    return out


def toy_config(tmp_path, reward: str, base, gate: dict | None = None) -> Config:
    cfg = Config.model_validate({
        "base": {"out_dir": str(base)},
        "prepare": {"out_dir": str(tmp_path / "prepared")},  # the gate's dev rows (toy_split)
        "eval": {"max_new_tokens": 8, "batch_size": 16},
        "train": {"tasks": ["mt"], "seeds": [0], "match_budgets": False, "max_input_tokens": 16,
                  "max_target_tokens": 8, "logging_steps": 1, "save_steps": 10_000, "torch_threads": 1,
                  "checkpoint_dir": str(tmp_path / "ckpt"), "out_dir": str(tmp_path / "models"),
                  "coldstart": {"samples": 320, "epochs": 1, "max_steps": SFT_STEPS, "batch_size": 8, "lr": 3e-3,
                                "warmup": 0, "scheduler": "constant", "gate": gate or {"enabled": False}},
                  "grpo": {"max_steps": GRPO_STEPS, "lr": 2e-3, "num_generations": 8, "prompts_per_step": 4,
                           "temperature": 1.0, "top_p": 1.0},
                  "trajectory": {"every": 0}},
        "rewards": {"tau": 0.0, "components": [{"name": f"test_learning.{reward}", "weight": 1.0}],
                    "ablations": {"noise_floor": {"enabled": True, "shuffle": True}}},  # grpo_noise_floor
    })
    cfg.tasks["mt"].prompt, cfg.tasks["mt"].primary_metric = "抄写：{input}", "chrf"  # as toy_items prompt
    return cfg


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """(tokenizer, path of a random-weight two-layer Qwen3 with that tokenizer)."""
    from semrl.core.config import ArchConfig

    torch.manual_seed(0)
    tok = train_tokenizer([row["reference"] for row in toy_items(400, seed=1)] + ["抄写："] * 20, vocab_size=300,
                          min_frequency=1)
    arch = ArchConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=32, max_position=128)
    from transformers import AutoModelForCausalLM

    config = qwen3_config(arch, len(tok), bos_token_id=None, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)
    path = tmp_path_factory.mktemp("toy") / "random"
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tok.save_pretrained(path)
    return tok, path


def train(tmp_path, tok, init, method_name: str, reward: str = "target_share", **config):
    """One training run in an MLflow run of its own, in tmp_path's store (the trainer's metrics callback logs
    to the active run, as in a pipeline step; without one MLflow would open a run in the working directory and
    leave it active for the next test of this process)."""
    import mlflow

    torch.manual_seed(0)
    cfg = toy_config(tmp_path, reward, init, **config)
    method, task = get_method(cfg, method_name), get_task(cfg, "mt")
    items = toy_items(320 if method.trainer == "sft" else 96, seed=2)
    trainer = make_trainer(cfg, task, method, 0, items, init, tmp_path / "ckpt", tok, tau=0.0)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.create_run(client.create_experiment("toy", artifact_location=str(tmp_path / "mlartifacts")))
    mlflow.set_tracking_uri(client.tracking_uri)
    try:
        with mlflow.start_run(run_id=run.info.run_id):
            trainer.train()
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)  # set_tracking_uri exports it: later children must not see it
    assert len(client.get_metric_history(run.info.run_id, "loss")) == trainer.state.global_step  # logged per step
    return trainer


@pytest.fixture(scope="module")
def cold_start(toy, tmp_path_factory):
    """The toy cold start: SFT on the copy task from random weights (its log history, its saved model)."""
    tok, random_init = toy
    tmp = tmp_path_factory.mktemp("cold")
    trainer = train(tmp, tok, random_init, "coldstart")
    trainer.save_model(str(tmp / "model"))
    return trainer.state.log_history, tmp / "model"


def test_sft_loss_falls_by_half_within_its_steps(cold_start):
    history, _ = cold_start
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == SFT_STEPS
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    print(f"SFT loss {first:.3f} -> {last:.3f} over {SFT_STEPS} steps")
    assert last < SFT_LOSS_RATIO * first, (first, last)


def rewards_of(history) -> list[float]:
    rewards = [h["reward"] for h in history if "reward" in h]
    assert len(rewards) == GRPO_STEPS
    return rewards


def rise(history) -> tuple[float, float]:
    rewards = rewards_of(history)
    return float(np.mean(rewards[:WINDOW])), float(np.mean(rewards[-WINDOW:]))


@pytest.fixture(scope="module")
def grpo_rise(toy, cold_start, tmp_path_factory):
    """The real arm's (first window, last window) mean reward, shared by the tests that compare with it."""
    history = train(tmp_path_factory.mktemp("grpo"), toy[0], cold_start[1], "grpo").state.log_history
    first, last = rise(history)
    print(f"GRPO mean reward {first:.3f} -> {last:.3f} over {GRPO_STEPS} steps")
    return first, last, rewards_of(history)[0]


def test_grpo_reward_rises_toward_a_known_optimum(grpo_rise):
    first, last, _ = grpo_rise
    assert 0.02 < first < 0.5, "the cold start must sample the target sometimes, and not already mostly"
    assert last - first >= GRPO_RISE, (first, last)


def test_grpo_with_rewards_shuffled_across_the_batch_does_not_rise(toy, cold_start, tmp_path, grpo_rise):
    """The noise-floor branch (rewards.ablations.noise_floor, the experiment's N arms): every batch's rewards
    permuted across its completions."""
    history = train(tmp_path, toy[0], cold_start[1], "grpo_noise_floor").state.log_history
    first, last = rise(history)
    print(f"noise floor: mean reward {first:.3f} -> {last:.3f}")
    assert last - first <= FLOOR_RISE, (first, last)
    # The first step draws the same completions from the same cold start; a permutation keeps the batch's mean.
    assert rewards_of(history)[0] == pytest.approx(grpo_rise[2], abs=1e-6)


def test_grpo_with_zeroed_advantages_does_not_rise(toy, cold_start, tmp_path, monkeypatch):
    """The advantage is what carries the reward into the gradient: with it zeroed (a broken advantage), the
    run must stay at the floor — else something other than the reward moves the policy."""
    score = SharedPrefixGRPOTrainer._generate_and_score_completions

    def zeroed(self, inputs):
        out = score(self, inputs)
        out["advantages"] = torch.zeros_like(out["advantages"])
        return out

    monkeypatch.setattr(SharedPrefixGRPOTrainer, "_generate_and_score_completions", zeroed)
    first, last = rise(train(tmp_path, toy[0], cold_start[1], "grpo").state.log_history)
    print(f"zeroed advantages: mean reward {first:.3f} -> {last:.3f}")
    assert last - first <= FLOOR_RISE, (first, last)


def toy_split(tmp_path, synthetic: bool) -> None:
    """The toy task's dev split where the gate reads it (prepare.out_dir/mt/dev.jsonl)."""
    import json

    rows = toy_items(16, seed=3)
    path = tmp_path / "prepared" / "mt" / "dev.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": r["id"], "zh": r["input"], "bo": r["reference"], "source": "toy",
                                        "synthetic": synthetic}, ensure_ascii=False) + "\n" for r in rows))


GATE = {"enabled": True, "every": 10, "min_steps": 0, "dev_samples": 16}  # within the cold start's SFT_STEPS (40)


def gated(tmp_path, toy, synthetic: bool, min_distinct: float):
    from semrl.training.gate import CHECKS_FILE, gate_summary, read_checks

    tok, random_init = toy
    toy_split(tmp_path, synthetic)
    trainer = train(tmp_path, tok, random_init, "coldstart", gate={**GATE, "min_distinct": min_distinct})
    cfg = toy_config(tmp_path, "target_share", random_init, gate={**GATE, "min_distinct": min_distinct})
    return trainer, cfg, gate_summary(cfg, read_checks(tmp_path / "ckpt" / CHECKS_FILE), trainer.state.global_step,
                                      trainer.state.max_steps)


def test_the_gate_stops_the_cold_start_at_the_first_check_that_passes(toy, tmp_path):
    """A gate any model passes (no distinct outputs asked, no synthetic source) stops training at its first
    check, before the cap; the check's numbers are those of the outputs it recorded."""
    from semrl.evaluation.metrics import output_stats

    trainer, _, gate = gated(tmp_path, toy, synthetic=False, min_distinct=0.0)
    assert trainer.state.global_step == 10 and gate["passed"] and gate["passed_at_step"] == 10
    [check] = gate["checks"]
    toy_source = check["by_source"]["toy"]
    assert toy_source["distinct_rate"] == round(output_stats(check["outputs"], "bo")["distinct_rate"], 4)
    assert toy_source["reads_input"] and "beats_copy" not in toy_source


def test_a_cold_start_that_fails_its_gate_runs_to_the_cap_and_no_branch_starts_from_it(toy, tmp_path):
    """On a copy task the input copied is the reference: no model beats copy_input on a synthetic source, so
    the gate never passes; every check is recorded, training runs to the cap, and a branch refuses to start."""
    import json

    from semrl import SemrlError
    from semrl.core.artifacts import GATE_FILE
    from semrl.training.gate import require_passed

    trainer, cfg, gate = gated(tmp_path, toy, synthetic=True, min_distinct=0.8)
    assert trainer.state.global_step == 40 and not gate["passed"]
    assert [c["step"] for c in gate["checks"]] == [10, 20, 30, 40]
    assert all(c["by_source"]["toy"]["copy_input_chrf"] == 1.0 and not c["by_source"]["toy"]["beats_copy"]
               for c in gate["checks"])
    model = tmp_path / "models" / "mt" / "coldstart" / "seed0" / "model"
    model.mkdir(parents=True)
    (model.parent / GATE_FILE).write_text(json.dumps(gate))
    with pytest.raises(SemrlError, match="precondition failed: the seed's cold start did not pass its gate in 40 steps"):
        require_passed(cfg, model, "mt", "grpo", 0)
    cfg.train.coldstart.gate.require = False
    require_passed(cfg, model, "mt", "grpo", 0)  # asked not to require it: the branch starts
