"""`compare --plot`: the training curves of the compared runs, one panel per metric (matplotlib, optional)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from etrmtrm_cli.analysis.compare import Comparison
from etrmtrm_cli.analysis.matrix import HALTED_METRICS, SMOOTH_EXAMPLES, final_value, series, trailing_means
from etrmtrm_cli.errors import ConfigError

PLOTTED = (("train/accuracy", "train accuracy"), ("train/exact_accuracy", "train exact accuracy"),
           ("train/loss", "train loss"), ("train/steps", "mean ACT steps at halt"))
CARRY_PLOT = ("train/encoder_carry_change", "encoder carry change (recurrent runs)")


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'etrmtrm[plot]'") from None


SMOOTH_STEPS = 50  # plot: trailing mean of the per-step metrics (loss, grad share, ...)
ACT_CHANGE_PREFIX = "act/encoder_carry_change_"  # train.py logs one key per ACT step k


def plot_curves(cmp: Comparison, path: Path) -> None:
    """Every run's curves vs step (raw, faint; trailing mean, solid) into a PNG."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot's import
    import matplotlib.pyplot as plt

    panels = list(PLOTTED) + ([CARRY_PLOT] if any(r.recurrent for r in cmp.rows) else [])
    slots = len(panels) + any(r.recurrent for r in cmp.rows)  # + carry change vs ACT step
    cols = 3 if slots > 4 else 2
    rows = -(-slots // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.6 * rows), squeeze=False)
    for ax, (key, title) in zip(axes.flat, panels, strict=False):
        for i, (run, row) in enumerate(zip(cmp.runs, cmp.rows, strict=True)):
            if key == CARRY_PLOT[0] and not row.recurrent:
                continue
            points = series(run.rows, key)
            if not points:
                continue
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            colour = f"C{i % 10}"
            marker = "o" if len(xs) < 20 else None  # a sparse series (few halts logged) stays visible
            ax.plot(xs, ys, color=colour, alpha=0.25, linewidth=0.8)
            smooth = trailing_means(points, SMOOTH_EXAMPLES if key in HALTED_METRICS else SMOOTH_STEPS)
            ax.plot([p[0] for p in smooth], [p[1] for p in smooth], color=colour, linewidth=1.6, marker=marker,
                    markersize=3, label=row.label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    if any(r.recurrent for r in cmp.rows):
        _plot_carry_by_act_step(axes.flat[len(panels)], cmp)
        panels = [*panels, ("", "")]
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{' vs '.join(c.label for c in cmp.configs)} (solid: trailing mean over "
                 f"{SMOOTH_EXAMPLES} halted examples, or {SMOOTH_STEPS} steps)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def _plot_carry_by_act_step(ax: Any, cmp: Comparison) -> None:
    """Mean encoder carry change at each ACT step k, over the last 10 % of each recurrent run's training."""
    for i, (run, row) in enumerate(zip(cmp.runs, cmp.rows, strict=True)):
        keys = sorted({k for r in run.rows for k in r if k.startswith(ACT_CHANGE_PREFIX)})
        points = [(int(k.removeprefix(ACT_CHANGE_PREFIX)), final_value(run.rows, k)) for k in keys]
        points = [(k, v) for k, v in points if v is not None]
        if row.recurrent and points:
            ax.plot([k for k, _ in points], [v for _, v in points], color=f"C{i % 10}", marker="o", markersize=3,
                    label=row.label)
    ax.set_title("encoder carry change vs ACT step (last 10 %)")
    ax.set_xlabel("ACT step")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")
