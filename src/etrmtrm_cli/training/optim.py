"""What updates the weights: the dense optimizer (AdamW or Adam-atan2), P0's sparse sign-SGD for the puzzle
table, the learning-rate schedule, gradient all-reduce and the EMA of the weights."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim import Optimizer

from etrmtrm_cli.config import Experiment
from etrmtrm_cli.errors import ConfigError
from etrmtrm_cli.models.act import ACTModel
from etrmtrm_cli.models.build import encoder_parameters
from etrmtrm_cli.models.puzzle_embedding import PuzzleEmbedding


def build_optimizers(model: ACTModel, exp: Experiment) -> list[Optimizer]:
    """The dense optimizer (encoder in its own group when encoder_lr_scale > 0) and P0's SignSGD."""
    t = exp.train
    encoder = {id(p) for p in encoder_parameters(model)}
    decoder_params = [p for p in model.parameters() if id(p) not in encoder]
    if t.encoder_lr_scale > 0 and encoder:
        groups = [
            {"params": decoder_params, "lr_scale": 1.0, "name": "decoder"},
            {"params": encoder_parameters(model), "lr_scale": t.encoder_lr_scale, "name": "encoder"},
        ]
    else:
        groups = [{"params": list(model.parameters()), "lr_scale": 1.0, "name": "all"}]
    dense: Optimizer
    if t.optimizer == "adam_atan2":
        try:
            from adam_atan2_pytorch import AdamAtan2
        except ImportError:
            raise ConfigError(
                "train.optimizer = 'adam_atan2' needs the adam-atan2-pytorch package: "
                "pip install 'etrmtrm[atan2]'"
            ) from None
        dense = AdamAtan2(groups, lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay)
    else:
        dense = torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay)
    optimizers: list[Optimizer] = [dense]
    if isinstance(model.provider, PuzzleEmbedding):
        sparse = SignSGD(model.provider, lr=t.puzzle_emb_lr, weight_decay=t.puzzle_emb_weight_decay)
        sparse.param_groups[0]["lr_scale"] = t.puzzle_emb_lr / t.lr  # follows the same schedule (and lr_scale)
        optimizers.append(sparse)
    return optimizers


def lr_at(step: int, exp: Experiment, total: int) -> float:
    """Linear warmup, then cosine down to lr_min_ratio x lr (constant when lr_min_ratio = 1)."""
    t, lr = exp.train, exp.train.scaled_lr
    if step <= t.lr_warmup_steps:
        return lr * step / max(1, t.lr_warmup_steps)
    progress = (step - t.lr_warmup_steps) / max(1, total - t.lr_warmup_steps)
    return lr * (t.lr_min_ratio + (1 - t.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def set_lr(optimizers: list[Optimizer], lr: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)


@torch.no_grad()
def update_ema(ema: ACTModel, model: ACTModel, rate: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1.0 - rate)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


def all_reduce_grads(model: ACTModel, world_size: int) -> None:
    """Sum the gradients over ranks; each rank's loss is already divided by the *global* batch."""
    if world_size == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


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
