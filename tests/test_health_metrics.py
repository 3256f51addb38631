"""Health figures that can fail: every planted problem flips the figure that names it.

Planted encoders are registered for this module only (the registry is restored afterwards) and driven through
the real `train_step` on real tiny batches: train/encoder_update_ratio (exploding / vanishing recurrent
update), train/encoder_converged_fraction, train/encoder_var_same_step (collapsed context) and
grad/encoder_share_sq (starved encoder). The same-step variance is also checked on hand-built numbers, and
the provider's stats protocol on 2-tuple providers and under torch.compile."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import pytest
import torch
from conftest import CPU, registered, tiny
from torch import Tensor, nn

from etrmtrm_cli.analysis import thresholds
from etrmtrm_cli.data.dataset import build_arc_data
from etrmtrm_cli.encoders.base import Carry, ReadLayer, update_ratio
from etrmtrm_cli.encoders.recurrent_standard import RecurrentStandardConfig, RecurrentStandardEncoder
from etrmtrm_cli.encoders.static import StaticConfig, StaticEncoder
from etrmtrm_cli.models.act import PROVIDER_STATS
from etrmtrm_cli.models.build import build_model
from etrmtrm_cli.training.distributed import DistContext
from etrmtrm_cli.training.metrics import converged_fraction, cross_sample_var, same_step_var
from etrmtrm_cli.training.optim import build_optimizers
from etrmtrm_cli.training.step import Trainable, fresh_state, train_step

SINGLE = DistContext(0, 1, CPU)
# 16 slots per step (the tiny profile's 4 make variances and shares noisy); 4 ACT steps so slots halt soon.
RUN = ["train.global_batch_size=1024", "arch.halt_max_steps=4"]


class Scaled(nn.Module):
    """`inner`'s output times `factor`: a residual branch made to explode (1e4) or vanish (0)."""

    def __init__(self, inner: nn.Module, factor: float) -> None:
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, *args: Tensor, **kwargs: Tensor | None) -> Tensor:
        return self.factor * self.inner(*args, **kwargs)


class ExplodingUpdate(RecurrentStandardEncoder):
    """recurrent_standard whose residual updates (attention and MLP) are 1e4 times too large."""

    factor = 1e4

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.update.attn = Scaled(self.update.attn, self.factor)
        self.update.mlp = Scaled(self.update.mlp, self.factor)


class VanishingUpdate(ExplodingUpdate):
    """recurrent_standard whose residual updates are zero: the carry is only ever renormalised."""

    factor = 0.0


class ConstantContext(StaticEncoder):
    """The same context whatever the demos: encoder collapse."""

    def read(self, carry: Carry, demos: Tensor, demo_mask: Tensor) -> tuple[Tensor, Carry]:
        return self.queries.to(demos.dtype).expand(demos.shape[0], -1, -1), carry


class StarvedContext(StaticEncoder):
    """A context scaled by 1e-6: the decoder barely depends on it, so the encoder's gradient starves."""

    def read(self, carry: Carry, demos: Tensor, demo_mask: Tensor) -> tuple[Tensor, Carry]:
        z, carry = super().read(carry, demos, demo_mask)
        return 1e-6 * z, carry


PLANTED = {
    "test_health_exploding": (ExplodingUpdate, RecurrentStandardConfig, True),
    "test_health_vanishing": (VanishingUpdate, RecurrentStandardConfig, True),
    "test_health_constant": (ConstantContext, StaticConfig, False),
    "test_health_starved": (StarvedContext, StaticConfig, False),
}


@pytest.fixture(scope="module", autouse=True)
def planted_encoders() -> Iterator[None]:
    with registered(PLANTED):
        yield


def run_steps(encoder: str, steps: int, overrides: Sequence[str] = ()) -> list[dict[str, float]]:
    """`steps` real training steps of a fresh tiny E0b model with this encoder -> each step's metrics."""
    exp = tiny("E0b", [f"arch.recurrent_encoder_type={encoder}", *RUN, *overrides])
    data = build_arc_data(exp.data, exp.seed)
    torch.manual_seed(exp.seed)
    model = build_model(exp, data.seq_len, data.num_puzzle_ids)
    parts = Trainable(model, model, build_optimizers(model, exp))

    def batch(step: int) -> dict[str, Tensor]:
        return data.train_batch(step, exp.train.batch_size).as_dict()

    state = fresh_state(model, batch(0), exp.seed)
    return [train_step(parts, batch(step), state, exp, SINGLE, steps) for step in range(steps)]


def mean(rows: Sequence[dict[str, float]], key: str) -> float:
    values = [r[key] for r in rows if not math.isnan(r[key])]
    assert values, key
    return sum(values) / len(values)


# --- update ratio and convergence ----------------------------------------------------------------------------

def test_update_ratio_by_hand() -> None:
    x = torch.tensor([[[3.0, 4.0]], [[1.0, 0.0]]])  # slot norms 5 and 1
    update = torch.tensor([[[0.0, 10.0]], [[0.0, 0.0]]])
    torch.testing.assert_close(update_ratio(update, x), torch.tensor([2.0, 0.0]))


