"""P0's context provider: TRM's learned per-puzzle embedding with its sparse sign-SGD (reference/trm.md §2).

The table (num_ids x tokens*D, float32, zero init) is a persistent *buffer*, not a parameter: with one
row per (puzzle, augmentation) it can hold about a million rows, and a dense optimizer would keep
several copies of it and touch every row each step. Instead, a training forward copies the batch's rows
into a small leaf tensor that receives the gradient, and `SignSGD` writes only those rows back.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from einops import rearrange
from torch import Tensor, nn
from torch.optim import Optimizer


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


class SignSGD(Optimizer):
    """Sparse sign-SGD with decoupled weight decay for a PuzzleEmbedding's table.

    For each distinct id in the last training batch (gradients of duplicate ids summed, and gathered
    over all ranks when torch.distributed is initialised):  p <- p * (1 - lr * wd) - lr * sign(grad).
    Stateless; `lr` lives in `param_groups` so a schedule can set it as for any optimizer.
    """

    def __init__(self, embedding: PuzzleEmbedding, lr: float = 1e-2, weight_decay: float = 0.1) -> None:
        if lr < 0:
            raise ValueError(f"invalid learning rate {lr}")
        if weight_decay < 0:
            raise ValueError(f"invalid weight_decay {weight_decay}")
        super().__init__([embedding.weights], {"lr": lr, "weight_decay": weight_decay})
        self.embedding = embedding

    def zero_grad(self, set_to_none: bool = True) -> None:
        local = self.embedding.local_weights
        if local is not None and local.grad is not None:
            if set_to_none:
                local.grad = None
            else:
                local.grad.zero_()

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        local, ids = self.embedding.local_weights, self.embedding.local_ids
        if local is None or ids is None or local.grad is None:
            return
        grad = local.grad
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            grad, ids = _all_gather(grad), _all_gather(ids)
        table = self.embedding.weights
        unique_ids, inverse = ids.unique(return_inverse=True)
        summed = torch.zeros(unique_ids.shape[0], grad.shape[1], dtype=grad.dtype, device=grad.device)
        summed.index_add_(0, inverse, grad)
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            rows = table[unique_ids]
            rows.mul_(1.0 - lr * wd).add_(torch.sign(summed), alpha=-lr)
            table[unique_ids] = rows


def _all_gather(x: Tensor) -> Tensor:
    world = dist.get_world_size()
    out = torch.empty((world * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    dist.all_gather_into_tensor(out, x.contiguous())
    return out
