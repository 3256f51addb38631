"""P0's context provider: TRM's learned per-puzzle embedding (its `CastedSparseEmbedding`).

The table (num_ids x tokens*D, float32, zero init) is a persistent *buffer*, not a parameter: with one
row per (puzzle, augmentation) it can hold about a million rows, and a dense optimizer would keep
several copies of it and touch every row each step. Instead, as in TRM, a training forward copies the
batch's rows into a small leaf tensor that receives the gradient (`gathered`: the rows and their ids),
and the sparse sign-SGD of training/optim.py writes only those rows back.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn


class PuzzleEmbedding(nn.Module):
    """A stateless ContextProvider (see act.py) reading `batch["puzzle_ids"]`; context (B, tokens, D).

    tokens = 1 is the layout of the official ARC checkpoints (TRM's puzzle_emb_ndim = hidden_size).
    """

    def __init__(self, num_puzzle_ids: int, hidden_size: int, tokens: int = 1) -> None:
        super().__init__()
        self.tokens = tokens
        self.hidden_size = hidden_size
        self.weights: Tensor
        self.register_buffer("weights", torch.zeros(num_puzzle_ids, tokens * hidden_size), persistent=True)
        # The last training batch's rows (a leaf with grad) and their ids, read by SignSGD.step.
        self.local_weights: Tensor | None = None
        self.local_ids: Tensor | None = None

    def initial_carry(self, batch_size: int, device: torch.device | str | None = None) -> dict[str, Tensor]:
        return {}

    def reset_carry(self, reset: Tensor, carry: dict[str, Tensor]) -> dict[str, Tensor]:
        return carry

    def forward(self, carry: dict[str, Tensor], batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        ids = batch["puzzle_ids"].to(torch.long)  # (B,)
        if self.training and torch.is_grad_enabled():
            local = self.weights[ids].detach().clone().requires_grad_(True)  # (B, tokens*D), a leaf
            self.local_weights, self.local_ids = local, ids
            rows = local
        else:
            rows = self.weights[ids]
        context = rearrange(rows, "b (p d) -> b p d", p=self.tokens)
        return context, carry
