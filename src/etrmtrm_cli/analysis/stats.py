"""Statistics over random seeds for `etrmtrm compare`: every figure as mean ± a Student-t confidence interval,
A vs B judged on paired per-seed differences, the smallest difference a given number of seeds can detect, the
band (scenario) a difference's interval falls in, and the area under a step -> value curve.

Pure functions, no printing and no I/O. Units are the caller's: a figure's mean, sd, interval and a difference
are all in the unit of the values passed in (e.g. accuracy in percentage points), and bands must use that unit.

scipy is needed at run time for the Student-t quantile (`scipy.special.stdtrit`, the function behind
`scipy.stats.t.ppf`) and the noncentral t of `detectable_difference`; it is imported on first use, so importing
this module costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

__all__ = [
    "Band",
    "Estimate",
    "auc",
    "classify",
    "detectable_difference",
    "estimate",
    "paired_difference",
    "t_quantile",
]


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its two-sided Student-t confidence interval.

    mean = Σx / n;  sd = sqrt(Σ(x - mean)² / (n - 1))  (sample sd, ddof=1);
    half_width = t_{1-(1-level)/2, n-1} · sd / sqrt(n);  lo, hi = mean ∓ half_width.

    `mean` is None when n == 0; `sd`, `half_width`, `lo` and `hi` are None when n < 2 (one seed has no spread
    and so no interval); a paired difference the same in every seed has sd 0 and no interval either
    (`paired_difference`). `seeds` holds the seeds the values came from, ascending, when they are known (a paired
    difference); it is () for an `estimate` over bare values.
    """

    n: int  # number of values (seeds) used, after dropping NaN/None
    mean: float | None  # unit of the values
    sd: float | None  # unit of the values; sample sd, ddof=1
    half_width: float | None  # unit of the values; the interval is mean ± half_width
    lo: float | None  # mean - half_width
    hi: float | None  # mean + half_width
    level: float = 0.95  # the interval's confidence level, in (0, 1)
    seeds: tuple[int, ...] = ()  # the seeds paired, ascending; () when not known

    @property
    def interval(self) -> tuple[float, float] | None:
        """(lo, hi), or None when there is no interval (n < 2)."""
        if self.lo is None or self.hi is None:
            return None
        return (self.lo, self.hi)


@dataclass(frozen=True)
class Band:
    """A named range of a difference, with explicit edges: lo_closed means lo itself is in the band, hi_closed
    that hi is. The default is half-open [lo, hi). Infinite edges are allowed (±math.inf) and are never reached
    by a finite value, whatever their closedness. A band with lo == hi must be closed at both ends (the single
    point lo)."""

    name: str
    lo: float  # unit of the difference
    hi: float  # unit of the difference
    lo_closed: bool = True
    hi_closed: bool = False

    def __post_init__(self) -> None:
        if math.isnan(self.lo) or math.isnan(self.hi):
            raise ValueError(f"band {self.name!r}: edges must not be NaN (got {self.lo}, {self.hi})")
        if self.lo > self.hi or (self.lo == self.hi and not (self.lo_closed and self.hi_closed)):
            raise ValueError(f"band {self.name!r} is empty: {self.describe()}")

    def contains(self, x: float) -> bool:
        """Whether the value x lies in the band, honouring the edges' closedness."""
        above = self.lo <= x if self.lo_closed else self.lo < x
        below = x <= self.hi if self.hi_closed else x < self.hi
        return above and below

    def contains_interval(self, lo: float, hi: float) -> bool:
        """Whether the whole closed interval [lo, hi] lies in the band (both its ends do; the band is convex)."""
        return self.contains(lo) and self.contains(hi)

    def describe(self) -> str:
        """The band in interval notation, e.g. '[0.5, 2)'."""
        return f"{'[' if self.lo_closed else '('}{self.lo:g}, {self.hi:g}{']' if self.hi_closed else ')'}"


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with df degrees of freedom: t_{p, df} (e.g. t_{0.975, 4} = 2.7764)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile p must lie in (0, 1), got {p}")
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    from scipy.special import stdtrit  # lazy: scipy is slow to import and only this needs it

    return float(stdtrit(df, p))


class NoSharedSeed(ValueError):
    """paired_difference: no seed has a value in both arms."""


def _check_level(level: float, what: str = "level") -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"{what} must lie in (0, 1), got {level}")


