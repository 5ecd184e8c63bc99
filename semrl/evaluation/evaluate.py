"""DVC stage `evaluate@<task>`: every variant (base, cold start, strong SFT, GRPO, ablations) x seed on the
task's test split and on CMRC 2018 dev (general competence = the alignment tax), plus the pairwise
preference of strong SFT vs GRPO outputs. Writes reports/eval/<task>.json and <task>_outputs.jsonl.
`evaluate_transfer` scores the few-shot transfer models the same way (reports/eval/transfer.json)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from semrl import SemrlError
from semrl.core.artifacts import GATE_FILE, SUMMARY_FILE, TAU_FILE, TRAJECTORY_FILE, read_points
from semrl.core.config import Config, EvalConfig
from semrl.core.io import atomic_write_text, read_jsonl, write_jsonl
from semrl.core.methods import COLDSTART, methods, output_dir, transfer_methods
from semrl.core.tasks import Task, get_task, per_source
from semrl.evaluation.judge import make_judge, preference


def variants(cfg: Config, task: str) -> list[tuple[str, int | None, Path | None]]:
    """(method, seed, merged-model folder) for base and every trained method x seed found on disk, in the
    order the methods are defined (cold start, branches, ablations)."""
    found = [("base", None, None)]
    for method in methods(cfg).values():
        if method.group:  # trained and scored by its own stage (transfer)
            continue
        root = output_dir(cfg, task, method, 0).parent
        for seed_dir in sorted(root.glob("seed*"), key=lambda p: int(p.name.removeprefix("seed"))):
            if (seed_dir / "model" / "config.json").is_file():
                found.append((method.name, int(seed_dir.name.removeprefix("seed")), seed_dir / "model"))
    return found


def task_metrics(task: Task, outputs: list[str], references: list[str], reward_emb, eval_emb) -> dict[str, float]:
    from semrl.evaluation.metrics import TASK_METRICS, output_stats
    from semrl.models.embedder import Similarity

    m: dict[str, float] = {name: TASK_METRICS[name](outputs, references, task.script) for name in task.metrics}
    m["sim_reward"] = float(np.mean(Similarity(reward_emb).similarity(outputs, references)))
    m["sim_eval"] = float(np.mean(Similarity(eval_emb).similarity(outputs, references)))
    m.update(output_stats(outputs, task.script))
    return m


def test_rows(task: Task, tokenizer, cfg: Config) -> list[dict[str, str]]:
    """The first `eval.test_samples` test rows of each source (real and synthetic sources are scored apart,
    so neither crowds the other out), in split order."""
    return per_source(task.examples("test", tokenizer, cfg.train.max_input_tokens), cfg.eval.test_samples)


def scored(task: Task, outputs: list[str], rows: list[dict[str, str]], reward_emb, eval_emb) -> tuple[dict, dict]:
    """(metrics over all rows plus `by_source`, per-item scores of every task metric)."""
    from semrl.evaluation.metrics import item_scores

    refs = [x["reference"] for x in rows]
    metrics = task_metrics(task, outputs, refs, reward_emb, eval_emb)
    sources = sorted({x["source"] for x in rows})
    if len(sources) > 1:
        metrics["by_source"] = {}
        for source in sources:
            idx = [i for i, x in enumerate(rows) if x["source"] == source]
            metrics["by_source"][source] = {"n": len(idx), **task_metrics(
                task, [outputs[i] for i in idx], [refs[i] for i in idx], reward_emb, eval_emb)}
    items = {m: item_scores(m, outputs, refs, task.script) for m in task.metrics}
    return metrics, items


def general_competence(models: dict[str, Any], base, tokenizer, cmrc: list[dict],
                       e: EvalConfig) -> dict[str, tuple[dict, list[str]]]:
    """CMRC 2018 per model (name -> model): the gold answers' NLL and KL against the base (one pass, the
    base run once per batch), and with eval.cmrc_generate EM/F1 of greedy answers. name -> (scores, answers)."""
    from semrl.evaluation.metrics import answer_batches, cmrc_scores, drift_summary, nll_and_kl_many
    from semrl.models.generation import generate

    drift = nll_and_kl_many(models, {"base": base}, answer_batches(
        tokenizer, cmrc, e.cmrc_prompt, e.cmrc_max_context_tokens, e.batch_size))
    limit = e.cmrc_max_context_tokens
    prompts = [e.cmrc_prompt.format(
        context=tokenizer.decode(tokenizer(x["context"], add_special_tokens=False)["input_ids"][:limit]),
        question=x["question"]) for x in cmrc]
    out = {}
    for name, model in models.items():
        nll_m, per_ref = drift[name]
        summary = drift_summary(nll_m, *per_ref["base"])
        if not e.cmrc_generate:
            out[name] = (summary, [])
            continue
        preds = generate(model, tokenizer, prompts, e.cmrc_max_new_tokens, batch_size=e.batch_size, desc="cmrc")
        out[name] = ({**cmrc_scores(preds, [x["answers"] for x in cmrc]), **summary}, preds)
    return out


def trajectories(cfg: Config, task: str) -> dict[str, list[dict[str, Any]]]:
    """The branches' points along training ("method/seed" -> points), as the training runs wrote them."""

    found = {}
    for method, seed, path in variants(cfg, task):
        if path is not None and (points := read_points(path.parent / TRAJECTORY_FILE)):
            found[f"{method}/{seed}"] = points
    return found


