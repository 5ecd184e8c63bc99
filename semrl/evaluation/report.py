"""DVC stage `report`: the comparative alignment-tax report from reports/eval/*.json. `build` computes every
number into one structure (nothing formatted); templates/report.md.j2 renders it as markdown. Beside
it: CSV tables with mean ± 95 % CI over seeds, reports/metrics.json (a DVC metric), the trade-off and
trajectory plots (reports/plots/, DVC plots), training curves per branch (reports/curves/), and an MLflow
`report` run linked to the training runs it summarises.

Which variants are compared comes from the Method and Task records (semrl.core.methods, semrl.core.tasks):
each main branch against the cold start it starts from, the main branches against each other, each noise
floor and reward ablation against the branch it varies. A new method adds its rows without edits here."""
from __future__ import annotations

import itertools
import json
from functools import cache
from pathlib import Path
from typing import Any

from semrl import SemrlError
from semrl.core.config import Config
from semrl.core.io import atomic_write_text
from semrl.core.methods import COLDSTART, Method, branches, compared_with, main_branches, methods
from semrl.core.tasks import Task, tasks

TEMPLATE, MACROS = "report.md.j2", "report_macros.md.j2"  # in templates/ beside this module
METRIC_LABELS = {"bleu": "BLEU-4", "chrf": "chrF", "rouge_l": "ROUGE-L"}
COLUMNS = ["bleu", "chrf", "rouge_l", "sim_reward", "sim_eval", "language_consistency", "mean_length_chars",
           "empty_rate", "distinct_rate", "cmrc_em", "cmrc_f1", "cmrc_avg", "nll_increase_mean", "nll_increase_p90", "kl_p90",
           "lm_nll_mean", "lm_nll_increase_vs_base_mean", "lm_kl_vs_base_mean", "lm_nll_increase_vs_coldstart_mean",
           "lm_kl_vs_coldstart_mean", "skill_acc"]
BASE = "base"  # the evaluated variants that are not trained methods: the base and the trivial baselines
BASELINES = ("copy_input", "copy_lead")  # semrl.evaluation.metrics.trivial_baselines: no model, task metrics only
LM_TAX_KEYS = ("lm_nll_increase_vs_coldstart", "lm_kl_vs_coldstart", "lm_nll_increase_vs_base")


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


# --- aggregation over seeds -------------------------------------------------------------------------------------

def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t-interval (0 for a single seed: no estimate of the noise)."""
    from semrl.evaluation.stats import t_interval

    r = t_interval(values)
    return r.estimate, r.half_width if r.estimated else 0.0


def aggregate(results: list[dict[str, Any]], primary: dict[str, str]):
    """One row per task x method: mean and 95 % CI half-width of each metric over seeds, and the tax and
    the task gain on each task's primary metric (`primary`: task -> metric)."""
    import pandas as pd

    df = pd.DataFrame(results)
    rows = []
    for (task, method), g in df.groupby(["task", "method"], sort=False):
        base = df[(df.task == task) & (df.method == BASE)]
        row = {"task": task, "method": method, "n_seeds": int(g["seed"].notna().sum() or 1)}
        for col in COLUMNS:
            if col in g and g[col].notna().any():
                row[col], row[f"{col}_ci"] = mean_ci95(g[col].dropna().tolist())
        if len(base) and "cmrc_avg" in df:
            # The alignment tax: the drop in general competence from the base model (positive = forgot).
            row["tax_cmrc_avg"] = float(base["cmrc_avg"].mean() - g["cmrc_avg"].mean())
            row["tax_cmrc_avg_ci"] = mean_ci95((base["cmrc_avg"].mean() - g["cmrc_avg"]).tolist())[1]
        if len(base):
            metric = primary[task]
            row["task_gain"] = float(g[metric].mean() - base[metric].mean())
            row["task_gain_ci"] = mean_ci95((g[metric] - base[metric].mean()).tolist())[1]
        rows.append(row)
    return pd.DataFrame(rows)


def table(df, columns: list[tuple[str, str]], methods_: list[str] | None = None, digits: int = 4) -> dict[str, Any]:
    """A table for the template: its columns (key, label) and one row per method (all of df's, or those
    named, in df's order) with each value and its CI half-width; the template formats the cells."""
    rows = df if methods_ is None else df[df.method.isin(methods_)]
    keys = [k for k, _ in columns]
    out = []
    for _, r in rows.iterrows():
        cells = {}
        for k in keys:
            v = r.get(k)
            cells[k] = None if v is None or v != v else (float(v), float(r.get(f"{k}_ci", 0.0) or 0.0))
        out.append({"method": r["method"], "n_seeds": int(r["n_seeds"]), "cells": cells})
    return {"columns": [{"key": k, "label": label} for k, label in columns], "rows": out, "digits": digits}


# --- paired comparisons -----------------------------------------------------------------------------------------

