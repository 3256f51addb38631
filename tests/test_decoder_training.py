"""The P0 model (decoder + learned puzzle embedding) learns a toy batch; SignSGD by hand."""

from __future__ import annotations

import torch

from etrmtrm_cli.config import ArchConfig
from etrmtrm_cli.models.act import ACTModel
from etrmtrm_cli.models.decoder import TRMDecoder
from etrmtrm_cli.models.losses import act_loss
from etrmtrm_cli.models.puzzle_embedding import PuzzleEmbedding
from etrmtrm_cli.training.optim import SignSGD

SEQ, NUM_IDS, B = 9, 10, 8




def test_sign_sgd_updates_only_touched_rows_by_hand() -> None:
    emb = PuzzleEmbedding(4, 2)
    with torch.no_grad():
        emb.weights.copy_(torch.arange(8.0).view(4, 2))
    opt = SignSGD(emb, lr=0.1, weight_decay=0.5)
    context, _ = emb.train()({}, {"puzzle_ids": torch.tensor([1, 1, 3])})
    assert context.shape == (3, 1, 2)
    (context[:, 0] * torch.tensor([[1.0, -2.0], [0.5, 1.0], [0.0, -1.0]])).sum().backward()
    opt.step()
    # id 1: summed grad (1.5, -1) -> sign (1, -1); id 3: (0, -1) -> (0, -1); decay factor 1 - 0.05
    expected = torch.tensor([[0.0, 1.0],
                             [2 * 0.95 - 0.1, 3 * 0.95 + 0.1],
                             [4.0, 5.0],
                             [6 * 0.95, 7 * 0.95 + 0.1]])
    torch.testing.assert_close(emb.weights, expected)
    opt.zero_grad()
    assert emb.local_weights is not None and emb.local_weights.grad is None


def test_eval_reads_the_table_without_gradient() -> None:
    emb = PuzzleEmbedding(3, 4, tokens=2).eval()
    with torch.no_grad():
        emb.weights.copy_(torch.arange(24.0).view(3, 8))
    context, carry = emb({}, {"puzzle_ids": torch.tensor([2, 0])})
    assert carry == {} and context.shape == (2, 2, 4) and not context.requires_grad
    torch.testing.assert_close(context[0, 1], torch.tensor([20.0, 21.0, 22.0, 23.0]))


def toy_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    inputs = torch.randint(2, 12, (B, SEQ), generator=g)
    ids = torch.arange(B)
    # Even puzzles copy the colours, odd ones shift them by one: which rule applies is only in the id.
    labels = (inputs - 2 + ids[:, None] % 2) % 10 + 2
    labels[:, -1] = -100
    return {"inputs": inputs, "labels": labels, "puzzle_ids": ids}


def eval_loss(model: ACTModel, batch: dict[str, torch.Tensor]) -> float:
    model.eval()
    with torch.no_grad():
        carry = model.initial_carry(batch)
        for _ in range(model.arch.halt_max_steps):
            carry, out = model(carry, batch)
        _, metrics = act_loss(out, carry.current_data["labels"], carry.halted, carry.steps)
    model.train()
    return metrics["lm_loss"].item() / B


def test_p0_model_learns_a_toy_batch() -> None:
    torch.manual_seed(0)
    arch = ArchConfig(hidden_size=32, num_heads=2, L_layers=2, H_cycles=2, L_cycles=2, puzzle_emb_len=2,
                      context_tokens=1, halt_max_steps=2, halt_exploration_prob=0.1)
    model = ACTModel(TRMDecoder(arch, SEQ), PuzzleEmbedding(NUM_IDS, 32), arch)
    dense = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    assert isinstance(model.provider, PuzzleEmbedding)
    sparse = SignSGD(model.provider, lr=1e-2, weight_decay=0.1)
    batch, gen = toy_batch(), torch.Generator().manual_seed(1)
    before = eval_loss(model, batch)

    carry = model.initial_carry(batch)
    for _ in range(30):
        carry, out = model(carry, batch, gen)
        loss, _ = act_loss(out, carry.current_data["labels"], carry.halted, carry.steps)
        (loss / B).backward()
        dense.step()
        sparse.step()
        dense.zero_grad()
        sparse.zero_grad()

    after = eval_loss(model, batch)
    assert after < 0.7 * before, (before, after)
    table = model.provider.weights
    assert table[:B].abs().sum(-1).gt(0).all() and table[B:].eq(0).all()  # only the batch's rows moved
