"""analysis/stats.py against independent computations: scipy.stats (t.interval, ttest_rel, t.ppf, nct), numpy
by hand, and textbook numbers."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats as sps
from scipy.integrate import trapezoid

from etrmtrm_cli.analysis.stats import (
    Band,
    Estimate,
    NoSharedSeed,
    auc,
    classify,
    detectable_difference,
    estimate,
    paired_difference,
    t_quantile,
)

INF = math.inf
# The research plan's scenarios for a difference B - A, in percentage points.
SCENARIOS = [
    Band("A", 2.0, INF, lo_closed=True, hi_closed=False),  # [2, inf)
    Band("B", 0.5, 2.0, lo_closed=True, hi_closed=False),  # [0.5, 2)
    Band("C", -0.5, 0.5, lo_closed=False, hi_closed=False),  # (-0.5, 0.5)
    Band("C/D", -5.0, -0.5, lo_closed=False, hi_closed=True),  # (-5, -0.5]
    Band("D", -INF, -5.0, lo_closed=False, hi_closed=True),  # (-inf, -5]
]


def name(band: Band | None) -> str | None:
    return None if band is None else band.name


# ---------------------------------------------------------------- estimate


def test_estimate_textbook_numbers() -> None:
    e = estimate([1, 2, 3, 4, 5])
    assert e.n == 5
    assert e.mean == pytest.approx(3.0)
    assert e.sd == pytest.approx(1.5811388, abs=1e-6)  # sqrt(10 / 4)
    assert t_quantile(0.975, 4) == pytest.approx(2.7764451, abs=1e-6)
    assert e.half_width == pytest.approx(1.9632432, abs=1e-6)  # 2.7764 * 1.5811 / sqrt(5)
    assert e.interval == pytest.approx((3.0 - 1.9632432, 3.0 + 1.9632432), abs=1e-6)
    assert e.level == 0.95
    assert e.seeds == ()


@pytest.mark.parametrize("level", [0.8, 0.9, 0.95, 0.99])
def test_estimate_matches_scipy_t_interval(level: float) -> None:
    x = np.array([61.2, 58.9, 63.4, 60.1, 59.7, 62.8, 57.5])
    e = estimate(list(x), level=level)
    lo, hi = sps.t.interval(level, df=len(x) - 1, loc=x.mean(), scale=sps.sem(x))
    assert e.mean == pytest.approx(x.mean())
    assert e.sd == pytest.approx(x.std(ddof=1))
    assert e.interval == pytest.approx((lo, hi))
    assert e.half_width == pytest.approx((hi - lo) / 2)
    assert e.level == level


def test_estimate_one_seed_has_no_interval() -> None:
    e = estimate([0.42])
    assert (e.n, e.mean) == (1, 0.42)
    assert e.sd is None and e.half_width is None and e.lo is None and e.hi is None
    assert e.interval is None


def test_estimate_empty_and_all_missing() -> None:
    for values in ([], [float("nan"), None]):
        e = estimate(values)
        assert e.n == 0 and e.mean is None and e.interval is None


def test_estimate_drops_nan_and_none() -> None:
    e = estimate([1.0, float("nan"), 2.0, None, 3.0, np.nan, 4.0, 5.0])
    ref = estimate([1, 2, 3, 4, 5])
    assert e == ref


def test_an_infinite_value_raises_instead_of_a_nan_mean_or_vanishing() -> None:
    for values in ([math.inf, 1.0], [1.0, -math.inf]):
        with pytest.raises(ValueError, match="infinite value"):
            estimate(values)
    with pytest.raises(ValueError, match="infinite value"):
        paired_difference({0: 1.0, 1: 2.0}, {0: 1.5, 1: math.inf})


def test_estimate_constant_values_zero_width() -> None:
    e = estimate([0.7, 0.7, 0.7])
    assert e.sd == 0.0 and e.half_width == 0.0 and e.interval == (0.7, 0.7)


def test_estimate_rejects_bad_level() -> None:
    for level in (0.0, 1.0, 95):
        with pytest.raises(ValueError, match="level"):
            estimate([1, 2, 3], level=level)


def test_estimate_is_frozen() -> None:
    e = estimate([1, 2])
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.mean = 0.0  # type: ignore[misc]
    assert isinstance(e, Estimate)


# ---------------------------------------------------------------- paired_difference


def test_paired_difference_matches_ttest_rel() -> None:
    a = {0: 40.0, 1: 42.5, 2: 39.0, 3: 41.0, 4: 44.0}
    b = {0: 43.1, 1: 45.0, 2: 42.6, 3: 43.2, 4: 47.5}
    p = paired_difference(a, b)
    seeds = sorted(a)
    xa, xb = np.array([a[s] for s in seeds]), np.array([b[s] for s in seeds])
    ci = sps.ttest_rel(xb, xa).confidence_interval(0.95)
    assert p.seeds == (0, 1, 2, 3, 4)
    assert p.n == 5
    assert p.mean == pytest.approx((xb - xa).mean())
    assert p.sd == pytest.approx((xb - xa).std(ddof=1))
    assert p.interval == pytest.approx((ci.low, ci.high))


def test_a_difference_on_a_band_edge_lands_in_the_band_that_owns_the_edge() -> None:
    # accuracies 0.8987 and 0.9037 in points: 100 * 0.9037 - 100 * 0.8987 is 0.4999999999999858 in floats, and
    # without rounding this +0.5 would fall in C instead of B
    diff = paired_difference({0: 100 * 0.8987, 1: 100 * 0.8987}, {0: 100 * 0.9037, 1: 100 * 0.9037})
    assert diff.mean == 0.5
    band = classify((diff.mean, diff.mean), SCENARIOS)
    assert band is not None and band.name == "B"


def test_the_same_nonzero_difference_in_every_seed_has_no_interval() -> None:
    """A sample sd of 0 says nothing of the true spread: the t interval [d, d] would be certainty from 2 or 5 seeds
    (R's t.test refuses such data as "essentially constant"). The seeds differ by +0.5 up to float rounding."""
    for n in (2, 5):
        a = {s: 100 * (0.8987 + 0.001 * s) for s in range(n)}
        diff = paired_difference(a, {s: a[s] + 0.5 for s in range(n)})
        assert (diff.n, diff.mean, diff.sd, diff.interval) == (n, 0.5, 0.0, None)
    same = paired_difference({0: 90.0, 1: 91.0}, {0: 90.0, 1: 91.0})  # no difference at all: the runs agree
    assert same.interval == (0.0, 0.0)
    assert paired_difference({0: 1.0, 1: 2.0}, {0: 1.5, 1: 2.6}).interval is not None  # any spread: an interval


def test_paired_difference_sign_is_b_minus_a() -> None:
    a, b = {1: 1.0, 2: 2.0}, {1: 4.0, 2: 6.0}
    assert paired_difference(a, b).mean == pytest.approx(3.5)
    assert paired_difference(b, a).mean == pytest.approx(-3.5)


def test_paired_difference_uses_the_seed_intersection() -> None:
    a = {0: 10.0, 1: 11.0, 2: 12.0, 5: 99.0, 7: 13.0}
    b = {1: 12.0, 2: 14.5, 3: -50.0, 7: 16.0, 0: float("nan")}  # seed 0 is NaN in B: not paired
    p = paired_difference(a, b)
    assert p.seeds == (1, 2, 7)
    ref = estimate([12.0 - 11.0, 14.5 - 12.0, 16.0 - 13.0])
    assert dataclasses.replace(p, seeds=()) == ref


def test_paired_difference_single_common_seed() -> None:
    p = paired_difference({0: 1.0, 1: 2.0}, {1: 5.0, 2: 0.0})
    assert (p.n, p.mean, p.seeds, p.interval) == (1, 3.0, (1,), None)


def test_paired_difference_no_common_seed_raises() -> None:
    with pytest.raises(NoSharedSeed, match="share no seed"):
        paired_difference({0: 1.0, 1: 2.0}, {2: 1.0, 3: 2.0})
    with pytest.raises(NoSharedSeed, match="share no seed"):
        paired_difference({0: 1.0}, {0: None})


# ---------------------------------------------------------------- classify


def test_plus_three_points_small_spread_is_scenario_a() -> None:
    a = {s: 50.0 + 0.1 * s for s in range(5)}
    b = {s: a[s] + d for s, d in enumerate([2.8, 3.1, 3.0, 2.9, 3.2])}
    p = paired_difference(a, b)
    assert p.mean == pytest.approx(3.0)
    assert p.interval is not None and p.interval[0] > 2.0
    assert name(classify(p.interval, SCENARIOS)) == "A"


def test_small_gap_large_spread_is_inconclusive() -> None:
    diffs = np.array([-1.6, 3.4, 0.9, 2.4, -0.6])  # mean 0.9, sd ~2
    assert diffs.mean() == pytest.approx(0.9)
    assert diffs.std(ddof=1) == pytest.approx(2.0, abs=0.1)
    p = paired_difference(dict.fromkeys(range(5), 0.0), dict(enumerate(diffs.tolist())))
    assert p.interval is not None
    assert classify(p.interval, SCENARIOS) is None


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        ((2.0, 2.0), "A"),  # A is closed at 2
        ((2.0, 1e9), "A"),
        ((1.9, 2.0), None),  # 1.9 is B's, 2.0 is A's
        ((0.5, 1.99), "B"),  # B is closed at 0.5, open at 2
        ((0.5, 0.5), "B"),  # 0.5 belongs to B, not C
        ((0.4, 0.5), None),
        ((-0.49, 0.49), "C"),  # C is open at both ends
        ((-0.5, 0.0), None),  # -0.5 is C/D's
        ((-0.5, -0.5), "C/D"),  # C/D is closed at -0.5
        ((-4.99, -0.5), "C/D"),
        ((-5.0, -1.0), None),  # -5 is D's (C/D is open there)
        ((-5.0, -5.0), "D"),
        ((-1e9, -5.0), "D"),
        ((-10.0, 10.0), None),
    ],
)
def test_band_edges(interval: tuple[float, float], expected: str | None) -> None:
    assert name(classify(interval, SCENARIOS)) == expected


