"""ArcData: the selected groups, the resumable training stream and the eval batches.

An example is one query pair and its demos, all from one augmented puzzle. Training visits the groups
epoch by epoch, as TRM does: each epoch shuffles the groups, gives each one random augmentation and
turns all its queries into examples; the epochs are concatenated into one stream that is cut into
consecutive global batches. Batch i is a pure function of (data, seed, i, batch size, rank, world
size), so a run resumed at step i sees what an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields

import numpy as np
import torch

from etrmtrm_cli.config import DataConfig
from etrmtrm_cli.data.arc import Split, load_splits
from etrmtrm_cli.data.augment import TRANSPOSING, Augmentation, augmentation_for, dihedral_for, distinct_views
from etrmtrm_cli.data.canvas import IGNORE_LABEL, PAD
from etrmtrm_cli.data.group import Group, build_group

BLANK_PUZZLE_ID = 0  # the puzzle id of padding rows; real puzzles count from 1
_TRAIN_STREAM = 2  # seeds the epoch plans apart from the group selection streams (0 and 1)
_CACHED_PLANS = 4


@dataclass(frozen=True)
class Batch:
    """B examples on an S x S canvas with K = max_demos demo slots."""

    inputs: torch.Tensor  # (B, S²) long: query input tokens
    labels: torch.Tensor  # (B, S²) long: query output tokens, -100 on PAD
    demo_inputs: torch.Tensor  # (B, K, S²) long: demo input tokens; empty slots all PAD
    demo_labels: torch.Tensor  # (B, K, S²) long: demo output tokens, PAD kept as 0 (the encoder reads them)
    demo_mask: torch.Tensor  # (B, K) bool: True = a real demo
    puzzle_ids: torch.Tensor  # (B,) long: one id per (group, augmentation), 0 on padding rows
    group_ids: torch.Tensor  # (B,) long: index into ArcData.groups, -1 on padding rows
    aug_ids: torch.Tensor  # (B,) long: augmentation index, 0 = original puzzle, -1 on padding rows
    query_ids: torch.Tensor  # (B,) long: the query's index in its task.pairs, -1 on padding rows
    valid: torch.Tensor  # (B,) bool: False on the padding rows of the last eval batch

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The fields by name: what the ACT model takes as a batch."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class _Examples:
    """Rows to put in a batch, one entry per example."""

    group: np.ndarray  # (n,) group id
    query: np.ndarray  # (n,) query number within the group (index into Group.queries)
    aug: np.ndarray  # (n,) augmentation index
    offset: np.ndarray  # (n, 2) top-left canvas position (r, c) of every grid of the example

    def __getitem__(self, part: slice) -> _Examples:
        return _Examples(self.group[part], self.query[part], self.aug[part], self.offset[part])

    @staticmethod
    def concat(parts: list[_Examples]) -> _Examples:
        return _Examples(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(_Examples)))


def build_arc_data(cfg: DataConfig, seed: int) -> ArcData:
    train, evals = load_splits(cfg)
    return ArcData(cfg, seed, train, evals)


class ArcData:
    """Train groups (ids 0..num_train_groups-1) then eval groups, and the batches made from them."""

    def __init__(self, cfg: DataConfig, seed: int, train_split: Split, eval_split: Split) -> None:
        self.cfg, self.seed = cfg, seed
        self.train_split, self.eval_split = train_split, eval_split
        # Eval always queries the test pairs, whatever query_mode trains on.
        self.groups: tuple[Group, ...] = tuple(
            build_group(t, cfg.query_mode, cfg.max_demos) for t in train_split.tasks
        ) + tuple(build_group(t, "test", cfg.max_demos) for t in eval_split.tasks)
        self.num_train_groups = len(train_split.tasks)
        # Each group's distinct augmented views, as augmentation indices: view v of group g is augmentation
        # self._views[g][v]; view 0 is the original puzzle.
        num_aug = [cfg.num_aug] * self.num_train_groups + [cfg.eval_num_aug] * len(eval_split.tasks)
        self._views = tuple(distinct_views(seed, g.task.id, g.task.grids, n) for g, n in zip(self.groups, num_aug,
                                                                                           strict=True))
        train_groups = self.groups[: self.num_train_groups]
        self._queries = np.array([len(g.queries) for g in train_groups])  # (Gt,)
        self._first_query = np.cumsum(self._queries) - self._queries  # (Gt,) row of each group in _extents
        self._extents = np.concatenate([g.extents for g in train_groups])  # (examples_per_epoch, 2)
        self._plans: dict[int, _Examples] = {}

    @property
    def canvas_size(self) -> int:
        return self.cfg.max_grid_size

    @property
    def seq_len(self) -> int:
        return self.canvas_size**2

    @property
    def num_puzzle_ids(self) -> int:
        """Rows of a per-puzzle embedding table: the blank id plus every (group, augmentation)."""
        return 1 + len(self.groups) * (self.cfg.num_aug + 1)

    @property
    def examples_per_epoch(self) -> int:
        """Training examples in one epoch: TRM's total steps = epochs * this / global batch size."""
        return int(self._queries.sum())

    @property
    def num_eval_examples(self) -> int:
        """Real rows eval_batches yields: every eval query x its group's distinct views (eval_num_aug + 1 at most)."""
        evals = range(self.num_train_groups, len(self.groups))
        return sum(len(self.groups[g].queries) * self.num_views(g) for g in evals)

    def num_views(self, group_id: int) -> int:
        """The group's distinct augmented views, the original included: num_aug + 1 (eval_num_aug + 1) at most."""
        return len(self._views[group_id])

    def augmentation(self, group_id: int, aug_id: int) -> Augmentation:
        """View `aug_id` of the group (0: the original puzzle)."""
        return augmentation_for(self.seed, self.groups[group_id].task.id, self._views[group_id][aug_id])

    def train_batch(self, step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> Batch:
        """Rank `rank`'s contiguous slice of global batch `step` (global size `batch_size`)."""
        local = _local_size(batch_size, rank, world_size)
        start = step * batch_size + rank * local
        parts, n = [], start
        while n < start + local:  # a batch may run across epoch boundaries
            epoch, pos = divmod(n, self.examples_per_epoch)
            parts.append(self._plan(epoch)[pos : pos + start + local - n])
            n += len(parts[-1].group)
        return self._assemble(_Examples.concat(parts), local)

    def eval_batches(self, batch_size: int, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """Every eval group's test queries on each of its distinct views: the original puzzle and up to
        data.eval_num_aug augmentations.

        Deterministic and untranslated; the last batch is padded with valid=False rows.
        """
        local = _local_size(batch_size, rank, world_size)
        rows = self._eval_examples()
        # Every rank gets as many batches (padding only, at worst), each its slice of the global batch.
        firsts = range(rank * local, len(rows.group) + rank * local, batch_size)
        return (self._assemble(rows[first : first + local], local) for first in firsts)

    def _eval_examples(self) -> _Examples:
        """Group by group, augmentation by augmentation, query by query."""
        parts = []
        for g in range(self.num_train_groups, len(self.groups)):
            queries = len(self.groups[g].queries)
            n = queries * self.num_views(g)
            aug, query = np.divmod(np.arange(n), queries)
            parts.append(_Examples(np.full(n, g), query, aug, np.zeros((n, 2), dtype=np.int64)))
        return _Examples.concat(parts)

    def _plan(self, epoch: int) -> _Examples:
        """Training epoch `epoch`'s examples in order; the few most recent are cached."""
        if epoch not in self._plans:
            if len(self._plans) >= _CACHED_PLANS:
                del self._plans[next(iter(self._plans))]
            self._plans[epoch] = self._make_plan(epoch)
        return self._plans[epoch]

    def _make_plan(self, epoch: int) -> _Examples:
        rng = np.random.default_rng([self.seed, _TRAIN_STREAM, epoch])
        order = rng.permutation(self.num_train_groups)  # (Gt,)
        views = np.array([self.num_views(g) for g in range(self.num_train_groups)])  # (Gt,)
        aug_of_group = rng.integers(0, views)  # (Gt,) one view per group and epoch, uniform over its views
        counts = self._queries[order]
        group = np.repeat(order, counts)  # (E,)
        query = np.arange(len(group)) - np.repeat(np.cumsum(counts) - counts, counts)  # (E,)
        offset = np.zeros((len(group), 2), dtype=np.int64)
        if self.cfg.translate:
            tasks = [group.task.id for group in self.groups]
            dihedrals = [dihedral_for(self.seed, tasks[g], self._views[g][a])
                         for g, a in enumerate(aug_of_group.tolist())]
            transposed = np.isin(dihedrals, list(TRANSPOSING))  # (Gt,)
            extent = self._extents[self._first_query[group] + query]  # (E, 2) max (h, w) of each example
            extent = np.where(transposed[group, None], extent[:, ::-1], extent)
            # One offset per example keeps its query and demos aligned, and every grid on the canvas.
            offset = (rng.random((len(group), 2)) * (self.canvas_size - extent + 1)).astype(np.int64)
        return _Examples(group, query, aug_of_group[group], offset)

    def _assemble(self, rows: _Examples, size: int) -> Batch:
        """Write the examples onto canvases; rows past len(rows.group) up to `size` are padding."""
        s, k = self.canvas_size, self.cfg.max_demos
        # One spare row and column per canvas take the EOS marks that fall off the board (cut below).
        inputs = np.zeros((size, s + 1, s + 1), dtype=np.uint8)
        outputs = np.zeros_like(inputs)
        demo_inputs = np.zeros((size, k, s + 1, s + 1), dtype=np.uint8)
        demo_outputs = np.zeros_like(demo_inputs)
        demo_mask = np.zeros((size, k), dtype=bool)
        query_ids = np.full(size, -1, dtype=np.int64)
        puzzles: dict[tuple[int, int], list[np.ndarray]] = {}  # each augmented puzzle is encoded once
        columns = (rows.group.tolist(), rows.query.tolist(), rows.aug.tolist(), rows.offset.tolist())
        for b, (g, q, a, (r, c)) in enumerate(zip(*columns, strict=True)):
            group = self.groups[g]
            if (g, a) not in puzzles:
                puzzles[g, a] = group.encode(self.augmentation(g, a))
            blocks = puzzles[g, a]  # grid i = 2 * pair + (0 input, 1 output), (h + 1, w + 1) tokens
            for canvas, block in (
                (inputs[b], blocks[2 * group.queries[q]]),
                (outputs[b], blocks[2 * group.queries[q] + 1]),
                *((demo_inputs[b, j], blocks[2 * p]) for j, p in enumerate(group.demos[q])),
                *((demo_outputs[b, j], blocks[2 * p + 1]) for j, p in enumerate(group.demos[q])),
            ):
                canvas[r : r + block.shape[0], c : c + block.shape[1]] = block
            demo_mask[b, : len(group.demos[q])] = True
            query_ids[b] = group.queries[q]
        labels = _tokens(outputs, s)
        n = len(rows.group)
        return Batch(
            inputs=_tokens(inputs, s),
            labels=labels.masked_fill_(labels == PAD, IGNORE_LABEL),
            demo_inputs=_tokens(demo_inputs, s),
            demo_labels=_tokens(demo_outputs, s),
            demo_mask=torch.from_numpy(demo_mask),
            puzzle_ids=_padded(1 + rows.group * (self.cfg.num_aug + 1) + rows.aug, size, BLANK_PUZZLE_ID),
            group_ids=_padded(rows.group, size, -1),
            aug_ids=_padded(rows.aug, size, -1),
            query_ids=torch.from_numpy(query_ids),
            valid=torch.arange(size) < n,
        )


def _tokens(canvases: np.ndarray, size: int) -> torch.Tensor:
    """(..., S + 1, S + 1) uint8 -> (..., S²) long, without the spare row and column."""
    return torch.from_numpy(canvases)[..., :size, :size].long().flatten(-2)


def _padded(values: np.ndarray, size: int, fill: int) -> torch.Tensor:
    """(n,) ints -> (size,) long, `fill` after the n real rows."""
    out = torch.full((size,), fill, dtype=torch.long)
    out[: len(values)] = torch.from_numpy(np.asarray(values, dtype=np.int64))
    return out


def _local_size(batch_size: int, rank: int, world_size: int) -> int:
    if batch_size % world_size or not 0 <= rank < world_size:
        raise ValueError(f"batch {batch_size} cannot be split for rank {rank} of world size {world_size}")
    return batch_size // world_size
