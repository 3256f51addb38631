"""Puzzle augmentations: one of the 8 dihedral transforms x a permutation of colours 1-9 (0 fixed).

One augmentation is applied to every pair of a task, so the rule it encodes survives. Augmentation
number `index` of a task is a pure function of (seed, task id, index): no table is stored, and a
run resumed anywhere sees the same puzzles.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from etrmtrm_cli.data.canvas import COLOUR_OFFSET, EOS, PAD

# Ids as in TRM: identity, rot90, rot180, rot270, fliplr, flipud, transpose, anti-diagonal transpose.
DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)
TRANSPOSING = frozenset({1, 3, 6, 7})  # the transforms that turn an (h, w) grid into (w, h)
IDENTITY_COLOURS = tuple(range(10))


def dihedral(grid: np.ndarray, tid: int) -> np.ndarray:
    """(h, w) -> (h, w) or (w, h) view of `grid` under dihedral transform `tid`."""
    if tid == 0:
        return grid
    if tid in (1, 2, 3):
        return np.rot90(grid, k=tid)
    if tid == 4:
        return np.fliplr(grid)
    if tid == 5:
        return np.flipud(grid)
    if tid == 6:
        return grid.T
    if tid == 7:
        return np.fliplr(np.rot90(grid))
    raise ValueError(f"dihedral id {tid} is not in 0..7")


@dataclass(frozen=True)
class Augmentation:
    """A dihedral transform and a colour map; colours[c] is the new colour of c, colours[0] == 0."""

    dihedral: int = 0
    colours: tuple[int, ...] = IDENTITY_COLOURS

    def __post_init__(self) -> None:
        if not 0 <= self.dihedral < 8 or sorted(self.colours) != list(IDENTITY_COLOURS) or self.colours[0]:
            raise ValueError(f"not an augmentation: dihedral {self.dihedral}, colours {self.colours}")

    @property
    def is_identity(self) -> bool:
        return self.dihedral == 0 and self.colours == IDENTITY_COLOURS

    def apply(self, grid: np.ndarray) -> np.ndarray:
        """(h, w) colours -> the augmented uint8 grid, (h, w) or (w, h)."""
        return np.asarray(self.colours, dtype=np.uint8)[dihedral(grid, self.dihedral)]

    def invert(self, grid: np.ndarray) -> np.ndarray:
        """Undo `apply`: how a prediction on an augmented puzzle is mapped back to the original."""
        inverse = np.argsort(self.colours).astype(np.uint8)
        return inverse[dihedral(grid, DIHEDRAL_INVERSE[self.dihedral])]

    @property
    def token_map(self) -> np.ndarray:
        """(12,) uint8: the colour map on canvas tokens, PAD and EOS unchanged."""
        return np.array((PAD, EOS, *(c + COLOUR_OFFSET for c in self.colours)), dtype=np.uint8)


def augmentation_for(seed: int, key: str, index: int) -> Augmentation:
    """Augmentation `index` of the task `key`; index 0 is the original puzzle.

    A keyed hash rather than a numpy Generator per puzzle: building a Generator costs ~65 us, and a
    paper-scale batch needs hundreds of these, while the hash costs a few us. The 64-bit digest picks
    the dihedral id, then (as a mixed-radix number) one of the 9! colour permutations.
    """
    if index == 0:
        return Augmentation()
    rest, tid = divmod(_digest(seed, key, index), 8)
    pool, colours = list(range(1, 10)), [0]
    for remaining in range(9, 0, -1):
        rest, pick = divmod(rest, remaining)
        colours.append(pool.pop(pick))
    return Augmentation(tid, tuple(colours))


def distinct_views(seed: int, key: str, grids: Sequence[np.ndarray], num_aug: int) -> tuple[int, ...]:
    """The indices of the task's augmentations (augmentation_for(seed, key, i)) whose augmented grids differ from
    every earlier one: index 0 (the original) first, then up to `num_aug` more, from at most 5 * num_aug tries.
    This is TRM's dataset build (num_aug unique augmentations plus the original, deduplicated by content): a task
    with few colours or a symmetric one has fewer distinct views than draws, and a vote over repeated views would
    weigh them by chance. grids: every grid of the task, in a fixed order."""
    cells = [np.concatenate([dihedral(g, tid).ravel() for g in grids]) for tid in range(8)]  # (cells,) uint8
    shapes = [tuple(dihedral(g, tid).shape for g in grids) for tid in range(8)]
    seen: set[tuple[tuple[tuple[int, ...], ...], bytes]] = set()
    kept: list[int] = []
    for index in range(1 + 5 * num_aug):
        aug = augmentation_for(seed, key, index)
        content = (shapes[aug.dihedral], np.asarray(aug.colours, dtype=np.uint8)[cells[aug.dihedral]].tobytes())
        if content not in seen:
            seen.add(content)
            kept.append(index)
            if len(kept) == num_aug + 1:
                break
    return tuple(kept)


def dihedral_for(seed: int, key: str, index: int) -> int:
    """augmentation_for(seed, key, index).dihedral, without the colour permutation."""
    return 0 if index == 0 else _digest(seed, key, index) % 8


def _digest(seed: int, key: str, index: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}/{key}/{index}".encode(), digest_size=8).digest(), "little")