# Per-item keys of reports/eval/<task>.json the paired comparisons read, and the scale a flag needs.
BOUNDED = {"bleu": (0.0, 1.0), "chrf": (0.0, 1.0), "rouge_l": (0.0, 1.0), "skill_acc": (0.0, 1.0)}
LENGTH_HACKING_RATIO = 1.3  # GRPO outputs this much longer than the references on average: flagged
COLLAPSE_RATIO = 0.5  # GRPO's share of distinct outputs below this fraction of its cold start's: flagged
FLOOR_TOLERANCE = 0.01  # within 1 % of the scale's end: at the floor or ceiling


def paired(ev: dict[str, Any], a: str, b: str, key: str, source: str | None = None) -> dict[str, Any] | None:
    """a - b on one per-item key over the seeds both were trained with: the paired t-interval of the
    per-seed mean differences (df = n - 1) and the paired bootstrap over seeds x items; None if either
    side is missing. `source` restricts task items to one data source. A side without seeds (the base)
    is the same model for every seed: its items pair with each seed's."""
    import numpy as np

    from semrl.evaluation.stats import bound_flag, paired_bootstrap, paired_t

    variants = ev.get("items", {}).get("variants", {})
    keys = lambda m: {k.split("/")[1]: k for k in variants if k.split("/")[0] == m}  # seed -> variant key
    ka, kb = keys(a), keys(b)
    if set(kb) == {"-"}:
        kb = {s: kb["-"] for s in ka}
    seeds = sorted(set(ka) & set(kb) - {"-"}, key=int)
    if not seeds or key not in variants[ka[seeds[0]]] or key not in variants[kb[seeds[0]]]:
        return None
    ga = np.array([variants[ka[s]][key] for s in seeds], dtype=float)
    gb = np.array([variants[kb[s]][key] for s in seeds], dtype=float)
    if source is not None:
        mask = np.array([x == source for x in ev["items"]["sources"]])
        ga, gb = ga[:, mask], gb[:, mask]
    t = paired_t(ga.mean(1), gb.mean(1))
    boot = paired_bootstrap(ga, gb)
    flag = None
    if key in BOUNDED:
        lo, hi = BOUNDED[key]
        flag = bound_flag(np.concatenate([ga.mean(1), gb.mean(1)]), lo, hi, FLOOR_TOLERANCE * (hi - lo))
    if key == "skill_acc" and ev.get("skill_chance") and flag is None:
        # Multiple choice: its floor is chance. Both sides within two binomial standard errors of it
        # (every seed) means neither has the skill left to lose.
        chance, n = ev["skill_chance"], ga.shape[1]
        if np.all(np.concatenate([ga.mean(1), gb.mean(1)]) <= chance + 2 * np.sqrt(chance * (1 - chance) / n)):
            flag = "chance level"
    return {"a": a, "b": b, "key": key, "source": source, "seeds": len(seeds), "items": int(ga.shape[1]),
            "mean_a": float(ga.mean()), "mean_b": float(gb.mean()), "t": t.as_dict(), "bootstrap": boot.as_dict(),
            "flag": flag, "verdict": verdict(t, boot, flag)}


def verdict(t, boot, flag: str | None) -> str:
    """Never calls noise a difference: at a bound nothing is read; otherwise the paired t-interval over
    seeds decides (it needs >= 2 seeds), the bootstrap over seeds x items is shown beside it."""
    if flag:
        return f"not informative: both at the {flag}"
    if not t.estimated:
        return "one seed: no estimate of the seed-to-seed noise, no verdict"
    if t.excludes_zero:
        return "higher" if t.estimate > 0 else "lower"
    return "no difference shown (95 % interval holds 0)"


def varied(cfg: Config) -> list[tuple[Method, Method]]:
    """(ablation, the main branch it varies): each noise floor and reward ablation that ran."""
    return [(m, target) for m in branches(cfg) if m.ablation and (target := compared_with(cfg, m))]


def comparison_plan(cfg: Config, task: Task, sources: list[str]) -> list[tuple[str, str, str, str | None]]:
    """(a, b, per-item key, source) of every comparison the research question needs, from the method records:
    each main branch's task gain over the model it starts from and the main branches against each other
    (all items, then each source), each main branch against its noise floor and reward ablations, the
    trivial baselines, the drift on general Chinese (LM probe) and the general skill."""
    main = main_branches(cfg)
    pairs = list(itertools.combinations([m.name for m in main], 2))
    m = task.primary_metric
    by_source = [None] + (sources if len(sources) > 1 else [])  # all items, then each source alone
    wanted = [(b.name, b.init, m, src) for b in main for src in by_source]
    wanted += [(a, b, m, src) for a, b in pairs for src in by_source]
    wanted += [(target.name, ab.name, m, src) for ab, target in varied(cfg) if ab.shuffled for src in by_source]
    wanted += [(ab.name, target.name, m, None) for ab, target in varied(cfg) if not ab.shuffled]
    # The trivial baselines (copy the input, or its lead): a branch that does not reach them has not learnt the task.
    wanted += [(a, b, m, None) for a in (COLDSTART, *[x.name for x in main]) for b in BASELINES]
    wanted += [(a, b, k, None) for k in LM_TAX_KEYS for a, b in pairs]
    # The general skill (riddle -> answer, chat format): what the cold start keeps of the base's, what
    # each branch loses from the cold start, and the main branches against each other.
    wanted += [(COLDSTART, BASE, "skill_acc", None), *[(b.name, b.init, "skill_acc", None) for b in main],
               *[(a, b, "skill_acc", None) for a, b in pairs]]
    return wanted


