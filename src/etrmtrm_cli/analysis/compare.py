"""`etrmtrm compare`: the plan's comparison matrix, config differences, trivial baselines and verdict.

Everything here reads only the runs' files (config.json, meta.json, metrics.jsonl, summary.json); the
one exception is `per_task_accuracy` (--per-puzzle), which evaluates a run's final model. Nothing prints.

Definitions (the numbers a reader sees):
- final value of a metric: the mean over the last 10% of the steps at which it was logged;
- metrics of the halted slots (train/accuracy, exact, steps, encoder convergence steps) are averaged
  over steps weighted by train/count, the number of slots that halted at that step;
- steps to X%: the first step at which the mean of train/accuracy over the trailing SMOOTH_EXAMPLES
  halted examples (all of them when the run has fewer) reaches X;
- stability: the coefficient of variation (std / mean) of train/loss over the last 20% of logged steps,
  and "diverging" when the mean loss of the last 10% is above that of the first 10%;
- carry RMS: the final encoder_carry_norm (mean L2 norm per token) divided by sqrt(hidden_size), i.e. the
  root-mean-square of one carry element, about 1 for the RMS-normalised carries of the in-tree encoders.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from etrmtrm_cli import rundir
from etrmtrm_cli.data.canvas import COLOUR_OFFSET, EOS, IGNORE_LABEL, encode_grid, encode_labels
from etrmtrm_cli.errors import ConfigError, RunError
from etrmtrm_cli.training.metrics import COLLAPSED_VAR, STARVED_GRAD_SHARE

# --- how the numbers are read from metrics.jsonl -----------------------------------------------------------
FINAL_FRACTION = 0.10  # "final" = mean over the last 10% of logged steps
STABILITY_FRACTION = 0.20  # stability = CV of train/loss over the last 20% of logged steps
SMOOTH_EXAMPLES = 256  # trailing window of train/accuracy for "steps to X%": this many halted examples
# Metrics of the slots that halted at a step: averaged over steps they are weighted by train/count, the
# number of those slots (1 halted slot must not weigh as much as 32).
HALTED_METRICS = frozenset({"train/accuracy", "train/exact_accuracy", "train/q_halt_accuracy", "train/steps",
                            "train/encoder_convergence_steps"})
CONVERGENCE_LEVELS = (0.80, 0.90)  # plan, "Analysis Questions / Convergence": "Steps to reach 80%? 90%?"
LEVEL_TOL = 1e-9  # a run that sits at exactly 90% reaches 90%, whatever the float sum says

# --- the plan's thresholds ("Expected Outcomes") ------------------------------------------------------------
# Success criterion: "Train accuracy >90%"; the scenarios compare against "E0a ~90%".
BASELINE_REFERENCE_ACC = 0.90
# Scenario A "Recurrence helps significantly": "E0b achieves >92% vs E0a ~90%" -> at least +2 points.
SIGNIFICANT_GAIN_PTS = 2.0
# Scenario B "Recurrence helps slightly": "E0b achieves ~91% vs E0a ~90%" -> from +0.5 up to +2 points.
SLIGHT_GAIN_PTS = 0.5
# Scenario C "No difference": "E0b achieves ~90% same as E0a" -> within half a point either way.
SAME_BAND_PTS = 0.5
# Scenario D "Recurrence hurts": "E0b achieves <85% when E0a achieves >90%" -> 5 points or more below.
CLEARLY_WORSE_PTS = 5.0
# Red Flag 1 "Implementation bug": "E0b fails completely (<50% train acc)", "Encoder variance collapses
# (<0.1)", "Gradient flow issues" (the plan expects an encoder share of ~0.4; below 0.05 it is starved).
FAILED_ACC = 0.50  # the variance and gradient-share limits are diagnose's (one definition for both)
# Red Flag 2 "Instability": "training diverges or highly noisy", "Carry state exploding/vanishing". The
# plan gives no numbers; ours: the loss's step-to-step spread over the last 20% of steps above half its
# mean is "highly noisy"; a final loss above the first 10%'s mean is "diverges"; a carry whose RMS per
# element leaves [0.1, 10] (the carries start at about 1) is vanishing / exploding.
NOISY_LOSS_CV = 0.5
CARRY_RMS_VANISHING = 0.1
CARRY_RMS_EXPLODING = 10.0
# Red Flag 3 "No improvement": "All ETRMTRM experiments <= ETRM baseline" -> no recurrent run is at least
# SLIGHT_GAIN_PTS above the static baseline (a smaller gain is noise, as in Scenario C).
NO_GAIN_PTS = SLIGHT_GAIN_PTS

Row = dict[str, Any]  # one metrics.jsonl line: step plus metric values (None where NaN)


@dataclass(frozen=True)
class RunFiles:
    """A run directory's files, as written by train.py."""

    exp_id: str
    run_dir: Path
    config: dict[str, Any]
    meta: dict[str, Any]
    summary: dict[str, Any]
    rows: list[Row]


