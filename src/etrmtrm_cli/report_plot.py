"""`compare --plot`: the training curves of the compared configurations, one panel per metric (matplotlib, optional).

One colour per configuration: its seeds' curves thin, their mean over seeds thick. Five seeds of three arms in
per-run colours would be fifteen indistinguishable lines, and the arms are what the figure compares. One legend
beside the panels serves them all (a colour means the same configuration in each), so no panel's curves hide
behind a legend of fifteen entries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from etrmtrm_cli.analysis.compare import Comparison
from etrmtrm_cli.analysis.matrix import (
    HALTED_METRICS,
    SMOOTH_EXAMPLES,
    Row,
    RunRow,
    final_value,
    series,
    trailing_means,
)
from etrmtrm_cli.errors import ConfigError

PLOTTED = (("train/accuracy", "train accuracy"), ("train/exact_accuracy", "train exact accuracy"),
           ("train/loss", "train loss"), ("train/steps", "mean ACT steps at halt"))
CARRY_PLOT = ("train/encoder_carry_change", "encoder carry change (recurrent runs)")
SMOOTH_STEPS = 50  # plot: trailing mean of the per-step metrics (loss, grad share, ...)
ACT_CHANGE_PREFIX = "act/encoder_carry_change_"  # training/step.py logs one key per ACT step k

Curve = list[tuple[float, float]]  # (x, y)


@dataclass(frozen=True)
class ConfigCurves:
    """One configuration's curves of one metric: each run's, and their mean where the runs overlap."""

    label: str  # "E0b (5 seeds)"
    colour: str
    runs: list[Curve]
    mean: Curve  # the runs' mean over the steps all of them cover (mean_curve); the run itself when there is one


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'etrmtrm[plot]'") from None


def smoothed(rows: Sequence[Row], key: str) -> Curve:
    """The metric vs step as the report reads it: a trailing mean (over halted examples, or steps)."""
    points = series(rows, key)
    window = SMOOTH_EXAMPLES if key in HALTED_METRICS else SMOOTH_STEPS
    return [(float(step), value) for step, value in trailing_means(points, window)]


def by_act_step(rows: Sequence[Row]) -> Curve:
    """Mean encoder carry change at each ACT step k, over the last 10 % of the run's training."""
    keys = sorted({k for r in rows for k in r if k.startswith(ACT_CHANGE_PREFIX)})
    points = [(float(k.removeprefix(ACT_CHANGE_PREFIX)), final_value(rows, k)) for k in keys]
    return [(k, v) for k, v in points if v is not None]


def mean_curve(curves: Sequence[Curve]) -> Curve:
    """The mean of the curves over the x range all of them cover, at every x any of them has there (each curve
    interpolated linearly: a metric of halted slots is not logged at a step where none halted)."""
    if len(curves) == 1:
        return list(curves[0])
    lo, hi = max(c[0][0] for c in curves), min(c[-1][0] for c in curves)
    xs = sorted({x for c in curves for x, _ in c if lo <= x <= hi})
    ys = np.mean([np.interp(xs, [x for x, _ in c], [y for _, y in c]) for c in curves], axis=0)
    return [(x, float(y)) for x, y in zip(xs, ys, strict=True)]


def palette(n: int) -> list[str]:
    """n distinct colours: matplotlib's ten default ones, or beyond ten tab20's twenty, its ten dark shades first
    (tab20 pairs each dark shade with a light one of its hue; in their own order neighbours would look alike)."""
    if n <= 10:
        return [f"C{i}" for i in range(n)]
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    shades = [to_hex(c) for c in colormaps["tab20"].colors]
    return [(shades[0::2] + shades[1::2])[i % 20] for i in range(n)]


def configuration_curves(cmp: Comparison, curve_of: Callable[[Sequence[Row]], Curve],
                         only: Callable[[RunRow], bool] = lambda row: True) -> list[ConfigCurves]:
    """Per configuration (its colour fixed by its place in the comparison): the curve of each of its counted
    seeds (its unfinished runs only while it has none, as the report counts them) and their mean."""
    rows_of = {id(row): run.rows for run, row in zip(cmp.runs, cmp.rows, strict=True)}
    out = []
    colours = palette(len(cmp.configs))
    for config, colour in zip(cmp.configs, colours, strict=True):
        members = [row for row in config.seeds.values() if only(row)] or [row for row in config.pending if only(row)]
        curved = [(row, curve) for row in members if (curve := curve_of(rows_of[id(row)]))]
        if curved:
            seeds = f"{len(curved)} seeds" if len(curved) > 1 else f"s{curved[0][0].seed}"
            curves = [curve for _, curve in curved]
            out.append(ConfigCurves(f"{config.label} ({seeds})", colour, curves, mean_curve(curves)))
    return out


def plot_curves(cmp: Comparison, path: Path) -> None:
    """Every configuration's curves vs step into a PNG."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot's import
    import matplotlib.pyplot as plt

    recurrent = any(r.recurrent for r in cmp.rows)
    panels: list[tuple[str, str, list[ConfigCurves]]] = [
        (title, "step", configuration_curves(cmp, lambda rows, key=key: smoothed(rows, key)))
        for key, title in PLOTTED]
    if recurrent:
        panels += [(CARRY_PLOT[1], "step", configuration_curves(
                        cmp, lambda rows: smoothed(rows, CARRY_PLOT[0]), lambda row: row.recurrent)),
                   ("encoder carry change vs ACT step (last 10 %)", "ACT step",
                    configuration_curves(cmp, by_act_step, lambda row: row.recurrent))]
    cols = 3 if len(panels) > 4 else 2
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols + 1.5, 3.6 * rows), squeeze=False, layout="constrained")
    legend: dict[str, Any] = {}  # label -> the line of its mean, over all panels (the carry panels lack static runs)
    for ax, (title, xlabel, configs) in zip(axes.flat, panels, strict=False):
        for c, line in zip(configs, _draw(ax, configs, markers=xlabel == "ACT step"), strict=True):
            legend.setdefault(c.label, line)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="outside right upper", fontsize="small")
    names = [c.label for c in cmp.configs]
    compared = " vs ".join(names) if len(names) <= 4 else f"{len(names)} configurations"
    fig.suptitle(f"{compared}: each seed thin, the mean over seeds thick "
                 f"(trailing mean over {SMOOTH_EXAMPLES} halted examples, or {SMOOTH_STEPS} steps)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def _draw(ax: Any, configs: Sequence[ConfigCurves], *, markers: bool) -> list[Any]:
    """Each configuration's seeds and mean into ax; returns the line of each mean, in the order of configs."""
    means = []
    for c in configs:
        marker = "o" if markers or len(c.mean) < 20 else None  # a sparse series (few halts logged) stays visible
        if len(c.runs) > 1:
            for run in c.runs:
                ax.plot([x for x, _ in run], [y for _, y in run], color=c.colour, alpha=0.3, linewidth=0.7)
        (line,) = ax.plot([x for x, _ in c.mean], [y for _, y in c.mean], color=c.colour, linewidth=1.8,
                          marker=marker, markersize=3)
        means.append(line)
    return means
