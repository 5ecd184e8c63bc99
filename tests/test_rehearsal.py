"""The rehearsal profile (configs/rehearsal.yaml) end to end: the paper profile's code paths on random tiny
Qwen3s shaped like the real one — a base reached by name, bf16 weights with fp32 LoRA adapters (r 64, seven
projections), gradient checkpointing, Qwen3's chat template and eos ids, the paper's batch shapes, three reward
ablations, a local judge, CMRC by generation from 2,048-token contexts — through `dvc repro`, the training steps
in an interpreter of their own (flow.step_python), and one training step killed and resumed. CI's rehearsal
tier (`make test TIERS=rehearsal` alone)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from semrl.core.config import load_config, read_yaml
from semrl.core.methods import output_dir
from semrl.core.env import bf16_native

from conftest import child_env, copy_project, mlflow_runs, read_jsonl, run

# ~7 min alone on 2 cores; the first test also waits for the fixture's whole `dvc repro`
pytestmark = [pytest.mark.rehearsal, pytest.mark.timeout(1800)]

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
    params = read_yaml(repo / "params.yaml")
    params["flow"]["step_python"] = sys.executable  # the vLLM set-up's path: steps in another interpreter
    (repo / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    start = time.time()
    proc = subprocess.run(["dvc", "repro"], cwd=repo, env=child_env(env), capture_output=True, text=True, timeout=1700)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return repo, proc, time.time() - start


def test_every_stage_runs_on_the_paper_paths(rehearsed):
    repo, proc, seconds = rehearsed
    print(f"rehearsal: dvc repro in {seconds:.0f} s")
    ran = [line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage '")]
    assert ran == ["prepare", "base", "embedder", "train@mt", "evaluate@mt", "transfer", "report"], ran
    assert "Data and pipelines are up to date" in run(["dvc", "status"], repo).stdout
    reference = json.loads(next((repo / "models" / "base").glob("*.json")).read_text())
    assert reference["model"] == "models/rehearsal/base"  # the named-base path: a reference, not a copy


BRANCHES = ("sft", "grpo", "grpo_bleu_language", "grpo_bleu_semantic_language", "grpo_bleu_semantic")


def test_weights_follow_train_bf16_adapters_fp32_and_the_real_vocabulary(rehearsed):
    from transformers import AutoConfig

    repo = rehearsed[0]
    cfg = load_config(repo / "params.yaml")
    assert read_yaml(repo / "params.yaml")["train"]["bf16"] == "auto" and cfg.train.bf16 == bf16_native()
    weights = "BF16" if cfg.train.bf16 else "F32"  # emulated bf16 is ~10x slower: float32 there (adapters alike)
    print(f"rehearsal: merged weights {weights} (native bf16 here: {bf16_native()})")
    for method in ("coldstart", *BRANCHES):
        out = repo / output_dir(cfg, "mt", method, 0)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["method"] == method and summary["steps"] == (2 if method == "coldstart" else 1)
        assert dtypes(out / "adapter" / "adapter_model.safetensors") == {"F32"}, method  # LoRA in fp32
        assert dtypes(out / "model" / "model.safetensors") == {weights}, method
        config = AutoConfig.from_pretrained(out / "model")
        assert (config.vocab_size, config.tie_word_embeddings) == (151_936, True)
        adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
        assert adapter["r"] == 64 and set(adapter["target_modules"]) == {
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
        # the configured global batch on one process: 2 x 4 accumulation (SFT), 2 prompts x 8 completions (GRPO)
        assert (summary["global_batch"], summary["grad_accum"]) == ((8, 4) if "grpo" not in method else (16, 1))
    assert dtypes(repo / "models" / "rehearsal" / "base" / "model.safetensors") == {"BF16"}  # as the hub's


def test_gradient_checkpointing_leaves_the_policy_pass_to_trl_and_the_rest_shared(rehearsed):
    """Which GRPO passes took the shared prefix (semrl.training.shared_prefix), per step in MLflow: under
    gradient checkpointing the pass with gradients is TRL's, the rollouts and the reference pass stay shared."""
    runs = {r.info.run_name: r for r in mlflow_runs(rehearsed[0]).values()}
    for method in BRANCHES[1:]:
        metrics = runs[f"mt-{method}-s0"].data.metrics
        assert {k: metrics[f"shared_prefix/{k}"] for k in ("generation", "reference", "policy")} == {
            "generation": 1.0, "reference": 1.0, "policy": 0.0}, method


def test_no_think_block_in_any_output(rehearsed):
    """Qwen3's template with thinking off everywhere: a random model emits anything, but never an opened
    `<think>` the prompt gave it — and every kept output, CMRC's and the judge's inputs included, is free of it."""
    repo = rehearsed[0]
    kept = [p for p in (repo / "reports" / "eval").rglob("*.jsonl")]
    assert kept
    for path in kept:
        for row in read_jsonl(path):
            assert THINK not in json.dumps(row, ensure_ascii=False), (path.name, row)


def test_cmrc_by_generation_from_long_contexts_and_the_local_judge(rehearsed):
    repo = rehearsed[0]
    cfg = load_config(repo / "params.yaml")
    assert (cfg.eval.cmrc_generate, cfg.eval.cmrc_max_context_tokens, cfg.eval.judge.kind) == (True, 2048, "local")
    scores = json.loads((repo / "reports" / "eval" / "mt.json").read_text())
    assert scores["cmrc_questions"] == 8
    assert scores["decoding"]["do_sample"] is False  # greedy, over Qwen3's sampling generation config
    models = [r for r in scores["results"] if not r["method"].startswith("copy_")]  # not the copy baselines
    assert len(models) == 7 and all(r["cmrc_f1"] is not None for r in models)  # base, cold start, 5 branches
    judge = scores["preference"]
    assert (judge["judge"], judge["pairs"], judge["orders"]) == ("local LM models/rehearsal/judge", 4, 2)


def test_a_killed_training_step_resumes(rehearsed, tmp_path):
    """SIGKILL after the first checkpoint of a GRPO step on the paper's paths (LoRA on Qwen3's shapes, gradient
    checkpointing, bf16 where native); the rerun resumes from that checkpoint and finishes."""
    repo = rehearsed[0]
    params = read_yaml(repo / "params.yaml")
    params["train"].update(out_dir=str(tmp_path / "models"), checkpoint_dir=str(tmp_path / "ckpt"))
    params["train"]["grpo"]["max_steps"] = 3
    params["tracking"].update(uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "mlartifacts"))
    shutil.copytree(repo / "models" / "mt" / "coldstart", tmp_path / "models" / "mt" / "coldstart")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, allow_unicode=True))
    cmd = [sys.executable, "-m", "semrl.cli", "train", "--task", "mt", "--method", "grpo", "--seed", "0",
           "--params", str(path)]
    proc = subprocess.Popen(cmd, cwd=repo, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while not list((tmp_path / "ckpt").rglob("checkpoint-1/trainer_state.json")):
        assert proc.poll() is None and time.time() < deadline, "no checkpoint-1 before the step ended or 300 s"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "models" / "mt" / "grpo" / "seed0" / "summary.json").exists()  # killed mid-way
    out = run(cmd, repo)
    summary = json.loads((tmp_path / "models" / "mt" / "grpo" / "seed0" / "summary.json").read_text())
    assert summary["resumed_from_step"] >= 1 and summary["steps"] == 3, out.stdout[-2000:]
