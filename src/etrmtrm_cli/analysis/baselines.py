"""Trivial baselines: the token accuracy of answers that need no model, on a run's own data."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from etrmtrm_cli.data.canvas import COLOUR_OFFSET, EOS, IGNORE_LABEL, encode_grid, encode_labels
from etrmtrm_cli.rundir import RunFiles


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
    """Per distinct data config: the baselines on every query of the train groups and of the eval
    groups, on the original puzzles (untranslated; colour permutations and rotations leave (a) unchanged)."""
    from etrmtrm_cli.config import DataConfig
    from etrmtrm_cli.data.dataset import build_arc_data

    by_data: dict[str, list[RunFiles]] = {}
    for run in runs:
        key = json.dumps(run.config.get("data"), sort_keys=True)  # the tasks do not depend on the seed
        by_data.setdefault(key, []).append(run)
    out = []
    for members in by_data.values():
        first = members[0]
        data = build_arc_data(DataConfig.model_validate(first.config.get("data", {})), 0)
        train = [g.task.pairs[q] for g in data.groups[:data.num_train_groups] for q in g.queries]
        evals = [g.task.pairs[q] for g in data.groups[data.num_train_groups:] for q in g.queries]
        train_a, train_b = pair_baselines(train, data.canvas_size)
        eval_a, eval_b = pair_baselines(evals, data.canvas_size)
        out.append(TrivialBaselines(tuple(dict.fromkeys(r.exp_id for r in members)), train_a, train_b, len(train),
                                    eval_a, eval_b, len(evals)))
    return out
