import numpy as np
import pytest

from etrmtrm_cli.data.augment import (
    DIHEDRAL_INVERSE,
    TRANSPOSING,
    Augmentation,
    augmentation_for,
    dihedral,
    dihedral_for,
    distinct_views,
)
from etrmtrm_cli.data.canvas import encode_grid

RNG_SEED = 1234


def random_grid(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 10, size=(h, w)).astype(np.uint8)


def random_colours(rng: np.random.Generator) -> tuple[int, ...]:
    return (0, *(int(c) for c in rng.permutation(np.arange(1, 10))))


@pytest.mark.parametrize("shape", [(3, 3), (2, 5), (7, 4), (1, 30)])
@pytest.mark.parametrize("tid", range(8))
def test_apply_then_invert_is_identity(tid: int, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(RNG_SEED + tid)
    for _ in range(5):
        grid = random_grid(rng, *shape)
        aug = Augmentation(tid, random_colours(rng))
        out = aug.apply(grid)
        assert out.shape == (shape[::-1] if tid in TRANSPOSING else shape)
        np.testing.assert_array_equal(aug.invert(out), grid)


def test_dihedral_inverse_table_and_all_transforms_distinct() -> None:
    grid = np.arange(12).reshape(3, 4)
    images = [dihedral(grid, t) for t in range(8)]
    assert len({(im.shape, im.tobytes()) for im in images}) == 8
    for t in range(8):
        np.testing.assert_array_equal(dihedral(images[t], DIHEDRAL_INVERSE[t]), grid)
    np.testing.assert_array_equal(dihedral(grid, 1), np.rot90(grid))
    np.testing.assert_array_equal(dihedral(grid, 6), grid.T)
    np.testing.assert_array_equal(dihedral(grid, 7), np.rot90(grid, 2).T)  # the anti-diagonal transpose


def test_colour_zero_stays_and_others_permute() -> None:
    grid = np.arange(10, dtype=np.uint8).reshape(2, 5)
    for index in range(1, 50):
        aug = augmentation_for(7, "task", index)
        assert aug.colours[0] == 0 and sorted(aug.colours) == list(range(10))
        assert not aug.apply(np.zeros((2, 3), dtype=np.uint8)).any()
        assert sorted(aug.apply(grid).reshape(-1).tolist()) == list(range(10))


def test_augmentation_for_is_a_pure_function_of_seed_task_index() -> None:
    assert augmentation_for(3, "abc", 0).is_identity
    assert augmentation_for(3, "abc", 5) == augmentation_for(3, "abc", 5)
    assert augmentation_for(3, "abc", 5) != augmentation_for(4, "abc", 5)
    assert augmentation_for(3, "abc", 5) != augmentation_for(3, "abd", 5)
    augs = [augmentation_for(3, "abc", i) for i in range(1, 200)]
    assert {a.dihedral for a in augs} == set(range(8))
    assert len(set(augs)) == len(augs)
    assert all(dihedral_for(3, "abc", i) == a.dihedral for i, a in enumerate(augs, start=1))


def test_token_map_recolours_canvas_tokens() -> None:
    rng = np.random.default_rng(RNG_SEED)
    grid = random_grid(rng, 3, 5)
    aug = Augmentation(0, random_colours(rng))
    np.testing.assert_array_equal(aug.token_map[encode_grid(grid, 6)], encode_grid(aug.apply(grid), 6))


def test_rejects_a_colour_map_that_moves_black() -> None:
    with pytest.raises(ValueError, match="not an augmentation"):
        Augmentation(0, (1, 0, 2, 3, 4, 5, 6, 7, 8, 9))
    with pytest.raises(ValueError, match="not an augmentation"):
        Augmentation(8)


def views_content(seed: int, key: str, grids: list[np.ndarray], views: tuple[int, ...]) -> set[bytes]:
    augs = [augmentation_for(seed, key, i) for i in views]
    return {b"".join(a.apply(g).tobytes() + bytes(a.apply(g).shape) for g in grids) for a in augs}


def test_distinct_views_keeps_the_original_then_only_new_puzzles() -> None:
    """As TRM's dataset build: num_aug unique augmentations plus the original, from at most 5 * num_aug tries."""
    rng = np.random.default_rng(RNG_SEED)
    varied = [random_grid(rng, 3, 4), random_grid(rng, 4, 3)]
    views = distinct_views(7, "varied", varied, 30)
    assert views[0] == 0 and len(views) == 31 and list(views) == sorted(set(views))
    assert len(views_content(7, "varied", varied, views)) == 31
    # One colour on a square grid: only the colour map of that one colour changes the puzzle, 9 views at most.
    plain = [np.full((2, 2), 3, dtype=np.uint8)]
    views = distinct_views(7, "plain", plain, 30)
    assert len(views) == 9 == len(views_content(7, "plain", plain, views))
    assert distinct_views(7, "plain", plain, 0) == (0,)
