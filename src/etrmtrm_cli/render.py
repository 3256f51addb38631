"""Rich renderings of the library's return values. Only the render modules (this one, report_render.py,
sweep_render.py) and the commands (cli.py, cli_sweep.py) print."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich.columns import Columns
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from etrmtrm_cli.analysis.matrix import FINAL_FRACTION, final_value
from etrmtrm_cli.analysis.text import duration
from etrmtrm_cli.config import Experiment, changed_keys
from etrmtrm_cli.experiments_file import ExperimentsFile

if TYPE_CHECKING:  # torch-backed modules: imported only by the commands that need them, so --help is quick
    from etrmtrm_cli.data import Batch, DataSummary
    from etrmtrm_cli.encoders.registry import EncoderSpec
    from etrmtrm_cli.rundir import Row
    from etrmtrm_cli.training.loop import RunSummary


def experiments_table(file: ExperimentsFile, resolved: Mapping[str, Experiment], base: Experiment) -> Table:
    queues_of: dict[str, list[str]] = {}
    for name, members in file.queues.items():
        for exp_id in members:
            queues_of.setdefault(exp_id, []).append(name)
    table = Table(title=f"{file.path} (profile {base.profile})", show_lines=False)
    table.add_column("ID", style="bold cyan")
    table.add_column("queues")
    table.add_column("model")
    table.add_column("differs from base")
    table.add_column("description", style="dim")
    for exp_id, exp in resolved.items():
        diff = changed_keys(exp, base)
        text = ", ".join(f"{key}={_short(new)}" for key, (_, new) in diff.items()) or "-"
        table.add_row(exp_id, ", ".join(queues_of.get(exp_id, ())), _model_name(exp), text, exp.description)
    return table


def _model_name(exp: Experiment) -> str:
    return "TRM (puzzle emb)" if exp.model == "trm" else exp.arch.recurrent_encoder_type


def encoders_table(specs: Sequence[EncoderSpec]) -> Table:
    from etrmtrm_cli.encoders.registry import config_defaults

    table = Table(title="Registered encoders (arch.recurrent_encoder_type)")
    table.add_column("name", style="bold cyan")
    table.add_column("recurrent")
    table.add_column("settings (arch.encoder_params) = default")
    table.add_column("registered by", style="dim")
    for spec in specs:
        params = ", ".join(f"{k}={_short(v)}" for k, v in config_defaults(spec).items()) or "-"
        recurrent = f"yes (carry {spec.module_cls.state_key!r} logged)" if spec.recurrent else "no"
        table.add_row(spec.name, recurrent, params, spec.origin)
    return table


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)


class TrainProgress:
    """A live progress bar on a terminal, a plain line per eval (and every ~5 %) otherwise, nothing when quiet."""

    _SHOWN = (("train/accuracy", "acc", "{:.1%}"), ("train/exact_accuracy", "exact", "{:.1%}"),
              ("train/loss", "loss", "{:.3f}"), ("train/steps", "ACT", "{:.1f}"),
              ("grad/encoder_share_sq", "enc grad share", "{:.2f}"))  # the plan's "~40 % of gradients"

    def __init__(self, console: Console, *, quiet: bool) -> None:
        self.console, self.quiet = console, quiet
        self.live = console.is_terminal and not quiet
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.last_eval = ""
        self.latest: dict[str, float] = {}
        self.every = 1
        self.shown = self._SHOWN

    def __enter__(self) -> TrainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def on_event(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == "start" and payload["runtime"]["dtype_note"]:  # a warning: shown even when quiet
            self.console.print(f"[yellow]{payload['exp'].id}: {payload['runtime']['dtype_note']}[/]", highlight=False)
        if self.quiet:
            return
        if kind == "start":
            self._start(payload)
        elif kind == "eval":
            self.last_eval = self._metrics_text(payload["metrics"], EVAL_SHOWN)
            if not self.live:
                self.console.print(f"step {payload['step']}: eval {self.last_eval}", highlight=False)
        elif kind == "step":
            self._step(payload)

    def _start(self, payload: dict[str, Any]) -> None:
        exp, total = payload["exp"], payload["total_steps"]
        self.every = max(1, total // 20)
        if exp.model != "etrm":  # no demo encoder (P0: its puzzle table is no parameter), so no encoder share
            self.shown = tuple(item for item in self._SHOWN if item[0] != "grad/encoder_share_sq")
        report, start = payload["decoder_report"], payload["start_step"]
        if report is not None:
            decoder = (f"{exp.decoder} (sha256 {report.sha256}): {len(report.loaded)} tensors loaded, "
                       f"{len(report.missing)} new, {len(report.unexpected)} unused")
        else:  # a resumed run restores every weight from its checkpoint
            decoder = f"from step {start}'s checkpoint" if start else "from scratch"
        self.console.print(
            f"[bold]{exp.id}[/] ({exp.profile} profile, {payload['device']} x{payload['world_size']}) -> "
            f"{payload['run_dir']}; {total} steps from {start}; decoder {decoder}", highlight=False)
        runtime = payload["runtime"]
        compiled = "compiled" if runtime["compile"] else "eager"
        hint = f" ({runtime['dtype_hint']})" if runtime["dtype_hint"] else ""
        self.console.print(f"[dim]{runtime['forward_dtype']}{hint}, {compiled} ({runtime['compile_note']}), "
                           f"malloc {runtime['allocator']}[/]", highlight=False)
        if self.live:
            self.progress = Progress(
                TextColumn("[bold cyan]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"), console=self.console, transient=False)
            self.progress.start()
            self.task = self.progress.add_task(exp.id, total=total, completed=payload["start_step"],
                                               info="", rate="")

    def _step(self, payload: dict[str, Any]) -> None:
        step = payload["step"]
        # Accuracy and ACT steps exist only on steps where some slot halted: show the latest known value.
        self.latest.update({k: v for k, v in payload["metrics"].items() if isinstance(v, float) and math.isfinite(v)})
        metrics = self.latest
        info = self._metrics_text(metrics, self.shown)
        if self.progress is not None and self.task is not None:
            rate = 1.0 / metrics["time/step_s"] if metrics.get("time/step_s") else 0.0
            eval_text = f" | eval {self.last_eval}" if self.last_eval else ""
            self.progress.update(self.task, completed=step, info=info + eval_text, rate=f"{rate:.1f} steps/s")
        elif step % self.every == 0 or step == payload["total_steps"]:
            self.console.print(f"step {step}/{payload['total_steps']}: {info}", highlight=False)

    @staticmethod
    def _metrics_text(metrics: dict[str, float], shown: Sequence[tuple[str, str, str]]) -> str:
        parts = []
        for key, label, fmt in shown:
            value = metrics.get(key)
            if value is not None and math.isfinite(value):
                parts.append(f"{label} {fmt.format(value)}")
        return "  ".join(parts)


EVAL_SHOWN = (("eval/accuracy", "acc", "{:.1%}"), ("eval/exact_accuracy", "exact", "{:.1%}"),
              ("eval/pass@2", "pass@2", "{:.1%}"))


def summary_line(summary: RunSummary, rows: Sequence[Row]) -> str:
    """The run's end: its train figures as `compare` gives them (over the last 10 % of its logged steps, from
    the rows of metrics.jsonl), its last eval's as they are."""
    parts = [f"[bold]{summary.exp_id}[/] {summary.status} at step {summary.step}/{summary.total_steps} "
             f"in {duration(summary.wall_time_s)}"]
    for key, label in (("train/accuracy", "train acc"), ("train/exact_accuracy", "train exact")):
        if (value := final_value(rows, key)) is not None:
            parts.append(f"{label} {value:.1%}")
    if parts[1:]:
        parts[-1] += f" (last {FINAL_FRACTION:.0%} of steps)"
    for key, label in (("eval/accuracy", "eval acc"), ("eval/pass@2", "pass@2")):
        if key in summary.last:
            parts.append(f"{label} {summary.last[key]:.1%}")
    return ", ".join(parts) + f" -> {summary.run_dir}"


