"""Evaluation on the held-out eval groups: token / exact accuracy and ARC pass@k with voting.

Every eval query is answered on the original puzzle and on augmented views of it. Each prediction is
cropped from the canvas, mapped back through the inverse of its augmentation, and counts as one vote
for that answer; answers are ranked by (votes, mean sigmoid(q_halt)). pass@k is the fraction of a
task's test queries whose true output is among the top k, averaged over the tasks actually evaluated.
Votes live only inside one `evaluate` call (the public evaluators accumulated them across evals).
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from etrmtrm_cli.data.canvas import IGNORE_LABEL, decode_grid
from etrmtrm_cli.data.dataset import ArcData, Batch
from etrmtrm_cli.models.act import ACTCarry, ACTModel

PASS_KS = (1, 2)
Answer = tuple[tuple[int, int], bytes]  # (shape, colours): a hashable grid


def answer_of(grid: np.ndarray) -> Answer:
    return (grid.shape[0], grid.shape[1]), np.ascontiguousarray(grid, dtype=np.uint8).tobytes()


def confidence(q_halt_logits: Tensor) -> Tensor:
    """A prediction's confidence, sigmoid(q_halt), in float64 as TRM's evaluator takes it: in float32 it is exactly
    1.0 from a logit of about 17, so confident answers would tie and fall to the answer's bytes (float64: from 37)."""
    return torch.sigmoid(q_halt_logits.detach().to(torch.float64))


@dataclass
class Votes:
    """(group, query) -> answer -> [votes, sum of sigmoid(q_halt)]. Plain dicts: ranks gather them."""

    table: dict[tuple[int, int], dict[Answer, list[float]]] = field(default_factory=dict)

    def add(self, key: tuple[int, int], answer: Answer, confidence: float, count: float = 1.0) -> None:
        entry = self.table.setdefault(key, {}).setdefault(answer, [0.0, 0.0])
        entry[0] += count
        entry[1] += confidence

    def merge(self, other: Votes) -> None:
        for key, answers in other.table.items():
            for answer, (count, conf) in answers.items():
                self.add(key, answer, conf, count)

    def ranked(self, key: tuple[int, int]) -> list[Answer]:
        """Most votes first, then the highest mean confidence. An exact tie of both falls to the answer itself
        (TRM's keeps the one that arrived first): the order in which answers arrive depends on how many processes
        evaluated, and a ranking must not."""
        answers = self.table.get(key, {})
        return sorted(answers, key=lambda a: (answers[a][0], answers[a][1] / answers[a][0], a), reverse=True)


def truths_of(data: ArcData, votes: Votes) -> dict[tuple[int, int], Answer]:
    """Every (group, query) that got a vote, with its true output."""
    return {key: answer_of(data.groups[key[0]].task.pairs[key[1]][1]) for key in votes.table}


def pass_per_task(votes: Votes, truths: dict[tuple[int, int], Answer], ks: tuple[int, ...] = PASS_KS
                  ) -> dict[int, np.ndarray]:
    """group -> (len(ks),): per k, the fraction of the task's queries whose truth is in the top k."""
    hits: dict[int, list[list[bool]]] = defaultdict(list)
    for key, truth in truths.items():
        ranked = votes.ranked(key)
        hits[key[0]].append([truth in ranked[:k] for k in ks])
    return {group: np.mean(found, axis=0) for group, found in hits.items()}


def pass_at_k(votes: Votes, truths: dict[tuple[int, int], Answer], ks: tuple[int, ...] = PASS_KS) -> dict[str, float]:
    """Per task: the fraction of its queries whose truth is in the top k; mean over the tasks."""
    per_task = pass_per_task(votes, truths, ks)
    if not per_task:
        return {f"pass@{k}": float("nan") for k in ks}
    scores = np.array(list(per_task.values()))  # (tasks, len(ks))
    return {f"pass@{k}": float(scores[:, i].mean()) for i, k in enumerate(ks)}


