"""The report's comparisons come from the Method and Task records: a method added there adds its rows."""
import dataclasses

from semrl.core.config import Config
from semrl.core.methods import get_method, methods
from semrl.core.tasks import get_task
from semrl.evaluation import report


def plan(cfg, task="mt", sources=("cldr_dates", "lotsawa")):
    return report.comparison_plan(cfg, get_task(cfg, task), list(sources))


def test_the_default_plan_compares_each_branch_with_its_cold_start_each_other_and_its_noise_floor():
    cfg = Config()
    wanted = plan(cfg)
    for src in (None, "cldr_dates", "lotsawa"):
        assert {("sft", "coldstart", "chrf", src), ("grpo", "coldstart", "chrf", src), ("sft", "grpo", "chrf", src),
                ("grpo", "grpo_noise_floor", "chrf", src)} <= set(wanted)
    assert ("sft", "grpo", "lm_nll_increase_vs_coldstart", None) in wanted
    assert ("coldstart", "base", "skill_acc", None) in wanted and ("grpo", "copy_lead", "chrf", None) in wanted
    assert len(wanted) == len(set(wanted))
    one_source = plan(cfg, "headline", ["nanhai_news"])  # one source: no per-source rows
    assert not [w for w in one_source if w[3] is not None] and ("sft", "coldstart", "rouge_l", None) in one_source


def test_an_enabled_reward_ablation_adds_its_row_and_no_noise_floor_removes_its_rows():
    cfg = Config.model_validate({"rewards": {"ablations": {"bleu_language": {"enabled": True},
                                                           "noise_floor": {"enabled": False}}}})
    wanted = plan(cfg)
    assert ("grpo_bleu_language", "grpo", "chrf", None) in wanted
    assert not [w for w in wanted if "grpo_noise_floor" in w[:2]]


def test_a_new_main_branch_is_compared_with_its_start_and_every_other_branch(monkeypatch):
    cfg = Config()
    known = methods(cfg)
    dpo = dataclasses.replace(get_method(cfg, "sft"), name="dpo", label="DPO")
    monkeypatch.setattr(report, "main_branches", lambda c: [known["sft"], known["grpo"], dpo])
    wanted = plan(cfg)
    assert {("dpo", "coldstart", "chrf", None), ("sft", "dpo", "chrf", None), ("grpo", "dpo", "chrf", None),
            ("grpo", "dpo", "lm_nll_increase_vs_coldstart", None), ("dpo", "coldstart", "skill_acc", None)} <= set(wanted)
