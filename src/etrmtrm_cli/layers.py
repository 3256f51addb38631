"""Transformer building blocks shared by the TRM decoder and the demo encoders.

Everything here reproduces the arithmetic of TRM's reference layers (DESIGN.md "The models"), so a TRM
checkpoint gives the same numbers in our decoder: parameter-free RMSNorm computed in float32, linears
whose float32 master weights are cast to the activations' dtype at forward (the model can compute in
bfloat16 while the optimizer keeps float32), truncated-LeCun init, half-split RoPE and SwiGLU with
TRM's width rule.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import einops
import torch
import torch.nn.functional as F
from torch import Tensor, nn

CosSin = tuple[Tensor, Tensor]


def trunc_normal_init_(tensor: Tensor, std: float = 1.0, lower: float = -2.0, upper: float = 2.0) -> Tensor:
    """Fill `tensor` in place from a normal truncated at [lower, upper] standard deviations (JAX style).

    `torch.nn.init.trunc_normal_` truncates a N(0, std) and so returns a narrower spread than `std`;
    JAX (and TRM) widen the underlying normal so that the *truncated* distribution has std `std`.
    """
    with torch.no_grad():
        if std == 0:
            return tensor.zero_()
        sqrt2 = math.sqrt(2.0)
        cdf_lo = math.erf(lower / sqrt2)
        cdf_hi = math.erf(upper / sqrt2)
        mass = (cdf_hi - cdf_lo) / 2
        pdf_lo = math.exp(-0.5 * lower**2) / math.sqrt(2 * math.pi)
        pdf_hi = math.exp(-0.5 * upper**2) / math.sqrt(2 * math.pi)
        # Variance of a standard normal truncated to [lower, upper]; divide it out to hit `std` exactly.
        trunc_var = 1 - (upper * pdf_hi - lower * pdf_lo) / mass - ((pdf_hi - pdf_lo) / mass) ** 2
        corrected = std / math.sqrt(trunc_var)
        # Inverse-CDF sampling: uniform in erf space -> erfinv -> the truncated normal.
        tensor.uniform_(cdf_lo, cdf_hi)
        tensor.erfinv_()
        tensor.mul_(sqrt2 * corrected)
        tensor.clip_(lower * corrected, upper * corrected)
    return tensor


def rms_norm(x: Tensor, eps: float) -> Tensor:
    """Parameter-free RMSNorm over the last axis, computed in float32 and cast back to x's dtype."""
    dtype = x.dtype
    x32 = x.to(torch.float32)
    variance = x32.square().mean(-1, keepdim=True)
    return (x32 * torch.rsqrt(variance + eps)).to(dtype)


class Linear(nn.Module):
    """A bias-optional linear layer with truncated-LeCun init whose weights follow the input's dtype."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(
            trunc_normal_init_(torch.empty(out_features, in_features), std=1.0 / math.sqrt(in_features))
        )
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        # x: (..., in) -> (..., out), in x's dtype
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), bias)


class Embedding(nn.Module):
    """A lookup table (truncated normal init with `init_std`) returned in `cast_to` (None: its own dtype)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, init_std: float,
                 cast_to: torch.dtype | None = None) -> None:
        super().__init__()
        self.cast_to = cast_to
        weight = trunc_normal_init_(torch.empty(num_embeddings, embedding_dim), std=init_std)
        self.weight = nn.Parameter(weight)

    def table(self) -> Tensor:
        """The whole table in the compute dtype (learned positions add it wholesale)."""
        return self.weight if self.cast_to is None else self.weight.to(self.cast_to)

    def forward(self, ids: Tensor) -> Tensor:
        # ids: (...) int -> (..., D)
        return F.embedding(ids, self.table())


class RotaryEmbedding(nn.Module):
    """RoPE tables for positions 0..max_positions-1, half-split layout (rotate_half), float32."""

    def __init__(self, head_dim: int, max_positions: int, theta: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        positions = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)  # (T, head_dim / 2)
        # Both halves share the frequencies: rotation pairs are (i, i + head_dim/2), not (2i, 2i+1).
        angles = torch.cat((freqs, freqs), dim=-1)  # (T, head_dim)
        self.cos: Tensor
        self.sin: Tensor
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self) -> CosSin:
        return self.cos, self.sin


def _rotate_half(x: Tensor) -> Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate q and k, each (..., T, head_dim), by tables broadcastable to them: (T, head_dim), or
    (B, 1, T, head_dim) for per-row positions. Math in the tables' dtype."""
    dtype = q.dtype
    q32, k32 = q.to(cos.dtype), k.to(cos.dtype)
    q_rot = q32 * cos + _rotate_half(q32) * sin
    k_rot = k32 * cos + _rotate_half(k32) * sin
    return q_rot.to(dtype), k_rot.to(dtype)


