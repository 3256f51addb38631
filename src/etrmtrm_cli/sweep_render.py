"""Rich renderings for `etrmtrm sweep` and `etrmtrm status` (only the render modules and the commands print)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

from etrmtrm_cli.analysis.text import duration

if TYPE_CHECKING:
    from etrmtrm_cli.sweep import PlannedJob
    from etrmtrm_cli.sweep_cost import Estimate
    from etrmtrm_cli.sweep_status import RunRow

ACTIONS = {"new": "start", "resumable": "resume", "unsaved": "start over", "finished": "skip (finished)",
           "running": "skip (another process writes it)"}
STATE_STYLES = {"finished": "green", "running": "cyan", "queued": "dim", "failed": "bold red", "stopped": "yellow",
                "unreadable": "bold red"}


def flops(value: float | None) -> str:
    if value is None:
        return "unknown"
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g} FLOP"


def plan_table(planned: Sequence[PlannedJob], estimates: Sequence[Estimate], title: str) -> Table:
    """The jobs a sweep submits: each run, what will happen to it, what it waits for, its steps and cost."""
    table = Table(title=title)
    for name, justify in (("job", "left"), ("now", "left"), ("action", "left"), ("waits for", "left"),
                          ("steps", "right"), ("FLOPs/step", "right"), ("compute", "right"), ("time here", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for job, est in zip(planned, estimates, strict=True):
        table.add_row(Text(job.key, style="bold cyan"), job.state, ACTIONS.get(job.state, job.state),
                      job.waits_for or "", f"{est.steps:,}", flops(est.flops_per_step), flops(est.flops),
                      duration(est.seconds, 'unknown'))
    return table


def profile_table(per_profile: dict[str, Sequence[Estimate]], jobs: int, chosen: str) -> Table:
    """What the same sweep costs at each profile of the file: steps, compute, time where measured here."""
    from etrmtrm_cli.sweep_cost import total_seconds

    table = Table(title=f"The sweep at each profile ({jobs} runs; compute = counted FLOPs per step x steps)")
    for name, justify in (("profile", "left"), ("optimizer steps", "right"), ("compute", "right"),
                          ("time here, one after another", "right"), ("time from", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for profile, estimates in per_profile.items():
        total = None if any(e.flops is None for e in estimates) else sum(e.flops or 0.0 for e in estimates)
        bases = sorted({e.basis for e in estimates})
        table.add_row(Text(profile, style="bold" if profile == chosen else ""), f"{sum(e.steps for e in estimates):,}",
                      flops(total), duration(total_seconds(estimates), 'unknown'), "; ".join(bases))
    return table


def status_table(rows: Sequence[RunRow], title: str) -> Table:
    table = Table(title=title)
    for name, justify in (("experiment", "left"), ("seed", "right"), ("state", "left"), ("step", "right"),
                          ("last train acc", "right"), ("wall", "right"), ("log / note", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        step = "" if row.step is None else f"{row.step:,}" + (f" / {row.total_steps:,}" if row.total_steps else "")
        accuracy = "" if row.train_accuracy is None else f"{row.train_accuracy:.1%}"
        wall = "" if row.wall_time_s is None else duration(row.wall_time_s)
        extra = " ".join(part for part in (row.log, f"({row.note})" if row.note and row.log else row.note) if part)
        table.add_row(Text(row.exp_id, style="bold cyan"), "" if row.seed is None else str(row.seed),
                      Text(row.state, style=STATE_STYLES.get(row.state, "")), step, accuracy, wall,
                      Text(extra))  # plain text: an error may hold brackets (gloo's "[/__w/pytorch/...]")
    return table


def status_counts(rows: Sequence[RunRow]) -> str:
    counts = Counter(row.state for row in rows)
    order = ("finished", "running", "queued", "stopped", "failed")
    return ", ".join(f"{counts[state]} {state}" for state in order if counts[state]) or "no runs"
