"""DVC stage `report`: the comparative alignment-tax report from reports/eval/*.json — markdown + CSV tables
with mean ± 95 % CI over seeds, reports/metrics.json (a DVC metric), the trade-off plot (reports/plots/,
DVC plots), training curves per branch (reports/curves/), and an MLflow `report` run linked to the
training runs it summarises."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from semrl import SemrlError
from semrl.core.config import Config
from semrl.core.io import atomic_write_text
from semrl.core.methods import methods
from semrl.core.tasks import Task, tasks

METRIC_LABELS = {"bleu": "BLEU-4", "chrf": "chrF", "rouge_l": "ROUGE-L"}
COLUMNS = ["bleu", "chrf", "rouge_l", "sim_reward", "sim_eval", "language_consistency", "mean_length_chars",
           "empty_rate", "distinct_rate", "cmrc_em", "cmrc_f1", "cmrc_avg", "nll_increase_mean", "nll_increase_p90", "kl_p90",
           "lm_nll_mean", "lm_nll_increase_vs_base_mean", "lm_kl_vs_base_mean", "lm_nll_increase_vs_coldstart_mean",
           "lm_kl_vs_coldstart_mean", "skill_acc"]


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
        base = df[(df.task == task) & (df.method == "base")]
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


def _cell(row, col: str, digits: int = 4) -> str:
    if col not in row or row[col] != row[col]:  # missing or NaN
        return "–"
    ci = row.get(f"{col}_ci", 0.0)
    return f"{row[col]:.{digits}f} ± {ci:.{digits}f}" if ci else f"{row[col]:.{digits}f}"


def _table(df, columns: list[tuple[str, str]], digits: int = 4) -> str:
    head = "| method | seeds | " + " | ".join(label for _, label in columns) + " |"
    sep = "|---|---|" + "---|" * len(columns)
    lines = [head, sep]
    for _, row in df.iterrows():
        lines.append(f"| {row['method']} | {row['n_seeds']} | " + " | ".join(_cell(row, c, digits) for c, _ in columns)
                     + " |")
    return "\n".join(lines)


def transfer_difference(results: list[dict[str, Any]], key: str) -> str:
    """from sft − from grpo on `key`, paired by seed (both fine-tune the same seed's models on the same target
    examples and are scored on the same test items): the mean per-seed difference with its paired t-interval.
    The report's one verdict rule: a paired interval, never overlapping independent ones."""
    from semrl.evaluation.stats import paired_t

    by = {(r["source"], r["seed"]): r[key] for r in results if key in r}
    seeds = sorted(s for (src, s) in by if src == "sft" and ("grpo", s) in by)
    if not seeds:
        return f"{key}: not available"
    a, b = [by[("sft", s)] for s in seeds], [by[("grpo", s)] for s in seeds]
    if len(seeds) < 2:
        return f"{key}: from sft − from grpo {a[0] - b[0]:+.4f} — one seed, no interval"
    t = paired_t(a, b)
    reading = "higher" if t.low > 0 else "lower" if t.high < 0 else "no difference shown (95 % interval holds 0)"
    return (f"{key}: from sft − from grpo {t.estimate:+.4f}, paired t 95 % CI [{t.low:+.4f}, {t.high:+.4f}] over "
            f"{len(seeds)} seeds — {reading}")


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


