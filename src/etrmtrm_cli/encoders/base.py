"""What every demo encoder shares: the grid encoder, the batch it reads, the carry protocol of act.py.

An encoder is a context provider for the ACT model:
    initial_carry(batch_size, device) -> dict     ({} for a stateless encoder)
    reset_carry(reset (B,) bool, carry) -> carry  (exactly the reset slots return to their init state)
    forward(carry, batch) -> (context (B, C, D), new carry[, stats])
The context and the new carry keep their graph: the ACT model detaches the carry between steps, never
inside one, so the task loss of a step reaches every encoder parameter through that step's context.

`stats` (optional, see act.py) is a small dict of detached per-slot diagnostics, {name: (B,) float}, handed
out with the context rather than kept on the module: the recurrent encoders return
{"update_ratio": ...} (`update_ratio` below), which the training step logs as train/encoder_update_ratio.
A `read` may return (context, carry) or (context, carry, stats); `forward` passes either on.

Why an update ratio: the in-tree carries are post-norm (z <- rms_norm(z + u(z))), so the carry's own RMS
is ~1 by construction and cannot show an explosion or a collapse. The size of the update u *before* the
normalisation, relative to what it is added to, can: >> 1 means each step overwrites the carry (exploding
update), << 1 means the carry no longer moves (vanishing update).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from etrmtrm_cli.config import ArchConfig
from etrmtrm_cli.encoders.grid import DemoGridEncoder
from etrmtrm_cli.errors import PluginError
from etrmtrm_cli.models.act import check_carry
from etrmtrm_cli.models.layers import CrossAttention, SwiGLU, rms_norm

Carry = dict[str, Tensor]
Stats = dict[str, Tensor]  # per-slot diagnostics (B,), detached
ReadResult = tuple[Tensor, Carry] | tuple[Tensor, Carry, Stats]


def update_ratio(update: Tensor, x: Tensor) -> Tensor:
    """Per slot ||update|| / ||x||, norms over all tokens and dims, detached, float32. (B, C, D) x2 -> (B,).

    For a post-norm sublayer x' = rms_norm(x + update): 0 when the update is 0 (x' is x renormalised), ~1
    when the update is as large as its input, and it grows without bound with the update."""
    num = update.detach().float().flatten(1).norm(dim=1)
    return num / x.detach().float().flatten(1).norm(dim=1).clamp_min(1e-12)


def post_norm(x: Tensor, update: Tensor, eps: float, ratios: list[Tensor] | None) -> Tensor:
    """rms_norm(x + update); when `ratios` is a list, also appends update_ratio(update, x) to it."""
    if ratios is not None:
        ratios.append(update_ratio(update, x))
    return rms_norm(x + update, eps)


def mean_ratio(ratios: list[Tensor]) -> Tensor:
    """The mean of per-slot ratios over the sublayers that produced them: list of (B,) -> (B,)."""
    return torch.stack(ratios).mean(0)


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

    def forward(self, carry: Carry, batch: dict[str, Tensor]) -> ReadResult:
        demos = self.grid(batch["demo_inputs"], batch["demo_labels"], batch["demo_mask"])  # (B, K, D)
        result = self.read(carry, demos, batch["demo_mask"])
        self._check_read(result, demos.shape[0], carry)
        return result

    def _check_read(self, result: object, batch_size: int, carry: Carry) -> None:
        """A read's contract, checked here: a wrong return would otherwise fail later, in the decoder, as
        something else (a (B, D) context reads as D context tokens), or log nonsense (a (B, D) stat)."""
        name = f"{type(self).__module__}.{type(self).__qualname__}.read"
        if not isinstance(result, tuple) or len(result) not in (2, 3):
            raise PluginError(f"{name} must return (context, carry) or (context, carry, stats), "
                              f"not {type(result).__name__}")
        expected = (batch_size, self.context_tokens, self.hidden_size)
        context = result[0]
        if not isinstance(context, Tensor) or tuple(context.shape) != expected:
            got = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
            raise PluginError(f"{name} returned a context of shape {got}; expected (B, C, D) = {expected}, "
                              "C = arch.context_tokens")
        check_carry(name, carry, result[1])
        stats = result[2] if len(result) == 3 else {}
        if not isinstance(stats, dict):
            raise PluginError(f"{name} returned stats of type {type(stats).__name__}; expected {{name: (B,) tensor}}")
        for key, value in stats.items():
            if not (isinstance(value, Tensor) and value.is_floating_point() and tuple(value.shape) == (batch_size,)):
                got = f"shape {tuple(value.shape)} {value.dtype}" if isinstance(value, Tensor) else type(value).__name__
                raise PluginError(f"{name} returned stats[{key!r}] of {got}; expected one float per slot, "
                                  f"shape ({batch_size},)")

    def read(self, carry: Carry, demos: Tensor, demo_mask: Tensor) -> ReadResult:
        """-> (context (B, C, D), new carry) or (context, new carry, stats); see the module docstring."""
        raise NotImplementedError


class ReadLayer(nn.Module):
    """Post-norm cross-attention of C slots onto the demo vectors, then an MLP: one refinement.

    With a `ratios` list, the update ratio of each of its two post-norm sublayers is appended to it
    (attention: ||attn(z, demos)|| / ||z||; MLP: ||mlp(z')|| / ||z'||, z' the normalised attention output)."""

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__()
        self.eps = arch.rms_norm_eps
        self.attn = CrossAttention(arch.hidden_size, arch.num_heads)
        self.mlp = SwiGLU(arch.hidden_size, arch.expansion)

    def forward(self, z: Tensor, demos: Tensor, demo_mask: Tensor, ratios: list[Tensor] | None = None) -> Tensor:
        # z: (B, C, D); demos: (B, K, D); demo_mask: (B, K) -> (B, C, D)
        z = post_norm(z, self.attn(z, demos, key_mask=demo_mask), self.eps, ratios)
        return post_norm(z, self.mlp(z), self.eps, ratios)


def reset_slots(reset: Tensor, carry: Carry, init: Carry) -> Carry:
    """Slots with reset=True take their init state; all others keep theirs."""
    if missing := sorted(set(carry) - set(init)):
        raise PluginError(f"reset_slots: no init state for carry entries {missing} (the init states given are "
                          f"{sorted(init)}): give one for each key of initial_carry")
    # reset (B,) -> (B, 1, ...) against each carry entry, whatever its shape: (B, C, D), (B, D), ...
    return {key: torch.where(reset.view(-1, *[1] * (value.dim() - 1)), init[key].to(value.dtype), value)
            for key, value in carry.items()}
