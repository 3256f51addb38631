"""Renderings of `diagnose` and `compare` results: Rich tables and a Markdown report (its plots: report_plot.py).
Only the render modules and the commands print (see render.py); the library returns dataclasses."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from etrmtrm_cli.analysis.compare import Comparison, loaded_decoders, loading_cpus
from etrmtrm_cli.analysis.configs import Configuration
from etrmtrm_cli.analysis.diagnose.subject import CheckResult, Status
from etrmtrm_cli.analysis.matrix import (
    CONVERGENCE_LEVELS,
    FINAL_FRACTION,
    NOT_RECORDED,
    SMOOTH_EXAMPLES,
    STABILITY_FRACTION,
    RunRow,
)
from etrmtrm_cli.analysis.per_task import TaskScore
from etrmtrm_cli.analysis.text import PAST_SCALE_NOTE, duration, num, pct, steps, with_interval
from etrmtrm_cli.analysis.verdict import NOISY_LOSS_CV, Verdict

_STYLE: dict[Status, str] = {"pass": "green", "warn": "yellow", "fail": "bold red", "info": "dim"}

# --- diagnose --------------------------------------------------------------------------------------------------


def check_table(result: CheckResult) -> Table:
    style = _STYLE[result.status]
    table = Table(title=f"[{style}]{result.status.upper()}[/] {result.name}", title_justify="left",
                  caption=result.message, caption_justify="left")
    table.add_column("measured")
    table.add_column("value", justify="right")
    table.add_column("threshold", style="dim")
    table.add_column("verdict")
    for row in result.rows:
        table.add_row(row.what, row.value, row.threshold, Text(row.verdict, style=_STYLE[row.verdict]))
    return table


def diagnose_summary(source: str, results: Sequence[CheckResult]) -> str:
    counts = {s: sum(r.status == s for r in results) for s in _STYLE}
    parts = ", ".join(f"[{_STYLE[s]}]{n} {s}[/]" for s, n in counts.items() if n)
    return f"{source}: {parts}"


# --- compare: the columns, shared by the terminal and the Markdown report -------------------------------------

Column = tuple[str, Callable[[RunRow], str]]


def _notes(baseline: str | None) -> Callable[[RunRow], str]:
    def note(r: RunRow) -> str:
        is_base = baseline is not None and r.exp_id in baseline.split(" = ")
        kind = "baseline" if is_base else "recurrent" if r.recurrent else "stateless"
        return kind if r.model != "TRM" else "decoder pretraining"

    return note


def matrix_columns(baseline: str | None) -> list[Column]:
    """The plan's comparison matrix (its "Comparison Matrix" table), plus steps to 80% and status."""
    return [
        ("Experiment", lambda r: r.label),
        ("Model", lambda r: f"{r.model} ({r.encoder})"),
        ("Train Acc", lambda r: pct(r.train_acc)),
        ("Train EM", lambda r: pct(r.train_em)),
        ("Avg Steps", lambda r: num(r.act_steps)),
        *((f"Steps to {level:.0%}", _steps_to(level)) for level in CONVERGENCE_LEVELS),
        ("Encoder Var", lambda r: num(r.encoder_var)),
        ("Notes", _notes(baseline)),
        ("Status", lambda r: r.status_text),
    ]


def _steps_to(level: float) -> Callable[[RunRow], str]:
    return lambda r: steps(r.steps_to[level])


DYNAMICS_COLUMNS: list[Column] = [
    ("Experiment", lambda r: r.label),
    ("Grad enc share (²)", lambda r: f"{num(r.grad_share)} ({num(r.grad_share_sq)})"),
    ("Grad enc norm", lambda r: num(r.grad_norm)),
    ("Carry norm (RMS)", lambda r: f"{num(r.carry_norm)} ({num(r.carry_rms)})" if r.recurrent else "—"),
    ("Carry change", lambda r: num(r.carry_change)),
    ("Update ratio", lambda r: num(r.update_ratio)),
    ("Carry conv. steps (converged)", lambda r: f"{num(r.convergence_steps)} ({pct(r.converged_fraction)})"
     if r.recurrent else "—"),
    ("Eval acc", lambda r: pct(r.eval_acc)),
    ("Eval exact", lambda r: pct(r.eval_exact)),
    ("Eval pass@2", lambda r: pct(r.eval_pass2)),
    ("Eval at step", lambda r: steps(r.eval_step)),
    ("Loss CV", lambda r: num(r.loss_cv)),
    ("Wall time", lambda r: duration(r.wall_time_s)),
]