def reward_signal(cfg: Config, task: str) -> dict[str, dict[str, Any]]:
    """Each seed's reward-signal check (seed -> what the tau calibration on its cold-start model measured,
    as its GRPO run kept it)."""

    return {str(seed): json.loads((path.parent / TAU_FILE).read_text(encoding="utf-8"))
            for method, seed, path in variants(cfg, task)
            if method == "grpo" and (path.parent / TAU_FILE).is_file()}


def cold_start_gates(cfg: Config, task: str) -> dict[str, dict[str, Any]]:
    """Each seed's cold-start gate (semrl.training.gate) as its cold start kept it: passed or not, at which
    step, and the last check's numbers per data source (the outputs stay in the model folder's gate.json)."""

    found = {}
    for method, seed, path in variants(cfg, task):
        if method == "coldstart" and (path.parent / GATE_FILE).is_file():
            gate = json.loads((path.parent / GATE_FILE).read_text(encoding="utf-8"))
            last = gate.get("last") or {}
            found[str(seed)] = {**{k: v for k, v in gate.items() if k not in ("checks", "last")},
                                "by_source": last.get("by_source", {}), "checked_steps": [c["step"] for c in gate["checks"]]}
    return found


def skill_set(cfg: Config) -> list[dict[str, Any]]:
    """The skill probe's items: riddles the base learnt in chat format (the tiny base is taught the first
    `base.train.skill_riddles` of its training riddles; a named base is asked the same ones)."""
    from semrl.evaluation.metrics import skill_items
    from semrl.models.base import skill_pairs

    e = cfg.eval
    if not e.skill_samples:
        return []
    # Distractors are answers of other taught riddles: every choice was seen in chat format during
    # pretraining, so only knowing which answer goes with the riddle picks the right one.
    items = skill_items(skill_pairs(cfg)[: cfg.base.train.skill_riddles], e.skill_samples, e.skill_choices, e.seed)
    return items


def _embedders(cfg: Config):
    from semrl.models.embedder import load_embedder

    return load_embedder(cfg.embedder.reward.out_dir), load_embedder(cfg.embedder.eval.out_dir)