def _present(x: float | None) -> bool:
    """Whether a seed has the value: None and NaN mean it has none. An infinite value has no mean and no
    interval that means anything, and dropping it would hide it: it raises."""
    if x is not None and math.isinf(x):
        raise ValueError(f"an infinite value ({x}) has no mean over seeds; leave it out (None) or fix its source")
    return x is not None and not math.isnan(x)


def _estimate(xs: list[float], level: float, seeds: tuple[int, ...]) -> Estimate:
    n = len(xs)  # xs: (n,), NaN-free
    if n == 0:
        return Estimate(n=0, mean=None, sd=None, half_width=None, lo=None, hi=None, level=level, seeds=seeds)
    mean = math.fsum(xs) / n
    mean += math.fsum(x - mean for x in xs) / n  # corrects the rounding of Σx / n: n equal values give that value
    if n < 2:
        return Estimate(n=n, mean=mean, sd=None, half_width=None, lo=None, hi=None, level=level, seeds=seeds)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half_width = t_quantile(1.0 - (1.0 - level) / 2.0, n - 1) * sd / math.sqrt(n)
    return Estimate(
        n=n,
        mean=mean,
        sd=sd,
        half_width=half_width,
        lo=mean - half_width,
        hi=mean + half_width,
        level=level,
        seeds=seeds,
    )


def estimate(values: Sequence[float | None], level: float = 0.95) -> Estimate:
    """Mean ± Student-t CI of `values`, one per seed; NaN and None values are dropped first, an infinite one raises.

    mean = Σx / n;  sd = sqrt(Σ(x - mean)² / (n - 1));  half_width = t_{1-α/2, n-1} · sd / sqrt(n), α = 1 - level.
    With n == 1 only the mean is set; with n == 0 nothing is.
    """
    _check_level(level)
    return _estimate([float(v) for v in values if _present(v)], level, ())


DIFFERENCE_DECIMALS = 9


def paired_difference(a: Mapping[int, float | None], b: Mapping[int, float | None], level: float = 0.95) -> Estimate:
    """Mean ± Student-t CI of the per-seed differences d_s = b[s] - a[s] (seed -> value), over the seeds present
    in both arms with a non-NaN value in each. This is the paired t interval (scipy's ttest_rel(b, a)):
    mean(d) ± t_{1-α/2, n-1} · sd(d) / sqrt(n). The seeds used are in the result's `seeds`, ascending.

    Raises NoSharedSeed when no seed has a value in both arms (the caller decides what to do then).

    Where every seed's difference is the same nonzero value, the t interval is that value alone, [d, d]: certainty
    drawn from a sample sd of 0, which says nothing of the true spread. Such an estimate has no interval (sd 0,
    lo and hi None), as one seed has none. Where every difference is exactly 0 (identical runs, or both arms at a
    ceiling) the interval [0, 0] stays: it says the runs did not differ.
    """
    _check_level(level)
    seeds = tuple(sorted(s for s in a.keys() & b.keys() if _present(a[s]) and _present(b[s])))
    if not seeds:
        raise NoSharedSeed(
            "paired difference: the two arms share no seed with a value in both "
            f"(A has seeds {sorted(a)}, B has seeds {sorted(b)})"
        )
    # (n,) b - a per seed, rounded far below any printed digit: 90.37 - 89.87 is 0.4999999999999858 in floats,
    # and a difference exactly on a band's edge (+0.5) must land on the side the band's closedness says
    diffs = [round(float(b[s]) - float(a[s]), DIFFERENCE_DECIMALS) for s in seeds]  # type: ignore[arg-type]
    found = _estimate(diffs, level, seeds)
    if found.sd == 0 and found.mean != 0:  # the same nonzero difference in every seed: see the docstring
        return replace(found, half_width=None, lo=None, hi=None)
    return found


