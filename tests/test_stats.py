"""The report's statistics on constructed data whose answers are known in closed form."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from semrl.evaluation.stats import bound_flag, paired_bootstrap, paired_t, t_interval, within_group


def test_t_interval_matches_the_closed_form():
    r = t_interval([1.0, 2.0, 3.0])
    half = sps.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)  # sd of 1,2,3 is 1
    assert (r.estimate, r.low, r.high, r.n) == pytest.approx((2.0, 2.0 - half, 2.0 + half, 3))
    one = t_interval([0.5])
    assert one.estimate == 0.5 and not one.estimated and not one.excludes_zero
    with pytest.raises(ValueError, match="no values"):
        t_interval([])


def test_paired_t_sees_what_unpaired_intervals_miss():
    # Seeds differ a lot (0.1, 0.5, 0.9) but a beats b by 0.02 +- 0.001 on every seed.
    b = np.array([0.1, 0.5, 0.9])
    a = b + np.array([0.019, 0.020, 0.021])
    paired = paired_t(a, b)
    assert paired.estimate == pytest.approx(0.02)
    assert paired.excludes_zero and paired.low > 0.015
    ia, ib = t_interval(a), t_interval(b)
    assert ia.low < ib.high  # the two unpaired intervals overlap: they could not call it
    # df = n - 1: the half-width is t_{0.975, 2} * sd / sqrt(3) with sd 0.001
    assert paired.half_width == pytest.approx(sps.t.ppf(0.975, 2) * 0.001 / math.sqrt(3))
    with pytest.raises(ValueError, match="unpaired"):
        paired_t([1, 2], [1, 2, 3])


def test_paired_t_interval_covers_zero_when_differences_straddle_it():
    r = paired_t([0.5, 0.4, 0.6], [0.45, 0.45, 0.55])  # differences +0.05, -0.05, +0.05
    assert r.low < 0 < r.high and not r.excludes_zero


def test_paired_bootstrap_on_a_known_shift():
    rng = np.random.default_rng(1)
    b = rng.uniform(0, 1, size=(3, 400))
    a = b + 0.05 + rng.normal(0, 0.01, size=b.shape)  # every item shifted by 0.05
    r = paired_bootstrap(a, b, resamples=2000)
    assert r.estimate == pytest.approx(0.05, abs=0.002)
    assert 0.045 < r.low < 0.05 < r.high < 0.055
    assert r.n == 1200
    # Same inputs, same seed: the same interval; no shift: the interval holds 0.
    assert paired_bootstrap(a, b, resamples=2000) == r
    null = paired_bootstrap(b + rng.normal(0, 0.1, size=b.shape), b, resamples=2000)
    assert null.low < 0 < null.high


def test_paired_bootstrap_resamples_seeds_too():
    # Per-item differences are identical within a seed, so all the noise is between seeds: an
    # items-only bootstrap would give a zero-width interval; resampling seeds must widen it.
    d = np.array([0.0, 0.1, 0.2])[:, None] * np.ones((3, 50))
    r = paired_bootstrap(d, np.zeros_like(d), resamples=2000)
    assert r.estimate == pytest.approx(0.1)
    assert r.low <= 0.034 and r.high >= 0.166
    one_seed = paired_bootstrap(d[:1] + 0.3, d[:1], resamples=500)
    assert one_seed.low == pytest.approx(0.3) and one_seed.high == pytest.approx(0.3)
    with pytest.raises(ValueError, match="unpaired"):
        paired_bootstrap(np.zeros((2, 3)), np.zeros((3, 3)))


def test_bound_flag():
    assert bound_flag([0.0, 0.003, 0.001], 0, 1, 0.01) == "floor"
    assert bound_flag([0.999, 1.0], 0, 1, 0.01) == "ceiling"
    assert bound_flag([0.0, 0.2], 0, 1, 0.01) is None
    assert bound_flag([0.9, 0.4], 0, 100, 1.0) == "floor"  # CMRC-style 0-100 scale
    assert bound_flag([float("nan")], 0, 1, 0.01) == "floor"  # nothing measured


def test_within_group_ranks_only_inside_each_group():
    # Across groups x and y disagree completely (the group with high x has low y), inside each they agree:
    # a pooled correlation would be negative, the within-group check says 100 %.
    groups = [([10, 11, 12], [0.1, 0.2, 0.3]), ([0, 1, 2], [0.7, 0.8, 0.9])]
    assert sps.spearmanr([10, 11, 12, 0, 1, 2], [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]).statistic < 0
    r = within_group(groups)
    assert r == {"spearman_mean": 1.0, "groups_ranked": 2, "groups_flat": 0, "pair_agreement": 1.0, "pairs": 6}
    # One swapped pair of three: agreement 2/3, Spearman 0.5; a reversed group: 0 and -1.
    r = within_group([([1, 2, 3], [1, 3, 2])])
    assert r["pair_agreement"] == round(2 / 3, 4) and r["spearman_mean"] == 0.5
    assert within_group([([1, 2], [2, 1])])["pair_agreement"] == 0.0
    # Ties carry no order: a constant group is counted flat, and tied pairs are not compared.
    r = within_group([([1, 1, 1], [1, 2, 3]), ([1, 2, 2], [1, 2, 3])])
    assert r["groups_flat"] == 1 and r["groups_ranked"] == 1 and r["pairs"] == 2 and r["pair_agreement"] == 1.0
    assert within_group([([1, 1], [2, 2])]) == {"spearman_mean": None, "groups_ranked": 0, "groups_flat": 1,
                                                "pair_agreement": None, "pairs": 0}
