"""layers.py against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from etrmtrm_cli.models import layers
from etrmtrm_cli.models.layers import (
    Attention,
    Block,
    CrossAttention,
    Embedding,
    Linear,
    Packing,
    RotaryEmbedding,
    SwiGLU,
    _attend,
    apply_rotary,
    rms_norm,
    swiglu_width,
    trunc_normal_init_,
)


def test_trunc_normal_has_the_requested_std_and_bounds() -> None:
    torch.manual_seed(0)
    x = trunc_normal_init_(torch.empty(200_000), std=0.5)
    assert abs(x.std().item() - 0.5) < 0.005  # torch's trunc_normal_ would give ~0.44
    assert x.abs().max().item() <= 2 * 0.5 / math.sqrt(0.7737413) + 1e-6  # ±2 corrected stds
    assert trunc_normal_init_(torch.ones(3), std=0.0).eq(0).all()


def test_rms_norm_by_hand_and_dtype() -> None:
    x = torch.tensor([[3.0, 4.0]])
    expected = torch.tensor([[3.0, 4.0]]) / math.sqrt(12.5 + 1e-5)
    torch.testing.assert_close(rms_norm(x, 1e-5), expected)
    assert rms_norm(x.bfloat16(), 1e-5).dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_gradient_equals_plain_autograd(dtype: torch.dtype) -> None:
    """The norm's own backward (from its output alone) against autograd through the float32 formula."""
    torch.manual_seed(0)
    x = (3 * torch.randn(4, 7, 32)).to(dtype).requires_grad_()
    weights = torch.randn(4, 7, 32)
    (grad,) = torch.autograd.grad((rms_norm(x, 1e-5).float() * weights).sum(), x)
    x32 = x.detach().float().requires_grad_()
    plain = x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + 1e-5)
    (expected,) = torch.autograd.grad((plain.to(dtype).float() * weights).sum(), x32)
    assert grad.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 2e-2  # bf16: the output it keeps has 8 bits of mantissa
    torch.testing.assert_close(grad.float(), expected, rtol=tol, atol=tol)


