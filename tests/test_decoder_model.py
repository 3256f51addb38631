"""TRMDecoder: embeddings, carries, init, gradient path."""

from __future__ import annotations

import math

import pytest
import torch

from etrmtrm_cli.config import ArchConfig
from etrmtrm_cli.models.decoder import LEARNED_POS_SCALE, DecoderCarry, TRMDecoder

SEQ = 9


def tiny(**kw: object) -> ArchConfig:
    base: dict[str, object] = {"hidden_size": 16, "num_heads": 2, "L_layers": 1, "H_cycles": 2, "L_cycles": 2,
                                   "puzzle_emb_len": 3, "context_tokens": 1, "halt_max_steps": 3}
    return ArchConfig(**{**base, **kw})


def test_shapes_init_and_dtypes() -> None:
    torch.manual_seed(0)
    dec = TRMDecoder(tiny(), SEQ)
    carry = dec.initial_carry(4, "cpu")
    assert carry.z_H.shape == carry.z_L.shape == (4, 3 + SEQ, 16)
    torch.testing.assert_close(carry.z_H[2, 5], dec.H_init)
    new, logits, q_halt, q_cont = dec(carry, torch.randint(0, 12, (4, SEQ)), torch.randn(4, 3, 16))
    assert logits.shape == (4, SEQ, 12) and logits.dtype == torch.float32
    # q_head starts at zero weight, bias -5: nothing halts on its own early in training.
    assert q_halt.eq(-5).all() and q_cont.eq(-5).all()
    assert not new.z_H.requires_grad and not new.z_L.requires_grad
    assert dec.rotary is not None and dec.rotary.cos.shape == (3 + SEQ, 8)  # RoPE over prefix + grid
    assert abs(dec.embed_tokens.weight.std().item() - 1 / 4) < 0.08


def test_bfloat16_compute_keeps_float32_weights() -> None:
    dec = TRMDecoder(tiny(forward_dtype="bfloat16"), SEQ)
    carry = dec.initial_carry(2)
    assert carry.z_H.dtype == torch.bfloat16 and dec.H_init.dtype == torch.float32
    new, logits, q_halt, _ = dec(carry, torch.zeros(2, SEQ, dtype=torch.long), torch.zeros(2, 3, 16))
    assert new.z_H.dtype == torch.bfloat16 and logits.dtype == q_halt.dtype == torch.float32
    assert dec.lm_head.weight.dtype == torch.float32


def test_embedding_scales_prefix_and_tokens() -> None:
    torch.manual_seed(0)
    dec = TRMDecoder(tiny(), SEQ)
    inputs, prefix = torch.randint(0, 12, (2, SEQ)), torch.randn(2, 3, 16)
    x = dec.embed(inputs, prefix)
    torch.testing.assert_close(x[:, :3], 4.0 * prefix)  # sqrt(16)
    torch.testing.assert_close(x[:, 3:], 4.0 * dec.embed_tokens.weight[inputs])

    learned = TRMDecoder(tiny(pos_encodings="learned"), SEQ)
    assert learned.embed_pos is not None and learned.embed_pos.weight.shape == (3 + SEQ, 16)
    x = learned.embed(inputs, prefix)
    tokens = torch.cat((prefix, learned.embed_tokens.weight[inputs]), dim=1)
    torch.testing.assert_close(x, math.sqrt(16) * LEARNED_POS_SCALE * (tokens + learned.embed_pos.weight))
    none = TRMDecoder(tiny(pos_encodings="none"), SEQ)
    assert none.rotary is None and none.embed_pos is None


def test_reset_touches_only_flagged_slots() -> None:
    dec = TRMDecoder(tiny(), SEQ)
    carry = DecoderCarry(z_H=torch.full((3, 12, 16), 7.0), z_L=torch.full((3, 12, 16), 8.0))
    out = dec.reset_carry(torch.tensor([True, False, True]), carry)
    torch.testing.assert_close(out.z_H[0], dec.H_init.expand(12, 16))
    torch.testing.assert_close(out.z_L[2], dec.L_init.expand(12, 16))
    assert out.z_H[1].eq(7).all() and out.z_L[1].eq(8).all()


@pytest.mark.parametrize(("h_cycles", "carry_gets_grad"), [(1, True), (2, False)])
def test_only_the_last_cycle_is_differentiated(h_cycles: int, carry_gets_grad: bool) -> None:
    torch.manual_seed(0)
    dec = TRMDecoder(tiny(H_cycles=h_cycles), SEQ)
    with torch.no_grad():
        dec.q_head.weight.normal_()
    carry = dec.initial_carry(2)
    z_H = carry.z_H.clone().requires_grad_(True)
    prefix = torch.randn(2, 3, 16, requires_grad=True)
    _, logits, q_halt, _ = dec(DecoderCarry(z_H, carry.z_L), torch.randint(0, 12, (2, SEQ)), prefix)
    (logits.sum() + q_halt.sum()).backward()
    # With H_cycles >= 2 the incoming carry only feeds the no-grad cycles: no gradient reaches it.
    assert (z_H.grad is not None) == carry_gets_grad
    assert prefix.grad is not None and prefix.grad.abs().sum() > 0


def test_wrong_prefix_or_sequence_length_is_refused() -> None:
    dec = TRMDecoder(tiny(), SEQ)
    carry = dec.initial_carry(1)
    with pytest.raises(ValueError, match="prefix"):
        dec(carry, torch.zeros(1, SEQ, dtype=torch.long), torch.zeros(1, 2, 16))
    with pytest.raises(ValueError, match="tokens"):
        dec(carry, torch.zeros(1, SEQ + 1, dtype=torch.long), torch.zeros(1, 3, 16))