def detectable_difference(sd: float | None, n: int, level: float = 0.95, power: float = 0.8) -> float | None:
    """The smallest true paired difference δ that n seeds detect with probability `power` in a two-sided paired t
    test at significance α = 1 - level, given the sd of the per-seed differences. Exact: under δ the t statistic
    follows a noncentral t (n - 1 degrees of freedom, noncentrality δ·sqrt(n)/sd), and δ solves

        P(|T| > t_{1-α/2, n-1}) = power.

    (The common shortcut (t_{1-α/2} + t_{power})·sd/sqrt(n) overstates the power at small n: 73 % instead of 80 %
    at n = 2.) sd is the observed one, so δ is itself an estimate. Same unit as sd. None when n < 2 or sd is None.
    """
    _check_level(level)
    _check_level(power, "power")
    if n < 2 or sd is None:
        return None
    if sd < 0:
        raise ValueError(f"sd must be >= 0, got {sd}")
    if power <= 1.0 - level:  # even δ = 0 rejects with probability α
        return 0.0
    from scipy import optimize
    from scipy.stats import nct

    df, critical = n - 1, t_quantile(1.0 - (1.0 - level) / 2.0, n - 1)

    def shortfall(noncentrality: float) -> float:
        # P(T > t) + P(T < -t), the second as P(-T > t) with -T ~ nct(-nc): scipy's cdf far in the left tail is NaN
        return float(nct.sf(critical, df, noncentrality) + nct.sf(critical, df, -noncentrality)) - power

    hi = 1.0
    while shortfall(hi) < 0:  # power rises with the noncentrality: bracket the root
        hi *= 2
    return optimize.brentq(shortfall, 0.0, hi, xtol=1e-12) * sd / math.sqrt(n)


def classify(interval: tuple[float, float], bands: Sequence[Band]) -> Band | None:
    """The first band in `bands` that contains the WHOLE interval (lo, hi) — both ends, honouring each band's
    edge closedness — or None when no band does (the interval straddles an edge: inconclusive).

    E.g. with A [2, inf), B [0.5, 2), C (-0.5, 0.5), C/D (-5, -0.5], D (-inf, -5]: (2.8, 3.2) -> A,
    (-1.6, 3.4) -> None, (0.5, 1.0) -> B, (0.4, 0.5) -> None (0.5 is B's, not C's).
    """
    lo, hi = interval
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"interval must not contain NaN, got {interval}")
    if lo > hi:
        raise ValueError(f"interval must have lo <= hi, got {interval}")
    for band in bands:
        if band.contains_interval(lo, hi):
            return band
    return None


def auc(points: Sequence[tuple[int, float]], total_steps: int) -> float:
    """Normalised area under a step -> value curve over the whole run [0, total_steps]:

        auc = (1 / total_steps) · ∫_0^total_steps v(step) d step

    v is the piecewise-linear curve through the logged points (trapezoid rule between logged steps), held at
    the first logged value before the first logged step and at the last logged value after the last one (a run
    that stopped early, e.g. at a ceiling, keeps its last value). Points past total_steps are cut at
    total_steps (interpolated there). So a constant curve at v gives v, and runs logged at different steps are
    compared over the same span. Unit: the values' (e.g. train accuracy in [0, 1] gives an auc in [0, 1]).

    Points need not be sorted; NaN values are dropped; when a step is logged more than once the later point in
    `points` wins (a resumed run re-logs a step). Raises ValueError when total_steps <= 0, when a step is
    negative, or when no point is left.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    curve: dict[int, float] = {}  # step -> value; later duplicates overwrite
    for step, value in points:
        if step < 0:
            raise ValueError(f"steps must be >= 0, got {step}")
        if _present(value):
            curve[int(step)] = float(value)
    if not curve:
        raise ValueError("auc needs at least one logged point with a value")
    steps = sorted(curve)
    xs = [float(s) for s in steps]  # (k,) steps, ascending
    ys = [curve[s] for s in steps]  # (k,) values
    end = float(total_steps)
    if xs[-1] > end:  # cut at total_steps: interpolate the value there, drop what lies beyond
        i = next(j for j, x in enumerate(xs) if x >= end)
        if xs[i] > end:
            y_end = ys[0] if i == 0 else ys[i - 1] + (ys[i] - ys[i - 1]) * (end - xs[i - 1]) / (xs[i] - xs[i - 1])
            xs, ys = [*xs[:i], end], [*ys[:i], y_end]
        else:
            xs, ys = xs[: i + 1], ys[: i + 1]
    # Hold the ends flat out to 0 and total_steps.
    if xs[0] > 0.0:
        xs, ys = [0.0, *xs], [ys[0], *ys]
    if xs[-1] < end:
        xs, ys = [*xs, end], [*ys, ys[-1]]
    area = math.fsum((x1 - x0) * (y0 + y1) / 2.0 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:], strict=False))
    return area / end