def paired_lines(pairs: list[dict[str, Any]]) -> list[str]:
    rows = ["| a − b | metric | source | seeds × items | a | b | a − b | paired t 95 % CI | bootstrap 95 % CI | verdict |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for p in pairs:
        t, bo = p["t"], p["bootstrap"]
        ci = lambda r: f"[{r['low']:+.4f}, {r['high']:+.4f}]" if r["low"] == r["low"] else "–"
        rows.append(f"| {p['a']} − {p['b']} | {p['key']} | {p['source'] or 'all'} | {p['seeds']} × {p['items']} | "
                    f"{p['mean_a']:.4f} | {p['mean_b']:.4f} | {t['estimate']:+.4f} | {ci(t)} | {ci(bo)} | "
                    f"{p['verdict']} |")
    return rows


def source_tables(task: Task, ev: dict[str, Any]) -> list[str]:
    """The task metrics per data source (real and synthetic test items apart), mean ± CI over seeds."""
    results = [r for r in ev["results"] if "by_source" in r]
    if not results:
        return []
    synthetic = set(ev.get("items", {}).get("synthetic_sources", []))
    md = ["### By data source", "", "Synthetic sources are derived data (labelled in the prepared records); "
          "each is scored on its own held-out items.", ""]
    for src in sorted(results[0]["by_source"]):
        flat = [{"task": r["task"], "method": r["method"], "seed": r["seed"], **r["by_source"][src]} for r in results]
        df = aggregate(flat, {task.name: task.primary_metric})
        label = "synthetic (derived)" if src in synthetic else "real"
        md += [f"**{src}** — {label}, {flat[0]['n']} test items", "",
               _table(df, [(m, METRIC_LABELS[m]) for m in task.metrics] + [("mean_length_chars", "mean length")]), ""]
    return md


NOISE_FLOOR = "grpo_noise_floor"  # rewards.ablations.noise_floor: GRPO with its rewards shuffled across each batch


def paired_comparisons(task: Task, ev: dict[str, Any]) -> list[dict[str, Any]]:
    """The comparisons the research question needs: each branch's task gain over the cold start they
    share, SFT against GRPO on the task, and their drift on general Chinese text (LM probe)."""
    sources = sorted(set(ev.get("items", {}).get("sources", [])))
    by_source = [None] + (sources if len(sources) > 1 else [])  # all items, then each source alone
    m = task.primary_metric
    wanted = [(a, b, m, src) for a, b in (("sft", "coldstart"), ("grpo", "coldstart"), ("sft", "grpo"),
                                          (  # GRPO against its noise floor, when that branch ran
                                              "grpo", NOISE_FLOOR))
              for src in by_source]
    # The trivial baselines (copy the input, or its lead): a branch that does not reach them has not learnt the task.
    wanted += [(a, b, m, None) for a in ("coldstart", "sft", "grpo") for b in ("copy_input", "copy_lead")]
    wanted += [("sft", "grpo", k, None) for k in ("lm_nll_increase_vs_coldstart", "lm_kl_vs_coldstart",
                                                 "lm_nll_increase_vs_base")]
    # The general skill (riddle -> answer, chat format): what the cold start keeps of the base's, what
    # each branch loses from the cold start, and SFT against GRPO.
    wanted += [(a, b, "skill_acc", None) for a, b in (("coldstart", "base"), ("sft", "coldstart"),
                                                      ("grpo", "coldstart"), ("sft", "grpo"))]
    return [p for p in (paired(ev, *w) for w in wanted) if p is not None]


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
def probe_note(ev: dict[str, Any]) -> str:
    src = ev.get("lm_probe_sources") or {}
    parts = [f"{src.get('heldout_lm_lines', 0)} held-out lines of the base's LM text"]
    if src.get("cmrc_dev_contexts"):
        parts.append(f"{src['cmrc_dev_contexts']} CMRC 2018 dev contexts (no stage trains on them)")
    return (f"{ev.get('lm_probe_texts', 0)} texts, paired across variants: " + " + ".join(parts) +
            "; each scored as plain language modelling on its first `eval.lm_probe_max_tokens` tokens.")


TAX_MEASURES = [("lm_nll_increase_vs_base_mean", "LM probe: NLL increase on general Chinese (nats)"),
                ("nll_increase_mean", "NLL increase on CMRC answers (nats)"),
                ("tax_cmrc_avg", "CMRC Avg drop from base (points)")]


def trained_rows(df):
    """The rows of trained variants: not the base, not the trivial baselines (which have no model)."""
    return df[~df.method.isin(["base", "copy_input", "copy_lead"])]


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
        metric = METRIC_LABELS.get(tasks_[task].primary_metric, tasks_[task].primary_metric)
        ax.set_xlabel("tax: NLL increase on held-out general Chinese since the cold start (nats)")
        ax.set_ylabel(f"task gain: dev {metric} since the cold start")
        ax.set_title(f"{task}: gain vs tax along training (labels: step)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "trajectory.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def hacking_flags(ev: dict[str, Any]) -> list[str]:
    """Reward-hacking flags for every RL-trained variant and seed: test outputs longer than
    LENGTH_HACKING_RATIO x the references on average, fewer distinct outputs than COLLAPSE_RATIO x its
    seed's cold start's (one answer for many inputs), or the training reward rising while the independent
    evaluation embedder's similarity to the references falls (dev trajectory, first to last point)."""
    ref_len = ev.get("reference_mean_length_chars")
    rl = {k.split("/")[0] for k, points in ev.get("trajectories", {}).items() if any(p.get("reward") is not None
                                                                                   for p in points)}
    lines = []
    for r in ev["results"]:
        if r["method"] not in rl or r.get("seed") is None:
            continue
        who = f"{r['method']} seed {r['seed']}"
        if ref_len and r.get("mean_length_chars", 0) > LENGTH_HACKING_RATIO * ref_len:
            lines.append(f"- **{who}: outputs {r['mean_length_chars'] / ref_len:.2f}× the reference length** "
                         f"(> {LENGTH_HACKING_RATIO}): possible length hacking")
        cold = next((c for c in ev["results"] if c["method"] == "coldstart" and c.get("seed") == r["seed"]), {})
        if cold.get("distinct_rate") and r.get("distinct_rate", 1.0) < COLLAPSE_RATIO * cold["distinct_rate"]:
            lines.append(f"- **{who}: {r['distinct_rate']:.0%} of its outputs distinct, against "
                         f"{cold['distinct_rate']:.0%} for its cold start** (< {COLLAPSE_RATIO}×): its answers stop "
                         "depending on the input")
        points = ev["trajectories"].get(f"{r['method']}/{r['seed']}", [])
        rewards = [p for p in points if p.get("reward") is not None]
        if len(rewards) >= 2 and points:
            d_reward = rewards[-1]["reward"] - rewards[0]["reward"]
            d_sim = points[-1]["sim_eval"] - points[0]["sim_eval"]
            if d_reward > 0 and d_sim < 0:
                lines.append(f"- **{who}: reward rose {d_reward:+.3f} while the independent similarity fell "
                             f"{d_sim:+.4f}**: possible reward hacking")
    return lines or [f"- no flag (no RL variant beyond {LENGTH_HACKING_RATIO}× the reference length or below "
                     f"{COLLAPSE_RATIO}× its cold start's distinct outputs; none whose reward rose while the "
                     "independent similarity fell)"]


def reward_signal_lines(task: Task, ev: dict[str, Any]) -> list[str]:
    """Does the semantic reward rank completions as the task metric does? Spearman over the cold start's
    sampled dev completions (goal >= 0.3), pooled and per data source, per seed; the evaluation
    embedder's agreement with the metric beside it."""
    signal = {seed: info for seed, info in ev.get("reward_signal", {}).items() if "dev_samples" in info}
    if not signal:
        return ["No reward-signal check (rewards.tau is a number, so the cold start sampled nothing).", ""]
    m = task.primary_metric
    fmt = lambda v: "–" if v is None else f"{v:+.3f}"
    lines = [f"Spearman correlation with sentence {METRIC_LABELS.get(m, m)} over the cold start's sampled dev "
             "completions (goal ≥ 0.3): R_sim (reward embedder, against "
             f"the {next(iter(signal.values())).get('similarity_against', 'reference')}) and the evaluation "
             "embedder.", "", "| seed | source | n | τ | R_sim ρ | eval-embedder ρ |", "|---|---|---|---|---|---|"]
    for seed, info in sorted(signal.items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {seed} | all | {info.get('dev_samples', '–')} | {info['tau']:.4f} | "
                     f"{fmt(info.get(f'spearman_similarity_{m}'))} | {fmt(info.get(f'spearman_eval_similarity_{m}'))} |")
        for source, b in info.get("by_source", {}).items():
            lines.append(f"| {seed} | {source} | {b['n']} | | {fmt(b['spearman_similarity'])} | "
                         f"{fmt(b['spearman_eval_similarity'])} |")
    return lines + [""] + group_signal_lines(task, signal)


def gate_lines(task: Task, ev: dict[str, Any]) -> list[str]:
    """The cold-start gate per seed (semrl.training.gate): did the cold start read its input before the
    branches started from it?"""
    gates = ev.get("gate") or {}
    if not gates:
        return ["Off (`train.coldstart.gate.enabled: false`): the branches start from a cold start nobody checked "
                "for reading its input.", ""]
    m = METRIC_LABELS.get(task.primary_metric, task.primary_metric)
    first = next(iter(gates.values()))
    lines = [f"Checked every {first['every']} steps up to {first['cap']} on {first['dev_samples_per_source']} dev rows "
             f"per source (greedy): distinct outputs ≥ {first['min_distinct']:.0%} on each source whose references "
             f"are that distinct, and on synthetic sources {m} above both copy baselines. A branch starts only from "
             "a cold start that passed (`train.coldstart.gate.require`).", "",
             f"| seed | passed | at step | steps | source | distinct (references) | {m} | copy_input / copy_lead |",
             "|---|---|---|---|---|---|---|---|"]
    for seed, g in sorted(gates.items(), key=lambda kv: int(kv[0])):
        for i, (source, s) in enumerate(g["by_source"].items()):
            failed = ("**no: precondition failed**, no branch" if g.get("require", True)
                      else "**no** (the branches started anyway: `require: false`)")
            head = (f"| {seed} | {'yes' if g['passed'] else failed} | {g['passed_at_step'] or '–'} | {g['steps']} |"
                    if i == 0 else "| | | | |")
            copy = (f"{s[f'copy_input_{task.primary_metric}']:.3f} / {s[f'copy_lead_{task.primary_metric}']:.3f}"
                    if s.get("synthetic") else "–")
            lines.append(f"{head} {source} | {s['distinct_rate']:.2f} ({s['reference_distinct_rate']:.2f}) | "
                         f"{s[task.primary_metric]:.3f} | {copy} |")
    return lines + [""]


def group_signal_lines(task: Task, signal: dict[str, dict[str, Any]]) -> list[str]:
    """The same question inside a prompt's group of completions, the only differences GRPO's advantages
    see (semrl.training.tau.group_check): a pooled correlation can come from differences between prompts."""
    checked = {seed: info["within_group"] for seed, info in signal.items() if info.get("within_group")}
    if not checked:
        return []
    m = METRIC_LABELS.get(task.primary_metric, task.primary_metric)
    first = next(iter(checked.values()))
    pct = lambda c: "–" if c["pair_agreement"] is None else f"{c['pair_agreement']:.0%} ({c['pairs']})"
    rho = lambda c: "–" if c["spearman_mean"] is None else f"{c['spearman_mean']:+.3f}"
    lines = [f"Inside a group ({first['prompts']} dev prompts × {first['generations']} completions sampled as GRPO "
             f"samples, the reward as configured): pair agreement is the share of a prompt's completion pairs that "
             f"the first ranks as the second does (50 % = a coin; pairs compared in brackets), ρ̄ the mean "
             f"within-group Spearman. A reward that prefers longer completions more than {m} does invites length "
             "hacking. *Zero spread*: groups whose completions all earn the same reward (their advantages are "
             "zero: no gradient; goal ≤ 30 %). *Input-dependent*: the share of the reward's within-group variation "
             "that depends on the prompt's own input — the reward minus its mean against other prompts' references "
             "(goal ≥ 0.5; what one output good for every prompt cannot earn). Goal for agreement: ≥ 65 %.", "",
             f"| seed | source | reward ~ {m}: agreement | ρ̄ | reward ~ length | {m} ~ length | zero spread | "
             "input-dependent |", "|---|---|---|---|---|---|---|---|"]
    share = lambda v: "–" if v is None else f"{v:.0%}"
    for seed, info in sorted(checked.items(), key=lambda kv: int(kv[0])):
        for source, c in [("all", info["all"]), *info["by_source"].items()]:
            lines.append(f"| {seed} | {source} | {pct(c['reward_vs_metric'])} | {rho(c['reward_vs_metric'])} | "
                         f"{pct(c['reward_vs_length'])} | {pct(c['metric_vs_length'])} | "
                         f"{share(c.get('zero_spread_groups'))} | {share(c.get('input_dependent_share'))} |")
    return lines + [""]


def answer_lines(task: Task, pairs: list[dict[str, Any]], synthetic: set[str] = frozenset(),
                 signal: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """The research question's answer for one task, read off the paired verdicts as they came out, and
    beside it what GRPO had to climb: how its reward ordered a prompt's own completions (`signal`: the
    reward-signal checks per seed, semrl.training.tau)."""
    def find(a, b, key, source=None):
        return next((p for p in pairs if (p["a"], p["b"], p["key"], p["source"]) == (a, b, key, source)), None)

    def say(p, what):
        if p is None:
            return f"{what}: not measured"
        t = p["t"]
        ci = f"[{t['low']:+.4f}, {t['high']:+.4f}]" if t["low"] == t["low"] else "no interval"
        return f"{what}: {t['estimate']:+.4f} (95 % CI {ci}, {p['seeds']} seeds) — {p['verdict']}"

    m = task.primary_metric
    sft_gain, grpo_gain = find("sft", "coldstart", m), find("grpo", "coldstart", m)
    learnt = [name for name, p in (("strong SFT", sft_gain), ("GRPO", grpo_gain)) if p and p["verdict"] == "higher"]
    sources = sorted({p["source"] for p in pairs if p["source"] is not None})
    per_source = [f"  - {src} ({'synthetic' if src in synthetic else 'real'}): "
                  f"{say(find(a, b, m, src), label)}" for src in sources
                  for a, b, label in (("sft", "coldstart", "SFT − cold start"), ("grpo", "coldstart", "GRPO − cold start"),
                                      ("sft", "grpo", "SFT − GRPO"), ("grpo", NOISE_FLOOR, "GRPO − noise floor"))
                  if find(a, b, m, src)]
    return [f"**{task.name}** (primary metric {METRIC_LABELS.get(m, m)}, all test items):", "",
            f"- {say(sft_gain, 'strong SFT − cold start, task')}",
            f"- {say(grpo_gain, 'GRPO − cold start, task')}",
            f"- {say(find('sft', 'grpo', m), 'strong SFT − GRPO, task')}",
            f"- {say(find('grpo', NOISE_FLOOR, m), 'GRPO − its noise floor (the same GRPO, rewards shuffled across each batch), task') if find('grpo', NOISE_FLOOR, m) else 'GRPO − its noise floor: not run (`rewards.ablations.noise_floor.enabled`); without it a GRPO gain is not shown to come from the reward'}",
            *(["- per data source:", *per_source] if per_source else []),
            f"- {say(find('sft', 'grpo', 'lm_nll_increase_vs_coldstart'), 'strong SFT − GRPO, LM tax (ΔNLL since the cold start; > 0: SFT forgot more)')}",
            f"- {say(find('sft', 'grpo', 'skill_acc'), 'strong SFT − GRPO, general skill (riddle accuracy; < 0: SFT forgot more)')}",
            *baseline_lines(find, m),
            f"- Both branches learnt the task (beat the cold start, paired CI excluding 0): "
            f"{'yes' if len(learnt) == 2 else 'no — only ' + ', '.join(learnt) if learnt else 'no — neither'}. "
            "Without that, \"no tax\" would be trivially true.", *climb_lines(task, signal or {}), ""]


EXPERIMENT_ARMS = ("C0: the default cold start; CG: gated until it reads its input; from CG with G 8, T 1.0, top-p 1.0, "
                   "`dr_grpo`, no reward scaling, 48-token completions: N+ rewards shuffled across the batch (noise "
                   "floor), S+ the paper's R, O+ an oracle (the task metric itself); _lr3e-5: at GRPO lr 3e-5 (the "
                   "rest 1e-4)")


def experiment_lines(path: Path) -> list[str]:
    """The discriminating experiment's paired comparisons over all dev items (bench/grpo_discriminate.py:
    seeds x items bootstrap), as sub-items of the answer; nothing when the file is missing."""
    if not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = [c for c in data["comparisons"] if c["source"] == "all"]
    return [f"- The discriminating experiment ({path.as_posix()}, dev split, seeds {data['seeds']}, "
            f"{data['dev_rows_per_source']} rows per source; {EXPERIMENT_ARMS}):",
            *[f"  - {c['a']} − {c['b']}: {c['diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]"
              + (" — excludes 0" if c["low"] > 0 or c["high"] < 0 else " — holds 0") for c in rows]]


def baseline_lines(find, m: str) -> list[str]:
    """Each copy baseline that scores at least the cold start (e.g. copy-the-lead for headlines): does either
    branch reach it? A baseline below the cold start (copying Chinese for Tibetan output) asks nothing."""
    lines = []
    for b in ("copy_input", "copy_lead"):
        cold = find("coldstart", b, m)
        if cold is None or cold["mean_a"] > cold["mean_b"]:
            continue
        reached = [name for name, a in (("strong SFT", "sft"), ("GRPO", "grpo"))
                   if (p := find(a, b, m)) and p["t"]["low"] == p["t"]["low"] and p["t"]["low"] > 0]
        diffs = "; ".join(f"{name} − {b} {p['t']['estimate']:+.4f} [{p['t']['low']:+.4f}, {p['t']['high']:+.4f}]"
                          for name, a in (("strong SFT", "sft"), ("GRPO", "grpo")) if (p := find(a, b, m)))
        lines.append(f"- The {b} baseline ({cold['mean_b']:.4f}) scores at least the cold start ({cold['mean_a']:.4f}); "
                     f"above it (paired CI excluding 0): {', '.join(reached) if reached else 'neither branch'} ({diffs}).")
    return lines


def climb_lines(task: Task, signal: dict[str, dict[str, Any]]) -> list[str]:
    """One line: per data source, the share of a prompt's completion pairs the reward ordered as the task
    metric does, per seed (50 % = a coin): GRPO's advantages carry nothing else."""
    checked = [(seed, info["within_group"]) for seed, info in sorted(signal.items(), key=lambda kv: int(kv[0]))
               if info.get("within_group")]
    if not checked:
        return []
    sources = sorted({src for _, c in checked for src in c["by_source"]})
    pct = lambda c: "–" if c is None or c["reward_vs_metric"]["pair_agreement"] is None else \
        f"{c['reward_vs_metric']['pair_agreement']:.0%}"
    parts = [f"{src} {' / '.join(pct(c['by_source'].get(src)) for _, c in checked)}" for src in sources]
    return [f"- What GRPO had to climb: its reward ordered a prompt's own completions as "
            f"{METRIC_LABELS.get(task.primary_metric, task.primary_metric)} does in {'; '.join(parts)} of pairs "
            f"(seeds {', '.join(str(s) for s, _ in checked)}; 50 % is a coin; \"Reward signal\" below)."]


def transfer_section(path: Path, tasks: dict[str, Task]) -> list[str]:
    md = ["## Few-shot transfer", ""]
    ev = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"enabled": False}
    if not ev.get("enabled"):
        return md + ["Not enabled (`transfer.enabled`).", ""]
    target = tasks[ev["target_task"]]
    df = aggregate([{**r, "method": f"from {r['source']}"} for r in ev["results"]], {})
    metric = [(target.primary_metric, METRIC_LABELS[target.primary_metric])]
    md += [f"{ev['source_task']} models fine-tuned on {ev['results'][0]['samples']} {ev['target_task']} examples "
           f"(paper: 1,000 headlines; sim 0.5690 from RL vs 0.5456 from SFT).", "",
           _table(df, metric + [("sim_reward", "sim (reward)"), ("sim_eval", "sim (eval)")]), "",
           f"- {transfer_difference(ev['results'], 'sim_eval')}", ""]
    return md


def cmrc_note(g) -> str:
    """CMRC 2018 dev is the paper's benchmark; a base at its floor makes every tax on it meaningless."""
    from semrl.evaluation.stats import bound_flag

    base = g[g.method == "base"]
    if base.empty or "cmrc_avg" not in base or base["cmrc_avg"].isna().all():
        return "CMRC 2018 EM/F1 not generated (`eval.cmrc_generate: false`); the answer-NLL drift stays."
    value = float(base["cmrc_avg"].iloc[0])
    if bound_flag([value], 0.0, 100.0, FLOOR_TOLERANCE * 100):
        return (f"**CMRC 2018 dev: the base scores {value:.2f} of 100 — at the floor: not informative.** "
                "The tax is read from the LM probe and the general skill below.")
    return f"CMRC 2018 dev: base Avg {value:.2f} of 100."


def skill_lines(ev: dict[str, Any], g) -> list[str]:
    n, chance = ev.get("skill_items"), ev.get("skill_chance")
    if not n:
        return ["General skill probe off (`eval.skill_samples: 0`).", ""]
    base = g[g.method == "base"]
    lines = [f"Xiehouyu riddle → answer in chat format, {n} riddles the base was taught, multiple choice among "
             f"{round(1 / chance)} answers by mean token NLL (chance {chance:.2f}).", "",
             _table(g[g.method.isin(["base", "coldstart", "sft", "grpo"])], [("skill_acc", "accuracy")]), ""]
    if not base.empty and "skill_acc" in base and base["skill_acc"].notna().all():
        acc = float(base["skill_acc"].iloc[0])
        lines.append(f"The base scores {acc:.3f}: " + ("the probe measures a skill the base has (≥ 0.5)." if acc >= 0.5
                     else "**below 0.5: the base does not clearly have the skill; read its drops with care.**"))
        for method in ("coldstart", "sft", "grpo"):
            row = g[g.method == method]
            if not row.empty and acc > chance and "skill_acc" in row and row["skill_acc"].notna().all():
                kept = (float(row["skill_acc"].iloc[0]) - chance) / (acc - chance)
                lines.append(f"- {method} keeps {kept:.0%} of the base's margin over chance.")
        lines.append("")
    return lines


def task_section(cfg: Config, task: Task, ev: dict[str, Any], g, curves: Path, out: Path,
                 pairs: list[dict[str, Any]]) -> tuple[list[str], list]:
    """One task's part of the report: the tables, the preference, the verdicts and its training curves;
    returns (markdown lines, the MLflow runs the curves came from)."""
    ablations = [m.name for m in methods(cfg).values() if m.ablation]
    tc = [(m, METRIC_LABELS[m]) for m in task.metrics]
    md = [f"## {task.name}", "", f"{ev['test_examples']} test examples, {ev['cmrc_questions']} CMRC questions.",
          "", *source_tables(task, ev), "### Cold start vs GRPO", "",
          _table(g[g.method.isin(["base", "copy_input", "copy_lead", "coldstart", "grpo"])],
                 tc + [("sim_reward", "sim (reward emb.)"), ("sim_eval", "sim (eval emb.)")]), "",
          "### Strong SFT vs GRPO: task skill and alignment tax", "",
          _table(g[g.method.isin(["base", "sft", "grpo"])],
                 tc + [("sim_reward", "sim (reward)"), ("sim_eval", "sim (eval)"), ("cmrc_avg", "CMRC Avg"),
                       ("cmrc_f1", "CMRC F1"), ("tax_cmrc_avg", "tax (Avg drop)"),
                       ("nll_increase_mean", "ΔNLL mean"), ("nll_increase_p90", "ΔNLL P90"), ("kl_p90", "KL P90")]),
          "", cmrc_note(g), "", "### Drift on general Chinese text (LM probe, plain text)", "", probe_note(ev), "",
          _table(g[g.method.isin(["base", "coldstart", "sft", "grpo"])],
                 [("lm_nll_mean", "NLL"), ("lm_nll_increase_vs_base_mean", "ΔNLL vs base"),
                  ("lm_kl_vs_base_mean", "KL vs base"), ("lm_nll_increase_vs_coldstart_mean", "ΔNLL vs cold start"),
                  ("lm_kl_vs_coldstart_mean", "KL vs cold start")]),
          "", "### General skill (chat format)", "", *skill_lines(ev, g),
          "### Cold-start gate", "", *gate_lines(task, ev),
          "### Reward signal (cold start, dev)", "", *reward_signal_lines(task, ev),
          "### Outputs: language consistency, verbosity (reward-hacking monitor)", "",
          f"References: {ev.get('reference_mean_length_chars', float('nan')):.1f} characters on average"
          + (f"; {ev['reference_distinct_rate']:.1%} of them distinct" if "reference_distinct_rate" in ev else "")
          + ". *distinct*: distinct outputs per test item (1: every item got an output of its own; answers that "
          "no longer depend on the input drive it down).", "",
          _table(g, [("language_consistency", "in target script"), ("mean_length_chars", "mean length"),
                     ("empty_rate", "empty"), ("distinct_rate", "distinct")], digits=3), "", *hacking_flags(ev), "",
          "### Reward ablations", "",
          _table(g[g.method.isin(["grpo", *ablations])], [("sim_reward", "sim (reward)"), ("sim_eval", "sim (eval)"),
                                                         ("language_consistency", "in target script")])
          if g.method.isin(ablations).any() else "No ablation enabled (`rewards.ablations.<name>.enabled`).", ""]
    p = ev["preference"]
    md += ["### Preference: strong SFT vs GRPO", "",
           f"Judge: {p['judge']}. {p['pairs']} pairs over seeds {p['seeds']}, each judged in both orders (a win "
           f"needs both): SFT wins {p.get('sft_rate', 0):.1%}, GRPO wins {p.get('grpo_rate', 0):.1%}, ties "
           f"{p.get('tie_rate', 0):.1%} (of which the judge flipped with the order: "
           f"{p.get('order_inconsistent_rate', 0):.1%}).",
           ""]
    if pairs:
        md += ["", "### Paired comparisons", "",
               "Per seed, strong SFT and GRPO start from the same cold start and are scored on the same items, "
               "so their difference is paired: a t-interval over the per-seed mean differences (df = n − 1) "
               "decides, a percentile bootstrap resampling seeds, then items, is shown beside it. Task "
               "metrics here are per-item (sentence chrF/BLEU, ROUGE-L) means. LM drift: mean per-line NLL "
               "increase and KL on held-out general-Chinese text, plain language modelling. The base is one "
               "model for every seed: its items pair with each seed's.", "",
               *paired_lines(pairs)]
    curve, run_ids = training_curves(cfg, task.name, ev, curves)
    if curve:
        md += ["", f"![training curves]({curve.relative_to(out).as_posix()})"]
    return md + [""], run_ids


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

    md = ["# Alignment-tax report", "",
          f"Profile `{meta['profile']}` · git `{meta['git_commit']}` · data version `{meta['data_version']}` · "
          f"seeds {meta['seeds']} · report written on {meta['machine']}. Cells are mean ± 95 % CI over seeds "
          "(no ± with one seed). Task metrics on the test split with greedy decoding. The alignment tax is "
          "measured three ways: per-line NLL increase and KL on held-out general-Chinese text (plain language "
          "modelling, against the base and against the cold start), a general skill the base was taught (chat "
          "format), and CMRC 2018 dev (the paper's benchmark: generated EM/F1 where `eval.cmrc_generate`, the "
          "gold answers' NLL drift always).", "",
          "Reproducibility: on one machine (one CPU type) a clean clone reproduces these numbers bit for bit. On a "
          "CPU with other vector units training diverges from the first rounding difference (the base already), "
          "so each number is another draw: cells move by about their seed-to-seed spread (the ± column) and a "
          "verdict near its interval's edge can flip (docs/experiments.md \"Reproducibility\" compares two machines). `dvc "
          "metrics diff` against this commit shows by how much.", ""]
    pairs = {ev["task"]: paired_comparisons(known[ev["task"]], ev) for ev in evals}
    md += ["## The answer at this scale", "",
           "*For the same task gain, does GRPO with a semantic reward forget less than strong SFT?* Read off the "
           "paired verdicts below as they came out (no tuning toward the paper's claim).", ""]
    for ev in evals:
        md += answer_lines(known[ev["task"]], pairs[ev["task"]],
                           set(ev.get("items", {}).get("synthetic_sources", [])), ev.get("reward_signal"))
        if ev["task"] in cfg.report.experiments:
            md[-1:-1] = experiment_lines(cfg.report.experiments[ev["task"]])
    traj = [r for ev in evals for r in trajectory_rows(ev, known[ev["task"]].primary_metric)]
    traj_png = trajectory_plot(traj, known, plots)
    if traj_png:
        md += [f"![task gain vs tax along training]({traj_png.relative_to(out).as_posix()})", "",
               "Each branch scored every `train.trajectory.every` steps on a dev subset (task metric) and the LM "
               "probe: a curve further left at the same height paid less tax for the same gain.", ""]
    linked = []
    for ev in evals:
        lines, run_ids = task_section(cfg, known[ev["task"]], ev, df[df.task == ev["task"]], curves, out,
                                      pairs[ev["task"]])
        md += lines
        linked += run_ids
    md += transfer_section(cfg.eval.out_dir / "transfer.json", known)
    tradeoff = tradeoff_plot(df, plots)
    md += ["## Trade-off", "", f"![task gain vs alignment tax]({tradeoff.relative_to(out).as_posix()})", ""]

    df.to_csv(out / "alignment_tax.csv", index=False)
    import pandas as pd

    pd.DataFrame(traj, columns=["task", "method", "seed", "step", "task_gain", "tax_lm_nll", "sim_eval",
                                "length_ratio", "reward"]).to_csv(plots / "trajectory.csv", index=False)
    df[["task", "method", *[x for x, _ in tax_measures(df)], "task_gain"]].dropna(subset=["task_gain"]).to_csv(
        plots / "tradeoff.csv", index=False)
    atomic_write_text(out / "alignment_tax.md", "\n".join(md))
    metrics = metrics_summary(df, evals, pairs)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(out / "run_meta.json", json.dumps(meta, indent=2) + "\n")
    log_report(cfg, df, metrics, out, linked)
    return metrics


def step(params: str) -> dict[str, Any]:
    """The pipeline step `report` as a flow's step process and `semrl report` run it."""
    from semrl.core.config import load_config

    out = run(load_config(params))
    print("report: reports/alignment_tax.md, reports/alignment_tax.csv, reports/metrics.json, reports/plots/")
    return out