def rollout(model: ACTModel, batch: Mapping[str, Tensor], steps: int | None = None
            ) -> Iterator[tuple[ACTCarry, dict[str, Tensor]]]:
    """The eval rollout: (carry, outputs) after each of `steps` (default halt_max_steps) ACT steps from a
    fresh carry. In eval mode nothing halts early, so every slot takes every step. Call it under
    torch.inference_mode() (or no_grad) and with the model in eval mode."""
    carry = model.initial_carry(batch)
    for _ in range(model.arch.halt_max_steps if steps is None else steps):
        carry, outputs = model(carry, batch)
        yield carry, outputs


def final_outputs(model: ACTModel, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The outputs of the last step of a full eval rollout."""
    (_, outputs), = deque(rollout(model, batch), maxlen=1)
    return outputs


def leading_rows(model: ACTModel, batch: Batch, rows: int, device: torch.device
                 ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The first `rows` rows of `batch` on `device` and the outputs of their full eval rollout: the rows after
    them (padding, or a batch's rows past the end of an epoch) cost nothing. Rows do not see each other, so their
    outputs are those of the whole batch (tests/test_evaluate.py)."""
    inputs = {k: v[:rows] for k, v in batch.to(device).as_dict().items()}
    return inputs, final_outputs(model, inputs)


def scores(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(predictions (B, S), token accuracy (B,) over the label positions, exactly right (B,) bool).

    logits (B, S, V); labels (B, S) with IGNORE_LABEL where nothing is scored. A row with nothing scored (padding)
    has accuracy 0 and is not exact: 0 right of 0 is no answer."""
    preds = logits.argmax(-1)
    mask = labels != IGNORE_LABEL
    correct = (preds == labels) & mask
    scored = mask.sum(-1)
    return preds, correct.sum(-1) / scored.clamp_min(1), (correct.sum(-1) == scored) & (scored > 0)


@torch.inference_mode()
def evaluate(model: ACTModel, data: ArcData, batch_size: int, device: torch.device, rank: int = 0,
             world_size: int = 1, should_stop: Callable[[], bool] = lambda: False) -> dict[str, float] | None:
    """Run every eval batch for exactly halt_max_steps ACT steps; metrics over all ranks' rows.

    `should_stop` is asked before every batch (a signal is honoured within one batch's rollout): when it
    says so, the eval is abandoned and None returned."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # rows, token accuracy, exact (NCCL: on the GPU)
    votes = Votes()
    for batch in data.eval_batches(batch_size, rank, world_size):
        if should_stop():
            model.train(was_training)
            return None
        real = int(batch.valid.sum())  # padding rows fill the end of the last batch: the cpu profile has 36 of 64
        if real == 0:
            continue
        inputs, outputs = leading_rows(model, batch, real, device)
        preds, token_acc, exact = scores(outputs["logits"], inputs["labels"])  # every row run is a real one
        sums += torch.stack([token_acc.new_tensor(real), token_acc.sum(), exact.sum()]).double()
        vote(votes, data, batch, preds.cpu().numpy(), confidence(outputs["q_halt_logits"]).cpu())
    if world_size > 1:
        dist.all_reduce(sums)
        gathered: list[Votes | None] = [None] * world_size
        dist.all_gather_object(gathered, votes)
        votes = Votes()
        for part in gathered:
            if part is not None:
                votes.merge(part)
    model.train(was_training)
    rows = float(sums[0]) or float("nan")  # no eval rows: no accuracy (NaN, left out of the log), not 0 %
    return {"eval/accuracy": float(sums[1]) / rows, "eval/exact_accuracy": float(sums[2]) / rows,
            **{f"eval/{k}": v for k, v in pass_at_k(votes, truths_of(data, votes)).items()}}


def vote(votes: Votes, data: ArcData, batch: Batch, preds: np.ndarray, confidence: Tensor) -> None:
    """One vote per predicted row (preds (R, S²), confidence (R,): the batch's first R rows, real ones) for its
    answer mapped back through the row's augmentation."""
    side = data.canvas_size
    for row in range(len(preds)):
        group, query, aug = (int(batch.group_ids[row]), int(batch.query_ids[row]), int(batch.aug_ids[row]))
        key = (group, query)
        grid = decode_grid(preds[row], side)
        votes.add(key, answer_of(data.augmentation(group, aug).invert(grid)), float(confidence[row]))
