"""encoder-variance: the context tells puzzles apart (no collapse to one context for every demo set)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

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
from etrmtrm_cli.analysis.thresholds import COLLAPSED_VAR, HEALTHY_VAR
from etrmtrm_cli.models.act import ACTModel
from etrmtrm_cli.training.evaluate import rollout
from etrmtrm_cli.training.metrics import cross_sample_var


def check_encoder_variance(subject: Subject) -> CheckResult:
    """Variance of the context across distinct puzzles (metrics.cross_sample_var), at every ACT step of an
    eval-mode pass of halt_max_steps steps; the verdict is on its mean over those steps, which is what a
    training log averages over (a recurrent encoder starts every slot from one shared init, so its first
    contexts are alike by design). With a run: the run's weights are judged, the fresh model is shown."""
    size = max(subject.exp.train.batch_size, MIN_MEASURE_BATCH)
    batch = train_batch(subject, 0, size)
    distinct = int(batch["puzzle_ids"].unique().numel())
    rows: list[Measurement] = []
    if distinct < 2:
        rows.append(Measurement("distinct puzzles in the batch", str(distinct), "≥ 2", "warn"))
        return CheckResult("encoder-variance", "warn", rows, "not measurable: the batch holds a single puzzle")
    models = [("fresh model", build(subject, trained=False))]
    if subject.weights is not None:
        models.append(("trained run", build(subject)))
    judged = math.nan
    for label, model in models:
        per_step = context_variance(model, batch, subject.exp.arch.halt_max_steps)
        mean = sum(per_step) / len(per_step)
        rows.append(Measurement(f"{label}: cross-sample variance at ACT step 1 / {len(per_step)}",
                                f"{number(per_step[0])} / {number(per_step[-1])}", "(for reference)", "pass"))
        rows.append(Measurement(f"{label}: mean over the {len(per_step)} ACT steps ({distinct} distinct puzzles)",
                                number(mean), f"> {HEALTHY_VAR:g} healthy; < {COLLAPSED_VAR:g} collapse",
                                variance_verdict(mean)))
        judged = mean
    # The figure compare's red flag 1 reads: across puzzles at one ACT step; old runs logged only the plain one.
    logged_key, logged = next(((key, value) for key in ("train/encoder_var_same_step", "train/encoder_cross_sample_var")
                               if (value := final_value(subject.logged, key)) is not None), ("", None))
    if logged is not None:
        rows.append(Measurement(f"run's metrics.jsonl: {logged_key}, last 10% of steps",
                                number(logged), f"> {HEALTHY_VAR:g}", variance_verdict(logged)))
    status = variance_verdict(judged)
    encoder = subject.exp.arch.recurrent_encoder_type
    who = "trained run" if subject.weights is not None else "fresh model"
    if logged is not None and worst([variance_verdict(logged), status]) != status:
        # The run's own log, over its training, is what compare's red flag 1 reads: one batch does not clear it.
        status = variance_verdict(logged)
        what, line = ("collapse", f"< {COLLAPSED_VAR:g}") if status == "fail" else ("low variance",
                                                                                  f"≤ {HEALTHY_VAR:g}")
        message = (f"encoder {what} in the run's log: {logged_key} {logged:.3g} over its last 10% of steps ({line}), "
                   f"where one batch's eval rollout of the {who} gives {judged:.3g}")
    elif status == "fail":
        message = (f"encoder collapse: the {who}'s context varies {judged:.3g} across puzzles (< {COLLAPSED_VAR:g}); "
                   f"{encoder!r} gives (nearly) the same context whatever the demos")
    elif status == "warn":
        message = f"low context variance across puzzles: {judged:.3g} (healthy > {HEALTHY_VAR:g})"
    else:
        message = f"the context tells puzzles apart: variance {judged:.3g} across puzzles"
    return CheckResult("encoder-variance", status, rows, message)


@torch.no_grad()
def context_variance(model: ACTModel, batch: dict[str, Tensor], steps: int) -> list[float]:
    """cross_sample_var of the context at each of `steps` eval-mode ACT steps from a fresh carry."""
    model.eval()
    return [cross_sample_var(outputs["context"], carry.current_data["puzzle_ids"])
            for carry, outputs in rollout(model, batch, steps)]


def variance_verdict(var: float) -> Status:
    if not math.isfinite(var) or var < COLLAPSED_VAR:
        return "fail"
    return "pass" if var > HEALTHY_VAR else "warn"
