"""The typed config: params.yaml mirrors the schema's defaults, unknown keys and bad values are reported all
at once with file, line, dotted path and the nearest valid name; task and method records resolve from it."""
import pytest
import yaml

from semrl import SemrlError
from semrl.core.config import Config, load_config, read_yaml
from semrl.core.methods import branches, get_method, methods, output_dir
from semrl.core.tasks import get_task, tasks
from semrl.evaluation.metrics import TASK_METRICS

from conftest import REPO


def _keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out.add(prefix + str(k))
        if isinstance(v, dict) and k not in ("qwen3_config", "ablations", "tasks"):
            out |= _keys(v, f"{prefix}{k}.")
    return out


def test_params_yaml_shows_every_default_and_equals_the_schema():
    raw = read_yaml(REPO / "params.yaml")
    assert Config.model_validate(raw) == Config()  # no value in params.yaml differs from its default ...
    missing = _keys(Config().dump()) - _keys(raw)
    assert not missing, f"knobs with a default that params.yaml does not show: {sorted(missing)}"  # ... or hides


def test_every_problem_at_once_with_line_path_and_nearest_name(tmp_path):
    text = (REPO / "params.yaml").read_text(encoding="utf-8")
    text = text.replace("    num_generations: 4", "    num_generatoins: 4", 1)
    text = text.replace("  seeds: [0, 1, 2]", "  seeds: []", 1)
    text = text.replace("    beta: 0.04", "    beta: -1", 1)
    text = text.replace("  tasks: [mt, headline]", "  tasks: [mt, summarise]", 1)
    (tmp_path / "params.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(SemrlError) as err:
        load_config(tmp_path / "params.yaml")
    lines = str(err.value).splitlines()
    def line_of(prefix: str) -> int:
        return next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith(prefix))

    assert f"{tmp_path / 'params.yaml'}:{line_of('    num_generatoins: 4')}: train.grpo.num_generatoins: unknown " \
           "key; did you mean 'num_generations'?" in lines
    assert any(f":{line_of('  seeds: []')}: train.seeds: List should have at least 1 item" in x for x in lines)
    assert any(f":{line_of('    beta: -1')}: train.grpo.beta: Input should be greater than or equal to 0" in x
               for x in lines)
    assert lines[-1].startswith("3 problem(s)")  # the task check runs once the fields are valid
    text = text.replace("    num_generatoins: 4", "    num_generations: 4").replace("  seeds: []", "  seeds: [0, 1, 2]")
    (tmp_path / "params.yaml").write_text(text.replace("    beta: -1", "    beta: 0.04"), encoding="utf-8")
    with pytest.raises(SemrlError, match=r"train.tasks: unknown task 'summarise' \(defined in `tasks`: mt, "
                                         r"mt_bo2zh, headline\)"):
        load_config(tmp_path / "params.yaml")