@dataclass(frozen=True)
class RunRow:
    """One run's line of the comparison matrix. None = not logged / not applicable ("—")."""

    exp_id: str
    model: str  # "ETRM" | "ETRMTRM" | "TRM"
    encoder: str
    recurrent: bool
    status: str  # finished | running | interrupted | failed
    status_text: str
    last_step: int
    train_acc: float | None
    train_em: float | None
    act_steps: float | None
    steps_to: dict[float, int | None]
    encoder_var: float | None
    grad_share: float | None
    grad_norm: float | None
    carry_norm: float | None
    carry_rms: float | None
    carry_change: float | None
    convergence_steps: float | None
    eval_step: int | None
    eval_acc: float | None
    eval_exact: float | None
    eval_pass2: float | None
    loss_cv: float | None
    diverged: bool
    wall_time_s: float | None

    @property
    def finished(self) -> bool:
        return self.status == "finished"


@dataclass(frozen=True)
class TrivialBaselines:
    """Token accuracy of answers that need no model, on one data configuration (shared by `runs`)."""

    runs: tuple[str, ...]
    train_mode_colour: float
    train_copy_input: float
    train_examples: int
    eval_mode_colour: float
    eval_copy_input: float
    eval_examples: int


@dataclass(frozen=True)
class Scenario:
    run: str
    baseline: str
    delta_pts: float
    letter: str  # A | B | C | C/D | D
    title: str
    evidence: list[str]
    caveats: list[str]


@dataclass(frozen=True)
class RedFlag:
    number: int
    title: str
    assessed: bool
    holds: bool
    evidence: list[str]
    action: str


@dataclass(frozen=True)
class Best:
    run: str
    baseline: str | None
    evidence: list[str]


@dataclass(frozen=True)
class Verdict:
    baseline: str | None
    baseline_why: str
    scenarios: list[Scenario]
    red_flags: list[RedFlag]
    best: Best | None


@dataclass(frozen=True)
class TaskScore:
    """--per-puzzle: one task's token accuracy (and exact rate) under each of the two runs."""

    task_id: str
    split: str  # train | eval
    accuracy: tuple[float | None, float | None]
    exact: tuple[float | None, float | None]

    @property
    def difference(self) -> float | None:
        a, b = self.accuracy
        return None if a is None or b is None else b - a


@dataclass(frozen=True)
class Comparison:
    runs: list[RunFiles]
    rows: list[RunRow]
    config_diff: dict[str, list[Any]]
    baselines: list[TrivialBaselines]
    verdict: Verdict
    per_task: list[TaskScore] = field(default_factory=list)


# --- reading runs ----------------------------------------------------------------------------------------------


def load_runs(runs_dir: Path, exp_ids: Sequence[str]) -> list[RunFiles]:
    """Every named run; one error naming every missing run and the command that produces it."""
    if not exp_ids:
        raise ConfigError("compare needs at least one run, e.g. `etrmtrm compare E0a E0b`")
    missing = [e for e in exp_ids if not (runs_dir / e / rundir.CONFIG).is_file()]
    if missing:
        raise RunError("\n".join(f"{runs_dir / e}: no such run (no {rundir.CONFIG}); produce it with "
                                 f"`etrmtrm train {e}`" for e in missing))
    return [load_run(runs_dir / e) for e in exp_ids]


def load_run(run_dir: Path) -> RunFiles:
    config = rundir.read_json(run_dir / rundir.CONFIG)
    meta_path, summary_path = run_dir / rundir.META, run_dir / rundir.SUMMARY
    meta = rundir.read_json(meta_path) if meta_path.is_file() else {}
    summary = rundir.read_json(summary_path) if summary_path.is_file() else {"status": "running"}
    return RunFiles(str(config.get("id", run_dir.name)), run_dir, config, meta, summary,
                    read_metrics(run_dir / rundir.METRICS))


