"""The cold-start gate: the cold start trains until it reads its input, or until a step cap.

RL reweights what the policy already samples. A cold start that answers every input with one template (9 % of
its outputs distinct on MT test, round 3) gives GRPO nothing input-dependent to reinforce, and a branch that
learns nothing forgets nothing. So, with train.coldstart.gate.enabled, the cold start is checked every
`every` steps on fixed dev rows (greedy, as evaluation decodes): on each source whose references are distinct,
enough distinct outputs; on each synthetic source, its primary metric above both copy baselines. It stops at
the first check that passes, or at the end of its schedule (coldstart.max_steps or epochs: the cap). Every check goes to gate.json beside the model (and MLflow), and
a branch starts only from a cold start that passed (`require_passed`).
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from semrl import SemrlError
from semrl.core.artifacts import GATE_FILE
from semrl.core.config import Config
from semrl.core.tasks import Task, per_source

CHECKS_FILE = "gate_checks.jsonl"  # in the checkpoint folder: a resumed run keeps its earlier checks


def read_check(cfg: Config, task: Task, outputs: list[str], rows: list[dict], baselines: dict[str, list[str]]) -> dict:
    """One gate check of `outputs` on dev `rows`: per data source the distinct-output rate (and the references'),
    the primary metric and, on synthetic sources, the copy baselines' metric; `passed` when every source that is
    checked passes."""
    from semrl.evaluation.metrics import TASK_METRICS, output_stats

    g, metric = cfg.train.coldstart.gate, task.primary_metric
    by_source = defaultdict(list)
    for i, x in enumerate(rows):
        by_source[x["source"]].append(i)
    sources = {}
    for source, idx in sorted(by_source.items()):
        outs, refs = [outputs[i] for i in idx], [rows[i]["reference"] for i in idx]
        s = {"n": len(idx), "synthetic": bool(rows[idx[0]].get("synthetic")),
             "distinct_rate": round(output_stats(outs, task.script)["distinct_rate"], 4),
             "reference_distinct_rate": round(output_stats(refs, task.script)["distinct_rate"], 4),
             metric: round(TASK_METRICS[metric](outs, refs, task.script), 4)}
        checks = []
        if s["reference_distinct_rate"] >= g.min_distinct:  # references that repeat cannot ask for distinct outputs
            s["reads_input"] = s["distinct_rate"] >= g.min_distinct
            checks.append(s["reads_input"])
        if s["synthetic"]:
            for name, outs_b in baselines.items():
                s[f"{name}_{metric}"] = round(TASK_METRICS[metric]([outs_b[i] for i in idx], refs, task.script), 4)
            s["beats_copy"] = all(s[metric] > s[f"{name}_{metric}"] for name in baselines)
            checks.append(s["beats_copy"])
        s["passed"] = all(checks)
        sources[source] = s
    return {"passed": all(s["passed"] for s in sources.values()), "by_source": sources}


def gate_callback(cfg: Config, task: Task, tokenizer, train_refs: list[str], checks_path: Path):
    """A TrainerCallback: every gate.every steps (and at the cap) one gate check, appended to checks_path; the
    first check that passes stops training there."""
    import mlflow
    from transformers import TrainerCallback

    from semrl.evaluation.metrics import trivial_baselines
    from semrl.models.generation import generate

    g, e = cfg.train.coldstart.gate, cfg.eval
    rows = per_source(task.examples("dev", tokenizer, cfg.train.max_input_tokens), g.dev_samples)
    baselines = trivial_baselines(task.script, rows, train_refs)

    class Gate(TrainerCallback):
        # Every rank decodes and decides, rank 0 alone records: under ZeRO-3 a forward gathers each layer from
        # every rank (rank 0 decoding alone would wait for ranks that never join), and a stop decided on rank 0
        # alone would leave the others waiting in their next all-reduce. Greedy decoding on the same weights
        # gives every rank the same outputs, hence the same decision. The checks a resumed run already made are
        # read once, before this run writes any, so every rank knows the same ones.
        done: dict[int, dict] = {}

        def on_train_begin(self, args, state, control, **kwargs):
            self.done = {c["step"]: c for c in read_checks(checks_path)}

        def on_step_end(self, args, state, control, model=None, **kwargs):
            step = state.global_step
            if step % g.every and step < state.max_steps:
                return
            if step not in self.done:
                was_training = model.training
                outs = generate(model, tokenizer, [x["prompt"] for x in rows], e.max_new_tokens,
                                batch_size=e.batch_size, desc=f"gate@{step}")
                if was_training:
                    model.train()
                self.done[step] = {"step": step, **read_check(cfg, task, outs, rows, baselines), "outputs": outs}
                if state.is_world_process_zero:
                    with checks_path.open("a", encoding="utf-8") as f:
                        f.write(json.dumps(self.done[step]) + "\n")
                    if mlflow.active_run() is not None:
                        mlflow.log_metrics({f"gate/{source}/{k}": float(v)
                                            for source, s in self.done[step]["by_source"].items()
                                            for k, v in s.items() if k != "n" and isinstance(v, (int, float, bool))},
                                           step=step)
            if self.done[step]["passed"] and step >= g.min_steps:
                control.should_training_stop = True
                control.should_save = True  # a resumed run starts from the step that passed

    checks_path.parent.mkdir(parents=True, exist_ok=True)
    return Gate()


def read_checks(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def gate_summary(cfg: Config, checks: list[dict], steps: int, cap: int) -> dict[str, Any]:
    """gate.json: whether the cold start passed — its last check, on the model it ended with (a check that
    passed before min_steps did not stop it) —, at which step (of `cap`, its schedule's last), and every
    check on the way."""
    g = cfg.train.coldstart.gate
    passed = bool(checks) and checks[-1]["passed"]
    return {"enabled": True, "passed": passed, "passed_at_step": checks[-1]["step"] if passed else None,
            "steps": steps, "cap": cap, "every": g.every, "min_steps": g.min_steps, "dev_samples_per_source": g.dev_samples,
            "min_distinct": g.min_distinct, "require": g.require, "last": checks[-1] if checks else None,
            "checks": checks}


def gate_failure(cfg: Config, init: Path) -> str | None:
    """Why a branch must not start from the cold start `init` (its gate on, required, and not passed), or
    None when it may."""
    g = cfg.train.coldstart.gate
    if not (g.enabled and g.require):
        return None
    path = init.parent / GATE_FILE
    if not path.is_file():
        raise SemrlError(f"{path} missing: the cold start was trained without its gate; retrain it "
                         "(dvc repro train@<task>)")
    gate = json.loads(path.read_text(encoding="utf-8"))
    if gate["passed"]:
        return None
    last = gate.get("last") or {}
    why = "; ".join(f"{source}: distinct {s['distinct_rate']}, {s.get('beats_copy', '-')} over copy"
                    for source, s in (last.get("by_source") or {}).items() if not s["passed"])
    return (f"precondition failed: the seed's cold start did not pass its gate in {gate['steps']} steps (cap "
            f"{gate['cap']}; {why}); the branch does not start (train.coldstart.gate.require: false starts it anyway)")


def require_passed(cfg: Config, init: Path, task: str, method: str, seed: int) -> None:
    """A branch starts only from a cold start that passed its gate (with the gate on and required)."""
    if why := gate_failure(cfg, init):
        raise SemrlError(f"{task}-{method}-s{seed}: {why}")
