"""context-use: a trained model's answers depend on the demos it reads.

Each train query is answered twice by the full eval rollout: with its own demos, and with another task's demos
in their place. A model that reads its demos loses accuracy with the wrong ones. A model that answers from the
query grid alone (few fixed train queries, each seen thousands of times, can be memorised) does not: its
encoder's context is unused, and a collapsed context (encoder-variance) is then the consequence of that, not a
bug in the encoder. Only a trained run can be judged: a fresh model has learned nothing to use the demos for.
A context that changes with the demos while no logit moves fails: the decoder does not read it, at any training.
"""

from __future__ import annotations

from typing import NamedTuple

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
)
from etrmtrm_cli.analysis.thresholds import DEMO_USE_DROP_PTS, DEMOS_READ_CHANGED, MIN_DEMO_DEPENDENCE, UNMOVED_LOGITS
from etrmtrm_cli.data.canvas import IGNORE_LABEL
from etrmtrm_cli.models.act import ACTModel
from etrmtrm_cli.training.evaluate import final_outputs, scores

DEMO_KEYS = ("demo_inputs", "demo_labels", "demo_mask")


def check_context_use(subject: Subject) -> CheckResult:
    assert subject.weights is not None, "context-use judges a trained run"  # the CLI asks for --run
    size = max(subject.exp.train.batch_size, MIN_MEASURE_BATCH)
    batch = train_batch(subject, 0, size)
    donors = other_task_rows(batch["group_ids"])
    if donors is None:
        return CheckResult("context-use", "warn", [], "not measurable: one task fills more than half the batch, "
                           "so not every query can be given another task's demos")
    model = build(subject)
    own = answer(model, batch)
    swapped = answer(model, {**batch, **{key: batch[key][donors] for key in DEMO_KEYS}})
    drop = 100 * (own.accuracy - swapped.accuracy)
    changed = float((own.preds != swapped.preds)[batch["labels"] != IGNORE_LABEL].float().mean())
    context_change = float((swapped.context - own.context).norm() / own.context.norm().clamp_min(1e-12))
    logit_change = float((swapped.logits - own.logits).abs().max() / own.logits.abs().max().clamp_min(1e-12))
    unread = context_change >= MIN_DEMO_DEPENDENCE and logit_change <= UNMOVED_LOGITS
    status: Status = "fail" if unread else "pass" if drop >= DEMO_USE_DROP_PTS else "warn"
    tasks = int(batch["group_ids"].unique().numel())
    rows = [
        Measurement(f"train token accuracy, own demos ({len(donors)} queries, {tasks} tasks)",
                    f"{100 * own[0]:.1f}%", "(for reference)", "info"),
        Measurement("train token accuracy, another task's demos", f"{100 * swapped[0]:.1f}%", "(for reference)",
                    "info"),
        Measurement("drop with the wrong demos", f"{drop:.1f} points", f"≥ {DEMO_USE_DROP_PTS:g} points", status),
        Measurement("predicted tokens that change with the demos", number(changed), "(for reference)", "info"),
        Measurement("their context change / logit change (relative, last ACT step)",
                    f"{number(context_change)} / {number(logit_change)}",
                    f"logits move where the context does (> {UNMOVED_LOGITS:g})", "fail" if unread else "info"),
    ]
    message = (f"the decoder does not read its context: another task's demos change the context by "
               f"{number(context_change)} (relative) and the logits by {number(logit_change)}, so the context never "
               "reaches the answers (check how it is placed in the decoder's prefix positions)" if unread
               else use_message(drop, changed))
    return CheckResult("context-use", status, rows, message)


def use_message(drop: float, changed: float) -> str:
    """What the accuracy drop with another task's demos (points) and the share of answer tokens they change show."""
    if drop >= DEMO_USE_DROP_PTS:
        return f"the answers depend on the demos: another task's demos cost {drop:.1f} points of train accuracy"
    if changed >= DEMOS_READ_CHANGED:
        return (f"another task's demos do not cost train accuracy ({drop:+.1f} points), though they change "
                f"{changed:.0%} of the predicted tokens: the context is read, but the answers do not rely on their "
                "own task's demos")
    return (f"the answers barely depend on the demos ({drop:+.1f} points with another task's, {changed:.1%} of the "
            "predicted tokens changed): the model answers its train queries from the query grids, so its encoder's "
            "context is unused")


def other_task_rows(group_ids: Tensor) -> Tensor | None:
    """For each row, a row of another task (a derangement across tasks), or None when one task holds more than
    half the rows. Sorted by task, row i takes the row m places on (m = the largest task's count): each task is
    one contiguous run of at most m rows, so the two always belong to different tasks."""
    order = torch.argsort(group_ids, stable=True)
    largest = int(torch.unique(group_ids, return_counts=True)[1].max())
    if 2 * largest > len(group_ids):
        return None
    donors = torch.empty_like(order)
    donors[order] = order.roll(-largest)
    return donors


class Answer(NamedTuple):
    accuracy: float  # token accuracy, mean over the rows
    preds: Tensor  # (B, S)
    logits: Tensor  # (B, S, V), float32
    context: Tensor  # (B, C, D), float32


@torch.inference_mode()
def answer(model: ACTModel, batch: dict[str, Tensor]) -> Answer:
    """The last step of the full eval rollout on `batch`: its answers and the context they were given."""
    model.eval()
    outputs = final_outputs(model, batch)
    preds, token_acc, _ = scores(outputs["logits"], batch["labels"])
    logits, context = outputs["logits"].detach().float(), outputs["context"].detach().float()
    return Answer(float(token_acc.mean()), preds, logits, context)