DEFINITIONS = (
    f"Train Acc, Train EM, Avg Steps, Encoder Var, grad and carry: final = mean over the last "
    f"{FINAL_FRACTION:.0%} of the steps at which each was logged (Acc, EM, Avg Steps and carry conv. steps "
    f"weighted by the number of slots that halted at each step). Grad enc norm: before clipping (the plan's "
    f"encoder health: > 0.2 at its scale). Steps to X%: first step where the mean of train/accuracy over the "
    f"last {SMOOTH_EXAMPLES} halted examples reaches X (— = never). Eval: the last eval. "
    "Loss CV: std / mean of "
    f"train/loss over the last {STABILITY_FRACTION:.0%} of logged steps (> {NOISY_LOSS_CV:g} = highly noisy). "
    "Carry RMS: carry norm / sqrt(hidden_size), 1 by construction for post-norm carries. Update ratio: a "
    "recurrent update's size before the normalisation / the carry's, over every slot of a step as Carry change "
    "is (red flag 2 outside [0.01, 10]). Grad enc "
    "share (²): ||g_enc|| / ||g|| and, in brackets, the plan's share ||g_enc||² / ||g||² (~0.4). Carry conv. "
    "steps: censored at halting (a slot that never converged counts its halting step); in brackets, the "
    "fraction of halted slots whose carry converged. Encoder Var: across puzzles at one ACT step. Carry change: "
    "||new - previous|| / ||previous|| of each slot's carry, the mean over every slot of a step, slots at their "
    "first ACT step included: their jump from the initial state is far larger than a later step's change, so the "
    "figure also follows how often slots halt (metrics.jsonl has it per ACT step: act/encoder_carry_change_<k>)."
)


def _over_seeds(figure: str, percent: bool = True) -> Callable[[Configuration], str]:
    def cell(c: Configuration) -> str:
        e = c.estimate(figure)  # a seed without this figure (no eval yet, never reached 90%) is not in it
        return with_interval(e, percent) + (f" (n = {e.n})" if 0 < e.n < c.n else "")
    return cell


def _seeds(c: Configuration) -> str:
    pending = f"; {len(c.pending)} unfinished, left out" if c.pending else ""
    listed = f" ({', '.join(str(s) for s in c.seeds)})" if c.seeds else ""
    return f"{c.n}{listed}{pending}"


SEED_COLUMNS: list[Any] = [
    ("Configuration", lambda c: c.label),
    ("Seeds", _seeds),
    ("Train Acc", _over_seeds("train_acc")),
    ("Train EM", _over_seeds("train_em")),
    ("Train Acc AUC", _over_seeds("auc")),
    ("Steps to 90%", _over_seeds("steps_to_90", percent=False)),
    ("Avg Steps", _over_seeds("act_steps", percent=False)),
    ("Encoder Var", _over_seeds("encoder_var", percent=False)),
    ("Grad share²", _over_seeds("grad_share_sq", percent=False)),
    ("Update ratio", _over_seeds("update_ratio", percent=False)),
    ("Eval acc", _over_seeds("eval_acc")),
    ("Eval exact", _over_seeds("eval_exact")),
    ("Eval pass@2", _over_seeds("eval_pass2")),
]
SEEDS_NOTE = (
    "A configuration is every compared run with one resolved config (whatever its experiment ID); a seed two of "
    "them ran counts once. Only finished runs are seeds: one in progress, interrupted or failed is left out until "
    "it finishes. Each figure: mean over seeds ± the half-width of its 95% Student-t interval (none with one "
    "seed), with its own n where fewer seeds have it. Train Acc AUC: the area under the train-accuracy curve "
    "divided by the run's steps (a mean over steps, not over examples), the curve drawn through the means of "
    f"consecutive chunks of at least {SMOOTH_EXAMPLES} halted examples; it still separates runs at a ceiling, by how "
    f"fast they got there. Steps to 90%: over the seeds that reached it. {PAST_SCALE_NOTE}."
)