def test_read_layer_reports_both_sublayers_and_stays_the_same_function() -> None:
    exp = tiny("E0b")
    torch.manual_seed(0)
    layer = ReadLayer(exp.arch)
    z, demos = torch.randn(3, 4, 16), torch.randn(3, 2, 16)
    mask = torch.tensor([[True, True], [True, False], [True, True]])
    ratios: list[Tensor] = []
    out = layer(z, demos, mask, ratios)
    torch.testing.assert_close(out, layer(z, demos, mask), rtol=0, atol=0)  # collecting changes nothing
    attn = layer.attn(z, demos, key_mask=mask)
    mid = torch.nn.functional.rms_norm(z + attn, (16,), eps=exp.arch.rms_norm_eps)
    expected = [attn.flatten(1).norm(dim=1) / z.flatten(1).norm(dim=1),
                layer.mlp(mid).flatten(1).norm(dim=1) / mid.flatten(1).norm(dim=1)]
    assert len(ratios) == 2
    for got, want in zip(ratios, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
        assert not got.requires_grad


@pytest.mark.parametrize("encoder", ["recurrent_standard", "trm_style"])
def test_real_recurrent_encoders_have_update_ratios_within_bounds(encoder: str) -> None:
    rows = run_steps(encoder, 4)
    for r in rows:
        assert thresholds.UPDATE_RATIO_VANISHING < r["train/encoder_update_ratio"] < thresholds.UPDATE_RATIO_EXPLODING
    assert all(r["train/encoder_carry_norm"] == pytest.approx(4.0, rel=0.01) for r in rows[1:])  # RMS 1, uninformative


def test_exploding_update_flips_the_update_ratio() -> None:
    rows = run_steps("test_health_exploding", 2)
    assert all(r["train/encoder_update_ratio"] > 100 * thresholds.UPDATE_RATIO_EXPLODING for r in rows)
    # the carry's norm cannot see it: post-norm keeps it at sqrt(hidden) = 4 per token
    assert rows[-1]["train/encoder_carry_norm"] == pytest.approx(4.0, rel=0.01)


def test_vanishing_update_flips_the_update_ratio_and_every_carry_converges() -> None:
    normal, vanishing = run_steps("recurrent_standard", 4), run_steps("test_health_vanishing", 4)
    assert all(r["train/encoder_update_ratio"] < thresholds.UPDATE_RATIO_VANISHING for r in vanishing)
    assert all(r["train/encoder_update_ratio"] == 0.0 for r in vanishing)
    # Every slot halts at step 4 (halt_max_steps); a carry that is only renormalised stops changing at step 2.
    assert vanishing[-1]["train/count"] == 16
    assert vanishing[-1]["train/encoder_converged_fraction"] == 1.0
    assert vanishing[-1]["train/encoder_convergence_steps"] == 2.0
    assert normal[-1]["train/encoder_converged_fraction"] < 1.0
    assert all(math.isnan(r["train/encoder_converged_fraction"]) for r in vanishing[:-1])  # nobody halted yet


def test_static_encoder_logs_no_update_ratio_or_carry_figures() -> None:
    (row,) = run_steps("static", 1)
    assert "train/encoder_update_ratio" not in row and "train/encoder_converged_fraction" not in row
    assert "train/encoder_var_same_step" in row and "grad/encoder_share_sq" in row


def test_converged_fraction_by_hand() -> None:
    converged_at = torch.tensor([2, 0, 3, 0, 1])
    halted = torch.tensor([True, True, True, False, False])
    assert converged_fraction(converged_at, halted) == pytest.approx(2 / 3)  # slot 4 converged but did not halt
    assert math.isnan(converged_fraction(converged_at, torch.zeros(5, dtype=torch.bool)))


# --- context variance ------------------------------------------------------------------------------------------

def test_same_step_var_by_hand() -> None:
    # (puzzle, ACT step, context): one token of one dim each.
    slots = [(1, 1, 0.0), (2, 1, 2.0), (2, 1, 100.0),  # puzzle 2's second query: only its first row counts
             (3, 2, 10.0), (4, 2, 14.0), (5, 2, 12.0),
             (6, 3, 50.0)]  # alone at step 3: no variance there
    puzzle_ids = torch.tensor([s[0] for s in slots])
    steps = torch.tensor([s[1] for s in slots])
    context = torch.tensor([s[2] for s in slots]).view(-1, 1, 1)
    # Mixed steps: distinct puzzles 0, 2, 10, 14, 12, 50 -> mean 44/3, E[x²] = 2944/6 -> 2480/9.
    assert cross_sample_var(context, puzzle_ids) == pytest.approx(2480 / 9)
    # Step 1: {0, 2} -> v = 1 (U = 2); step 2: {10, 14, 12} -> v = 8/3 (U = 3); N = 5, G = 2:
    # (2 * 1 + 3 * 8/3) / 5 * (5 - 1) / (5 - 2) = 2 * 4/3 = 8/3.
    assert same_step_var(context, puzzle_ids, steps) == pytest.approx(8 / 3)
    # Tokens and dims are averaged: a second, constant dim halves it.
    padded = torch.cat([context, torch.zeros_like(context)], dim=2)
    assert same_step_var(padded, puzzle_ids, steps) == pytest.approx(4 / 3)
    # No step with two distinct puzzles -> NaN.
    assert math.isnan(same_step_var(context[[0, 3, 6]], puzzle_ids[[0, 3, 6]], steps[[0, 3, 6]]))


def test_same_step_var_equals_the_plain_figure_when_the_context_ignores_the_step() -> None:
    g = torch.Generator().manual_seed(0)
    table = torch.randn(40, 2, 8, generator=g)  # one context per puzzle, whatever its step (static encoder)
    puzzle_ids = torch.randint(0, 40, (32,), generator=g)
    context = table[puzzle_ids]
    lockstep = torch.full((32,), 5)
    assert same_step_var(context, puzzle_ids, lockstep) == pytest.approx(cross_sample_var(context, puzzle_ids))
    # Spread over steps, it agrees in expectation (the (N - 1) / (N - G) correction): within 3% over 300 batches.
    plain, same = [], []
    for _ in range(300):
        puzzle_ids = torch.randperm(1000, generator=g)[:32]
        context = torch.randn(32, 2, 8, generator=g)
        steps = torch.randint(1, 17, (32,), generator=g)
        plain.append(cross_sample_var(context, puzzle_ids))
        same.append(same_step_var(context, puzzle_ids, steps))
    assert sum(same) / sum(plain) == pytest.approx(1.0, abs=0.03)


def test_collapsed_context_flips_the_same_step_variance() -> None:
    normal, constant = run_steps("static", 3), run_steps("test_health_constant", 3)
    assert mean(normal, "train/encoder_var_same_step") > thresholds.COLLAPSED_VAR
    assert all(r["train/encoder_var_same_step"] < thresholds.COLLAPSED_VAR for r in constant)
    assert all(r["train/encoder_var_same_step"] == pytest.approx(r["train/encoder_cross_sample_var"], rel=1e-6)
               for r in normal)  # a fresh model's slots run in lockstep: one step, the same figure


# --- gradient share --------------------------------------------------------------------------------------------

def test_starved_encoder_flips_the_squared_share() -> None:
    normal, starved = run_steps("static", 2), run_steps("test_health_starved", 2)
    assert all(r["grad/encoder_share_sq"] < thresholds.STARVED_GRAD_SHARE_SQ for r in starved)
    assert all(r["grad/encoder_share_sq"] > thresholds.STARVED_GRAD_SHARE_SQ for r in normal)
    for r in normal + starved:  # the two shares describe the same split
        assert r["grad/encoder_share_sq"] == pytest.approx(r["grad/encoder_share"] ** 2, rel=1e-9)


# --- the stats protocol ----------------------------------------------------------------------------------------

def test_a_two_tuple_provider_still_works_and_adds_no_stats() -> None:
    exp = tiny("E0b", ["arch.recurrent_encoder_type=test_health_constant"])
    model = build_model(exp, 36, num_puzzle_ids=8).eval()
    p0 = build_model(tiny("P0"), 36, num_puzzle_ids=8).eval()
    for m in (model, p0):
        batch = _batch(m)
        _, outputs = m(m.initial_carry(batch), batch)
        assert not [k for k in outputs if k.startswith(PROVIDER_STATS)]


def test_torch_compile_hands_out_the_same_stats() -> None:
    """One training step (forward and backward) of the compiled model gives the eager model's stats."""
    exp = tiny("E0b", ["arch.recurrent_encoder_type=recurrent_standard"])
    torch.manual_seed(0)
    model = build_model(exp, 36, num_puzzle_ids=8).train()
    batch = _batch(model)
    compiled = torch.compile(model, backend="aot_eager")  # dynamo + AOT autograd, no C++ toolchain
    results = []
    for forward in (model, compiled):
        carry, outputs = forward(model.initial_carry(batch), batch, torch.Generator().manual_seed(0))
        outputs["logits"].sum().backward()
        results.append(outputs)
    key = PROVIDER_STATS + "update_ratio"
    eager, traced = results
    assert eager[key].shape == (4,) and not traced[key].requires_grad
    torch.testing.assert_close(traced[key], eager[key])
    torch.testing.assert_close(traced["logits"], eager["logits"])


def _batch(model: nn.Module, size: int = 4) -> dict[str, Tensor]:
    """A batch of random 6x6 grids with 2 demos per row."""
    g = torch.Generator().manual_seed(1)
    cells = 36

    def grids(*shape: int) -> Tensor:
        return torch.randint(2, 12, (*shape, cells), generator=g)

    return {"inputs": grids(size), "labels": grids(size), "puzzle_ids": torch.arange(size),
            "demo_inputs": grids(size, 2), "demo_labels": grids(size, 2),
            "demo_mask": torch.ones(size, 2, dtype=torch.bool)}
