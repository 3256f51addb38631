"""Transformer building blocks shared by the TRM decoder and the demo encoders.

Everything here reproduces the arithmetic of TRM's reference layers (models/layers.py of TRM@e7b6871), so a TRM
checkpoint gives the same numbers in our decoder: parameter-free RMSNorm computed in float32, linears
whose float32 master weights are cast to the activations' dtype at forward (the model can compute in
bfloat16 while the optimizer keeps float32), truncated-LeCun init, half-split RoPE and SwiGLU with
TRM's width rule. Two departures, both only in bfloat16 on the CPU. For speed, attention runs as two batched
matmuls around a float32 softmax, not torch's flash kernel (`_attend`); its scores are rounded to bfloat16 before
the softmax, which flash attention keeps in float32. For accuracy, a token table's gradient is summed in float32
(`Embedding`), as TRM's lookup does on CUDA, where on the CPU it sums in bfloat16.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import einops
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

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


class _RMSNorm(torch.autograd.Function):
    """RMSNorm whose backward needs only its output y and 1/rms: y is what the next linear saves anyway,
    so the norm adds no activation memory (plain autograd would also keep its float32 input).
    With y = x * r, r = rsqrt(mean(x²) + eps):  dx = r * (dy - y * mean(dy * y))."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, eps: float) -> Tensor:
        x32 = x.to(torch.float32)
        inv_rms = torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps)  # (..., 1)
        y = (x32 * inv_rms).to(x.dtype)
        ctx.save_for_backward(y, inv_rms)
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor, None]:
        y, inv_rms = ctx.saved_tensors
        y32, grad32 = y.to(torch.float32), grad_y.to(torch.float32)
        grad_x = inv_rms * (grad32 - y32 * (grad32 * y32).mean(-1, keepdim=True))
        return grad_x.to(grad_y.dtype), None


def rms_norm(x: Tensor, eps: float) -> Tensor:
    """Parameter-free RMSNorm over the last axis, computed in float32 and cast back to x's dtype."""
    return _RMSNorm.apply(x, eps)


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
        # ids: (...) int -> (..., D). A one-hot matmul with the float32 table rather than F.embedding on the cast table:
        # the same rows exactly (1·w + 0·...), and a backward that sums each row's gradient in float32. F.embedding's
        # eager CPU backward sums it in the table's dtype: in bfloat16 the thousands of cells of one colour in a batch
        # lost most of their sum (tests/test_decoder_layers.py). Compiled, it summed in float32, as atomic adds that
        # both threads contend for. For small vocabularies (12 rows here): the one-hot holds V values per id.
        one_hot = F.one_hot(ids.long(), self.weight.shape[0]).to(self.weight.dtype)  # (..., V)
        rows = one_hot @ self.weight  # (..., D) float32
        return rows if self.cast_to is None else rows.to(self.cast_to)


class RotaryEmbedding(nn.Module):
    """RoPE tables for positions 0..max_positions-1, half-split layout (rotate_half), float32: (cos, signed_sin).

    signed_sin is sin with its first half negated, so that TRM's rotate_half(x) * sin = cat(-x2, x1) * sin equals
    cat(x2, x1) * signed_sin bit for bit (negation is exact) without a pass that negates x."""

    def __init__(self, head_dim: int, max_positions: int, theta: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        positions = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)  # (T, head_dim / 2)
        # Both halves share the frequencies: rotation pairs are (i, i + head_dim/2), not (2i, 2i+1).
        angles = torch.cat((freqs, freqs), dim=-1)  # (T, head_dim)
        sign = torch.cat((-torch.ones_like(freqs[0]), torch.ones_like(freqs[0])))  # (head_dim,)
        self.cos: Tensor
        self.signed_sin: Tensor
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("signed_sin", angles.sin() * sign, persistent=False)

    def forward(self) -> CosSin:
        return self.cos, self.signed_sin


def _swap_halves(x: Tensor) -> Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((second, first), dim=-1)


