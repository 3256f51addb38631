"""`compare --per-puzzle`: each task's token accuracy and exact rate under two runs (runs the models)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from etrmtrm_cli import rundir
from etrmtrm_cli.rundir import RunFiles


@dataclass(frozen=True)
class TaskScore:
    """--per-puzzle: one task under each of the two experiments, over their seeds: mean token accuracy, mean
    exact rate (over every row: each query in each augmented view), and in how many seeds the task was solved
    ("2/3"): ARC's pass@2, every query's true output among the two answers its views voted for most."""

    task_id: str
    split: str  # train | eval
    accuracy: tuple[float | None, float | None]
    exact: tuple[float | None, float | None]
    solved: tuple[str | None, str | None] = (None, None)

    @property
    def difference(self) -> float | None:
        a, b = self.accuracy
        return None if a is None or b is None else b - a


def per_task_accuracy(run: RunFiles, device: str = "cpu", batch_size: int | None = None
                      ) -> dict[tuple[str, str], tuple[float, float, float]]:
    """(split, task id) -> (token accuracy, exact rate, pass@2) of the run's judged weights
    (rundir.judged_weights), on one epoch of its training stream and on its eval batches, each a full eval
    rollout (training/evaluate.py). An eval query's views vote for pass@2 as in the eval; an epoch of the training
    stream holds each query once, in one view (translated on the canvas), so there one answer is all a query has
    and pass@2 is the exact rate."""
    import torch

    from etrmtrm_cli.data.dataset import build_arc_data
    from etrmtrm_cli.models.build import build_model
    from etrmtrm_cli.training.evaluate import Votes, confidence, leading_rows, pass_per_task, scores, truths_of, vote

    exp = rundir.read_config(run.run_dir)
    data = build_arc_data(exp.data, exp.seed)
    model = build_model(exp, data.seq_len, data.num_puzzle_ids)
    weights, tensors = rundir.load_judged_weights(run.run_dir)
    rundir.load_fitting(model, tensors, weights)
    model.to(device).eval()
    size = batch_size or exp.train.eval_batch_size or exp.train.batch_size
    sums: dict[tuple[str, str], list[float]] = {}
    votes = Votes()  # the eval's

    def score(batch: Any, split: str, limit: int) -> None:
        rows = min(limit, int(batch.valid.sum()))  # the rest: padding, or the next epoch's first examples
        if rows == 0:
            return
        with torch.inference_mode():
            inputs, outputs = leading_rows(model, batch, rows, device)
        preds, acc, exact = scores(outputs["logits"], inputs["labels"])
        if split == "eval":
            vote(votes, data, batch, preds.cpu().numpy(), confidence(outputs["q_halt_logits"]).cpu())
        acc, exact = acc.tolist(), exact.tolist()
        for row in range(rows):
            entry = sums.setdefault((split, data.groups[int(batch.group_ids[row])].task.id), [0.0, 0.0, 0.0])
            entry[0] += 1
            entry[1] += acc[row]
            entry[2] += float(exact[row])

    epoch = data.examples_per_epoch
    for step in range(math.ceil(epoch / size)):
        score(data.train_batch(step, size), "train", epoch - step * size)
    for batch in data.eval_batches(size):
        score(batch, "eval", size)
    passed = {("eval", data.groups[group].task.id): float(rates[0])
              for group, rates in pass_per_task(votes, truths_of(data, votes), (2,)).items()}
    return {key: (s[1] / s[0], s[2] / s[0], passed[key] if key[0] == "eval" else s[2] / s[0])
            for key, s in sums.items()}


Scores = Mapping[tuple[str, str], tuple[float, float, float]]  # (split, task id) -> (accuracy, exact rate, pass@2)


def pool_seeds(per_seed: Sequence[Scores]) -> dict[tuple[str, str], tuple[float, float, str]]:
    """One experiment's seeds -> per task: (mean accuracy, mean exact rate, "solved (pass@2) in k/n seeds")."""
    out = {}
    for key in sorted(set().union(*per_seed)):
        found = [seed[key] for seed in per_seed if key in seed]
        solved = sum(passed == 1.0 for _, _, passed in found)
        out[key] = (sum(a for a, _, _ in found) / len(found), sum(e for _, e, _ in found) / len(found),
                    f"{solved}/{len(found)}")
    return out


def per_task_table(a: Mapping[tuple[str, str], tuple[float, float, str]],
                   b: Mapping[tuple[str, str], tuple[float, float, str]]) -> list[TaskScore]:
    """Both experiments' pooled scores per task, sorted by the difference (b - a), most negative first."""
    out = []
    for key in sorted(set(a) | set(b)):
        sa, sb = a.get(key), b.get(key)
        out.append(TaskScore(key[1], key[0], (sa[0] if sa else None, sb[0] if sb else None),
                             (sa[1] if sa else None, sb[1] if sb else None),
                             (sa[2] if sa else None, sb[2] if sb else None)))
    return sorted(out, key=lambda t: (t.difference is None, t.difference or 0.0, t.split, t.task_id))