def read_metrics(path: Path) -> list[Row]:
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):  # a run killed mid-write leaves a partial last line
                break
            raise RunError(f"{path}: line {n} is not valid JSON") from None
    return rows


# --- the matrix ------------------------------------------------------------------------------------------------


def series(rows: Sequence[Row], key: str) -> list[tuple[int, float, float]]:
    """(step, value, weight) for every logged, finite value of `key`; the weight is train/count for a
    metric of the halted slots, else 1."""
    out = []
    for row in rows:
        value = row.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            count = row.get("train/count")
            halted = key in HALTED_METRICS and isinstance(count, int | float) and count > 0
            out.append((int(row["step"]), float(value), float(count) if halted else 1.0))
    return out


def final_value(rows: Sequence[Row], key: str, fraction: float = FINAL_FRACTION) -> float | None:
    """Weighted mean of `key` over the last `fraction` of the steps at which it was logged (at least one).

    Counted over the metric's own logged values: train/accuracy is NaN (null) at a step where no slot
    halted, which is most steps early in a run with many ACT steps."""
    points = series(rows, key)
    if not points:
        return None
    tail = points[-max(1, math.ceil(fraction * len(points))):]
    return sum(v * w for _, v, w in tail) / sum(w for _, _, w in tail)


def trailing_means(points: Sequence[tuple[int, float, float]], window: float) -> list[tuple[int, float]]:
    """(step, weighted mean over the trailing `window` of weight) for every point from the first at which
    the window is full; a series lighter than `window` in all gets one window of all of it."""
    needed = min(window, sum(w for _, _, w in points))
    trail: deque[tuple[float, float]] = deque()
    total = weight = 0.0
    out = []
    for step, value, w in points:
        trail.append((value, w))
        total, weight = total + value * w, weight + w
        while weight - trail[0][1] >= needed:  # drop the oldest while the rest still fills the window
            old_value, old_weight = trail.popleft()
            total, weight = total - old_value * old_weight, weight - old_weight
        if weight >= needed > 0:
            out.append((step, total / weight))
    return out


def steps_to(rows: Sequence[Row], level: float, key: str = "train/accuracy") -> int | None:
    """First step where the mean of `key` over the trailing SMOOTH_EXAMPLES halted examples reaches `level`."""
    return next((step for step, mean in trailing_means(series(rows, key), SMOOTH_EXAMPLES)
                 if mean >= level - LEVEL_TOL), None)


def loss_stability(rows: Sequence[Row]) -> tuple[float | None, bool]:
    """(CV of train/loss over the last 20% of logged steps, whether the final loss is above the first)."""
    losses = [v for _, v, _ in series(rows, "train/loss")]
    if len(losses) < 2:
        return None, False
    tail = losses[-max(2, math.ceil(STABILITY_FRACTION * len(losses))):]
    mean = sum(tail) / len(tail)
    std = math.sqrt(sum((v - mean) ** 2 for v in tail) / len(tail))
    cv = std / abs(mean) if mean else None
    width = max(1, math.ceil(FINAL_FRACTION * len(losses)))
    head, last = losses[:width], losses[-width:]
    return cv, sum(last) / width > sum(head) / width


def run_row(run: RunFiles) -> RunRow:
    rows, cfg = run.rows, run.config
    arch = cfg.get("arch", {})
    encoder = str(arch.get("recurrent_encoder_type", "?"))
    recurrent = is_recurrent(run)
    model = "TRM" if is_trm(run) else "ETRMTRM" if recurrent else "ETRM"
    has_encoder = model != "TRM"  # TRM (P0) reads no demos: no encoder gradient to report
    last_step = int(rows[-1]["step"]) if rows else 0
    evals = [r for r in rows if r.get("eval/accuracy") is not None]
    last_eval = evals[-1] if evals else {}
    carry_norm = final_value(rows, "train/encoder_carry_norm") if recurrent else None
    hidden = arch.get("hidden_size")
    cv, diverged = loss_stability(rows)
    status = str(run.summary.get("status", "running"))
    wall = run.summary.get("wall_time_s")
    return RunRow(
        exp_id=run.exp_id, model=model, encoder=encoder if has_encoder else "puzzle embedding",
        recurrent=recurrent, status=status, status_text=status_text(run, last_step), last_step=last_step,
        train_acc=final_value(rows, "train/accuracy"), train_em=final_value(rows, "train/exact_accuracy"),
        act_steps=final_value(rows, "train/steps"),
        steps_to={level: steps_to(rows, level) for level in CONVERGENCE_LEVELS},
        encoder_var=final_value(rows, "train/encoder_cross_sample_var"),
        grad_share=final_value(rows, "grad/encoder_share") if has_encoder else None,
        grad_norm=final_value(rows, "grad/encoder_norm") if has_encoder else None,
        carry_norm=carry_norm,
        carry_rms=carry_norm / math.sqrt(hidden) if carry_norm is not None and hidden else None,
        carry_change=final_value(rows, "train/encoder_carry_change") if recurrent else None,
        convergence_steps=final_value(rows, "train/encoder_convergence_steps") if recurrent else None,
        eval_step=int(last_eval["step"]) if last_eval else None,
        eval_acc=last_eval.get("eval/accuracy"), eval_exact=last_eval.get("eval/exact_accuracy"),
        eval_pass2=last_eval.get("eval/pass@2"), loss_cv=cv, diverged=diverged,
        wall_time_s=float(wall) if isinstance(wall, int | float) else None,
    )


