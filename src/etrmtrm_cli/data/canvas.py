"""TRM's token canvas: a grid written onto an S x S board, flattened row-major to S² tokens.

PAD=0 fills the board, EOS=1 marks the row just below and the column just right of the grid (where
they fit on the board; their corner stays PAD), and colour c is token c + 2, so the vocabulary is 12.
Labels are the same tokens with PAD -> -100: EOS is predicted, so the model learns where a grid ends.
"""

from __future__ import annotations

import numpy as np

PAD = 0
EOS = 1
COLOUR_OFFSET = 2
VOCAB_SIZE = 12
IGNORE_LABEL = -100


def token_block(grid: np.ndarray) -> np.ndarray:
    """(h, w) colours -> (h + 1, w + 1) uint8 tokens: the grid, EOS below and right of it, PAD corner.

    The dataset pre-computes these blocks once per task and copies them onto the board whole.
    """
    h, w = grid.shape
    block = np.full((h + 1, w + 1), EOS, dtype=np.uint8)
    block[:h, :w] = grid + COLOUR_OFFSET
    block[h, w] = PAD
    return block


def encode_grid(grid: np.ndarray, size: int, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """(h, w) colours -> (size²,) int64 input tokens, the grid's top-left corner at `offset`."""
    r, c = offset
    h, w = grid.shape
    if r < 0 or c < 0 or r + h > size or c + w > size:
        raise ValueError(f"a {h}x{w} grid at offset {offset} does not fit a {size}x{size} canvas")
    # One spare row and column take the EOS marks that fall off the board; they are cut away after.
    board = np.zeros((size + 1, size + 1), dtype=np.int64)
    board[r : r + h + 1, c : c + w + 1] = token_block(grid)
    return board[:size, :size].reshape(-1)


def encode_labels(grid: np.ndarray, size: int, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Like `encode_grid`, with PAD -> IGNORE_LABEL (-100): the targets of a query's output."""
    tokens = encode_grid(grid, size, offset)
    return np.where(tokens == PAD, IGNORE_LABEL, tokens)


def decode_grid(tokens: np.ndarray, size: int, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """(size²,) predicted tokens -> (h, w) uint8 colours: how TRM crops a prediction.

    From `offset`, the grid is the top-left rectangle of colour tokens with the largest area; a
    prediction that starts with a non-colour token decodes to an empty (0, 0) grid.
    """
    r, c = offset
    board = np.asarray(tokens).reshape(size, size)[r:, c:]
    is_colour = (board >= COLOUR_OFFSET) & (board < VOCAB_SIZE)  # (h', w')
    # Row i's run of colours from the left, limited by the rows above: a rectangle needs all of them.
    widths = np.minimum.accumulate(np.cumprod(is_colour, axis=1).sum(axis=1))  # (h',)
    areas = widths * np.arange(1, len(widths) + 1)
    if areas.size == 0 or areas.max() == 0:
        return np.zeros((0, 0), dtype=np.uint8)
    h = int(areas.argmax()) + 1
    return (board[:h, : widths[h - 1]] - COLOUR_OFFSET).astype(np.uint8)