def _table(title: str, columns: Sequence[Any], rows: Sequence[Any], caption: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for i, (header, _) in enumerate(columns):
        table.add_column(header, style="bold cyan" if i == 0 else None, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*(fn(r) for _, fn in columns))
    return table


def stand_in_note(cmp: Comparison) -> str | None:
    """Which named experiments are read from another's runs, and why."""
    if not cmp.stand_ins:
        return None
    each = "; ".join(f"{name}'s are {original}'s" for name, original in cmp.stand_ins.items())
    return (f"Runs read for another experiment: {each}. Each has no run of its own, and experiments.toml resolves it "
            "to that experiment's configuration at the runs' profile, so its runs would repeat them bit for bit (a "
            "queue or sweep with both trains the first alone).")


def comparison_renderables(cmp: Comparison) -> list[Any]:
    note = stand_in_note(cmp)
    out: list[Any] = [Text(note, style="dim")] if note else []
    out += [
        _table("Over seeds (mean ± 95% CI half-width, n seeds)", SEED_COLUMNS, cmp.configs, SEEDS_NOTE),
        _table("Comparison matrix (vs ETRM), per run", matrix_columns(cmp.verdict.baseline), cmp.rows),
        _table("Encoder, eval and stability", DYNAMICS_COLUMNS, cmp.rows, DEFINITIONS),
    ]
    if cmp.baselines:
        out.append(baselines_table(cmp))
    out.append(config_table(cmp))
    out.append(origin_table(cmp))
    out.append(verdict_text(cmp.verdict))
    return out


def baselines_table(cmp: Comparison) -> Table:
    table = Table(title="Trivial baselines (token accuracy, no model)", title_justify="left", caption=BASELINES_NOTE,
                  caption_justify="left")
    for header in ("Runs", "Train: mode colour", "Train: copy input", "Eval: mode colour", "Eval: copy input"):
        table.add_column(header, justify="left" if header == "Runs" else "right")
    for b in cmp.baselines:
        table.add_row(", ".join(b.runs), f"{pct(b.train_mode_colour)} ({b.train_examples} queries)",
                      pct(b.train_copy_input), f"{pct(b.eval_mode_colour)} ({b.eval_examples} queries)",
                      pct(b.eval_copy_input))
    return table


BASELINES_NOTE = (
    "Mode colour: the right output shape (EOS where the label is EOS) filled with the target's most common colour. "
    "Copy input: the query's input tokens as the answer. Both on the label positions of every query of the "
    "original (unaugmented, untranslated) train / eval tasks, averaged as train/accuracy is. Training translates "
    "its canvases, where EOS cells can fall off the board: mode colour scores 0.7-1.1 points lower on the cpu and "
    "headroom profiles' training streams, so a run's margin over it is understated. Eval with eval_num_aug > 0 "
    "also averages rotated and flipped views, on which copy input differs wherever input and output shapes differ."
)


ORIGIN_COLUMNS = [("Decoder (sha256 of its start weights)", lambda o: o.decoder), ("CPU", lambda o: o.cpu),
                  ("Runs", lambda o: ", ".join(o.runs))]


def origin_note(cmp: Comparison) -> str:
    """What the provenance means for the comparison: one decoder, or a warning that arms may differ by it."""
    decoders, cpus = loaded_decoders(cmp.origins), loading_cpus(cmp.origins)
    if len(decoders) > 1:
        text = (f"Warning: the runs started from {len(decoders)} different decoders ({', '.join(decoders)}), so a "
                "difference between them can be the decoders' as well as the encoders'. Compare runs of one decoder "
                "to judge the encoders alone.")
    elif decoders:
        text = f"The runs that load a decoder started from one: {decoders[0]}."
    else:
        text = "No run records a decoder it loaded."
    if any(o.decoder == NOT_RECORDED for o in cmp.origins):
        text += " Runs older than the record (\"not recorded\") may have started from any decoder."
    if len(cpus) > 1:
        text += (f" They ran on {len(cpus)} kinds of CPU; a seed computed with other vector instructions differs in "
                 "its last bits.")
    return text


def origin_table(cmp: Comparison) -> Table:
    table = _table("Provenance (meta.json)", ORIGIN_COLUMNS, cmp.origins, origin_note(cmp))
    if len(loaded_decoders(cmp.origins)) > 1:
        table.caption_style = "bold yellow"
    return table


def config_table(cmp: Comparison) -> Table | Text:
    if not cmp.config_diff:
        return Text("Config: the runs' config.json files agree on every setting.", style="dim")
    table = Table(title="Config differences (config.json)", title_justify="left")
    table.add_column("key", style="bold")
    for c in cmp.configs:
        table.add_column(c.label)
    for key, values in cmp.config_diff.items():
        table.add_row(key, *(_value(v) for v in values))
    return table


def _value(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return str(v)


def verdict_lines(v: Verdict) -> list[tuple[int, str, str]]:
    """(indent level, style, text): the verdict as an outline, for both renderers."""
    lines: list[tuple[int, str, str]] = [(0, "bold", f"Baseline: {v.baseline_why}")]
    if not v.scenarios:
        lines.append((0, "dim", "Scenario: none drawn without a baseline (see Baseline)" if v.baseline is None else
                      "Scenario: needs a static-encoder run and a recurrent run with logged train/accuracy"))
    for s in v.scenarios:
        lines.append((0, "bold", f"Scenario {s.letter} for {s.run} vs {s.baseline}: {s.title}{_paren(s.strength)}"))
        lines.extend((1, "", e) for e in s.evidence)
        lines.extend((1, "yellow", f"caveat: {c}") for c in s.caveats)
    for p in v.parents:
        lines.append((0, "bold", f"{p.run} vs its parent {p.parent}: {p.finding}{_paren(p.strength)}"))
        lines.append((1, "", "settings that differ: " + ("; ".join(p.settings) or "none (same configuration)")))
        lines.extend((1, "", e) for e in p.evidence)
    if v.parents_absent:
        lines.append((0, "dim", "Not compared with their parent, which is not among the runs: "
                                f"{', '.join(v.parents_absent)} (name the parent too to compare them)"))
    for f in v.red_flags:
        if not f.assessed:
            lines.append((0, "dim", f"Red flag {f.number} ({f.title}): not assessed"))
            lines.extend((1, "dim", e) for e in f.evidence)
            continue
        state = "HOLDS" if f.holds else "does not hold in the finished runs" if f.pending else "does not hold"
        lines.append((0, "bold red" if f.holds else "green", f"Red flag {f.number} ({f.title}): {state}"))
        lines.extend((1, "", e) for e in f.evidence)
        if f.holds and f.action:
            lines.append((1, "yellow", f"action: {f.action}"))
    if v.best is not None:
        best = v.best.run if not v.best.not_separated else (
            f"none shown ({v.best.run} has the highest mean, but not above {', '.join(v.best.not_separated)} "
            "by a paired interval)")
        lines.append((0, "bold", f"Best configuration: {best}"))
        lines.extend((1, "", e) for e in v.best.evidence)
    for d in v.decisions:
        lines.append((0, "bold" if d.decided else "dim", f"Decision point {d.point}: {d.decision}"))
        lines.extend((1, "", e) for e in d.evidence)
    return lines


def _paren(text: str) -> str:
    return f" ({text})" if text else ""


def verdict_text(v: Verdict) -> Group:
    parts = [Text("Verdict (research plan, Expected Outcomes)", style="bold underline")]
    for indent, style, text in verdict_lines(v):
        parts.append(Text(("  " * indent) + ("- " if indent else "") + text, style=style))
    return Group(*parts)


PER_TASK_COLUMNS = "exact: the rate over every view of every query; solved: in how many seeds pass@2 is 100 %"


def per_task_table(scores: Sequence[TaskScore], names: tuple[str, str]) -> Table:
    a, b = names
    table = Table(title=f"Per task: {a} vs {b} (token accuracy, sorted by {b} − {a}; {PER_TASK_COLUMNS})",
                  title_justify="left")
    for header in task_headers(a, b):
        table.add_column(header, justify="left" if header in ("task", "split") else "right")
    for s in scores:
        table.add_row(*_task_cells(s))
    return table


def task_headers(a: str, b: str) -> list[str]:
    return ["task", "split", a, b, "difference", f"exact {a}", f"exact {b}", f"solved {a}", f"solved {b}"]


def _task_cells(s: TaskScore) -> list[str]:
    diff = s.difference
    return [s.task_id, s.split, pct(s.accuracy[0]), pct(s.accuracy[1]),
            "—" if diff is None else f"{100 * diff:+.1f}", pct(s.exact[0]), pct(s.exact[1]),
            s.solved[0] or "—", s.solved[1] or "—"]


# --- Markdown --------------------------------------------------------------------------------------------------


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines.extend("| " + " | ".join(cell(c) for c in row) + " |" for row in rows)
    return "\n".join(lines)


def _md_columns(columns: Sequence[Any], rows: Sequence[Any]) -> str:
    return _md_table([h for h, _ in columns], [[fn(r) for _, fn in columns] for r in rows])


def compare_command(cmp: Comparison, exp_ids: Sequence[str]) -> str:
    """The `etrmtrm compare` command that reads these runs again (the runs directory when not the default)."""
    where = "" if cmp.runs_dir == Path("runs") else f" --runs-dir {cmp.runs_dir.as_posix()}"
    return f"etrmtrm compare {' '.join(exp_ids)}{where}"


def comparison_markdown(cmp: Comparison, markdown_path: Path, plot: Path | None = None,
                        per_task: Sequence[TaskScore] = ()) -> str:
    ids = [c.label for c in cmp.configs]
    named = list(dict.fromkeys([*(r.exp_id for r in cmp.rows), *cmp.stand_ins]))
    note = stand_in_note(cmp)
    out = [f"# Comparison: {' vs '.join(ids)}", "",
           f"Runs: {', '.join(f'`{r.run_dir}`' for r in cmp.runs)}. Generated by `{compare_command(cmp, named)}`.",
           *(["", note] if note else []),
           "", "## Over seeds (mean ± 95% CI half-width, n seeds)", "", _md_columns(SEED_COLUMNS, cmp.configs), "",
           SEEDS_NOTE, "",
           "## Comparison matrix (vs ETRM), per run", "",
           _md_columns(matrix_columns(cmp.verdict.baseline), cmp.rows), "",
           "## Encoder, eval and stability", "", _md_columns(DYNAMICS_COLUMNS, cmp.rows), "", DEFINITIONS, ""]
    if plot is not None:
        rel = os.path.relpath(plot.resolve(), markdown_path.resolve().parent)
        out += [f"![training curves]({Path(rel).as_posix()})", ""]
    if cmp.baselines:
        out += ["## Trivial baselines (token accuracy, no model)", "",
                _md_table(["Runs", "Train: mode colour", "Train: copy input", "Eval: mode colour", "Eval: copy input"],
                          [[", ".join(b.runs), f"{pct(b.train_mode_colour)} ({b.train_examples} queries)",
                            pct(b.train_copy_input), f"{pct(b.eval_mode_colour)} ({b.eval_examples} queries)",
                            pct(b.eval_copy_input)] for b in cmp.baselines]), "", BASELINES_NOTE, ""]
    out += ["## Config differences", ""]
    if cmp.config_diff:
        out.append(_md_table(["key", *ids], [[f"`{k}`", *(_value(v) for v in vals)]
                                             for k, vals in cmp.config_diff.items()]))
    else:
        out.append("The runs' config.json files agree on every setting.")
    out += ["", "## Provenance", "", _md_columns(ORIGIN_COLUMNS, cmp.origins), "", origin_note(cmp)]
    out += ["", "## Verdict", ""]
    for indent, _, text in verdict_lines(cmp.verdict):
        if indent == 0:
            if out[-1] != "":
                out.append("")  # a list ends before the next paragraph
            out += [f"**{text}**", ""]
        else:
            out.append(f"{'  ' * (indent - 1)}- {text}")
    if per_task:
        names = (named[0], named[1])
        out += ["", f"## Per task ({names[1]} − {names[0]})", "", f"Token accuracy; {PER_TASK_COLUMNS}.", "",
                _md_table(task_headers(*names), [_task_cells(s) for s in per_task])]
    return "\n".join(out).rstrip() + "\n"