def is_trm(run: RunFiles) -> bool:
    """TRM itself (model = "trm", P0): a learned puzzle embedding, no encoder."""
    return run.config.get("model") == "trm"


def is_recurrent(run: RunFiles) -> bool:
    """train.py logs the carry metrics exactly for encoders with a carry; before any step is logged the
    encoder registry decides."""
    if is_trm(run):
        return False
    if run.rows:
        return any("train/encoder_carry_norm" in r for r in run.rows)
    from etrmtrm_cli.encoders.registry import get_encoder

    try:
        return get_encoder(str(run.config.get("arch", {}).get("recurrent_encoder_type"))).recurrent
    except ConfigError:
        return False


def status_text(run: RunFiles, last_step: int) -> str:
    status = run.summary.get("status", "running")
    total = run.summary.get("total_steps") or run.meta.get("total_steps")
    of = f" of {total}" if total else ""
    if status == "finished":
        return "finished"
    if status == "running":
        return f"in progress at step {last_step}{of}" if last_step else "in progress, no step logged yet"
    return f"{status} at step {last_step}{of}"


# Encoder settings a TRM run (model = "trm": puzzle embedding, no encoder) carries but never reads.
UNREAD_BY_TRM = ("arch.recurrent_encoder_type", "arch.encoder_", "arch.context_tokens", "train.encoder_lr_scale")


def config_differences(runs: Sequence[RunFiles]) -> dict[str, list[Any]]:
    """Dotted key -> each run's value, for the keys where the runs' config.json files disagree.
    A TRM run's encoder settings are left out (None) and compared with nothing: it has no encoder."""
    flat = [flatten({k: v for k, v in r.config.items() if k not in ("id", "description")}) for r in runs]
    keys = sorted(set().union(*flat)) if flat else []
    trm = [is_trm(r) for r in runs]
    missing, unread = object(), object()
    out = {}
    for key in keys:
        values = [unread if is_trm and key.startswith(UNREAD_BY_TRM) else f.get(key, missing)
                  for is_trm, f in zip(trm, flat, strict=True)]
        read = [v for v in values if v is not unread]
        if any(v != read[0] for v in read[1:]):
            out[key] = [None if v is missing or v is unread else v for v in values]
    return out


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value and key != "encoder_params":
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# --- trivial baselines -----------------------------------------------------------------------------------------


def pair_baselines(pairs: Sequence[tuple[np.ndarray, np.ndarray]], canvas: int) -> tuple[float, float]:
    """(most-common-colour accuracy, copy-the-input accuracy) on (input, output) pairs, as train/accuracy
    counts: per example the mean over the label positions (labels != -100), then the mean over examples.

    (a) knows the output's shape: it predicts EOS exactly where the label is EOS and, elsewhere, the most
        common colour of the target grid; (b) predicts the input's tokens at every label position.
    """
    if not pairs:
        return math.nan, math.nan
    mode_acc, copy_acc = [], []
    for grid_in, grid_out in pairs:
        labels = encode_labels(grid_out, canvas)
        inputs = encode_grid(grid_in, canvas)
        mask = labels != IGNORE_LABEL
        colours, counts = np.unique(grid_out, return_counts=True)
        mode_token = int(colours[counts.argmax()]) + COLOUR_OFFSET  # ties: any of them scores the same
        guess = np.where(labels == EOS, EOS, mode_token)
        mode_acc.append(float((guess == labels)[mask].mean()))
        copy_acc.append(float((inputs == labels)[mask].mean()))
    return float(np.mean(mode_acc)), float(np.mean(copy_acc))


