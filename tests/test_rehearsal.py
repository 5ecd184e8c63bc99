"""The rehearsal profile (configs/rehearsal.yaml) end to end: the paper profile's code paths on random tiny
Qwen3s shaped like the real one — a base reached by name, bf16 weights with fp32 LoRA adapters (r 64, seven
projections), gradient checkpointing, Qwen3's chat template and eos ids, the paper's batch shapes, three reward
ablations, a local judge, CMRC by generation from 2,048-token contexts — through `dvc repro`, the training steps
in an interpreter of their own (flow.step_python), and one training step killed and resumed. CI's rehearsal
tier (`make test TIERS=rehearsal` alone)."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from conftest import child_env, copy_project, mlflow_runs, read_jsonl, run

pytestmark = pytest.mark.rehearsal

THINK = "<think>"


def dtypes(path: Path) -> set[str]:
    with safe_open(str(path), framework="pt") as f:
        return {str(f.get_slice(k).get_dtype()) for k in f.keys()}


@pytest.fixture(scope="module")
def rehearsed(tmp_path_factory, prepared_project, mirror):
    from semrl.core.config import apply_overlay

    repo = copy_project(prepared_project, tmp_path_factory.mktemp("rehearsal") / "repo")
    env = {"SEMRL_DATA_MIRROR": str(mirror)}
    run([sys.executable, "-m", "semrl.models.rehearsal"], repo, env)  # its tokenizer learns from data/prepared
    apply_overlay(repo / "params.yaml", repo / "configs" / "rehearsal.yaml")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["flow"]["step_python"] = sys.executable  # the vLLM set-up's path: steps in another interpreter
    (repo / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    start = time.time()
    proc = run(["dvc", "repro"], repo, env)
    return repo, proc, time.time() - start


def test_every_stage_runs_on_the_paper_paths(rehearsed):
    repo, proc, seconds = rehearsed
    print(f"rehearsal: dvc repro in {seconds:.0f} s")
    ran = [line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage '")]
    assert ran == ["prepare", "base", "embedder", "train@mt", "evaluate@mt", "transfer", "report"], ran
    status = run(["dvc", "status"], repo).stdout
    assert "up to date" in status, status
    base = json.loads((repo / "models" / "base" / "reference.json").read_text()) if (
        repo / "models" / "base" / "reference.json").is_file() else None
    assert base is None or base["model"] == "models/rehearsal/base"


def test_weights_bf16_adapters_fp32_and_the_real_vocabulary(rehearsed):
    from transformers import AutoConfig

    repo = rehearsed[0]
    for method in ("coldstart", "sft", "grpo", "grpo_bleu_language", "grpo_bleu_semantic_language",
                   "grpo_bleu_semantic"):
        out = repo / "models" / "mt" / ("grpo" if method.startswith("grpo") else method) / (
            "seed0" if not method.startswith("grpo_") else f"{method}/seed0")
        if not out.is_dir():  # ablations: models/mt/grpo/<ablation>/seed0 or models/mt/grpo/seed0-<ablation>
            out = next(p for p in (repo / "models" / "mt").rglob("summary.json")
                       if json.loads(p.read_text())["method"] == method).parent
        summary = json.loads((out / "summary.json").read_text())
        assert summary["method"] == method and summary["steps"] == 2
        assert dtypes(out / "adapter" / "adapter_model.safetensors") == {"F32"}, method  # LoRA in fp32
        assert dtypes(next((out / "model").glob("*.safetensors"))) == {"BF16"}, method  # merged weights in bf16
        config = AutoConfig.from_pretrained(out / "model")
        assert (config.vocab_size, config.tie_word_embeddings) == (151_936, True)
        adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
        assert adapter["r"] == 64 and set(adapter["target_modules"]) == {
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
        # the paper's global batch (8 x 4 accumulation; GRPO 4 prompts x 8 completions) on one process
        assert summary["global_batch"] == (32 if method in ("coldstart", "sft") else 32)


def test_gradient_checkpointing_takes_trls_passes_and_says_so(rehearsed):
    """With gradient checkpointing the shared-prefix policy pass steps aside (semrl.training.shared_prefix):
    which passes took the shared prefix is in the GRPO step's log and MLflow params."""
    repo = rehearsed[0]
    runs = {r.info.run_name: r for r in mlflow_runs(repo).values()}
    grpo = runs["mt-grpo-s0"]
    assert grpo.data.params.get("gradient_checkpointing") in ("True", "true"), grpo.data.params
    passes = json.loads(grpo.data.params["shared_prefix_passes"])
    assert passes == {"generation": True, "reference": True, "policy": False}, passes


def test_no_think_block_in_any_output_and_the_judge_and_cmrc_ran(rehearsed):
    repo = rehearsed[0]
    outputs = read_jsonl(repo / "reports" / "eval" / "mt_outputs.jsonl")
    assert outputs and not any(THINK in json.dumps(row, ensure_ascii=False) for row in outputs)
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    text = json.dumps(metrics)
    assert "cmrc" in text and "judge" in text


def test_a_killed_training_step_resumes(rehearsed, tmp_path):
    """SIGKILL after the first checkpoint of a GRPO step on the paper's paths (bf16, LoRA, checkpointing); the
    rerun resumes from it and finishes."""
    repo = rehearsed[0]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"].update(out_dir=str(tmp_path / "models"), checkpoint_dir=str(tmp_path / "ckpt"))
    params["train"]["grpo"]["max_steps"] = 3
    import shutil

    shutil.copytree(repo / "models" / "mt" / "coldstart", tmp_path / "models" / "mt" / "coldstart")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, allow_unicode=True))
    cmd = [sys.executable, "-m", "semrl.cli", "train", "--task", "mt", "--method", "grpo", "--seed", "0",
           "--params", str(path)]
    proc = subprocess.Popen(cmd, cwd=repo, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while not list((tmp_path / "ckpt").rglob("checkpoint-1/trainer_state.json")) and proc.poll() is None:
        assert time.time() < deadline, "no checkpoint-1 within 300 s"
        time.sleep(0.5)
    time.sleep(1)
    import os

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    out = run(cmd, repo)
    summary = json.loads((tmp_path / "models" / "mt" / "grpo" / "seed0" / "summary.json").read_text())
    assert summary["resumed_from_step"] >= 1 and summary["steps"] == 3, out.stdout[-2000:]