def test_band_contains_and_defaults() -> None:
    half_open = Band("x", 0.0, 1.0)  # default [lo, hi)
    assert half_open.contains(0.0) and not half_open.contains(1.0)
    assert half_open.describe() == "[0, 1)"
    closed = Band("y", 0.0, 1.0, lo_closed=True, hi_closed=True)
    assert closed.contains(1.0) and closed.contains_interval(0.0, 1.0)
    open_ = Band("z", 0.0, 1.0, lo_closed=False, hi_closed=False)
    assert not open_.contains(0.0) and not open_.contains(1.0) and open_.contains(0.5)
    assert open_.describe() == "(0, 1)"
    assert Band("pt", 3.0, 3.0, True, True).contains(3.0)


def test_band_rejects_empty_or_nan() -> None:
    with pytest.raises(ValueError):
        Band("bad", 2.0, 1.0)
    with pytest.raises(ValueError):
        Band("bad", 1.0, 1.0)  # [1, 1) is empty
    with pytest.raises(ValueError):
        Band("bad", math.nan, 1.0)


def test_classify_first_matching_band_wins_and_checks_input() -> None:
    wide, narrow = Band("wide", -INF, INF), Band("narrow", 0.0, 1.0)
    assert classify((0.2, 0.3), [wide, narrow]) is wide
    assert classify((0.2, 0.3), [narrow, wide]) is narrow
    assert classify((0.2, 0.3), []) is None
    with pytest.raises(ValueError):
        classify((1.0, 0.0), SCENARIOS)
    with pytest.raises(ValueError):
        classify((math.nan, 0.0), SCENARIOS)