def data_table(exp: Experiment, summary: DataSummary) -> Table:
    table = Table(title=f"{exp.id} data ({exp.profile} profile, canvas {summary.canvas_size}x{summary.canvas_size}, "
                        f"queries: {exp.data.query_mode})")
    table.add_column("")
    table.add_column("train", justify="right")
    table.add_column("eval", justify="right")
    rows = (
        ("sources", lambda s: ", ".join(s.sources)),
        ("groups (tasks)", lambda s: str(s.groups)),
        ("puzzles (augmented views)", lambda s: f"{s.puzzles:,}"),
        ("examples per epoch / pass", lambda s: f"{s.examples_per_epoch:,}"),
        ("demos per example min/mean/max", lambda s: f"{s.demos_min} / {s.demos_mean:.1f} / {s.demos_max}"),
        ("grid height min-max", lambda s: f"{s.height[0]}-{s.height[1]}"),
        ("grid width min-max", lambda s: f"{s.width[0]}-{s.width[1]}"),
        ("left out: larger than canvas", lambda s: str(s.too_large)),
        ("left out: bad task files", lambda s: str(s.skipped)),
        ("left out: answer is in a train task", lambda s: str(s.trained_on)),
    )
    for label, value in rows:
        table.add_row(label, value(summary.train), value(summary.eval))
    return table


# ARC's usual palette for colours 0-9; PAD is blank, EOS a dim dot.
_PALETTE = ("#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00", "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF",
            "#870C25")


def grid_text(tokens: Any, side: int) -> Text:
    """(S²,) canvas tokens -> coloured cells, two characters per cell."""
    text = Text()
    rows = [list(map(int, tokens[r * side:(r + 1) * side])) for r in range(side)]
    last_row = max((r for r, row in enumerate(rows) if any(t > 0 for t in row)), default=-1)
    for row in rows[: last_row + 1]:
        for token in row:
            if token >= 2:
                text.append("  ", style=f"on {_PALETTE[token - 2]}")
            else:
                text.append(" ·" if token == 1 else "  ", style="dim")
        text.append("\n")
    return text


def example_panel(batch: Batch, row: int, side: int, task_id: str) -> Panel:
    """One example: its demos (input -> output) and the query, as the model sees them."""
    grids = []
    for k in range(int(batch.demo_mask[row].sum())):
        grids.append(Panel(grid_text(batch.demo_inputs[row, k], side), title=f"demo {k + 1} in", expand=False))
        grids.append(Panel(grid_text(batch.demo_labels[row, k], side), title=f"demo {k + 1} out", expand=False))
    labels = batch.labels[row].clamp_min(0)
    grids.append(Panel(grid_text(batch.inputs[row], side), title="query in", expand=False, border_style="cyan"))
    grids.append(Panel(grid_text(labels, side), title="query out (target)", expand=False, border_style="cyan"))
    title = f"task {task_id}, augmentation {int(batch.aug_ids[row])} (first training example)"
    return Panel(Columns(grids), title=title)
