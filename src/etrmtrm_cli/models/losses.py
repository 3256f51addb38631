"""The ACT loss head (TRM's `ACTLossHead`, models/losses.py of TRM@e7b6871): token cross-entropy + the
halting head's BCE, and metrics.

Loss = sum over slots of (mean CE over the slot's valid tokens)
       + 0.5 * (BCE(q_halt, slot exactly right) + BCE(q_continue, bootstrapped target) if present),
every slot counting at every step. The trainer divides by the global batch size before backward.

Metrics are sums over the slots that halted this step and have at least one valid token; the trainer
normalises them: keys ending in "loss" by the global batch size, the others by `count`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_LABEL_ID = -100
LossType = Literal["stablemax", "softmax"]


def _stablemax_s(x: Tensor, eps: float = 1e-30) -> Tensor:
    # A softmax substitute that grows linearly instead of exponentially (no overflow in float64).
    return torch.where(x < 0, 1 / (1 - x + eps), x + 1)


def log_stablemax(x: Tensor, dim: int = -1) -> Tensor:
    s = _stablemax_s(x)
    return torch.log(s / s.sum(dim=dim, keepdim=True))


def stablemax_cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_LABEL_ID) -> Tensor:
    """Per-token CE under stablemax, computed in float64; 0 where labels == ignore_index."""
    # logits: (..., V); labels: (...) -> (...) float64
    logprobs = log_stablemax(logits.to(torch.float64), dim=-1)
    valid = labels != ignore_index
    safe_labels = torch.where(valid, labels, 0).to(torch.long)
    picked = torch.gather(logprobs, -1, safe_labels.unsqueeze(-1)).squeeze(-1)
    return -torch.where(valid, picked, 0)


def softmax_cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_LABEL_ID) -> Tensor:
    """Per-token softmax CE in float32; 0 where labels == ignore_index."""
    flat = logits.to(torch.float32).reshape(-1, logits.shape[-1])
    ce = F.cross_entropy(flat, labels.to(torch.long).reshape(-1), ignore_index=ignore_index, reduction="none")
    return ce.view(labels.shape)


def token_cross_entropy(logits: Tensor, labels: Tensor, loss_type: LossType) -> Tensor:
    if loss_type == "stablemax":
        return stablemax_cross_entropy(logits, labels)
    if loss_type == "softmax":
        return softmax_cross_entropy(logits, labels)
    raise ValueError(f"loss_type must be 'stablemax' or 'softmax', not {loss_type!r}")


def act_loss(outputs: Mapping[str, Tensor], labels: Tensor, halted: Tensor, steps: Tensor,
             loss_type: LossType = "stablemax") -> tuple[Tensor, dict[str, Tensor]]:
    """Loss and metric sums of one ACT step.

    outputs: the ACT model's (logits (B, S, V), q_halt_logits (B,), q_continue_logits (B,), optional
    target_q_continue (B,)); labels (B, S) with -100 = ignored; halted (B,) bool and steps (B,) int
    from the new carry. Returns (scalar loss, metric sums), without host syncs.
    """
    logits, q_halt = outputs["logits"], outputs["q_halt_logits"]
    with torch.no_grad():
        mask = labels != IGNORE_LABEL_ID  # (B, S)
        counts = mask.sum(-1)  # (B,)
        divisor = counts.clamp_min(1).unsqueeze(-1)
        correct = mask & (logits.argmax(-1) == labels)
        seq_correct = correct.sum(-1) == counts
        counted = halted & (counts > 0)
        metrics = {
            "count": counted.sum(),
            "accuracy": torch.where(counted, (correct.to(torch.float32) / divisor).sum(-1), 0).sum(),
            "exact_accuracy": (counted & seq_correct).sum(),
            "q_halt_accuracy": (counted & ((q_halt >= 0) == seq_correct)).sum(),
            "steps": torch.where(counted, steps, 0).sum(),
        }

    lm_loss = (token_cross_entropy(logits, labels, loss_type) / divisor).sum()
    q_halt_loss = F.binary_cross_entropy_with_logits(q_halt, seq_correct.to(q_halt.dtype), reduction="sum")
    metrics["lm_loss"] = lm_loss.detach()
    metrics["q_halt_loss"] = q_halt_loss.detach()
    q_loss = q_halt_loss
    if "target_q_continue" in outputs:
        q_continue_loss = F.binary_cross_entropy_with_logits(
            outputs["q_continue_logits"], outputs["target_q_continue"], reduction="sum"
        )
        metrics["q_continue_loss"] = q_continue_loss.detach()
        q_loss = q_loss + q_continue_loss
    return lm_loss + 0.5 * q_loss, metrics