def trivial_baselines(runs: Sequence[RunFiles]) -> list[TrivialBaselines]:
    """Per distinct (data config, seed): the baselines on every query of the train groups and of the eval
    groups, on the original puzzles (untranslated; colour permutations and rotations leave (a) unchanged)."""
    from etrmtrm_cli.config import DataConfig
    from etrmtrm_cli.data.dataset import build_arc_data

    by_data: dict[str, list[RunFiles]] = {}
    for run in runs:
        key = json.dumps([run.config.get("data"), run.config.get("seed", 0)], sort_keys=True)
        by_data.setdefault(key, []).append(run)
    out = []
    for members in by_data.values():
        first = members[0]
        data = build_arc_data(DataConfig.model_validate(first.config.get("data", {})), int(first.config.get("seed", 0)))
        train = [g.task.pairs[q] for g in data.groups[:data.num_train_groups] for q in g.queries]
        evals = [g.task.pairs[q] for g in data.groups[data.num_train_groups:] for q in g.queries]
        train_a, train_b = pair_baselines(train, data.canvas_size)
        eval_a, eval_b = pair_baselines(evals, data.canvas_size)
        out.append(TrivialBaselines(tuple(r.exp_id for r in members), train_a, train_b, len(train),
                                    eval_a, eval_b, len(evals)))
    return out


# --- verdict ---------------------------------------------------------------------------------------------------


def pick_baseline(rows: Sequence[RunRow]) -> tuple[RunRow | None, str]:
    """The ETRM (static encoder) run, E0a when several; else the first run named."""
    static = [r for r in rows if r.model == "ETRM" and r.encoder == "static"]
    if static:
        chosen = next((r for r in static if r.exp_id == "E0a"), static[0])
        return chosen, f"{chosen.exp_id} is the ETRM baseline (static encoder)"
    if rows:
        return rows[0], f"no static-encoder run compared: {rows[0].exp_id}, the first run named, is the baseline"
    return None, "no runs"


def scenario(run: RunRow, base: RunRow) -> Scenario | None:
    if run.train_acc is None or base.train_acc is None:
        return None
    delta = 100 * (run.train_acc - base.train_acc)
    if delta >= SIGNIFICANT_GAIN_PTS:
        letter, title = "A", "recurrence helps significantly"
    elif delta >= SLIGHT_GAIN_PTS:
        letter, title = "B", "recurrence helps slightly"
    elif delta > -SAME_BAND_PTS:
        letter, title = "C", "no difference"
    elif delta > -CLEARLY_WORSE_PTS:
        letter, title = "C/D", "recurrence slightly worse (between the plan's C and D)"
    else:
        letter, title = "D", "recurrence hurts"
    bands = (f"A ≥ +{SIGNIFICANT_GAIN_PTS:g}, B ≥ +{SLIGHT_GAIN_PTS:g}, C within ±{SAME_BAND_PTS:g}, "
             f"D ≤ -{CLEARLY_WORSE_PTS:g} points")
    evidence = [
        f"train acc {pct(run.train_acc)} ({run.exp_id}) vs {pct(base.train_acc)} ({base.exp_id}): "
        f"{delta:+.2f} points ({bands})",
        f"train EM {pct(run.train_em)} vs {pct(base.train_em)}",
        f"steps to 90%: {steps(run.steps_to[0.90])} vs {steps(base.steps_to[0.90])}",
        f"avg ACT steps: {num(run.act_steps)} vs {num(base.act_steps)}",
        f"encoder var: {num(run.encoder_var)} vs {num(base.encoder_var)}",
    ]
    caveats = []
    if base.train_acc < BASELINE_REFERENCE_ACC:
        caveats.append(f"{base.exp_id} is at {pct(base.train_acc)}, below the plan's ~90% reference: the "
                       "scenarios assume a converged baseline")
    for r in (run, base):
        if not r.finished:
            caveats.append(f"{r.exp_id} is {r.status_text}: the verdict may still change")
    return Scenario(run.exp_id, base.exp_id, delta, letter, title, evidence, caveats)


