"""encoder-variance: the context depends on the demos and tells puzzles apart (no collapse to one context for every
demo set)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from etrmtrm_cli.analysis.diagnose.context_use import DEMO_KEYS, other_task_rows
from etrmtrm_cli.analysis.diagnose.subject import (
    MIN_MEASURE_BATCH,
    CheckResult,
    Measurement,
    Status,
    Subject,
    build,
    number,
    train_batch,
    worst,
)
from etrmtrm_cli.analysis.matrix import final_value
from etrmtrm_cli.analysis.thresholds import COLLAPSED_VAR, HEALTHY_VAR, MIN_DEMO_DEPENDENCE, SAME_CONTEXT_VAR
from etrmtrm_cli.models.act import ACTModel
from etrmtrm_cli.training.evaluate import rollout
from etrmtrm_cli.training.metrics import cross_sample_var


def check_encoder_variance(subject: Subject) -> CheckResult:
    """Variance of the context across distinct puzzles (metrics.cross_sample_var), at every ACT step of an
    eval-mode pass of halt_max_steps steps; the verdict is on its mean over those steps, which is what a
    training log averages over (a recurrent encoder starts every slot from one shared init, so its first
    contexts are alike by design). And whether the context depends on the demos at all: rows of different
    puzzles can differ through their query grids alone. With a run: the run's weights are judged, the fresh
    model is shown. A fresh model's low variance warns: its contexts may start alike, and training decides
    whether they part; one context for every puzzle (SAME_CONTEXT_VAR) fails."""
    size = max(subject.exp.train.batch_size, MIN_MEASURE_BATCH)
    batch = train_batch(subject, 0, size)
    distinct = int(batch["puzzle_ids"].unique().numel())
    rows: list[Measurement] = []
    if distinct < 2:
        rows.append(Measurement("distinct puzzles in the batch", str(distinct), "≥ 2", "warn"))
        return CheckResult("encoder-variance", "warn", rows, "not measurable: the batch holds a single puzzle")
    trained = subject.weights is not None
    models = [("fresh model", build(subject, trained=False))] + ([("trained run", build(subject))] if trained else [])
    judged, own = math.nan, []
    for label, model in models:
        own = contexts(model, batch, subject.exp.arch.halt_max_steps)
        per_step = [cross_sample_var(context, batch["puzzle_ids"]) for context in own]
        judged = sum(per_step) / len(per_step)
        rows.append(Measurement(f"{label}: cross-sample variance at ACT step 1 / {len(per_step)}",
                                f"{number(per_step[0])} / {number(per_step[-1])}", "(for reference)", "info"))
        verdict = variance_verdict(judged)
        rows.append(Measurement(f"{label}: mean over the {len(per_step)} ACT steps ({distinct} distinct puzzles)",
                                number(judged), f"> {HEALTHY_VAR:g} healthy; < {COLLAPSED_VAR:g} collapse",
                                "info" if label == "fresh model" and trained else
                                "warn" if label == "fresh model" and verdict == "fail" and judged >= SAME_CONTEXT_VAR
                                else verdict))
    label, model = models[-1]  # the judged one
    donors = other_task_rows(batch["group_ids"])
    change = demo_dependence(model, batch, donors, own) if donors is not None else None
    if change is not None:
        rows.append(Measurement(f"{label}: context change with another task's demos (relative, mean over steps)",
                                number(change), f"≥ {MIN_DEMO_DEPENDENCE:g}",
                                "pass" if change >= MIN_DEMO_DEPENDENCE else "fail"))
    # The figure compare's red flag 1 reads: across puzzles at one ACT step; old runs logged only the plain one.
    logged_key, logged = next(((key, value) for key in ("train/encoder_var_same_step", "train/encoder_cross_sample_var")
                               if (value := final_value(subject.logged, key)) is not None), ("", None))
    if logged is not None:
        rows.append(Measurement(f"run's metrics.jsonl: {logged_key}, last 10% of steps",
                                number(logged), f"> {HEALTHY_VAR:g}", variance_verdict(logged)))
    if subject.log_error:  # what the log says is unknown: the rollout alone cannot clear the run
        rows.append(Measurement("run's metrics.jsonl", "unreadable", subject.log_error, "warn"))
    status = worst([r.verdict for r in rows])
    encoder = subject.exp.arch.recurrent_encoder_type
    who = "trained run" if trained else "fresh model"
    if not math.isfinite(judged) or (change is not None and not math.isfinite(change)):
        message = f"the {who}'s context is not finite (variance {judged}): {encoder!r} computes NaN or inf"
    elif judged < SAME_CONTEXT_VAR:
        cause = (f"{encoder!r} gives a constant context or reads one slot's demos for every slot (whether the demos "
                 "change it is not measurable: one task fills more than half the batch)" if change is None else
                 f"{encoder!r} gives a constant context, whatever the demos" if change < MIN_DEMO_DEPENDENCE else
                 f"the demos change it, so {encoder!r} reads the same demos for every slot (one slot's, or the "
                 "batch's mixed into each)")
        message = f"every puzzle gets the same context from the {who} (variance {judged:.3g} across {distinct} " \
                  f"puzzles): {cause}"
    elif change is not None and change < MIN_DEMO_DEPENDENCE:
        message = (f"the context does not depend on the demos: another task's demos change the {who}'s context by "
                   f"{number(change)} (relative); {encoder!r} reads something else, such as the query")
    elif logged is not None and worst([variance_verdict(logged), variance_verdict(judged)]) != variance_verdict(judged):
        # The run's own log, over its training, is what compare's red flag 1 reads: one batch does not clear it.
        what, line = ("collapse", f"< {COLLAPSED_VAR:g}") if variance_verdict(logged) == "fail" else (
            "low variance", f"≤ {HEALTHY_VAR:g}")
        message = (f"encoder {what} in the run's log: {logged_key} {logged:.3g} over its last 10% of steps ({line}), "
                   f"where one batch's eval rollout of the {who} gives {judged:.3g}")
    elif trained and variance_verdict(judged) == "fail":
        message = (f"encoder collapse: the trained run's context varies {judged:.3g} across puzzles "
                   f"(< {COLLAPSED_VAR:g}); {encoder!r} gives (nearly) the same context whatever the demos")
    elif variance_verdict(judged) != "pass":
        start = "" if trained else ("the fresh model's contexts start alike, which an untrained encoder may: "
                                    "watch the run's train/encoder_var_same_step; ")
        message = f"{start}low context variance across puzzles: {judged:.3g} (healthy > {HEALTHY_VAR:g})"
    else:
        depends = "" if change is None else f"the context depends on the demos (another task's change it by " \
                                            f"{number(change)}) and "
        message = f"{depends}differs across puzzles: variance {judged:.3g}"
    if subject.log_error:
        message += f"; the run's metrics.jsonl could not be read ({subject.log_error})"
    return CheckResult("encoder-variance", status, rows, message)


@torch.no_grad()
def contexts(model: ACTModel, batch: dict[str, Tensor], steps: int) -> list[Tensor]:
    """The context (B, C, D) at each of `steps` eval-mode ACT steps from a fresh carry (nothing halts in eval, so
    every row holds its batch row throughout)."""
    model.eval()
    return [outputs["context"].detach() for _, outputs in rollout(model, batch, steps)]


def demo_dependence(model: ACTModel, batch: dict[str, Tensor], donors: Tensor, own: list[Tensor]) -> float:
    """The mean over the ACT steps of ||context with another task's demos - context|| / ||context|| (`own`: the
    contexts of `contexts(model, batch, ...)`; `donors`: each row's row of another task,
    context_use.other_task_rows)."""
    swapped = contexts(model, {**batch, **{key: batch[key][donors] for key in DEMO_KEYS}}, len(own))
    changes = [float((b - a).float().norm() / a.float().norm().clamp_min(1e-12))
               for a, b in zip(own, swapped, strict=True)]
    return sum(changes) / len(changes)


def variance_verdict(var: float) -> Status:
    if not math.isfinite(var) or var < COLLAPSED_VAR:
        return "fail"
    return "pass" if var > HEALTHY_VAR else "warn"