# ---------------------------------------------------------------- detectable_difference


def exact_power(delta: float, sd: float, n: int, level: float = 0.95) -> float:
    df, tc, nc = n - 1, sps.t.ppf(1 - (1 - level) / 2, n - 1), delta * math.sqrt(n) / sd
    return sps.nct.sf(tc, df, nc) + sps.nct.sf(tc, df, -nc)


@pytest.mark.parametrize(("sd", "n"), [(2.0, 2), (2.0, 5), (1.3, 10), (0.5, 3), (1.0, 30)])
def test_detectable_difference_has_exactly_the_asked_power(sd: float, n: int) -> None:
    delta = detectable_difference(sd, n)
    assert delta is not None and exact_power(delta, sd, n) == pytest.approx(0.8, abs=1e-9)


def test_detectable_difference_is_larger_than_the_shortcut_at_small_n() -> None:
    # The shortcut (t_.975 + t_.8) sd / sqrt(n) gives 9.96 sd at n = 2, where the power is only ~73 %.
    shortcut = (sps.t.ppf(0.975, 1) + sps.t.ppf(0.8, 1)) / math.sqrt(2)
    assert shortcut == pytest.approx(9.96, abs=0.01) and exact_power(shortcut, 1.0, 2) == pytest.approx(0.73, abs=0.01)
    assert detectable_difference(1.0, 2) == pytest.approx(11.55, abs=0.01)
    delta = detectable_difference(1.0, 8, level=0.99, power=0.9)
    assert delta is not None and exact_power(delta, 1.0, 8, level=0.99) == pytest.approx(0.9, abs=1e-9)