def red_flags(rows: Sequence[RunRow], base: RunRow | None) -> list[RedFlag]:
    encoders = [r for r in rows if r.model != "TRM"]
    bug = []
    for r in encoders:
        reasons = []
        if r.recurrent and r.train_acc is not None and r.train_acc < FAILED_ACC:
            reasons.append(f"train acc {pct(r.train_acc)} < {pct(FAILED_ACC)}")
        if r.encoder_var is not None and r.encoder_var < COLLAPSED_VAR:
            reasons.append(f"encoder var {num(r.encoder_var)} < {COLLAPSED_VAR:g} (collapse)")
        if r.grad_share is not None and r.grad_share < STARVED_GRAD_SHARE:
            reasons.append(f"grad encoder share {num(r.grad_share)} < {STARVED_GRAD_SHARE:g} (starved)")
        if reasons:
            note = "" if r.finished else f" ({r.status_text})"
            bug.append(f"{r.exp_id}{note}: " + "; ".join(reasons))
    unstable = []
    for r in rows:
        reasons = []
        if r.loss_cv is not None and r.loss_cv > NOISY_LOSS_CV:
            reasons.append(f"train/loss CV {num(r.loss_cv)} > {NOISY_LOSS_CV:g} over the last 20% of steps")
        if r.diverged:
            reasons.append("final train/loss above its first 10% (diverging)")
        if r.carry_rms is not None and r.carry_rms > CARRY_RMS_EXPLODING:
            reasons.append(f"carry RMS {num(r.carry_rms)} > {CARRY_RMS_EXPLODING:g} (exploding)")
        if r.carry_rms is not None and r.carry_rms < CARRY_RMS_VANISHING:
            reasons.append(f"carry RMS {num(r.carry_rms)} < {CARRY_RMS_VANISHING:g} (vanishing)")
        if reasons:
            unstable.append(f"{r.exp_id}: " + "; ".join(reasons))
    flags = [
        RedFlag(1, "implementation bug", bool(encoders), bool(bug), bug,
                "debug carry management, gradient flow, reset logic (`etrmtrm diagnose --run runs/<ID>`)"),
        RedFlag(2, "instability", bool(rows), bool(unstable), unstable,
                "check initialization, learning rate, gradient clipping"),
    ]
    recurrent = [r for r in rows if r.recurrent and r.train_acc is not None]
    static_base = base is not None and base.encoder == "static" and base.train_acc is not None
    if static_base and recurrent:
        assert base is not None and base.train_acc is not None
        deltas = [(r.exp_id, 100 * (r.train_acc - base.train_acc)) for r in recurrent if r.train_acc is not None]
        holds = all(d < NO_GAIN_PTS for _, d in deltas)
        evidence = [f"{e}: {d:+.2f} points vs {base.exp_id}" for e, d in deltas]
        flags.append(RedFlag(3, "no improvement", True, holds, evidence,
                             "document the null result, reconsider the hypothesis"))
    else:
        flags.append(RedFlag(3, "no improvement", False, False,
                             ["needs a static-encoder baseline and at least one recurrent run"], ""))
    return flags


def best_configuration(rows: Sequence[RunRow], base: RunRow | None) -> Best | None:
    """Of the encoder runs: highest train accuracy, then train EM, then fewest steps to 90%."""
    ranked = [r for r in rows if r.model != "TRM" and r.train_acc is not None]
    if not ranked:
        return None
    best = min(ranked, key=lambda r: (-(r.train_acc or 0.0), -(r.train_em or 0.0),
                                      r.steps_to[0.90] if r.steps_to[0.90] is not None else math.inf))
    evidence = [f"{best.exp_id}: train acc {pct(best.train_acc)}, train EM {pct(best.train_em)}, "
                f"steps to 90% {steps(best.steps_to[0.90])}"]
    if base is not None and base is not best and base.train_acc is not None:
        evidence.append(
            f"over {base.exp_id}: {100 * ((best.train_acc or 0) - base.train_acc):+.2f} points train acc, "
            f"{_delta_pts(best.train_em, base.train_em)} train EM, steps to 90% "
            f"{_delta_steps(best.steps_to[0.90], base.steps_to[0.90])}")
    elif base is best:
        evidence.append(f"the baseline {base.exp_id} is the best run")
    return Best(best.exp_id, base.exp_id if base else None, evidence)