def paired_comparisons(cfg: Config, task: Task, ev: dict[str, Any]) -> list[dict[str, Any]]:
    sources = sorted(set(ev.get("items", {}).get("sources", [])))
    return [p for p in (paired(ev, *w) for w in comparison_plan(cfg, task, sources)) if p is not None]


def find(pairs: list[dict[str, Any]], a: str, b: str, key: str, source: str | None = None) -> dict[str, Any] | None:
    return next((p for p in pairs if (p["a"], p["b"], p["key"], p["source"]) == (a, b, key, source)), None)


# --- the answer ---------------------------------------------------------------------------------------------------

def answer(cfg: Config, task: Task, pairs: list[dict[str, Any]], ev: dict[str, Any]) -> dict[str, Any]:
    """The research question's answer for one task: the paired verdicts it reads, as they came out, and beside
    them what GRPO had to climb (the reward-signal checks) and the discriminating experiment, if one is
    configured for the task (report.experiments)."""
    m, known = task.primary_metric, methods(cfg)
    main = main_branches(cfg)
    title = lambda name: known[name].title if name in known else name
    item = lambda a, b, key, source=None: {"a": title(a), "b": title(b), "pair": find(pairs, a, b, key, source)}
    pair_names = list(itertools.combinations([x.name for x in main], 2))
    synthetic = set(ev.get("items", {}).get("synthetic_sources", []))
    sources = sorted({p["source"] for p in pairs if p["source"] is not None})
    floors = [(target, ab) for ab, target in varied(cfg) if ab.shuffled]
    per_source = [{"source": src, "synthetic": src in synthetic,
                   "items": [it for a, b in [*[(x.name, x.init) for x in main], *pair_names,
                                             *[(t.name, f.name) for t, f in floors]]
                             if (it := item(a, b, m, src))["pair"]]} for src in sources]
    learnt = [x.title for x in main if (p := find(pairs, x.name, x.init, m)) and p["verdict"] == "higher"]
    return {
        "task": task.name, "metric": metric_label(m), "main": [x.title for x in main], "learnt": learnt,
        "gains": [item(x.name, x.init, m) for x in main],
        "versus": [item(a, b, m) for a, b in pair_names],
        "floors": [item(t.name, f.name, m) for t, f in floors],
        "no_floor": [x.title for x in main if x.trainer == "grpo" and all(t.name != x.name for t, _ in floors)],
        "per_source": per_source,
        "lm_tax": [item(a, b, "lm_nll_increase_vs_coldstart") for a, b in pair_names],
        "skill": [item(a, b, "skill_acc") for a, b in pair_names],
        "baselines": baseline_checks(pairs, main, m),
        "climb": climb(ev.get("reward_signal") or {}),
        "experiment": experiment(cfg.report.experiments.get(task.name)),
    }


def baseline_checks(pairs, main: list[Method], m: str) -> list[dict[str, Any]]:
    """Each copy baseline that scores at least the cold start (e.g. copy-the-lead for headlines): does either
    branch reach it? A baseline below the cold start (copying Chinese for Tibetan output) asks nothing."""
    out = []
    for b in BASELINES:
        cold = find(pairs, COLDSTART, b, m)
        if cold is None or cold["mean_a"] > cold["mean_b"]:
            continue
        against = [{"title": x.title, "pair": p} for x in main if (p := find(pairs, x.name, b, m))]
        out.append({"baseline": b, "score": cold["mean_b"], "cold": cold["mean_a"], "against": against,
                    "reached": [x["title"] for x in against if x["pair"]["t"]["low"] == x["pair"]["t"]["low"]
                                and x["pair"]["t"]["low"] > 0]})
    return out


