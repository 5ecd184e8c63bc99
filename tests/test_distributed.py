"""SFT and GRPO with 2 processes on CPU (torchrun, gloo): both complete, rank 0 alone tracks and saves."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForCausalLM

from semrl import SemrlError

from conftest import child_env, mlflow_runs


@pytest.mark.parametrize("method", ["sft", "grpo"])
def test_two_process_data_parallel_training(trained_repo, tmp_path, method):
    params = yaml.safe_load((trained_repo / "params.yaml").read_text())
    params["train"].update(out_dir=str(tmp_path / "models"), checkpoint_dir=str(tmp_path / "ckpt"))
    params["train"][method]["max_steps"] = 4
    params["train"]["match_budgets"] = False  # one branch alone, for another step count
    shutil.copytree(trained_repo / "models" / "mt" / "coldstart", tmp_path / "models" / "mt" / "coldstart")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    before = {r.info.run_id for r in mlflow_runs(trained_repo).values()}
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "semrl.cli", "train",
                           "--task", "mt", "--method", method, "--seed", "0", "--params", str(path)],
                          cwd=trained_repo, env=child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "models" / "mt" / method / "seed0"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    # the global batch is the configured one (one process's batch x grad_accum), split over the two processes
    hp = params["train"][method]
    configured = hp["batch_size"] if method == "sft" else hp["num_generations"] * hp["prompts_per_step"]
    configured *= hp.get("grad_accum", 1)
    assert (summary["global_batch"], summary["per_device_batch"] * summary["grad_accum"]) == (configured, configured // 2)
    # Consistent results: both ranks took 4 steps and hold bit-identical trainable weights (gradients
    # were all-reduced; unsynchronised ranks on different data shards would diverge at step 1).
    rank1 = next(line for line in proc.stdout.splitlines() if line.startswith("train: rank 1"))
    assert "steps 4" in rank1 and f"trainable_sha256 {summary['trainable_sha256']}" in rank1
    model = AutoModelForCausalLM.from_pretrained(out / "model", use_safetensors=True)
    assert model.config.model_type == "qwen3" and (out / "adapter" / "adapter_model.safetensors").is_file()
    new = [r for r in mlflow_runs(trained_repo).values() if r.info.run_id not in before]
    assert [r.info.run_name for r in new] == [f"mt-{method}-s0"]  # one run, not one per rank
    assert new[0].info.status == "FINISHED" and new[0].data.params["world_size"] == "2"


def test_zero3_config_gathers_weights_for_saving():
    """save_outputs relies on Trainer.save_model receiving full 16-bit weights under ZeRO-3."""
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs/accelerate/zero3.yaml").read_text())
    assert config["distributed_type"] == "DEEPSPEED"
    assert config["deepspeed_config"]["zero_stage"] == 3 and config["deepspeed_config"]["zero3_save_16bit_model"]


@pytest.mark.parametrize("batch,accum,processes,expected", [
    (8, 1, 1, (8, 1)), (8, 4, 1, (8, 4)), (8, 4, 2, (8, 2)), (8, 1, 2, (4, 1)), (32, 1, 4, (8, 1)),
    (6, 2, 4, (3, 1)), (8, 3, 4, (6, 1)), (4, 4, 8, (2, 1))])
def test_the_global_batch_stays_as_configured_across_process_counts(batch, accum, processes, expected):
    from semrl.training.trainers import per_process

    device_batch, device_accum = per_process(batch, accum, processes)
    assert (device_batch, device_accum) == expected
    assert device_batch * device_accum * processes == batch * accum and device_batch <= batch


def test_a_global_batch_that_does_not_split_is_refused():
    from semrl.training.trainers import per_process

    with pytest.raises(SemrlError, match="6 x 1 = 6 does not split over 4 processes"):
        per_process(6, 1, 4)
