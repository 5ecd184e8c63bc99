"""Statistics behind the report's verdicts: t-intervals, paired differences over seeds, a paired
bootstrap over seeds x items, the floor/ceiling check that marks a number as not informative, and the
within-group rank agreement of a reward with the task metric (what GRPO's advantages see).

Why paired: strong SFT and GRPO of one seed share that seed's cold start and are scored on the same test
items, so most of the between-seed and between-item variance cancels in their difference. Comparing two
independent CIs ignores that and says "within the noise" far more often than the data warrant."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """An estimate with its two-sided interval; low/high are nan when the data cannot estimate the noise."""

    estimate: float
    low: float
    high: float
    n: int
    method: str

    @property
    def estimated(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

    @property
    def excludes_zero(self) -> bool:
        return self.estimated and (self.low > 0 or self.high < 0)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2 if self.estimated else float("nan")

    def as_dict(self) -> dict[str, float | int | str]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "n": self.n, "method": self.method}


def t_interval(values, confidence: float = 0.95) -> Interval:
    """Mean and its Student-t interval (df = n - 1); one value gives no interval."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("t_interval: no values")
    mean = float(v.mean())
    if v.size < 2:
        return Interval(mean, float("nan"), float("nan"), 1, "t")
    half = float(stats.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return Interval(mean, mean - half, mean + half, int(v.size), "t")


def paired_t(a, b, confidence: float = 0.95) -> Interval:
    """Mean of the per-unit differences a - b (units: seeds) with its t-interval (df = n - 1)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired_t: unpaired shapes {a.shape} and {b.shape}")
    r = t_interval(a - b, confidence)
    return Interval(r.estimate, r.low, r.high, r.n, "paired t")


def paired_bootstrap(a, b, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0) -> Interval:
    """Mean of a - b over a (seeds x items) grid of per-item scores, with a two-level percentile bootstrap:
    seeds are resampled with replacement, then items (the same items for both methods, so the pairing is
    kept). One seed resamples items only; the interval then says nothing about seed-to-seed noise."""
    a, b = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    if a.shape != b.shape:
        raise ValueError(f"paired_bootstrap: unpaired shapes {a.shape} and {b.shape}")
    d = a - b
    n_seeds, n_items = d.shape
    if n_items == 0:
        raise ValueError("paired_bootstrap: no items")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):  # blocks keep the index arrays small
        k = min(1000, resamples - start)
        seeds = rng.integers(0, n_seeds, size=(k, n_seeds))
        items = rng.integers(0, n_items, size=(k, n_items))
        # For each resample: the chosen seeds' rows, each at the chosen items; mean over both.
        means[start:start + k] = d[seeds[:, :, None], items[:, None, :]].mean(axis=(1, 2))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Interval(float(d.mean()), float(low), float(high), int(d.size), "paired bootstrap (seeds x items)")


def bound_flag(values, low: float, high: float, tolerance: float) -> str | None:
    """'floor' or 'ceiling' when every value lies within `tolerance` of that end of the metric's scale,
    else None. A comparison between numbers at a bound measures the bound, not the methods."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return "floor"
    if v.max() <= low + tolerance:
        return "floor"
    if v.min() >= high - tolerance:
        return "ceiling"
    return None


def within_group(groups) -> dict:
    """How x ranks the members of each group as y does: GRPO learns only from differences inside a prompt's
    group of completions (advantage = reward minus the group mean), so this, not a correlation pooled over
    prompts, is the signal it can climb. `groups`: (x, y) sequences per group. Returns the mean over groups
    of Spearman(x, y) (groups where x or y is constant left out and counted), and the pair agreement: over
    pairs of one group whose x and y both differ, the share x orders as y does (0.5: a coin)."""
    from itertools import combinations

    from scipy.stats import spearmanr

    rhos, agree, pairs, flat = [], 0, 0, 0
    for x, y in groups:
        x, y = [float(v) for v in x], [float(v) for v in y]
        if len(set(x)) > 1 and len(set(y)) > 1:
            rhos.append(float(spearmanr(x, y).statistic))
        else:
            flat += 1
        for i, j in combinations(range(len(x)), 2):
            if x[i] != x[j] and y[i] != y[j]:
                pairs += 1
                agree += (x[i] - x[j]) * (y[i] - y[j]) > 0
    return {"spearman_mean": round(float(np.mean(rhos)), 4) if rhos else None, "groups_ranked": len(rhos),
            "groups_flat": flat, "pair_agreement": round(agree / pairs, 4) if pairs else None, "pairs": pairs}
