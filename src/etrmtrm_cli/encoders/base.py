"""What every demo encoder shares: the grid encoder, the batch it reads, the carry protocol of act.py.

An encoder is a context provider for the ACT model:
    initial_carry(batch_size, device) -> dict     ({} for a stateless encoder)
    reset_carry(reset (B,) bool, carry) -> carry  (exactly the reset slots return to their init state)
    forward(carry, batch) -> (context (B, C, D), new carry)
The context and the new carry keep their graph: the ACT model detaches the carry between steps, never
inside one, so the task loss of a step reaches every encoder parameter through that step's context.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from etrmtrm_cli.config import ArchConfig
from etrmtrm_cli.encoders.grid import DemoGridEncoder
from etrmtrm_cli.models.layers import CrossAttention, SwiGLU, rms_norm

Carry = dict[str, Tensor]


class DemoEncoder(nn.Module):
    """Base class: encode the demos of a batch, then `read` them into a context."""

    # The carry entry whose evolution `encoder_carry_norm` / `_change` report; None when stateless.
    state_key: str | None = None

    def __init__(self, arch: ArchConfig, seq_len: int) -> None:
        super().__init__()
        self.hidden_size = arch.hidden_size
        self.context_tokens = arch.context_tokens
        self.dtype = getattr(torch, arch.forward_dtype)
        self.grid = DemoGridEncoder(arch, seq_len)

    def initial_carry(self, batch_size: int, device: torch.device) -> Carry:
        return {}

    def reset_carry(self, reset: Tensor, carry: Carry) -> Carry:
        return carry

    def forward(self, carry: Carry, batch: dict[str, Tensor]) -> tuple[Tensor, Carry]:
        demos = self.grid(batch["demo_inputs"], batch["demo_labels"], batch["demo_mask"])  # (B, K, D)
        return self.read(carry, demos, batch["demo_mask"])

    def read(self, carry: Carry, demos: Tensor, demo_mask: Tensor) -> tuple[Tensor, Carry]:
        raise NotImplementedError


class ReadLayer(nn.Module):
    """Post-norm cross-attention of C slots onto the demo vectors, then an MLP: one refinement."""

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__()
        self.eps = arch.rms_norm_eps
        self.attn = CrossAttention(arch.hidden_size, arch.num_heads)
        self.mlp = SwiGLU(arch.hidden_size, arch.expansion)

    def forward(self, z: Tensor, demos: Tensor, demo_mask: Tensor) -> Tensor:
        # z: (B, C, D); demos: (B, K, D); demo_mask: (B, K) -> (B, C, D)
        z = rms_norm(z + self.attn(z, demos, key_mask=demo_mask), self.eps)
        return rms_norm(z + self.mlp(z), self.eps)


def reset_slots(reset: Tensor, carry: Carry, init: Carry) -> Carry:
    """Slots with reset=True take their init state; all others keep theirs."""
    flag = reset.view(-1, 1, 1)
    return {key: torch.where(flag, init[key].to(value.dtype), value) for key, value in carry.items()}
