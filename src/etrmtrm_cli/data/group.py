"""One base task laid out for batching: which pairs are queries, which are their demos, and its grids
pre-encoded as token blocks under each dihedral transform, so an augmented puzzle costs one lookup."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from etrmtrm_cli.data.arc import Task
from etrmtrm_cli.data.augment import TRANSPOSING, Augmentation, dihedral
from etrmtrm_cli.data.canvas import token_block

QueryMode = Literal["test", "leave_one_out"]


@dataclass(frozen=True, eq=False)
class Group:
    task: Task
    queries: tuple[int, ...]  # pair index (into task.pairs) of each query
    demos: tuple[tuple[int, ...], ...]  # per query: pair indices of its demos, at most max_demos
    extents: np.ndarray  # (Q, 2) int: max (h, w) over all grids of each example, untransformed
    blocks: tuple[np.ndarray, ...]  # per dihedral id: every grid's token block, raveled and concatenated
    starts: tuple[int, ...]  # grid i (2 * pair, +1 for the output) is blocks[d][starts[i] : starts[i + 1]]
    shapes: tuple[tuple[int, int], ...]  # grid i's block shape (h + 1, w + 1), untransformed

    def encode(self, aug: Augmentation) -> list[np.ndarray]:
        """Every grid of the augmented puzzle as a (h + 1, w + 1) token block, indexed like `starts`."""
        tokens = aug.token_map[self.blocks[aug.dihedral]]  # one lookup recolours all grids at once
        swap = aug.dihedral in TRANSPOSING
        return [
            tokens[a:b].reshape((w, h) if swap else (h, w))
            for a, b, (h, w) in zip(self.starts[:-1], self.starts[1:], self.shapes, strict=True)
        ]


def build_group(task: Task, mode: QueryMode, max_demos: int) -> Group:
    n_train, n_pairs = len(task.train_pairs), len(task.pairs)
    if mode == "test":
        queries = tuple(range(n_train, n_pairs))
        demos = tuple(tuple(range(min(n_train, max_demos))) for _ in queries)
    else:
        queries = tuple(range(n_pairs))
        demos = tuple(tuple(p for p in range(n_pairs) if p != q)[:max_demos] for q in queries)
    sizes = np.array([pair[0].shape + pair[1].shape for pair in task.pairs]).reshape(n_pairs, 2, 2)
    pair_max = sizes.max(axis=1)  # (P, 2): max (h, w) of each pair's input and output
    extents = np.array([pair_max[[q, *d]].max(axis=0) for q, d in zip(queries, demos, strict=True)])
    grids = task.grids
    blocks = tuple(
        np.concatenate([token_block(dihedral(g, tid)).reshape(-1) for g in grids]) for tid in range(8)
    )
    shapes = tuple((g.shape[0] + 1, g.shape[1] + 1) for g in grids)
    starts = tuple(np.cumsum([0] + [h * w for h, w in shapes]).tolist())
    return Group(task, queries, demos, extents, blocks, starts, shapes)
