"""context-use: a trained model's answers depend on the demos it reads.

Each train query is answered twice by the full eval rollout: with its own demos, and with another task's demos
in their place. A model that reads its demos loses accuracy with the wrong ones. A model that answers from the
query grid alone (few fixed train queries, each seen thousands of times, can be memorised) does not: its
encoder's context is unused, and a collapsed context (encoder-variance) is then the consequence of that, not a
bug in the encoder. Only a trained run can be judged: a fresh model has learned nothing to use the demos for.
"""

from __future__ import annotations

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
from etrmtrm_cli.analysis.thresholds import DEMO_USE_DROP_PTS, DEMOS_READ_CHANGED
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
    drop = 100 * (own[0] - swapped[0])
    changed = float((own[1] != swapped[1])[batch["labels"] != IGNORE_LABEL].float().mean())
    status: Status = "pass" if drop >= DEMO_USE_DROP_PTS else "warn"
    tasks = int(batch["group_ids"].unique().numel())
    rows = [
        Measurement(f"train token accuracy, own demos ({len(donors)} queries, {tasks} tasks)",
                    f"{100 * own[0]:.1f}%", "(for reference)", "info"),
        Measurement("train token accuracy, another task's demos", f"{100 * swapped[0]:.1f}%", "(for reference)",
                    "info"),
        Measurement("drop with the wrong demos", f"{drop:.1f} points", f"≥ {DEMO_USE_DROP_PTS:g} points", status),
        Measurement("predicted tokens that change with the demos", number(changed), "(for reference)", "info"),
    ]
    return CheckResult("context-use", status, rows, use_message(drop, changed))


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


@torch.inference_mode()
def answer(model: ACTModel, batch: dict[str, Tensor]) -> tuple[float, Tensor]:
    """(token accuracy, predictions (B, S)) of the full eval rollout on `batch`."""
    model.eval()
    preds, token_acc, _ = scores(final_outputs(model, batch)["logits"], batch["labels"])
    return float(token_acc.mean()), preds