def test_matched_budgets_are_enforced(tmp_path):
    raw = read_yaml(REPO / "params.yaml")
    assert raw["train"]["match_budgets"] and Config().train.sft.max_steps == Config().train.grpo.max_steps > 0
    raw["train"]["grpo"].update(max_steps=60, prompts_per_step=4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    with pytest.raises(SemrlError) as err:
        load_config(tmp_path / "params.yaml")
    assert "train.sft.max_steps (80) and train.grpo.max_steps (60) must be the same" in str(err.value)
    assert "train.sft.batch_size x grad_accum (8 x 1) must equal train.grpo.prompts_per_step x grad_accum (4 x 1)" \
        in str(err.value)
    raw["train"]["match_budgets"] = False  # the paper's recipe: budgets differ on purpose
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    assert load_config(tmp_path / "params.yaml").train.grpo.max_steps == 60


def test_a_task_record_is_validated(tmp_path):
    raw = read_yaml(REPO / "params.yaml")
    raw["tasks"]["mt"].update(prompt="翻译：", primary_metric="rouge_l", script="en")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    with pytest.raises(SemrlError) as err:
        load_config(tmp_path / "params.yaml")
    text = str(err.value)
    assert "tasks.mt.script: Input should be 'bo' or 'zh'" in text
    assert "tasks.mt.prompt: the prompt must contain {input}" in text


def test_task_records_and_metric_registry_agree():
    cfg = Config()
    assert set(tasks(cfg)) == {"mt", "mt_bo2zh", "headline"}
    for task in tasks(cfg).values():
        assert set(task.metrics) <= set(TASK_METRICS) and task.primary_metric in task.metrics
    bo2zh = get_task(cfg, "mt_bo2zh")
    assert (bo2zh.input, bo2zh.output, bo2zh.script, bo2zh.data_dir.name) == ("bo", "zh", "zh", "mt")
    with pytest.raises(SemrlError, match="unknown task 'xx'"):
        get_task(cfg, "xx")


def test_method_records_resolve_once_from_the_config():
    cfg = Config()
    assert list(methods(cfg)) == ["coldstart", "sft", "grpo", "grpo_noise_floor", "transfer_from_sft",
                                  "transfer_from_grpo"]
    assert [m.name for m in branches(cfg)] == ["sft", "grpo", "grpo_noise_floor"]
    floor = get_method(cfg, "grpo_noise_floor")  # the same reward, shuffled across the batch
    assert floor.shuffled and floor.rewards == get_method(cfg, "grpo").rewards
    grpo = get_method(cfg, "grpo")
    assert (grpo.trainer, grpo.init, grpo.data, grpo.hparams) == ("grpo", "coldstart", "remaining", cfg.train.grpo)
    assert [(c.name, c.weight) for c in grpo.rewards] == [("semantic", 1.5), ("language", 1.0)]
    cfg.rewards.ablations["bleu_semantic"].enabled = True
    ablation = get_method(cfg, "grpo_bleu_semantic")
    assert ablation.ablation and ablation.is_branch and [c.name for c in ablation.rewards] == ["bleu", "semantic"]
    assert [m.name for m in branches(cfg)] == ["sft", "grpo", "grpo_bleu_semantic", "grpo_noise_floor"]
    transfer = get_method(cfg, "transfer_from_grpo")
    assert (transfer.init, transfer.init_task, transfer.data, transfer.hparams) == \
        ("grpo", "mt", "fewshot", cfg.transfer)
    assert output_dir(cfg, "headline", "transfer_from_grpo", 1).as_posix() == \
        "models/transfer/headline/transfer_from_grpo/seed1"
    assert output_dir(cfg, "mt", "sft", 0).as_posix() == "models/mt/sft/seed0"
    with pytest.raises(SemrlError, match="unknown method 'grpo_bleu_language'"):  # not enabled
        get_method(cfg, "grpo_bleu_language")


@pytest.mark.parametrize("profile", ["paper", "paper-1gpu-day", "smoke"])
def test_a_profile_goes_in_through_dvcs_set_param_and_keeps_the_comments(tmp_path, profile):
    """`semrl profile` (and `make run PROFILE=…`, as `dvc exp run -S`) edits params.yaml in place through DVC's
    own -S editor: the result is the profile's config and every comment outside a replaced value stays."""
    import re

    from dvc.utils.hydra import apply_overrides

    from semrl.core.config import apply_overlay, overlay_overrides

    comments = lambda text: [m.strip() for m in re.findall(r"#.*", text)]
    original = (REPO / "params.yaml").read_text(encoding="utf-8")
    path = tmp_path / "params.yaml"
    path.write_text(original, encoding="utf-8")
    apply_overlay(path, REPO / "configs" / f"{profile}.yaml")
    same = lambda a, b: a.model_dump(exclude={"profile"}) == b.model_dump(exclude={"profile"})
    assert same(load_config(path), load_config(REPO / "params.yaml", profile))  # smoke.yaml names no profile
    kept = comments(path.read_text(encoding="utf-8"))
    lost = [c for c in comments(original) if c not in kept]
    assert len(lost) <= 1, lost  # a list the overlay replaces (paper: rewards.components) loses its own
    # the same overrides as `dvc exp run -S` gets them (semrl profile --run), applied by DVC's function
    again = tmp_path / "again.yaml"
    again.write_text(original, encoding="utf-8")
    apply_overrides(str(again), overlay_overrides(again, REPO / "configs" / f"{profile}.yaml"))
    assert load_config(again) == load_config(path)
    # DVC writes YAML 1.2: `vllm: off` comes back a string, as read_yaml reads it (YAML 1.1 would say false)
    assert read_yaml(again)["train"]["grpo"]["vllm"] == "off" and "vllm: off" in again.read_text(encoding="utf-8")