def test_detectable_difference_monotone() -> None:
    by_sd = [detectable_difference(sd, 5) for sd in (0.5, 1.0, 2.0, 4.0)]
    assert all(x is not None for x in by_sd) and by_sd == sorted(by_sd) and len(set(by_sd)) == 4
    by_n = [detectable_difference(1.0, n) for n in (2, 3, 5, 10, 30)]
    assert all(x is not None for x in by_n) and by_n == sorted(by_n, reverse=True) and len(set(by_n)) == 5
    assert detectable_difference(0.0, 5) == 0.0




def test_detectable_difference_undefined_or_invalid() -> None:
    assert detectable_difference(1.0, 1) is None
    assert detectable_difference(1.0, 0) is None
    assert detectable_difference(None, 5) is None
    with pytest.raises(ValueError, match="power"):
        detectable_difference(1.0, 5, power=1.0)
    with pytest.raises(ValueError):
        detectable_difference(-1.0, 5)


# ---------------------------------------------------------------- auc


def test_auc_constant_curve_gives_its_value() -> None:
    assert auc([(0, 0.7), (100, 0.7), (250, 0.7), (1000, 0.7)], 1000) == pytest.approx(0.7)
    assert auc([(400, 0.3)], 1000) == pytest.approx(0.3)  # one point: held flat both ways


def test_auc_linear_ramp() -> None:
    ramp = [(s, s / 1000) for s in range(0, 1001, 100)]
    assert auc(ramp, 1000) == pytest.approx(0.5)
    xs = np.array([s for s, _ in ramp], dtype=float)
    ys = np.array([v for _, v in ramp])
    assert auc(ramp, 1000) == pytest.approx(trapezoid(ys, xs) / 1000)


def test_auc_uneven_steps_matches_numpy_trapezoid() -> None:
    pts = [(0, 0.0), (7, 0.2), (30, 0.25), (31, 0.6), (90, 0.9), (100, 1.0)]
    xs, ys = np.array([p[0] for p in pts], float), np.array([p[1] for p in pts])
    assert auc(pts, 100) == pytest.approx(trapezoid(ys, xs) / 100)


def test_auc_holds_the_ends_over_the_whole_run() -> None:
    # Stopped at step 100 of 200 at the ceiling: the last value is held. (0..100 ramp: 50; 100..200 at 1: 100.)
    assert auc([(0, 0.0), (100, 1.0)], 200) == pytest.approx(0.75)
    # First logged at step 50: the first value is held back to 0.
    assert auc([(50, 0.2), (100, 0.2)], 100) == pytest.approx(0.2)
    # Faster to the ceiling -> larger area.
    fast = auc([(0, 0.0), (20, 1.0), (100, 1.0)], 100)
    slow = auc([(0, 0.0), (80, 1.0), (100, 1.0)], 100)
    assert fast == pytest.approx(0.9) and slow == pytest.approx(0.6)


def test_auc_cuts_points_past_total_steps() -> None:
    # Ramp 0 -> 1 over 0..200, cut at 100: area of 0..0.5 over 100 steps = 0.25.
    assert auc([(0, 0.0), (200, 1.0)], 100) == pytest.approx(0.25)
    assert auc([(0, 0.0), (100, 1.0), (150, 0.0)], 100) == pytest.approx(0.5)
    assert auc([(300, 0.4)], 100) == pytest.approx(0.4)


def test_auc_unsorted_nan_and_duplicates() -> None:
    pts = [(100, 1.0), (0, 0.0), (50, float("nan")), (50, 0.9), (50, 0.5)]  # later (50, 0.5) wins
    assert auc(pts, 100) == pytest.approx((50 * 0.25 + 50 * 0.75) / 100)


def test_auc_invalid() -> None:
    with pytest.raises(ValueError):
        auc([], 100)
    with pytest.raises(ValueError):
        auc([(0, float("nan"))], 100)
    with pytest.raises(ValueError):
        auc([(0, 1.0)], 0)
    with pytest.raises(ValueError):
        auc([(-1, 1.0)], 10)


# ---------------------------------------------------------------- t_quantile


def test_t_quantile_matches_scipy_and_rejects_bad_input() -> None:
    for p, df in [(0.975, 1), (0.975, 9), (0.8, 4), (0.05, 3)]:
        assert t_quantile(p, df) == pytest.approx(sps.t.ppf(p, df))
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError):
        t_quantile(0.9, 0)
