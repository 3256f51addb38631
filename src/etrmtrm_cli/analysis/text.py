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


def duration(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def delta_pts(a: float | None, b: float | None) -> str:
    return DASH if a is None or b is None else f"{100 * (a - b):+.2f} points"


def delta_steps(a: int | None, b: int | None) -> str:
    if a is None or b is None:
        return f"{steps(a)} vs {steps(b)}"
    return f"{a} vs {b} ({a - b:+d})"


def with_interval(e: Estimate, percent: bool = True) -> str:
    """'97.2% ± 0.8' (a fraction, in points) or '0.42 ± 0.05': the mean over seeds and its 95% half-width
    (none with one seed)."""
    if e.mean is None:
        return DASH
    if percent:
        return pct(e.mean) + (f" ± {100 * e.half_width:.1f}" if e.half_width is not None else "")
    return num(e.mean) + (f" ± {num(e.half_width)}" if e.half_width is not None else "")
