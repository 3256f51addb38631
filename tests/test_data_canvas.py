import numpy as np
import pytest

from etrmtrm_cli.data.canvas import EOS, IGNORE_LABEL, PAD, decode_grid, encode_grid, encode_labels

GRID = np.array([[0, 1, 2], [3, 4, 9]], dtype=np.uint8)


def test_two_by_three_grid_at_size_four_token_by_token() -> None:
    expected = [
        2, 3, 4, EOS,
        5, 6, 11, EOS,
        EOS, EOS, EOS, PAD,
        PAD, PAD, PAD, PAD,
    ]  # fmt: skip
    assert encode_grid(GRID, 4).tolist() == expected
    assert encode_grid(GRID, 4).dtype == np.int64


def test_eos_marks_fall_off_the_board_where_they_do_not_fit() -> None:
    # At (2, 1) the grid touches the bottom and right edges: no EOS row, no EOS column.
    expected = [
        PAD, PAD, PAD, PAD,
        PAD, PAD, PAD, PAD,
        PAD, 2, 3, 4,
        PAD, 5, 6, 11,
    ]  # fmt: skip
    assert encode_grid(GRID, 4, offset=(2, 1)).tolist() == expected
    # At (0, 1) only the EOS row fits.
    assert encode_grid(GRID, 4, offset=(0, 1)).reshape(4, 4)[2].tolist() == [PAD, EOS, EOS, EOS]


def test_labels_ignore_pad_but_keep_eos() -> None:
    labels = encode_labels(GRID, 4)
    tokens = encode_grid(GRID, 4)
    assert labels.tolist() == [IGNORE_LABEL if t == PAD else t for t in tokens.tolist()]
    assert (labels == EOS).sum() == 5


def test_encode_decode_round_trip_with_offsets() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        size = int(rng.integers(1, 31))
        h, w = rng.integers(1, size + 1, size=2)
        grid = rng.integers(0, 10, size=(h, w)).astype(np.uint8)
        offset = (int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1)))
        decoded = decode_grid(encode_grid(grid, size, offset), size, offset)
        np.testing.assert_array_equal(decoded, grid)
        assert decoded.dtype == np.uint8


def test_decode_crops_the_largest_top_left_colour_rectangle() -> None:
    board = np.zeros((4, 4), dtype=np.int64)
    board[0, :3] = 5
    board[1, :2] = 6  # the second row is shorter: 2 x 2 (area 4) beats 1 x 3 (area 3)
    np.testing.assert_array_equal(decode_grid(board.reshape(-1), 4), [[3, 3], [4, 4]])
    board[0, 0] = EOS
    assert decode_grid(board.reshape(-1), 4).shape == (0, 0)


def test_encode_rejects_a_grid_that_does_not_fit() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        encode_grid(GRID, 4, offset=(3, 0))
