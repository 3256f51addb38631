"""What an ArcData holds, as plain numbers for the CLI to print and a run to record."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from etrmtrm_cli.data.arc import Split
from etrmtrm_cli.data.dataset import ArcData
from etrmtrm_cli.data.group import Group


@dataclass(frozen=True)
class SplitSummary:
    sources: tuple[str, ...]
    groups: int
    puzzles: int  # the groups' distinct views: groups * (num_aug + 1) at most, for eval (eval_num_aug + 1)
    examples_per_epoch: int  # train: one epoch; eval: one pass of eval_batches
    demos_min: int
    demos_mean: float
    demos_max: int
    height: tuple[int, int]  # (min, max) grid height over all pairs of the groups
    width: tuple[int, int]  # (min, max) grid width
    skipped: int  # bad tasks left out by on_bad_task="skip"
    too_large: int  # tasks left out for a grid larger than max_grid_size
    trained_on: int  # eval tasks left out because a train task holds one of their test pairs
    task_ids: tuple[str, ...]


@dataclass(frozen=True)
class DataSummary:
    train: SplitSummary
    eval: SplitSummary
    canvas_size: int
    num_puzzle_ids: int


def summarize(data: ArcData) -> DataSummary:
    n = data.num_train_groups
    views = [data.num_views(g) for g in range(len(data.groups))]
    return DataSummary(
        train=_summarize_split(data.train_split, data.groups[:n], views[:n], data.examples_per_epoch),
        eval=_summarize_split(data.eval_split, data.groups[n:], views[n:], data.num_eval_examples),
        canvas_size=data.canvas_size,
        num_puzzle_ids=data.num_puzzle_ids,
    )


def _summarize_split(split: Split, groups: tuple[Group, ...], views: list[int], examples: int) -> SplitSummary:
    demos = np.array([len(d) for g in groups for d in g.demos])  # (queries,)
    shapes = np.array([grid.shape for g in groups for grid in g.task.grids])  # (grids, 2)
    return SplitSummary(
        sources=split.sources,
        groups=len(groups),
        puzzles=sum(views),
        examples_per_epoch=examples,
        demos_min=int(demos.min()),
        demos_mean=float(demos.mean()),
        demos_max=int(demos.max()),
        height=(int(shapes[:, 0].min()), int(shapes[:, 0].max())),
        width=(int(shapes[:, 1].min()), int(shapes[:, 1].max())),
        skipped=split.skipped,
        too_large=split.too_large,
        trained_on=split.trained_on,
        task_ids=tuple(g.task.id for g in groups),
    )
