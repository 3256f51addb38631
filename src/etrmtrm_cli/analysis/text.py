"""How numbers read in tables, evidence lines and reports: "—" for a value that is missing or not finite."""

from __future__ import annotations

import math

from etrmtrm_cli.analysis.stats import Estimate

DASH = "—"


def pct(value: float | None) -> str:
    return DASH if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def num(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return DASH
    return f"{value:.3g}" if value == 0 or 1e-3 <= abs(value) < 1e4 else f"{value:.2e}"


def steps(value: int | None) -> str:
    return DASH if value is None else str(value)


def duration(seconds: float | None, missing: str = DASH) -> str:
    """A wall time for people: 4.2 s, 95 s, 35 min, 3.1 h, 2.5 days."""
    if seconds is None:
        return missing
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 48 * 3600 else f"{seconds / 86400:.1f} days"


def delta_pts(a: float | None, b: float | None) -> str:
    return DASH if a is None or b is None else f"{100 * (a - b):+.2f} points"


def delta_steps(a: int | None, b: int | None) -> str:
    if a is None or b is None:
        return f"{steps(a)} vs {steps(b)}"
    return f"{a} vs {b} ({a - b:+d})"


# A t interval of a fraction over few seeds can reach past the 0-100 % the fraction can take: marked so.
PAST_SCALE = "†"
PAST_SCALE_NOTE = (f"{PAST_SCALE}: the interval reaches past 0% or 100%, as a Student-t interval of a fraction over "
                   "few seeds can")


def with_interval(e: Estimate, percent: bool = True) -> str:
    """'97.2% ± 0.8' (a fraction, in points) or '0.42 ± 0.05': the mean over seeds and its 95% half-width
    (none with one seed)."""
    if e.mean is None:
        return DASH
    if percent:
        past = e.interval is not None and _past_scale(*e.interval)
        return pct(e.mean) + (f" ± {100 * e.half_width:.1f}" if e.half_width is not None else "") + (
            PAST_SCALE if past else "")
    return num(e.mean) + (f" ± {num(e.half_width)}" if e.half_width is not None else "")


def pct_interval(lo: float, hi: float) -> str:
    """'[81.2%, 93.4%]' for an interval of a fraction; one past 0-100 % is cut there, and says so."""
    shown = f"[{pct(max(lo, 0.0))}, {pct(min(hi, 1.0))}]"
    return shown + (" (cut from a t interval past 0-100%)" if _past_scale(lo, hi) else "")


def _past_scale(lo: float, hi: float) -> bool:
    return lo < 0 or hi > 1