def test_linear_and_embedding_follow_the_compute_dtype() -> None:
    torch.manual_seed(0)
    lin = Linear(256, 4, bias=True)
    assert abs(lin.weight.std().item() - 1 / 16) < 0.01 and lin.bias is not None and lin.bias.eq(0).all()
    assert lin(torch.ones(2, 256, dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert lin.weight.dtype == torch.float32
    emb = Embedding(5, 3, init_std=1.0, cast_to=torch.bfloat16)
    assert emb(torch.tensor([0, 4])).dtype == torch.bfloat16
    assert Embedding(5, 3, init_std=1.0)(torch.tensor([1])).dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_embedding_selects_rows_exactly_and_sums_their_gradient_in_float32(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    emb = Embedding(12, 8, init_std=1.0, cast_to=dtype)
    ids = torch.randint(0, 12, (4, 2000), dtype=torch.int32)
    out = emb(ids)
    assert torch.equal(out, F.embedding(ids, emb.weight.to(dtype)))
    grad = torch.randn(4, 2000, 8).to(dtype)
    out.backward(grad)
    exact = torch.zeros(12, 8, dtype=torch.float64).index_add_(0, ids.flatten().long(), grad.reshape(-1, 8).double())
    # About 670 cells per row. F.embedding's CPU backward sums them in bfloat16: off by up to 177 % here.
    torch.testing.assert_close(emb.weight.grad.double(), exact, rtol=1e-5, atol=1e-5)


WIDTHS = [(512, 4.0, 1536), (16, 4.0, 256), (384, 4.0, 1024), (64, 2.0, 256), (400, 4.0, 1280)]


@pytest.mark.parametrize(("hidden", "expansion", "width"), WIDTHS)
def test_swiglu_width_rounds_up_to_256(hidden: int, expansion: float, width: int) -> None:
    assert swiglu_width(hidden, expansion) == width
    assert SwiGLU(hidden, expansion).down.weight.shape == (hidden, width)


@pytest.mark.parametrize("keep_max_bytes", [0, 2**20])  # recompute; keep
@pytest.mark.parametrize("autocast", [False, True])
def test_swiglu_gradients_equal_plain_autograd(autocast: bool, keep_max_bytes: int) -> None:
    """SwiGLU keeps its activations or only its input for backward and recomputes the rest: the same values and
    gradients either way."""
    torch.manual_seed(0)
    mlp = SwiGLU(16, 4.0, keep_max_bytes)
    x = torch.randn(3, 5, 16, requires_grad=True)

    def plain(x: torch.Tensor) -> torch.Tensor:
        gate, up = mlp.gate_up(x).chunk(2, dim=-1)
        return mlp.down(torch.nn.functional.silu(gate) * up)

    results = []
    for fn in (mlp, plain):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = fn(x)
        grads = torch.autograd.grad(out.float().square().sum(), [x, mlp.gate_up.weight, mlp.down.weight])
        results.append((out, *grads))
    for ours, theirs in zip(*results, strict=True):
        assert ours.dtype == theirs.dtype
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_swiglu_keeps_its_activations_up_to_the_limit_and_recomputes_above() -> None:
    """Up to its limit, keep_max_bytes eager and compiled_keep_max_bytes compiled, a call keeps what plain autograd
    keeps (4W values per token); above it only its input x. torch.compile splits forward and backward itself, and
    the recompute must survive it (a hand-written autograd.Function's did not: the compiler kept gate_up, 2W values
    per token)."""
    torch.manual_seed(0)
    mlp = SwiGLU(16, 4.0)  # W = 256
    x = torch.randn(3, 5, 16, requires_grad=True)
    weights = {p.untyped_storage().data_ptr() for p in mlp.parameters()}

    def saved_bytes(fn: object) -> int:
        kept: dict[int, int] = {}

        def keep(t: torch.Tensor) -> torch.Tensor:
            if t.untyped_storage().data_ptr() not in weights:
                kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            fn(x)  # type: ignore[operator]
        return sum(kept.values())

    activations = mlp.kept_bytes(x)
    assert activations == 15 * 4 * 256 * 4
    mlp.keep_max_bytes = activations
    assert saved_bytes(mlp) == x.nbytes + activations  # the first matmul saves x itself
    assert saved_bytes(torch.compile(mlp)) == x.nbytes  # compiled: its own limit, still 0
    mlp.keep_max_bytes = activations - 1
    assert saved_bytes(mlp) == x.nbytes
    mlp.compiled_keep_max_bytes = activations
    assert saved_bytes(torch.compile(mlp)) <= x.nbytes + activations  # the compiler may keep less than autograd
    assert saved_bytes(torch.compile(mlp)) > x.nbytes  # but more than x: it kept, not recomputed


def test_rope_is_half_split() -> None:
    rope = RotaryEmbedding(head_dim=4, max_positions=3, theta=10000.0)
    cos, sin = rope()
    assert cos.shape == (3, 4)
    q = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 3)  # (T, hd)
    q_rot, _ = apply_rotary(q, q, cos, sin)
    # Dim 0 rotates with dim 2 (not dim 1) at frequency 1; position p turns it by angle p.
    for p in range(3):
        torch.testing.assert_close(q_rot[p], torch.tensor([math.cos(p), 0.0, math.sin(p), 0.0]))
    k = torch.tensor([[0.0, 1.0, 0.0, 0.0]] * 3)
    k_rot, _ = apply_rotary(k, k, cos, sin)
    torch.testing.assert_close(k_rot[2], torch.tensor([0.0, math.cos(0.02), 0.0, math.sin(0.02)]))


def test_rope_equals_trms_rotate_half_bit_for_bit() -> None:
    """The tables' signed sin saves a negation; the numbers are TRM's q * cos + rotate_half(q) * sin, in float32."""
    torch.manual_seed(0)
    cos, signed_sin = RotaryEmbedding(head_dim=8, max_positions=5)()
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, 8, 2, dtype=torch.float32) / 8))
    angles = torch.outer(torch.arange(5, dtype=torch.float32), inv_freq).repeat(1, 2)  # (T, hd): TRM's tables
    assert torch.equal(cos, angles.cos())
    sin = angles.sin()
    q, k = torch.randn(2, 3, 2, 5, 8).bfloat16()  # (B, H, T, hd) each

    def trm(x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * cos + torch.cat((-x32[..., 4:], x32[..., :4]), dim=-1) * sin).bfloat16()

    q_rot, k_rot = apply_rotary(q, k, cos, signed_sin)
    assert torch.equal(q_rot, trm(q)) and torch.equal(k_rot, trm(k))


def test_attention_key_mask_hides_keys_and_empty_rows_give_zeros() -> None:
    torch.manual_seed(0)
    attn = Attention(8, 2)
    x = torch.randn(2, 5, 8)
    mask = torch.tensor([[True, True, True, False, False], [False] * 5])
    out = attn(x, key_mask=mask)
    x2 = x.clone()
    x2[0, 3:] = 100.0  # masked keys of row 0 change
    out2 = attn(x2, key_mask=mask)
    torch.testing.assert_close(out[0, :3], out2[0, :3])
    assert torch.isfinite(out).all() and out[1].eq(0).all()
    torch.testing.assert_close(attn(x, key_mask=torch.ones(2, 5, dtype=torch.bool)), attn(x))