def climb(signal: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Per data source, the share of a prompt's completion pairs the reward ordered as the task metric does,
    per seed (50 % = a coin): GRPO's advantages carry nothing else."""
    checked = [(seed, info["within_group"]) for seed, info in sorted(signal.items(), key=lambda kv: int(kv[0]))
               if info.get("within_group")]
    if not checked:
        return None
    sources = sorted({src for _, c in checked for src in c["by_source"]})
    agreement = lambda c: None if c is None else c["reward_vs_metric"]["pair_agreement"]
    return {"seeds": [s for s, _ in checked],
            "sources": [{"source": src, "agreement": [agreement(c["by_source"].get(src)) for _, c in checked]}
                        for src in sources]}


def experiment(path: Path | None) -> dict[str, Any] | None:
    """The discriminating experiment's paired comparisons over all dev items (bench/grpo_discriminate.py:
    seeds x items bootstrap); None when none is configured or the file is missing."""
    if path is None or not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = [{**c, "excludes_zero": c["low"] > 0 or c["high"] < 0} for c in data["comparisons"] if c["source"] == "all"]
    return {"path": path.as_posix(), "seeds": data["seeds"], "rows_per_source": data["dev_rows_per_source"],
            "sft_arms": any(a.startswith("F_") for a in data["arms"]), "graded_arms": "Sg" in data["arms"],
            "comparisons": rows}


# --- per task -------------------------------------------------------------------------------------------------------

def source_tables(task: Task, ev: dict[str, Any]) -> list[dict[str, Any]]:
    """The task metrics per data source (real and synthetic test items apart), mean ± CI over seeds."""
    results = [r for r in ev["results"] if "by_source" in r]
    if not results:
        return []
    synthetic = set(ev.get("items", {}).get("synthetic_sources", []))
    out = []
    for src in sorted(results[0]["by_source"]):
        flat = [{"task": r["task"], "method": r["method"], "seed": r["seed"], **r["by_source"][src]} for r in results]
        df = aggregate(flat, {task.name: task.primary_metric})
        out.append({"source": src, "synthetic": src in synthetic, "n": flat[0]["n"],
                    "table": table(df, [(m, METRIC_LABELS[m]) for m in task.metrics]
                                   + [("mean_length_chars", "mean length")])})
    return out


def hacking_flags(ev: dict[str, Any]) -> list[dict[str, Any]]:
    """Reward-hacking flags for every RL-trained variant and seed: test outputs longer than
    LENGTH_HACKING_RATIO x the references on average (`length`), fewer distinct outputs than COLLAPSE_RATIO x
    its seed's cold start's (`collapse`: one answer for many inputs), or the training reward rising while the
    independent evaluation embedder's similarity to the references falls (`reward_vs_similarity`, dev
    trajectory, first to last point)."""
    ref_len = ev.get("reference_mean_length_chars")
    rl = {k.split("/")[0] for k, points in ev.get("trajectories", {}).items() if any(p.get("reward") is not None
                                                                                   for p in points)}
    flags = []
    for r in ev["results"]:
        if r["method"] not in rl or r.get("seed") is None:
            continue
        who = {"method": r["method"], "seed": r["seed"]}
        if ref_len and r.get("mean_length_chars", 0) > LENGTH_HACKING_RATIO * ref_len:
            flags.append({**who, "kind": "length", "ratio": r["mean_length_chars"] / ref_len})
        cold = next((c for c in ev["results"] if c["method"] == COLDSTART and c.get("seed") == r["seed"]), {})
        if cold.get("distinct_rate") and r.get("distinct_rate", 1.0) < COLLAPSE_RATIO * cold["distinct_rate"]:
            flags.append({**who, "kind": "collapse", "distinct": r["distinct_rate"], "cold": cold["distinct_rate"]})
        points = ev["trajectories"].get(f"{r['method']}/{r['seed']}", [])
        rewards = [p for p in points if p.get("reward") is not None]
        if len(rewards) >= 2 and points:
            d_reward = rewards[-1]["reward"] - rewards[0]["reward"]
            d_sim = points[-1]["sim_eval"] - points[0]["sim_eval"]
            if d_reward > 0 and d_sim < 0:
                flags.append({**who, "kind": "reward_vs_similarity", "d_reward": d_reward, "d_sim": d_sim})
    return flags


def skill(ev: dict[str, Any], g, cfg: Config) -> dict[str, Any] | None:
    """The general skill probe: the base's accuracy and the share of its margin over chance each model keeps."""
    n, chance = ev.get("skill_items"), ev.get("skill_chance")
    if not n:
        return None
    shown = [BASE, COLDSTART, *[m.name for m in main_branches(cfg)]]
    out = {"items": n, "chance": chance, "choices": round(1 / chance),
           "table": table(g, [("skill_acc", "accuracy")], shown), "base": None, "kept": []}
    base = g[g.method == BASE]
    if not base.empty and "skill_acc" in base and base["skill_acc"].notna().all():
        acc = out["base"] = float(base["skill_acc"].iloc[0])
        for method in shown[1:]:
            row = g[g.method == method]
            if not row.empty and acc > chance and "skill_acc" in row and row["skill_acc"].notna().all():
                out["kept"].append({"method": method, "share": (float(row["skill_acc"].iloc[0]) - chance) / (acc - chance)})
    return out


def cmrc(g) -> dict[str, Any]:
    """CMRC 2018 dev is the paper's benchmark; a base at its floor makes every tax on it meaningless."""
    from semrl.evaluation.stats import bound_flag

    base = g[g.method == BASE]
    if base.empty or "cmrc_avg" not in base or base["cmrc_avg"].isna().all():
        return {"generated": False}
    value = float(base["cmrc_avg"].iloc[0])
    return {"generated": True, "base": value, "at_floor": bool(bound_flag([value], 0.0, 100.0, FLOOR_TOLERANCE * 100))}


def gate(ev: dict[str, Any]) -> dict[str, Any] | None:
    """The cold-start gate per seed (semrl.training.gate), as evaluation collected it: did the cold start read
    its input before the branches started from it?"""
    gates = ev.get("gate") or {}
    if not gates:
        return None
    return {"settings": next(iter(gates.values())),
            "seeds": [{"seed": seed, **g} for seed, g in sorted(gates.items(), key=lambda kv: int(kv[0]))]}


def reward_signal(ev: dict[str, Any]) -> dict[str, Any] | None:
    """Does the semantic reward rank completions as the task metric does? Spearman over the cold start's sampled
    dev completions (goal >= 0.3), pooled and per source, per seed; inside a prompt's group (what GRPO's
    advantages see: semrl.training.tau.group_check) agreement, zero-spread groups and the input-dependent share."""
    signal = {seed: info for seed, info in (ev.get("reward_signal") or {}).items() if "dev_samples" in info}
    if not signal:
        return None
    seeds = sorted(signal.items(), key=lambda kv: int(kv[0]))
    groups = [(seed, info["within_group"]) for seed, info in seeds if info.get("within_group")]
    return {"against": next(iter(signal.values())).get("similarity_against", "reference"),
            "seeds": [{"seed": seed, **info} for seed, info in seeds],
            "groups": [{"seed": seed, "rows": [("all", c["all"]), *c["by_source"].items()]} for seed, c in groups],
            "group_settings": groups[0][1] if groups else None}


def trajectory_rows(ev: dict[str, Any], metric: str) -> list[dict[str, Any]]:
    """One row per branch x seed x scored step: task gain and LM tax, both relative to the branch's step 0
    (the cold start, which both branches of a seed share)."""
    rows = []
    for key, points in ev.get("trajectories", {}).items():
        method, seed = key.split("/")
        start = next((p for p in points if p["step"] == 0), None)
        if start is None:
            continue
        for p in sorted(points, key=lambda p: p["step"]):
            rows.append({"task": ev["task"], "method": method, "seed": int(seed), "step": p["step"],
                         "task_gain": p[metric] - start[metric], "tax_lm_nll": p["lm_nll"] - start["lm_nll"],
                         "sim_eval": p["sim_eval"], "length_ratio": p["length_ratio"], "reward": p.get("reward")})
    return rows


def task_data(cfg: Config, task: Task, ev: dict[str, Any], g, pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """One task's part of the report: its tables, gate, reward signal, flags, preference and paired comparisons."""
    main = [m.name for m in main_branches(cfg)]
    rl = [m.name for m in main_branches(cfg) if m.trainer == "grpo"]
    ablations = [m.name for m, _ in varied(cfg)]
    tc = [(m, METRIC_LABELS[m]) for m in task.metrics]
    return {
        "name": task.name, "test_examples": ev["test_examples"], "cmrc_questions": ev["cmrc_questions"],
        "main": [methods(cfg)[m].title for m in main], "rl": [methods(cfg)[m].title for m in rl],
        "by_source": source_tables(task, ev),
        "cold_vs_rl": table(g, tc + [("sim_reward", "sim (reward emb.)"), ("sim_eval", "sim (eval emb.)")],
                            [BASE, *BASELINES, COLDSTART, *rl]),
        "main_table": table(g, tc + [("sim_reward", "sim (reward)"), ("sim_eval", "sim (eval)"),
                                     ("cmrc_avg", "CMRC Avg"), ("cmrc_f1", "CMRC F1"), ("tax_cmrc_avg", "tax (Avg drop)"),
                                     ("nll_increase_mean", "ΔNLL mean"), ("nll_increase_p90", "ΔNLL P90"),
                                     ("kl_p90", "KL P90")], [BASE, *main]),
        "cmrc": cmrc(g),
        "probe": {"texts": ev.get("lm_probe_texts", 0), **(ev.get("lm_probe_sources") or {})},
        "drift": table(g, [("lm_nll_mean", "NLL"), ("lm_nll_increase_vs_base_mean", "ΔNLL vs base"),
                           ("lm_kl_vs_base_mean", "KL vs base"), ("lm_nll_increase_vs_coldstart_mean", "ΔNLL vs cold start"),
                           ("lm_kl_vs_coldstart_mean", "KL vs cold start")], [BASE, COLDSTART, *main]),
        "skill": skill(ev, g, cfg), "gate": gate(ev), "reward_signal": reward_signal(ev),
        "metric": task.primary_metric, "metric_label": metric_label(task.primary_metric),
        "reference_length": ev.get("reference_mean_length_chars", float("nan")),
        "reference_distinct": ev.get("reference_distinct_rate"),
        "outputs": table(g, [("language_consistency", "in target script"), ("mean_length_chars", "mean length"),
                             ("empty_rate", "empty"), ("distinct_rate", "distinct")], digits=3),
        "flags": hacking_flags(ev),
        "ablations": table(g, [("sim_reward", "sim (reward)"), ("sim_eval", "sim (eval)"),
                               ("language_consistency", "in target script")], [*rl, *ablations])
        if g.method.isin(ablations).any() else None,
        "preference": ev["preference"], "pairs": pairs, "curves": None,
    }


# --- transfer --------------------------------------------------------------------------------------------------------

def transfer_difference(results: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """from sft − from grpo on `key`, paired by seed (both fine-tune the same seed's models on the same target
    examples and are scored on the same test items): the mean per-seed difference with its paired t-interval.
    The report's one verdict rule: a paired interval, never overlapping independent ones."""
    from semrl.evaluation.stats import paired_t

    by = {(r["source"], r["seed"]): r[key] for r in results if key in r}
    seeds = sorted(s for (src, s) in by if src == "sft" and ("grpo", s) in by)
    if not seeds:
        return None
    t = paired_t([by[("sft", s)] for s in seeds], [by[("grpo", s)] for s in seeds])
    return {"key": key, "seeds": len(seeds), "t": t.as_dict(), "estimated": t.estimated,
            "verdict": verdict(t, None, None) if t.estimated else None}


def transfer(path: Path, known: dict[str, Task]) -> dict[str, Any] | None:
    ev = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"enabled": False}
    if not ev.get("enabled"):
        return None
    target = known[ev["target_task"]]
    df = aggregate([{**r, "method": f"from {r['source']}"} for r in ev["results"]], {})
    return {"source_task": ev["source_task"], "target_task": ev["target_task"], "samples": ev["results"][0]["samples"],
            "table": table(df, [(target.primary_metric, METRIC_LABELS[target.primary_metric]),
                                ("sim_reward", "sim (reward)"), ("sim_eval", "sim (eval)")]),
            "difference": transfer_difference(ev["results"], "sim_eval")}


# --- plots -------------------------------------------------------------------------------------------------------------

# Curves also written as CSV (reports/curves/<column>/<run>.csv): MLflow key -> column and folder name.
CURVE_DATA = {"loss": "loss", "reward": "reward"}


def training_curves(cfg: Config, task: str, ev: dict[str, Any], out: Path) -> tuple[Path | None, list[str]]:
    """Per-branch training curves (loss; GRPO reward per component, KL, completion length) from MLflow: from
    exactly the runs that trained the evaluated models (their summary.json, as the evaluation recorded it;
    a resumed run continues the curve of the run before it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    from semrl.core import tracking
    from semrl.core.methods import run_name

    tracking.setup(cfg)
    client = mlflow.MlflowClient()
    by_name = {run_name(task, r["method"], r["seed"]): r["run_ids"] for r in ev["results"] if r.get("run_ids")}
    if not by_name:
        return None, []

    def history(name: str, key: str):
        points = {}
        for run_id in by_name[name]:  # oldest first: a later run's steps replace an earlier one's
            try:
                points.update({h.step: h.value for h in client.get_metric_history(run_id, key)})
            except mlflow.exceptions.MlflowException:  # not in this store (e.g. logged to another server)
                continue
        return sorted(points.items())

    panels = [("loss", "loss"), ("reward", "total reward"), ("rewards/semantic/mean", "R_sim"),
              ("rewards/language/mean", "R_lang"), ("kl", "KL to cold start"), ("completions/mean_length", "length")]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (key, label) in zip(axes.flat, panels):
        for name in sorted(by_name):
            if hist := history(name, key):
                ax.plot([step for step, _ in hist], [value for _, value in hist], label=name, lw=1.2)
                if key in CURVE_DATA:  # the same points as data, for `dvc plots show/diff` (dvc.yaml `plots:`)
                    rows = "".join(f"{step},{value!r}\n" for step, value in hist)
                    atomic_write_text(out / CURVE_DATA[key] / f"{name}.csv", f"step,{CURVE_DATA[key]}\n{rows}")
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"training curves — {task}")
    fig.tight_layout()
    path = out / f"training_{task}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path, [ids[-1] for ids in by_name.values()]


# Measures of the tax the trade-off plot and tradeoff.csv show, when the evaluation produced them (CMRC EM/F1
# only with eval.cmrc_generate).
TAX_MEASURES = [("lm_nll_increase_vs_base_mean", "LM probe: NLL increase on general Chinese (nats)"),
                ("nll_increase_mean", "NLL increase on CMRC answers (nats)"),
                ("tax_cmrc_avg", "CMRC Avg drop from base (points)")]


def trained_rows(df):
    """The rows of trained variants: not the base, not the trivial baselines (which have no model)."""
    return df[~df.method.isin([BASE, *BASELINES])]


def tax_measures(df) -> list[tuple[str, str]]:
    trained = trained_rows(df)
    return [(x, label) for x, label in TAX_MEASURES if x in trained and trained[x].notna().any()]


def tradeoff_plot(df, out: Path) -> Path:
    """Task gain over base against each measure of the tax there is: the LM probe's drift on plain general
    Chinese (informative at every scale), the NLL drift on CMRC answers, and the CMRC Avg drop (the paper's,
    meaningful at paper scale, when generated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = tax_measures(df)
    fig, axes = plt.subplots(1, len(measures), figsize=(6 * len(measures), 5), squeeze=False)
    for ax, (x, label) in zip(axes[0], measures):
        for task, g in trained_rows(df).groupby("task"):
            for _, row in g.iterrows():
                ax.errorbar(row[x], row["task_gain"], xerr=row.get(f"{x}_ci", 0) or None,
                            yerr=row.get("task_gain_ci", 0) or None, fmt="o", capsize=3)
                ax.annotate(f"{task}:{row['method']}", (row[x], row["task_gain"]), fontsize=8,
                            xytext=(4, 4), textcoords="offset points")
        ax.axhline(0, color="grey", lw=0.8)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_xlabel(f"alignment tax: {label}; lower is better")
        ax.set_ylabel("task gain over base (primary metric)")
        ax.grid(alpha=0.3)
    fig.suptitle("task gain vs alignment tax (mean ± 95 % CI over seeds)")
    fig.tight_layout()
    path = out / "tradeoff.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def trajectory_plot(rows: list[dict[str, Any]], tasks_: dict[str, Task], out: Path) -> Path | None:
    """Task gain against LM tax along training, per task: each branch's mean over seeds at each scored step
    (thick, steps annotated) and each seed (thin). Who pays less tax at equal gain reads off horizontally."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    if not rows:
        return None
    df = pd.DataFrame(rows)
    names = list(dict.fromkeys(df.task))
    fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), 5), squeeze=False)
    for ax, task in zip(axes[0], names):
        d = df[df.task == task]
        for i, (method, g) in enumerate(d.groupby("method", sort=False)):
            color = f"C{i}"
            for _, gs in g.groupby("seed"):
                ax.plot(gs.tax_lm_nll, gs.task_gain, color=color, lw=0.6, alpha=0.4)
            mean = g.groupby("step")[["tax_lm_nll", "task_gain"]].mean()
            ax.plot(mean.tax_lm_nll, mean.task_gain, "o-", color=color, lw=2, label=f"{method} (mean of {g.seed.nunique()} seeds)")
            for step, r in mean.iterrows():
                ax.annotate(str(step), (r.tax_lm_nll, r.task_gain), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.axhline(0, color="grey", lw=0.8)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_xlabel("tax: NLL increase on held-out general Chinese since the cold start (nats)")
        ax.set_ylabel(f"task gain: dev {metric_label(tasks_[task].primary_metric)} since the cold start")
        ax.set_title(f"{task}: gain vs tax along training (labels: step)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "trajectory.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# --- rendering ---------------------------------------------------------------------------------------------------------

@cache
def environment():
    """The Jinja2 environment of templates/: markdown, so no autoescaping; number formats as filters."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=False, autoescape=False)
    env.filters.update(
        fixed=lambda v, digits=4: "–" if v is None or v != v else f"{v:.{digits}f}",
        signed=lambda v, digits=4: "–" if v is None or v != v else f"{v:+.{digits}f}",
        pct=lambda v, digits=0: "–" if v is None else f"{v:.{digits}%}",
        cell=lambda c, digits=4: "–" if c is None else f"{c[0]:.{digits}f} ± {c[1]:.{digits}f}" if c[1] else f"{c[0]:.{digits}f}",
        metric=metric_label, upfirst=lambda s: s[:1].upper() + s[1:])
    env.globals.update(length_ratio=LENGTH_HACKING_RATIO, collapse_ratio=COLLAPSE_RATIO)
    return env


def render(data: dict[str, Any]) -> str:
    """The report's markdown from `build`'s structure."""
    return environment().get_template(TEMPLATE).render(**data).strip() + "\n"


def render_macro(name: str, *args) -> str:
    """One macro of the template on its own (e.g. `flag` for one hacking flag): what the report prints for it."""
    return str(getattr(environment().get_template(MACROS).module, name)(*args)).strip()


def build(cfg: Config) -> dict[str, Any]:
    """Everything the report shows, computed: the aggregated table (a DataFrame, `df`), the paired comparisons
    per task, the answer, the per-task sections, transfer, the plots' paths and the run metadata."""
    from semrl.core import tracking

    out, plots, curves = cfg.report.out_dir, cfg.report.out_dir / "plots", cfg.report.out_dir / "curves"
    plots.mkdir(parents=True, exist_ok=True)
    curves.mkdir(parents=True, exist_ok=True)
    known = tasks(cfg)
    evals = []
    for task in cfg.train.tasks:
        path = cfg.eval.out_dir / f"{task}.json"
        if not path.is_file():
            raise SemrlError(f"{path}: missing (run `dvc repro evaluate@{task}`)")
        evals.append(json.loads(path.read_text(encoding="utf-8")))
    df = aggregate([row for ev in evals for row in ev["results"]], {t: known[t].primary_metric for t in known})
    meta = {"profile": cfg.profile, "git_commit": tracking.git_commit(),
            "data_version": tracking.data_version(), "seeds": cfg.train.seeds, "tasks": cfg.train.tasks,
            "machine": tracking.machine()}
    pairs = {ev["task"]: paired_comparisons(cfg, known[ev["task"]], ev) for ev in evals}
    traj = [r for ev in evals for r in trajectory_rows(ev, known[ev["task"]].primary_metric)]
    rel = lambda path: path.relative_to(out).as_posix() if path else None
    sections, linked = [], []
    for ev in evals:
        section = task_data(cfg, known[ev["task"]], ev, df[df.task == ev["task"]], pairs[ev["task"]])
        curve, run_ids = training_curves(cfg, ev["task"], ev, curves)
        section["curves"] = rel(curve)
        sections.append(section)
        linked += run_ids
    return {"meta": meta, "df": df, "evals": evals, "pairs": pairs, "trajectory": traj, "linked": linked,
            "answers": [answer(cfg, known[ev["task"]], pairs[ev["task"]], ev) for ev in evals],
            "trajectory_plot": rel(trajectory_plot(traj, known, plots)), "tasks": sections,
            "transfer": transfer(cfg.eval.out_dir / "transfer.json", known), "tradeoff_plot": rel(tradeoff_plot(df, plots))}


def metrics_summary(df, evals: list[dict[str, Any]],
                    pairs: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """reports/metrics.json (a DVC metric, numbers only so `dvc exp show` stays readable): every aggregated
    number per task and method, the preference, and each paired comparison's estimate and t-interval
    (`<a>-<b>.<key>[.<source>]`). What the numbers came from is in reports/run_meta.json."""
    metrics = {"tasks": {}}
    for _, row in df.iterrows():
        metrics["tasks"].setdefault(row["task"], {})[row["method"]] = {
            k: round(float(v), 6) for k, v in row.items() if k in COLUMNS + ["tax_cmrc_avg", "task_gain"] and v == v}
    for ev in evals:
        metrics["tasks"][ev["task"]]["preference"] = {k: v for k, v in ev["preference"].items() if k.endswith("_rate")}
        for p in (pairs or {}).get(ev["task"], []):
            name = f"{p['a']}-{p['b']}.{p['key']}" + (f".{p['source']}" if p["source"] else "")
            t = p["t"]
            metrics["tasks"][ev["task"]].setdefault("paired", {})[name] = {
                k: round(float(t[k]), 6) for k in ("estimate", "low", "high") if t[k] == t[k]}
    return metrics


def log_report(cfg: Config, df, metrics: dict[str, Any], out: Path, linked: list[str]) -> None:
    """The MLflow `report` run: the table, the markdown, the plots and every number, linked to its runs."""
    import mlflow

    from semrl.core import tracking

    tags = {"semrl.kind": "report", "semrl.report.runs": ",".join(linked), "mlflow.parentRunId": tracking.pipeline_parent(cfg)}
    with tracking.run(cfg, "report", tags=tags):
        mlflow.log_table(df, artifact_file="alignment_tax.json")
        mlflow.log_artifact(str(out / "alignment_tax.md"))
        mlflow.log_artifact(str(out / "alignment_tax.csv"))
        for png in [*(out / "plots").glob("*.png"), *(out / "curves").glob("*.png")]:
            mlflow.log_artifact(str(png), artifact_path="plots")
        flat = {f"{t}.{m}.{k}": v for t, ms in metrics["tasks"].items() for m, ks in ms.items() for k, v in ks.items()
                if isinstance(v, (int, float))}
        mlflow.log_metrics({k.replace("/", "_"): v for k, v in flat.items()})


def run(cfg: Config) -> dict[str, Any]:
    import pandas as pd

    data = build(cfg)
    out, plots, df = cfg.report.out_dir, cfg.report.out_dir / "plots", data["df"]
    df.to_csv(out / "alignment_tax.csv", index=False)
    pd.DataFrame(data["trajectory"], columns=["task", "method", "seed", "step", "task_gain", "tax_lm_nll", "sim_eval",
                                              "length_ratio", "reward"]).to_csv(plots / "trajectory.csv", index=False)
    df[["task", "method", *[x for x, _ in tax_measures(df)], "task_gain"]].dropna(subset=["task_gain"]).to_csv(
        plots / "tradeoff.csv", index=False)
    atomic_write_text(out / "alignment_tax.md", render(data))
    metrics = metrics_summary(df, data["evals"], data["pairs"])
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(out / "run_meta.json", json.dumps(data["meta"], indent=2) + "\n")
    log_report(cfg, df, metrics, out, data["linked"])
    return metrics


def step(params: str) -> dict[str, Any]:
    """The pipeline step `report` as a flow's step process and `semrl report` run it."""
    from semrl.core.config import load_config

    out = run(load_config(params))
    print("report: reports/alignment_tax.md, reports/alignment_tax.csv, reports/metrics.json, reports/plots/")
    return out