def _attend(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
    """Non-causal SDPA on (B, H, T, hd); key_mask (B, Tk) True = may be attended.

    A batch element whose keys are all masked would give a softmax over nothing (NaN): it attends to
    every key instead and its output is set to zero afterwards.
    """
    if key_mask is None:
        return F.scaled_dot_product_attention(q, k, v)
    has_key = key_mask.any(dim=-1)  # (B,)
    safe_mask = key_mask | ~has_key[:, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe_mask[:, None, None, :])
    return torch.where(has_key[:, None, None, None], out, torch.zeros((), dtype=out.dtype, device=out.device))


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (TRM's layout: q heads, k heads, v heads)."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = Linear(hidden_size, 3 * hidden_size)
        self.out = Linear(hidden_size, hidden_size)

    def forward(self, x: Tensor, rope: CosSin | None = None, key_mask: Tensor | None = None) -> Tensor:
        # x: (B, T, D); key_mask: (B, T) bool
        qkv = self.qkv(x)  # (B, T, 3D)
        q, k, v = einops.rearrange(qkv, "b t (three h d) -> three b h t d", three=3, h=self.num_heads)
        if rope is not None:
            q, k = apply_rotary(q, k, *rope)
        out = _attend(q, k, v, key_mask)  # (B, H, T, hd)
        return self.out(einops.rearrange(out, "b h t d -> b t (h d)"))


class CrossAttention(nn.Module):
    """Queries from one sequence attend to another (no RoPE): the encoders' aggregation step."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = Linear(hidden_size, hidden_size)
        self.kv = Linear(hidden_size, 2 * hidden_size)
        self.out = Linear(hidden_size, hidden_size)

    def forward(self, q_in: Tensor, kv_in: Tensor, key_mask: Tensor | None = None) -> Tensor:
        # q_in: (B, Tq, D); kv_in: (B, Tk, D); key_mask: (B, Tk) bool -> (B, Tq, D)
        q = einops.rearrange(self.q(q_in), "b t (h d) -> b h t d", h=self.num_heads)
        k, v = einops.rearrange(self.kv(kv_in), "b t (two h d) -> two b h t d", two=2, h=self.num_heads)
        out = _attend(q, k, v, key_mask)
        return self.out(einops.rearrange(out, "b h t d -> b t (h d)"))


def swiglu_width(hidden_size: int, expansion: float) -> int:
    """TRM's intermediate width: round(expansion * D * 2/3) rounded up to a multiple of 256."""
    width = round(expansion * hidden_size * 2 / 3)
    return -(-width // 256) * 256


class _GatedDown(torch.autograd.Function):
    """down(silu(gate) * up) from the fused (..., 2W) gate_up projection, keeping only gate_up (and the
    weight) for backward and recomputing the cheap silu(gate) * up there. Plain autograd would keep
    gate_up, silu(gate) and their product: 16 floats per intermediate unit instead of 8, for the same
    numbers (tests/test_decoder_layers.py compares them bit for bit)."""

    @staticmethod
    def forward(ctx: Any, gate_up: Tensor, weight: Tensor) -> Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        ctx.save_for_backward(gate_up, weight)
        return F.linear(F.silu(gate) * up, weight)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor]:
        gate_up, weight = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        act = F.silu(gate)
        hidden = (act * up).to(grad_out.dtype)  # autocast may have run the forward linear in another dtype
        grad_hidden = (grad_out @ weight.to(grad_out.dtype)).to(gate_up.dtype)  # (..., W)
        grad_weight = grad_out.flatten(0, -2).mT @ hidden.flatten(0, -2)  # (D, W)
        grad_gate = torch.ops.aten.silu_backward(grad_hidden * up, gate)
        return torch.cat([grad_gate, grad_hidden * act], dim=-1), grad_weight.to(weight.dtype)


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, expansion: float) -> None:
        super().__init__()
        width = swiglu_width(hidden_size, expansion)
        self.gate_up = Linear(hidden_size, 2 * width)
        self.down = Linear(width, hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        # x: (..., D) -> (..., D)
        return _GatedDown.apply(self.gate_up(x), self.down.weight.to(x.dtype))


class Block(nn.Module):
    """Self-attention + SwiGLU with parameter-free RMSNorm, post-norm (TRM) or pre-norm (LPN)."""

    def __init__(self, hidden_size: int, num_heads: int, expansion: float, eps: float = 1e-5,
                 norm_style: Literal["post", "pre"] = "post") -> None:
        super().__init__()
        if norm_style not in ("post", "pre"):
            raise ValueError(f"norm_style must be 'post' or 'pre', not {norm_style!r}")
        self.norm_style = norm_style
        self.eps = eps
        self.attn = Attention(hidden_size, num_heads)
        self.mlp = SwiGLU(hidden_size, expansion)

    def forward(self, x: Tensor, rope: CosSin | None = None, key_mask: Tensor | None = None) -> Tensor:
        # x: (B, T, D) -> (B, T, D)
        if self.norm_style == "post":
            x = rms_norm(x + self.attn(x, rope, key_mask), self.eps)
            return rms_norm(x + self.mlp(x), self.eps)
        x = x + self.attn(rms_norm(x, self.eps), rope, key_mask)
        return x + self.mlp(rms_norm(x, self.eps))