def run(cfg: Config, task_name: str) -> dict[str, Any]:
    """Every variant on the task's test rows, the LM probe and CMRC; per-item scores kept for the paired
    statistics of the report. Variants are visited seed by seed and a seed's models are held together
    (base, cold start, SFT, GRPO, ablations: ~8 GB each for a 4B model in bf16), so that the probes score
    them in one pass against the base and the cold start."""
    import torch
    from transformers import AutoModelForCausalLM

    from semrl.evaluation.metrics import lm_probe_many, output_stats, skill_probe
    from semrl.evaluation.metrics import probe_texts as lm_probe_texts_for
    from semrl.models.base import load_base
    from semrl.models.generation import accelerator, generate

    task, e = get_task(cfg, task_name), cfg.eval
    dtype, device = cfg.weights_dtype, accelerator()
    base, tokenizer = load_base(cfg.base.out_dir, dtype=dtype)
    base.to(device)
    test = test_rows(task, tokenizer, cfg)
    cmrc_path = cfg.prepare.out_dir / "general" / "cmrc_dev.jsonl"
    cmrc = read_jsonl(cmrc_path)[: e.cmrc_samples]
    probe_texts, probe_sources = lm_probe_texts_for(cfg, e.lm_probe_samples)
    skill = skill_set(cfg)
    if not test or not cmrc or not probe_texts:
        raise SemrlError(f"{task_name}: nothing to evaluate (test {len(test)}, CMRC {len(cmrc)}, "
                         f"LM probe texts {len(probe_texts)})")
    reward_emb, eval_emb = _embedders(cfg)
    refs = [x["reference"] for x in test]
    from semrl.core.checkpoints import require_whole_model

    def load(path):  # a trained model: models/<task>/<stage>/.../seed<k>/model, made by <stage>@<task>
        require_whole_model(path, f"{path.relative_to(cfg.train.out_dir / task_name).parts[0]}@{task_name}")
        return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, dtype=dtype).to(device)

    found = variants(cfg, task_name)
    by_seed: dict[int | None, list] = {}
    for v in found:
        by_seed.setdefault(v[1], []).append(v)
    results, outputs, samples, items = {}, {}, [], {}
    for seed, group in by_seed.items():
        parent = next((path for method, _, path in group if method == COLDSTART), None)
        parent_model = load(parent) if parent is not None else None
        models = {}  # this seed's variants, scored by the probes together below
        for method, _, path in group:
            model = models[method] = base if path is None else parent_model if path == parent else load(path)
            torch.manual_seed(e.seed)
            outs = generate(model, tokenizer, [x["prompt"] for x in test], e.max_new_tokens,
                            batch_size=e.batch_size, desc=f"{task_name}-{method}")
            metrics, per_item = scored(task, outs, test, reward_emb, eval_emb)
            key = f"{method}/{seed if seed is not None else '-'}"
            results[key] = {"task": task_name, "method": method, "seed": seed, **metrics}
            items[key] = per_item
            outputs[(method, seed if seed is not None else -1)] = outs
            samples += [{"task": task_name, "method": method, "seed": seed, "id": x["id"], "source": x["source"],
                         "output": o, "reference": x["reference"]} for x, o in zip(test[: e.samples_to_keep], outs)]
        # The probes of all the seed's variants in one pass each: the references (base, cold start) run once
        # per batch instead of once per variant (no sampling here, so the order changes no number).
        references = {"base": base, **({COLDSTART: parent_model} if parent_model is not None else {})}
        probes = lm_probe_many(models, references, tokenizer, probe_texts, e.lm_probe_max_tokens, e.batch_size)
        general = general_competence(models, base, tokenizer, cmrc, e)
        for method, model in models.items():
            key = f"{method}/{seed if seed is not None else '-'}"
            per_item, row = items[key], results[key]
            per_item.update(probes[method])
            row.update({f"{k}_mean": float(np.mean(v)) for k, v in probes[method].items()})
            if skill:
                per_item["skill_acc"] = skill_probe(model, tokenizer, skill, e.skill_prompt, e.batch_size)
                row["skill_acc"] = float(np.mean(per_item["skill_acc"]))
            row.update(general[method][0])
        del models
    train_refs = [x["reference"] for x in task.examples("train", tokenizer, cfg.train.max_input_tokens)]
    from semrl.evaluation.metrics import trivial_baselines

    for name, outs in trivial_baselines(task.script, test, train_refs).items():
        metrics, per_item = scored(task, outs, test, reward_emb, eval_emb)
        results[f"{name}/-"] = {"task": task_name, "method": name, "seed": None, "baseline": True, **metrics}
        items[f"{name}/-"] = per_item
        found.append((name, None, None))
    order = [f"{m}/{s if s is not None else '-'}" for m, s, _ in found]  # methods in definition order
    judge = make_judge(e.judge, eval_emb, e.tie_margin, e.batch_size, cfg.weights_dtype)
    pref = preference(judge, [x["input"] for x in test], refs, outputs, max_pairs=e.judge.max_pairs)
    report = {"task": task_name, "test_examples": len(test), "cmrc_questions": len(cmrc),
              "lm_probe_texts": len(probe_texts), "lm_probe_sources": probe_sources, "skill_items": len(skill),
              "skill_chance": 1 / e.skill_choices if skill else None,
              "decoding": {"do_sample": False, "max_new_tokens": e.max_new_tokens},
              "reference_mean_length_chars": float(np.mean([len(r) for r in refs])),
              "reference_distinct_rate": output_stats(refs, task.script)["distinct_rate"],
              "results": [results[k] for k in order], "preference": pref,
              "trajectories": trajectories(cfg, task_name), "reward_signal": reward_signal(cfg, task_name),
              "gate": cold_start_gates(cfg, task_name),
              "items": {"ids": [x["id"] for x in test], "sources": [x["source"] for x in test],
                        "synthetic_sources": sorted({x["source"] for x in test if x["synthetic"]}),
                        "variants": {k: items[k] for k in order}}}
    for r in report["results"]:  # the MLflow runs that trained each variant (the report's curves read them)
        if r["seed"] is not None and not r.get("baseline"):
            r["run_ids"] = training_runs(cfg, task_name, r["method"], r["seed"])
    atomic_write_text(e.out_dir / f"{task_name}.json", json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    write_jsonl(e.out_dir / f"{task_name}_outputs.jsonl", samples)
    track(cfg, task, report, [e.out_dir / f"{task_name}.json", e.out_dir / f"{task_name}_outputs.jsonl"])
    return report


def training_runs(cfg: Config, task: str, method: str, seed: int) -> list[str]:
    """The MLflow run ids that trained a variant (its summary.json), oldest first; [] if it has none."""
    path = output_dir(cfg, task, method, seed) / SUMMARY_FILE
    if not path.is_file():
        return []
    summary = json.loads(path.read_text(encoding="utf-8"))
    return summary.get("run_ids") or ([summary["run_id"]] if summary.get("run_id") else [])


def run_metrics(task: Task, row: dict[str, Any]) -> dict[str, float]:
    """A variant's evaluation under the keys every training run shares, so that MLflow's Compare of any two
    runs shows the result: eval/<metric> (and eval/<source>/<metric>), tax/<LM probe>, skill/accuracy,
    cmrc/<measure>."""
    out = {}
    for k in (*task.metrics, "sim_reward", "sim_eval", "language_consistency", "mean_length_chars", "empty_rate",
              "distinct_rate"):
        if k in row:
            out[f"eval/{k}"] = row[k]
    for source, m in row.get("by_source", {}).items():
        out.update({f"eval/{source}/{k}": m[k] for k in task.metrics if k in m})
    out.update({f"tax/{k.removesuffix('_mean')}": v for k, v in row.items() if k.startswith("lm_")})
    if "skill_acc" in row:
        out["skill/accuracy"] = row["skill_acc"]
    for k in ("cmrc_em", "cmrc_f1", "cmrc_avg", "nll_increase_mean", "nll_increase_p90", "kl_p90", "answer_nll_mean"):
        if k in row:
            out[f"cmrc/{k.removeprefix('cmrc_')}"] = row[k]
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and v == v}