@pytest.mark.parametrize("keys", [6, 300])
@pytest.mark.parametrize("max_scores", [layers.BFLOAT16_CPU_MATMUL_ATTENTION_MAX_SCORES, 0])  # matmuls; SDPA
def test_bfloat16_attention_with_gradients_matches_float32(keys: int, max_scores: int,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU, bfloat16 attention runs as matmuls up to a size and as torch's SDPA above it (a speed choice,
    layers.py); either way its output, its gradients and their dtypes are those of bfloat16 attention."""
    monkeypatch.setattr(layers, "BFLOAT16_CPU_MATMUL_ATTENTION_MAX_SCORES", max_scores)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, keys, 8) for _ in range(3))
    mask = torch.ones(2, keys, dtype=torch.bool)
    mask[0, keys // 2 :] = False
    mask[1] = False  # a row without keys gives zeros
    expected = torch.softmax((q @ k.transpose(-1, -2) / math.sqrt(8)).masked_fill(~mask[:, None, None], -math.inf),
                             dim=-1) @ v
    expected[1] = 0.0
    q16, k16, v16 = (t.bfloat16().requires_grad_() for t in (q, k, v))
    out = _attend(q16, k16, v16, mask)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)
    out.float().square().sum().backward()
    q32, k32, v32 = (t.clone().requires_grad_() for t in (q, k, v))
    _attend(q32, k32, v32, mask).square().sum().backward()
    for ours, reference in ((q16, q32), (k16, k32), (v16, v32)):
        assert ours.grad is not None and ours.grad.dtype == torch.bfloat16 and reference.grad is not None
        torch.testing.assert_close(ours.grad.float(), reference.grad, atol=5e-2, rtol=5e-2)


def test_cross_attention_mask_and_empty_rows() -> None:
    torch.manual_seed(0)
    cross = CrossAttention(8, 2)
    q, kv = torch.randn(2, 3, 8), torch.randn(2, 4, 8)
    mask = torch.tensor([[True, False, True, False], [False] * 4])
    out = cross(q, kv, mask)
    assert out.shape == (2, 3, 8) and torch.isfinite(out).all() and out[1].eq(0).all()
    kv2 = kv.clone()
    kv2[0, [1, 3]] = -50.0
    torch.testing.assert_close(cross(q, kv2, mask)[0], out[0])
    # One unmasked key: every query reads exactly that key's value projection.
    single = torch.tensor([[False, False, True, False]] * 2)
    value = kv @ cross.kv.weight[8:].T
    expected = value[:, 2:3].expand(2, 3, 8) @ cross.out.weight.T
    torch.testing.assert_close(cross(q, kv, single), expected)


@pytest.mark.parametrize("style", ["post", "pre"])
def test_block_norm_styles(style: str) -> None:
    torch.manual_seed(0)
    block = Block(8, 2, 2.0, eps=1e-5, norm_style=style)  # type: ignore[arg-type]
    x = torch.randn(2, 5, 8)
    if style == "post":
        h = rms_norm(x + block.attn(x), 1e-5)
        expected = rms_norm(h + block.mlp(h), 1e-5)
    else:
        h = x + block.attn(rms_norm(x, 1e-5))
        expected = h + block.mlp(rms_norm(h, 1e-5))
    torch.testing.assert_close(block(x), expected)
    with pytest.raises(ValueError, match="norm_style"):
        Block(8, 2, 2.0, norm_style="middle")  # type: ignore[arg-type]


@pytest.mark.parametrize("max_buckets", [4, 2, 1])  # one sequence a bucket; the empty one beside another; all in one
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # SDPA; bfloat16's matmul attention
def test_packing_attends_within_each_sequence_and_averages_its_tokens(max_buckets: int, dtype: torch.dtype) -> None:
    """Sequences of 3, 0, 5 and 1 tokens, packed back to back: outputs and gradients as each sequence alone."""
    torch.manual_seed(0)
    lengths = [3, 0, 5, 1]
    seq_of = torch.repeat_interleave(torch.arange(4), torch.tensor(lengths))  # (9,)
    packing = Packing(seq_of, num_seqs=4, max_buckets=max_buckets, min_bucket=1)
    q, k, v = (torch.randn(9, 2, 16, dtype=dtype, requires_grad=True) for _ in range(3))  # (T, H, hd)
    weights = torch.randn(9, 2, 16)
    out = packing.attend(q, k, v)
    (out.float() * weights).sum().backward()
    tol = {"atol": 2e-2, "rtol": 2e-2} if dtype == torch.bfloat16 else {}
    start = 0
    for n in lengths:
        part = slice(start, start + n)
        alone = [t.detach()[part].float().transpose(0, 1).requires_grad_() for t in (q, k, v)]  # (H, n, hd)
        expected = torch.nn.functional.scaled_dot_product_attention(*alone).transpose(0, 1)
        (expected * weights[part]).sum().backward()
        torch.testing.assert_close(out[part].float(), expected, **tol)
        for packed, single in zip((q, k, v), alone, strict=True):
            assert packed.grad is not None and single.grad is not None
            torch.testing.assert_close(packed.grad[part].float(), single.grad.transpose(0, 1), **tol)
        start += n
    x = torch.randn(9, 6)
    expected = torch.stack([x[:3].mean(0), torch.zeros(6), x[3:8].mean(0), x[8]])
    torch.testing.assert_close(packing.mean(x), expected)