def verdict(rows: Sequence[RunRow]) -> Verdict:
    base, why = pick_baseline(rows)
    scenarios = []
    if base is not None and base.encoder == "static":
        for r in rows:
            if r.recurrent and r is not base:
                found = scenario(r, base)
                if found is not None:
                    scenarios.append(found)
    return Verdict(base.exp_id if base else None, why, scenarios, red_flags(rows, base), best_configuration(rows, base))


def compare_runs(runs_dir: Path, exp_ids: Sequence[str], *, with_baselines: bool = True) -> Comparison:
    runs = load_runs(runs_dir, exp_ids)
    rows = [run_row(r) for r in runs]
    return Comparison(runs, rows, config_differences(runs), trivial_baselines(runs) if with_baselines else [],
                      verdict(rows))


# --- per puzzle (runs the models) ------------------------------------------------------------------------------


def per_task_accuracy(run: RunFiles, device: str = "cpu", batch_size: int | None = None
                      ) -> dict[tuple[str, str], tuple[float, float]]:
    """(split, task id) -> (token accuracy, exact rate) of the run's final model (its latest checkpoint
    while in progress): on one epoch of its training stream and on its eval batches, halt_max_steps ACT
    steps each, as evaluate.py runs them."""
    import torch

    from etrmtrm_cli.config import Experiment
    from etrmtrm_cli.data.dataset import build_arc_data
    from etrmtrm_cli.models.build import build_model
    from etrmtrm_cli.training.evaluate import as_dict

    exp = Experiment.model_validate(run.config)
    data = build_arc_data(exp.data, exp.seed)
    model = build_model(exp, data.seq_len, data.num_puzzle_ids)
    weights = run.run_dir / rundir.FINAL_WEIGHTS
    if not weights.is_file():
        latest = rundir.latest_checkpoint(run.run_dir)
        if latest is None:
            raise RunError(f"{run.run_dir}: no weights yet; continue it with `etrmtrm train {run.exp_id} --resume`")
        weights = latest / "model.safetensors"
    model.load_state_dict(rundir.load_weights(weights))
    model.to(device).eval()
    size = batch_size or exp.train.eval_batch_size or exp.train.batch_size
    sums: dict[tuple[str, str], list[float]] = {}

    def score(batch: Any, split: str, limit: int) -> None:
        inputs = as_dict(batch.to(device))
        with torch.inference_mode():
            carry = model.initial_carry(inputs)
            for _ in range(exp.arch.halt_max_steps):
                carry, outputs = model(carry, inputs)
        labels = inputs["labels"]
        mask = labels != IGNORE_LABEL
        correct = (outputs["logits"].argmax(-1) == labels) & mask
        acc = (correct.sum(-1) / mask.sum(-1).clamp_min(1)).tolist()
        exact = (correct.sum(-1) == mask.sum(-1)).tolist()
        for row in range(min(limit, len(acc))):
            if not bool(batch.valid[row]):
                continue
            entry = sums.setdefault((split, data.groups[int(batch.group_ids[row])].task.id), [0.0, 0.0, 0.0])
            entry[0] += 1
            entry[1] += acc[row]
            entry[2] += float(exact[row])

    epoch = data.examples_per_epoch
    for step in range(math.ceil(epoch / size)):
        score(data.train_batch(step, size), "train", epoch - step * size)
    for batch in data.eval_batches(size):
        score(batch, "eval", size)
    return {key: (s[1] / s[0], s[2] / s[0]) for key, s in sums.items()}


def per_task_table(a: Mapping[tuple[str, str], tuple[float, float]], b: Mapping[tuple[str, str], tuple[float, float]]
                   ) -> list[TaskScore]:
    """Both runs' scores per task, sorted by the difference (b - a), most negative first."""
    out = []
    for key in sorted(set(a) | set(b)):
        sa, sb = a.get(key), b.get(key)
        out.append(TaskScore(key[1], key[0], (sa[0] if sa else None, sb[0] if sb else None),
                             (sa[1] if sa else None, sb[1] if sb else None)))
    return sorted(out, key=lambda t: (t.difference is None, t.difference or 0.0, t.split, t.task_id))


# --- formatting shared by the renderers ------------------------------------------------------------------------

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


def _delta_pts(a: float | None, b: float | None) -> str:
    return DASH if a is None or b is None else f"{100 * (a - b):+.2f} points"


def _delta_steps(a: int | None, b: int | None) -> str:
    if a is None or b is None:
        return f"{steps(a)} vs {steps(b)}"
    return f"{a} vs {b} ({a - b:+d})"