def track(cfg: Config, task: Task, report: dict[str, Any], files: list[Path]) -> None:
    """MLflow: each trained variant's evaluation logged onto the run that trained it (run_metrics), an
    `evaluate-<task>` run under the pipeline's parent run with the files and every variant's numbers, and
    the alias `champion` on each method's registered model: the seed best by the task's primary metric."""
    import time

    import mlflow
    from mlflow.entities import Metric

    from semrl.core import tracking

    parent = tracking.pipeline_parent(cfg)
    client = mlflow.MlflowClient()
    best: dict[str, tuple[float, str]] = {}
    now = int(time.time() * 1000)
    for r in report["results"]:
        if not r.get("run_ids"):
            continue
        metrics = run_metrics(task, r)
        run_id = r["run_ids"][-1]
        try:
            client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
        except mlflow.exceptions.MlflowException as err:  # a store that does not hold the run (another server)
            print(f"evaluate-{task.name}: could not log the evaluation onto run {run_id} of "
                  f"{r['method']} seed {r['seed']}: {err}")
            continue
        score = metrics.get(f"eval/{task.primary_metric}", float("-inf"))
        if score > best.get(r["method"], (float("-inf"), ""))[0]:
            best[r["method"]] = (score, run_id)
    for method, (score, run_id) in best.items():
        name = f"semrl-{task.name}-{method}"
        if (version := tracking.model_version_of(name, run_id)) is not None:
            client.set_registered_model_alias(name, "champion", version)
            client.set_model_version_tag(name, version, f"eval_{task.primary_metric}", f"{score:.4f}")
    with tracking.run(cfg, f"evaluate-{task.name}", tags={"semrl.kind": "evaluate", "semrl.task": task.name,
                                                          "mlflow.parentRunId": parent}):
        for path in files:
            mlflow.log_artifact(str(path))
        for r in report["results"]:
            label = f"{r['method']}" + (f".s{r['seed']}" if r["seed"] is not None else "")
            mlflow.log_metrics({f"{label}/{k}": v for k, v in run_metrics(task, r).items()})


