"""A branch scored along training: every `train.trajectory.every` optimiser steps, the task's primary metric
on a fixed dev subset (greedy) and the LM tax probe (held-out general Chinese, plain text), so the report
can plot task gain against tax for strong SFT and GRPO and ask who pays less *at equal gain*. The points
also carry what the reward-hacking flags read: the mean training reward, the independent evaluation
embedder's similarity to the references, and the output length over the reference length. The dev
completions of every point go to the MLflow run as one table (trajectory_completions.json)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from semrl.core.artifacts import read_points
from semrl.core.config import Config
from semrl.core.tasks import Task, per_source

COMPLETIONS_TABLE = "trajectory_completions.json"  # MLflow table artifact: dev completions per point


def trajectory_callback(cfg: Config, task: Task, tokenizer, path: Path):
    """A TrainerCallback writing one JSON line per point to `path` (kept in the checkpoint folder, so a
    resumed run keeps its earlier points and never scores a step twice) and to the active MLflow run."""
    import mlflow
    from transformers import TrainerCallback

    from semrl.core.text import metric_tokens
    from semrl.evaluation.metrics import TASK_METRICS, item_scores, mean_nll, probe_texts, text_batches
    from semrl.models.embedder import Similarity, load_embedder
    from semrl.models.generation import generate, step_device

    tr, e = cfg.train.trajectory, cfg.eval
    rows = per_source(task.examples("dev", tokenizer, cfg.train.max_input_tokens), tr.dev_samples)
    prompts, refs = [x["prompt"] for x in rows], [x["reference"] for x in rows]
    texts = probe_texts(cfg, tr.probe_samples)[0]
    similarity = Similarity(load_embedder(cfg.embedder.eval.out_dir, step_device()))
    ref_len = np.mean([len(metric_tokens(r, task.script).split()) for r in refs]) if refs else 1.0
    metric = task.primary_metric

    class Trajectory(TrainerCallback):
        def __init__(self):
            self.done = {p["step"] for p in read_points(path)}

        def point(self, state, model) -> None:
            step = state.global_step
            if step in self.done:
                return
            # Every rank scores, rank 0 alone records: under ZeRO-3 a forward gathers each layer's shards
            # from every rank, so a forward on rank 0 alone would wait for ranks that never join.
            was_training = model.training
            outs = generate(model, tokenizer, prompts, e.max_new_tokens, batch_size=e.batch_size,
                            desc=f"trajectory@{step}")
            nll = mean_nll(model, text_batches(tokenizer, texts, e.lm_probe_max_tokens, e.batch_size))
            rewards = [h["reward"] for h in state.log_history if "reward" in h]
            p = {"step": step, metric: TASK_METRICS[metric](outs, refs, task.script),
                 "lm_nll": float(np.mean(nll)), "sim_eval": float(np.mean(similarity.similarity(outs, refs))),
                 "length_ratio": float(np.mean([len(metric_tokens(o, task.script).split()) for o in outs]) / ref_len),
                 "reward": float(rewards[-1]) if rewards else None}
            self.done.add(step)
            if not state.is_world_process_zero:
                if was_training:
                    model.train()
                return
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(p) + "\n")
            if mlflow.active_run() is not None:
                mlflow.log_metrics({f"trajectory/{k}": v for k, v in p.items() if k != "step" and v is not None},
                                   step=step)
                # The completions themselves, one table over training (MLflow appends each point's rows):
                # what the numbers above are made of, comparable across runs by step and item.
                mlflow.log_table({"step": [step] * len(rows), "id": [str(x.get("id", "")) for x in rows],
                                  "source": [x["source"] for x in rows], "input": [x["input"] for x in rows],
                                  "output": outs, "reference": refs,
                                  metric: [float(v) for v in item_scores(metric, outs, refs, task.script)]},
                                 artifact_file=COMPLETIONS_TABLE)
            if was_training:
                model.train()

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == 0:
                self.point(state, model)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % tr.every == 0 or state.global_step >= state.max_steps:
                self.point(state, model)

    path.parent.mkdir(parents=True, exist_ok=True)
    return Trajectory()