def apply_rotary(q: Tensor, k: Tensor, cos: Tensor, signed_sin: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate q and k by RotaryEmbedding's tables, broadcastable to them: (T, head_dim) for q, k (B, H, T, head_dim),
    or (T, 1, head_dim) per token for packed q, k (T, H, head_dim). Math in the tables' dtype, as TRM's
    q * cos + rotate_half(q) * sin."""
    dtype = q.dtype
    q32, k32 = q.to(cos.dtype), k.to(cos.dtype)
    q_rot = q32 * cos + _swap_halves(q32) * signed_sin
    k_rot = k32 * cos + _swap_halves(k32) * signed_sin
    return q_rot.to(dtype), k_rot.to(dtype)


# torch's CPU flash attention is slow in bfloat16: forward and backward took 1.8-5.1x as long as two batched bfloat16
# matmuls around a float32 softmax (`_matmul_attention`) at 16- and 64-dim heads from 32 to 500 keys, and 1.5x at 916
# keys x 64 dims; only at 916 keys x 16 dims was it faster (0.85x; benchmarks/bench_bf16_attention.py, 2-core
# AVX512-BF16 EPYC, torch 2.13). The matmuls keep the whole score matrix for backward, 6 bytes per score (the
# float32 softmax and its bfloat16 copy), where flash attention keeps none: bfloat16 attention on the CPU runs as
# matmuls up to this many scores per call (B * H * Tq * Tk, about 100 MB), as flash attention above.
BFLOAT16_CPU_MATMUL_ATTENTION_MAX_SCORES = 2**24


def _matmul_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
    """softmax(q kᵀ / √hd) v as two batched matmuls in q's dtype, the softmax in float32: the arithmetic of
    Hugging Face's eager attention. q (B, H, Tq, hd), k and v (B, H, Tk, hd), key_mask (B, Tk) True = may be
    attended, every row with at least one key -> (B, H, Tq, hd).

    Every pass over the (B, H, Tq, Tk) scores costs more than the matmuls at these sizes, so there are as few as
    the arithmetic allows: where 1/√hd is a power of two (hd = 16, 64, ...) q is scaled before the matmul, which
    rounds exactly as scaling its product would; the mask is added as 0 / -inf in float32, which casts the
    scores in the same pass and leaves nothing for backward to mask."""
    scale = q.shape[-1] ** -0.5
    exact = math.frexp(scale)[0] == 0.5  # a power of two
    scores = torch.matmul(q * scale if exact else q, k.transpose(-1, -2))  # (B, H, Tq, Tk) in q's dtype
    if not exact:
        scores = scores.float() * scale
    if key_mask is not None:  # bfloat16 + float32 is float32: the cast and the mask in one pass
        bias = torch.zeros(key_mask.shape, dtype=torch.float32, device=q.device).masked_fill(~key_mask, float("-inf"))
        scores = scores + bias[:, None, None, :]
    # softmax's dtype: bfloat16 scores are cast to float32 first, as scores.float().softmax(-1) would
    return torch.matmul(torch.softmax(scores, -1, dtype=torch.float32).to(q.dtype), v)


def _attend(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
    """Non-causal attention on (B, H, T, hd); key_mask (B, Tk) True = may be attended.

    A batch element whose keys are all masked would give a softmax over nothing (NaN): it attends to
    every key instead and its output is set to zero afterwards.
    """
    if key_mask is None:
        return _attend_keys(q, k, v, None)
    has_key = key_mask.any(dim=-1)  # (B,)
    out = _attend_keys(q, k, v, key_mask | ~has_key[:, None])
    return torch.where(has_key[:, None, None, None], out, torch.zeros((), dtype=out.dtype, device=out.device))


def _attend_keys(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
    """`_attend` where every batch element has a key to attend (key_mask None, or a True in each row).
    bfloat16 attention on the CPU runs as `_matmul_attention` up to the size above, everything else as SDPA."""
    if (q.dtype == torch.bfloat16 and q.device.type == "cpu"
            and q.shape[:-1].numel() * k.shape[-2] <= BFLOAT16_CPU_MATMUL_ATTENTION_MAX_SCORES):
        return _matmul_attention(q, k, v, key_mask)
    mask = None if key_mask is None else key_mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class _Reorder(torch.autograd.Function):
    """Rows of x in the order of `index`, whose backward is a gather as well: the gradient's rows in the order of
    `inverse`; with `zero_past_end`, a row index past the gradient's end means zero. Exact where every row of x is
    read once by a row whose gradient counts, and any other read gets a gradient of exactly zero (the padding
    rows of `Packing.attend`). index_select's own backward scatters into a zeroed gradient, one row at a time."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, index: Tensor, inverse: Tensor, zero_past_end: bool) -> Tensor:
        ctx.save_for_backward(inverse)
        ctx.zero_past_end = zero_past_end
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        (inverse,) = ctx.saved_tensors
        if ctx.zero_past_end:
            grad = torch.cat([grad, grad.new_zeros(1, *grad.shape[1:])])  # row len(grad): zero
        return grad.index_select(0, inverse), None, None, None


class Packing:
    """N variable-length sequences stored back to back as one packed (T, ...) tensor of their tokens.

    Everything per token (linears, norms, RoPE, MLP) runs on the packed tensor with no padding at all;
    attention runs per bucket of sequences of similar length, each padded only to its bucket's longest.
    """

    def __init__(self, seq_of: Tensor, num_seqs: int, max_buckets: int = 16, min_bucket: int = 8) -> None:
        # seq_of: (T,) the sequence of each token, non-decreasing (tokens of one sequence are contiguous)
        self.seq_of = seq_of
        self.counts = torch.bincount(seq_of, minlength=num_seqs)  # (N,) tokens per sequence
        starts = self.counts.cumsum(0) - self.counts  # (N,) each sequence's first token
        order = torch.argsort(self.counts)
        self.buckets: list[tuple[Tensor, Tensor, Tensor]] = []  # token (n, L), real token (n, L), key mask (n, L)
        for bucket in torch.tensor_split(order, min(max_buckets, max(1, num_seqs // min_bucket))):
            length = int(self.counts[bucket].max()) if bucket.numel() else 0
            if length == 0:  # no tokens in this bucket: nothing to attend
                continue
            rank = torch.arange(length, device=seq_of.device)
            real = rank < self.counts[bucket, None]  # (n, L)
            # Padding rows read token 0: masked as keys, and their query rows are never read back. A sequence
            # without tokens attends to its first padding row, so that every row has a key; nothing of it is
            # read back either.
            key_mask = rank < self.counts[bucket, None].clamp_min(1)
            self.buckets.append((torch.where(real, starts[bucket, None] + rank, 0), real, key_mask))
        self._head_rows: dict[int, tuple[Tensor, Tensor, Tensor]] = {}

    def head_rows(self, heads: int) -> tuple[Tensor, Tensor, Tensor]:
        """Row indices into packed per-head vectors (T * heads, hd) -> (gather (P,): every bucket's rows in
        (n, heads, L) order, bucket after bucket, padding rows reading row 0; unpad (T * heads,): where each row
        sits among them; pad_to_zero (P,): gather with its padding rows past the end, for `_Reorder`).

        Gathered in that order, each bucket's q, k and v lie as (n, heads, L, hd): the matmuls copy nothing,
        and one gather serves every bucket (each bucket's own gather had a backward that zeroed and scattered
        into a gradient of all T tokens)."""
        if heads not in self._head_rows:
            head = torch.arange(heads, device=self.seq_of.device)[:, None]  # (heads, 1)
            gather = torch.cat([(token[:, None] * heads + head).flatten() for token, _, _ in self.buckets])
            real = torch.cat([real[:, None].expand(-1, heads, -1).flatten() for _, real, _ in self.buckets])
            unpad = torch.empty(self.seq_of.numel() * heads, dtype=torch.long, device=self.seq_of.device)
            unpad[gather[real]] = real.nonzero().squeeze(1)
            pad_to_zero = torch.where(real, gather, unpad.numel())  # a padding row's gradient: zero
            self._head_rows[heads] = gather, unpad, pad_to_zero
        return self._head_rows[heads]

    # Eager under torch.compile: every batch has new bucket lengths, and inside a graph each one compiled
    # anew until dynamo's cache limit sent the whole encoder back to eager (tests/test_runtime.py).
    @torch.compiler.disable
    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention within each sequence: q, k, v (T, H, hd) -> (T, H, hd)."""
        if not self.buckets:
            return torch.zeros_like(q)
        tokens, heads, head_dim = q.shape
        gather, unpad, pad_to_zero = self.head_rows(heads)
        sizes = [token.numel() * heads for token, _, _ in self.buckets]
        padded = [_Reorder.apply(t.reshape(tokens * heads, head_dim), gather, unpad, False).split(sizes)
                  for t in (q, k, v)]
        outs = []
        for (token, _, key_mask), *qkv in zip(self.buckets, *padded, strict=True):
            n, length = token.shape
            qb, kb, vb = (t.view(n, heads, length, head_dim) for t in qkv)
            outs.append(_attend_keys(qb, kb, vb, key_mask).flatten(0, 2))  # (n * H * L, hd)
        return _Reorder.apply(torch.cat(outs), unpad, pad_to_zero, True).view(tokens, heads, head_dim)

    def mean(self, x: Tensor) -> Tensor:
        """Mean over each sequence's tokens: (T, D) -> (N, D); zero for a sequence without tokens."""
        # Summed in float32: index_add accumulates one token at a time, in the tensor's own dtype.
        sums = x.new_zeros(self.counts.numel(), x.shape[-1], dtype=torch.float32).index_add(0, self.seq_of, x.float())
        return (sums / self.counts.clamp_min(1).unsqueeze(-1)).to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (TRM's layout: q heads, k heads, v heads)."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = Linear(hidden_size, 3 * hidden_size)
        self.out = Linear(hidden_size, hidden_size)

    def forward(self, x: Tensor, rope: CosSin | None = None, key_mask: Tensor | None = None,
                packing: Packing | None = None) -> Tensor:
        # x: (B, T, D) with key_mask (B, T) bool; or packed sequences (T, D) with their `packing`
        qkv = self.qkv(x)  # (B, T, 3D) or (T, 3D)
        if packing is not None:
            q, k, v = einops.rearrange(qkv, "t (three h d) -> three t h d", three=3, h=self.num_heads)
            if rope is not None:  # per-token tables (T, 1, head_dim)
                q, k = apply_rotary(q, k, *rope)
            return self.out(einops.rearrange(packing.attend(q, k, v), "t h d -> t (h d)"))
        q, k, v = einops.rearrange(qkv, "b t (three h d) -> three b h t d", three=3, h=self.num_heads)
        if torch.is_grad_enabled():  # attention saves v for backward: a view would keep all of qkv alive
            v = v.contiguous()
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


def _swiglu(x: Tensor, w_gate_up: Tensor, w_down: Tensor) -> Tensor:
    # x: (..., D); w_gate_up: (2W, D); w_down: (D, W) -> (..., D)
    gate, up = F.linear(x, w_gate_up).chunk(2, dim=-1)  # each (..., W)
    return F.linear(F.silu(gate) * up, w_down)


class SwiGLU(nn.Module):
    """down(silu(gate) * up) with (gate, up) = gate_up(x).

    Plain autograd keeps 4W values per token for backward (gate_up's 2W, silu(gate) and the product), 16x D at
    hidden 64 and 128, the largest activation of a step. Where one call's would exceed `keep_max_bytes`, or
    `compiled_keep_max_bytes` under torch.compile (both 0 by default: in every call), the MLP keeps only x, the
    norm's output that the block keeps anyway, and backward recomputes gate_up(x): one more (..., D) x (D, 2W)
    matmul. Activation checkpointing does it, because torch.compile honours it: a hand-written autograd.Function
    that recomputed in its backward was merged back into the forward by the compiler, which then kept gate_up after
    all (499 instead of 186 MiB saved at hidden 128). Compiled steps hold more memory than eager ones, hence a limit
    of their own (decoder.MLP_KEEP_MAX_BYTES). Same numbers either way (tests/test_decoder_layers.py compares them
    bit for bit).
    """

    def __init__(self, hidden_size: int, expansion: float, keep_max_bytes: int = 0,
                 compiled_keep_max_bytes: int = 0) -> None:
        super().__init__()
        width = swiglu_width(hidden_size, expansion)
        self.gate_up = Linear(hidden_size, 2 * width)
        self.down = Linear(width, hidden_size)
        self.keep_max_bytes = keep_max_bytes
        self.compiled_keep_max_bytes = compiled_keep_max_bytes

    def kept_bytes(self, x: Tensor) -> int:
        """What plain autograd would keep for backward in a call on x (..., D): 4W values per token."""
        return x.shape[:-1].numel() * 4 * self.down.weight.shape[1] * x.element_size()

    def recomputes(self, x: Tensor) -> bool:
        """Whether a training call on x keeps only x for backward. Compiled, the size test becomes a guard: the
        decoder's x is the same size at every training step; a demo encoder's packed cells vary by batch, and the
        first batch on the other side of its limit (encoders/grid.py) compiles one graph more, no further."""
        limit = self.compiled_keep_max_bytes if torch.compiler.is_compiling() else self.keep_max_bytes
        return self.kept_bytes(x) > limit

    def forward(self, x: Tensor) -> Tensor:
        # x: (..., D) -> (..., D)
        weights = self.gate_up.weight.to(x.dtype), self.down.weight.to(x.dtype)
        if not torch.is_grad_enabled() or not self.recomputes(x):
            return _swiglu(x, *weights)
        return checkpoint(_swiglu, x, *weights, use_reentrant=False, preserve_rng_state=False)


class Block(nn.Module):
    """Self-attention + SwiGLU with parameter-free RMSNorm, post-norm (TRM) or pre-norm (LPN)."""

    def __init__(self, hidden_size: int, num_heads: int, expansion: float, eps: float = 1e-5,
                 norm_style: Literal["post", "pre"] = "post", mlp_keep_max_bytes: tuple[int, int] = (0, 0)) -> None:
        super().__init__()
        if norm_style not in ("post", "pre"):
            raise ValueError(f"norm_style must be 'post' or 'pre', not {norm_style!r}")
        self.norm_style = norm_style
        self.eps = eps
        self.attn = Attention(hidden_size, num_heads)
        self.mlp = SwiGLU(hidden_size, expansion, *mlp_keep_max_bytes)  # (eager, compiled) limits

    def forward(self, x: Tensor, rope: CosSin | None = None, key_mask: Tensor | None = None,
                packing: Packing | None = None) -> Tensor:
        # x: (B, T, D), or packed (T, D) with its packing -> the same shape
        if self.norm_style == "post":
            x = rms_norm(x + self.attn(x, rope, key_mask, packing), self.eps)
            return rms_norm(x + self.mlp(x), self.eps)
        x = x + self.attn(rms_norm(x, self.eps), rope, key_mask, packing)
        return x + self.mlp(rms_norm(x, self.eps))