def evaluate_transfer(cfg: Config) -> dict[str, Any]:
    """The target task's metrics on its test split for every transfer model x seed (paper: MT -> 1,000
    headlines, similarity 0.5690 from RL vs 0.5456 from SFT). Writes reports/eval/transfer.json."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from semrl.models.generation import accelerator, generate

    t, e = cfg.transfer, cfg.eval
    path = e.out_dir / "transfer.json"
    if not t.enabled:
        report = {"enabled": False, "results": []}
        atomic_write_text(path, json.dumps(report, indent=2) + "\n")
        return report
    target = get_task(cfg, t.target_task)
    reward_emb, eval_emb = _embedders(cfg)
    results = []
    for seed in cfg.train.seeds:
        for method in transfer_methods(cfg):
            model_dir = output_dir(cfg, target.name, method, seed) / "model"
            if not (model_dir / "config.json").is_file():
                raise SemrlError(f"{model_dir}: no transfer model (run `semrl transfer`)")
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True,
                                                         dtype=cfg.weights_dtype).to(accelerator())
            test = target.examples("test", tokenizer, cfg.train.max_input_tokens)[: e.test_samples]
            outs = generate(model, tokenizer, [x["prompt"] for x in test], e.max_new_tokens,
                            batch_size=e.batch_size, desc=method.name)
            results.append({"task": target.name, "method": method.name, "source_task": t.source_task,
                            "source": method.init, "seed": seed, "samples": t.samples,
                            **task_metrics(target, outs, [x["reference"] for x in test], reward_emb, eval_emb)})
    report = {"enabled": True, "source_task": t.source_task, "target_task": target.name, "results": results}
    atomic_write_text(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report


def step(params: str, task: str) -> dict[str, Any]:
    """The pipeline step `evaluate` as a flow's step process and `semrl evaluate` run it."""
    from semrl.core.config import load_config

    report = run(load_config(params), task)
    for r in report["results"]:
        print(f"evaluate {r['task']}-{r['method']}-s{r['seed']}: " +
              ", ".join(f"{k} {v:.4f}" for k, v in r.items() if isinstance(v, float)))
    return report
