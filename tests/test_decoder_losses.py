"""Loss head against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from etrmtrm_cli.models.losses import act_loss, log_stablemax, softmax_cross_entropy, stablemax_cross_entropy


def test_stablemax_by_hand() -> None:
    logits = torch.tensor([[-1.0, 0.0, 2.0]])
    # s(-1) = 1/2, s(0) = 1, s(2) = 3; sum 4.5
    expected = torch.tensor([[math.log(0.5 / 4.5), math.log(1 / 4.5), math.log(3 / 4.5)]],
                            dtype=torch.float64)
    torch.testing.assert_close(log_stablemax(logits.double()), expected)
    ce = stablemax_cross_entropy(logits.expand(3, 3), torch.tensor([2, 0, -100]))
    assert ce.dtype == torch.float64
    expected_ce = torch.tensor([-math.log(3 / 4.5), -math.log(0.5 / 4.5), 0.0], dtype=torch.float64)
    torch.testing.assert_close(ce, expected_ce)


def test_softmax_option_by_hand() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)], [5.0, 1.0]])
    ce = softmax_cross_entropy(logits, torch.tensor([1, -100]))
    torch.testing.assert_close(ce, torch.tensor([-math.log(0.75), 0.0]))


def outputs_for(logits: torch.Tensor, q_halt: list[float], q_cont: list[float] | None = None) -> dict:
    b = logits.shape[0]
    return {"logits": logits, "q_halt_logits": torch.tensor(q_halt),
            "q_continue_logits": torch.tensor(q_cont or [0.0] * b)}


# Vocab 2; logits make class 1 likely where the value is 1.0 and class 0 where it is -1.0.
LOGITS = torch.tensor([
    [[-1.0, 1.0], [1.0, -1.0]],  # predicts 1, 0
    [[-1.0, 1.0], [-1.0, 1.0]],  # predicts 1, 1
    [[1.0, -1.0], [1.0, -1.0]],  # predicts 0, 0
])
LABELS = torch.tensor([[1, 0], [1, 0], [-100, -100]])


def test_act_loss_and_metrics_by_hand() -> None:
    halted = torch.tensor([True, True, True])
    steps = torch.tensor([3, 2, 1], dtype=torch.int32)
    loss, m = act_loss(outputs_for(LOGITS, [0.5, -2.0, 1.0]), LABELS, halted, steps, "stablemax")
    # stablemax of (-1, 1): s = (1/2, 2), p(right) = 0.8, p(wrong) = 0.2
    right, wrong = -math.log(0.8), -math.log(0.2)
    lm = (right + right) / 2 + (right + wrong) / 2 + 0.0  # slot 2 has no valid token
    seq_correct = torch.tensor([1.0, 0.0, 1.0])  # an empty sequence counts as right (TRM)
    q_loss = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([0.5, -2.0, 1.0]), seq_correct, reduction="sum").item()
    assert m["lm_loss"].item() == pytest.approx(lm)
    assert m["q_halt_loss"].item() == pytest.approx(q_loss)
    assert loss.item() == pytest.approx(lm + 0.5 * q_loss)
    # Metrics: slot 2 has no valid token and is not counted.
    assert m["count"].item() == 2
    assert m["accuracy"].item() == pytest.approx(1.0 + 0.5)
    assert m["exact_accuracy"].item() == 1
    assert m["q_halt_accuracy"].item() == 2  # slot 0: q>=0 and right; slot 1: q<0 and wrong
    assert m["steps"].item() == 5
    assert "q_continue_loss" not in m


def test_metrics_count_only_halted_slots_but_loss_counts_all() -> None:
    halted = torch.tensor([False, True, False])
    steps = torch.tensor([3, 2, 1], dtype=torch.int32)
    all_halted = torch.ones(3, dtype=torch.bool)
    loss_all, _ = act_loss(outputs_for(LOGITS, [0.5, -2.0, 1.0]), LABELS, all_halted, steps)
    loss, m = act_loss(outputs_for(LOGITS, [0.5, -2.0, 1.0]), LABELS, halted, steps)
    assert loss.item() == pytest.approx(loss_all.item())
    assert (m["count"].item(), m["exact_accuracy"].item(), m["steps"].item()) == (1, 0, 2)
    assert m["accuracy"].item() == pytest.approx(0.5)


def test_q_continue_loss_when_its_target_exists() -> None:
    out = outputs_for(LOGITS, [0.0, 0.0, 0.0], [1.0, -1.0, 0.0])
    out["target_q_continue"] = torch.tensor([1.0, 0.0, 0.5])
    halted, steps = torch.ones(3, dtype=torch.bool), torch.ones(3, dtype=torch.int32)
    base, _ = act_loss(outputs_for(LOGITS, [0.0, 0.0, 0.0]), LABELS, halted, steps)
    loss, m = act_loss(out, LABELS, halted, steps)
    qc = 2 * math.log(1 + math.exp(-1.0)) + math.log(2.0)
    assert m["q_continue_loss"].item() == pytest.approx(qc)
    assert loss.item() == pytest.approx(base.item() + 0.5 * qc)


def test_softmax_loss_type_and_unknown_type() -> None:
    halted, steps = torch.ones(3, dtype=torch.bool), torch.ones(3, dtype=torch.int32)
    _, m = act_loss(outputs_for(LOGITS, [0.0] * 3), LABELS, halted, steps, "softmax")
    right, wrong = math.log(1 + math.exp(-2.0)), math.log(1 + math.exp(2.0))
    assert m["lm_loss"].item() == pytest.approx(right + (right + wrong) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="loss_type"):
        act_loss(outputs_for(LOGITS, [0.0] * 3), LABELS, halted, steps, "hinge")  # type: ignore[arg-type]
