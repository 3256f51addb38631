"""Encoder and gradient metrics on hand-computed tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from etrmtrm_cli.training.evaluate import Votes, answer_of, confidence, pass_at_k
from etrmtrm_cli.training.metrics import (
    carry_change,
    carry_norm,
    converged_fraction,
    convergence_steps,
    cross_sample_var,
    grad_norms,
    update_convergence,
)


def test_cross_sample_var_counts_each_distinct_puzzle_once() -> None:
    # Puzzle 7 appears twice (two queries of one puzzle): only its first row counts.
    context = torch.tensor([[[1.0, 3.0]], [[5.0, 3.0]], [[1.0, 3.0]], [[100.0, 100.0]]])  # (4, 1, 2)
    puzzle_ids = torch.tensor([7, 9, 7, 9])
    # Distinct rows: [1, 3] and [5, 3] -> per-element population variances 4 and 0 -> mean 2.
    assert cross_sample_var(context, puzzle_ids) == pytest.approx(2.0)
    assert math.isnan(cross_sample_var(context[:1], puzzle_ids[:1]))


def test_carry_norm_and_change() -> None:
    carry = torch.tensor([[[3.0, 4.0], [0.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]])  # token norms 5, 0, 1, 1
    assert carry_norm(carry) == pytest.approx(7.0 / 4)
    previous = torch.tensor([[[3.0, 4.0]], [[1.0, 0.0]]])
    new = torch.tensor([[[3.0, 4.0]], [[1.0, 1.0]]])
    torch.testing.assert_close(carry_change(new, previous), torch.tensor([0.0, 1.0]))


def test_convergence_steps() -> None:
    tol = 0.1
    at = torch.zeros(3, dtype=torch.int32)
    at = update_convergence(at, torch.tensor([0.5, 0.05, 0.5]), torch.tensor([1, 1, 1]), tol)
    at = update_convergence(at, torch.tensor([0.05, 0.5, 0.5]), torch.tensor([2, 2, 2]), tol)
    assert at.tolist() == [2, 1, 0]  # slot 1 converged first at step 1 and stays so
    halted = torch.tensor([True, True, True])
    steps = torch.tensor([4, 4, 3])
    # Slot 2 never converged: it counts all its 3 steps. (2 + 1 + 3) / 3 = 2.
    assert convergence_steps(at, steps, halted) == pytest.approx(2.0)
    assert convergence_steps(at, steps, torch.tensor([False, True, False])) == pytest.approx(1.0)
    assert math.isnan(convergence_steps(at, steps, torch.zeros(3, dtype=torch.bool)))
    # Censored: slot 2 never converged, yet it adds its halting step 3 like a slot converged at step 3.
    # converged_fraction tells them apart: 2 of the 3 halted slots converged.
    assert converged_fraction(at, halted) == pytest.approx(2 / 3)
    assert converged_fraction(at, torch.tensor([False, False, True])) == 0.0


def test_grad_norms_split_encoder_and_decoder() -> None:
    model = nn.ModuleDict({"enc": nn.Linear(1, 1, bias=False), "dec": nn.Linear(1, 1, bias=False)})
    model["enc"].weight.grad = torch.tensor([[3.0]])
    model["dec"].weight.grad = torch.tensor([[4.0]])
    norms = grad_norms(model, model["enc"].parameters())
    # share = 3/5 (norm ratio); share_sq = 9/(9 + 16) (fraction of the squared gradient norm)
    assert norms == pytest.approx({"grad/encoder_norm": 3.0, "grad/decoder_norm": 4.0, "grad/total_norm": 5.0,
                                   "grad/encoder_share": 0.6, "grad/encoder_share_sq": 0.36})
    model["enc"].weight.grad = torch.tensor([[0.0]])
    model["dec"].weight.grad = torch.tensor([[0.0]])
    zero = grad_norms(model, model["enc"].parameters())
    assert math.isnan(zero["grad/encoder_share"]) and math.isnan(zero["grad/encoder_share_sq"])


def grid(*rows: list[int]) -> tuple[tuple[int, int], bytes]:
    import numpy as np

    return answer_of(np.array(rows, dtype=np.uint8))


def test_pass_at_k_votes_then_confidence() -> None:
    right, wrong, other = grid([1, 2]), grid([2, 1]), grid([3])
    votes = Votes()
    # Task 0, query 0: `wrong` has 2 votes, `right` 1 -> pass@1 miss, pass@2 hit.
    for answer, conf in ((wrong, 0.1), (wrong, 0.1), (right, 0.9)):
        votes.add((0, 0), answer, conf)
    # Task 0, query 1: a tie of one vote each; `right` wins on mean confidence -> hit at 1.
    votes.add((0, 1), other, 0.2)
    votes.add((0, 1), right, 0.8)
    # Task 1: never right.
    votes.add((1, 0), other, 0.9)
    truths = {(0, 0): right, (0, 1): right, (1, 0): right}
    # Task 0: pass@1 = 1/2, pass@2 = 2/2; task 1: 0 and 0. Averaged over the 2 tasks evaluated.
    assert pass_at_k(votes, truths) == {"pass@1": pytest.approx(0.25), "pass@2": pytest.approx(0.5)}


def test_an_exact_tie_ranks_the_same_whatever_order_the_answers_arrived_in() -> None:
    """With two processes, rank 0's answers come first after the merge; with one, they interleave."""
    first, second = grid([1, 2]), grid([2, 1])
    one, rank0, rank1 = Votes(), Votes(), Votes()
    one.add((0, 0), second, 1.0)
    one.add((0, 0), first, 1.0)
    rank0.add((0, 0), first, 1.0)
    rank1.add((0, 0), second, 1.0)
    rank0.merge(rank1)
    assert one.ranked((0, 0)) == rank0.ranked((0, 0))
    truth = {(0, 0): one.ranked((0, 0))[0]}
    assert pass_at_k(one, truth)["pass@1"] == pass_at_k(rank0, truth)["pass@1"] == 1.0


def test_confident_answers_rank_by_confidence_as_trm_ranks_them() -> None:
    """sigmoid(q_halt) in float32 is exactly 1.0 from a logit of about 17: two confident answers tied and fell to
    their bytes. TRM takes it in float64, where the more confident one still wins."""
    low_bytes, high_bytes = grid([1, 2]), grid([2, 1])  # an exact tie would rank high_bytes first
    votes = Votes()
    conf = confidence(torch.tensor([20.0, 18.0]))
    votes.add((0, 0), low_bytes, float(conf[0]))
    votes.add((0, 0), high_bytes, float(conf[1]))
    assert votes.ranked((0, 0))[0] == low_bytes
    assert conf.dtype == torch.float64 and torch.sigmoid(torch.tensor([20.0, 18.0])).eq(1.0).all()  # float32 ties


def test_votes_merge_like_one_table() -> None:
    a, b, both = Votes(), Votes(), Votes()
    for table in (a, both):
        table.add((0, 0), grid([1]), 0.5)
    for table in (b, both):
        table.add((0, 0), grid([1]), 0.25)
        table.add((0, 0), grid([2]), 0.75)
    a.merge(b)
    assert a.table == both.table
