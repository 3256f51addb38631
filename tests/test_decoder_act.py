"""ACT rules (models/act.py's docstring) on hand-built batches, with a tiny provider that counts its steps."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor, nn

from etrmtrm_cli.config import ArchConfig
from etrmtrm_cli.models.act import ACTCarry, ACTModel, halting_decision
from etrmtrm_cli.models.decoder import TRMDecoder
from etrmtrm_cli.models.losses import act_loss

SEQ, D, P = 4, 16, 3


class CounterProvider(nn.Module):
    """carry: count (B,) = steps since reset; acc (B, D) = a running sum that depends on `vec`."""

    def __init__(self, tokens: int = 1) -> None:
        super().__init__()
        self.tokens = tokens
        self.vec = nn.Parameter(torch.linspace(-1, 1, D))

    def initial_carry(self, batch_size: int, device: torch.device | str | None = None) -> dict[str, Tensor]:
        return {"count": torch.zeros(batch_size, device=device),
                "acc": torch.zeros(batch_size, D, device=device)}

    def reset_carry(self, reset: Tensor, carry: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"count": torch.where(reset, 0.0, carry["count"]),
                "acc": torch.where(reset[:, None], 0.0, carry["acc"])}

    def forward(self, carry: dict[str, Tensor], batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        count = carry["count"] + 1
        acc = carry["acc"] + self.vec
        context = (acc * count[:, None])[:, None].expand(-1, self.tokens, -1)  # (B, tokens, D)
        return context, {"count": count, "acc": acc}


def make(max_steps: int = 3, q_bias: tuple[float, float] = (-5.0, -5.0), tokens: int = 1,
         **kw: object) -> ACTModel:
    torch.manual_seed(0)
    kw.setdefault("halt_exploration_prob", 0.0)
    arch = ArchConfig(hidden_size=D, num_heads=2, L_layers=1, H_cycles=1, L_cycles=1, puzzle_emb_len=P,
                      context_tokens=1, halt_max_steps=max_steps, **kw)  # type: ignore[arg-type]
    decoder = TRMDecoder(arch, SEQ)
    with torch.no_grad():
        assert decoder.q_head.bias is not None
        decoder.q_head.bias.copy_(torch.tensor(q_bias))
    return ACTModel(decoder, CounterProvider(tokens), arch)


def batch(seed: int, b: int = 4) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"inputs": torch.randint(0, 12, (b, SEQ), generator=g),
            "labels": torch.randint(0, 12, (b, SEQ), generator=g),
            "puzzle_ids": torch.arange(b) + 10 * seed}


def test_first_step_resets_and_loads_every_slot() -> None:
    model = make()
    a = batch(1)
    carry = model.initial_carry(a)
    assert carry.halted.all() and carry.steps.eq(0).all()
    carry, out = model(carry, a)
    for k in a:
        assert torch.equal(carry.current_data[k], a[k])
    assert carry.steps.tolist() == [1, 1, 1, 1] and carry.provider["count"].tolist() == [1, 1, 1, 1]
    assert out["logits"].shape == (4, SEQ, 12) and out["context"].shape == (4, 1, D)


def test_only_halted_slots_reset_and_take_new_data() -> None:
    model = make().eval()
    a, b = batch(1), batch(2)
    with torch.no_grad():
        after_a, _ = model(model.initial_carry(a), a)
        mixed = dataclasses.replace(after_a, halted=torch.tensor([True, False, True, False]))
        carry, out = model(mixed, b)
        # What each slot should look like: a fresh example b, or example a continued for a second step.
        _, fresh = model(model.initial_carry(b), b)
        _, continued = model(dataclasses.replace(after_a, halted=torch.zeros(4, dtype=torch.bool)), b)
    new, old = [0, 2], [1, 3]
    assert torch.equal(carry.current_data["inputs"][new], b["inputs"][new])
    assert torch.equal(carry.current_data["inputs"][old], a["inputs"][old])
    assert torch.equal(carry.current_data["puzzle_ids"], torch.tensor([20, 11, 22, 13]))
    assert carry.steps.tolist() == [1, 2, 1, 2]
    assert carry.provider["count"].tolist() == [1.0, 2.0, 1.0, 2.0]
    torch.testing.assert_close(out["logits"][new], fresh["logits"][new])
    torch.testing.assert_close(out["logits"][old], continued["logits"][old])
    assert not torch.allclose(out["logits"][old], fresh["logits"][old])


def test_eval_runs_exactly_max_steps_even_when_q_says_halt() -> None:
    model = make(max_steps=4, q_bias=(5.0, -5.0)).eval()
    a = batch(1)
    carry = model.initial_carry(a)
    steps = 0
    with torch.no_grad():
        while True:
            carry, _ = model(carry, a)
            steps += 1
            if carry.halted.all():
                break
            assert not carry.halted.any()
    assert steps == 4 and carry.steps.eq(4).all()


@pytest.mark.parametrize(("q_bias", "halts_at"), [((5.0, -5.0), 1), ((-5.0, 5.0), 3)])
def test_training_halts_on_q_halt_or_at_max_steps(q_bias: tuple[float, float], halts_at: int) -> None:
    model = make(max_steps=3, q_bias=q_bias, halt_exploration_prob=0.0).train()
    a = batch(1)
    carry = model.initial_carry(a)
    for step in range(1, halts_at + 1):
        carry, _ = model(carry, a)
        assert carry.halted.all() == (step == halts_at)


def test_halting_decision_by_hand() -> None:
    steps = torch.tensor([1, 1, 3, 1], dtype=torch.int32)
    q_halt = torch.tensor([1.0, -1.0, -1.0, 0.0])
    q_cont = torch.tensor([2.0, -2.0, 0.0, -1.0])
    decide = {"max_steps": 3, "no_act_continue": True}
    assert halting_decision(steps, q_halt, q_cont, training=False, **decide).tolist() == [0, 0, 1, 0]
    assert halting_decision(steps, q_halt, q_cont, training=True, **decide).tolist() == [1, 0, 1, 0]
    assert halting_decision(steps, q_halt, q_cont, max_steps=3, training=True,
                            no_act_continue=False).tolist() == [0, 1, 1, 1]
    assert halting_decision(steps, q_halt, q_cont, max_steps=1, training=True).all()


def explore(steps: int | Tensor, *, n: int = 3000, max_steps: int = 4, prob: float = 1.0, wants_halt: bool = True,
            generator: torch.Generator | None = None, seed: int = 0) -> Tensor:
    """Training halting of n slots that are all at `steps`, q_halt > 0 everywhere (or < 0 everywhere)."""
    steps = torch.full((n,), steps, dtype=torch.int32) if isinstance(steps, int) else steps
    q_halt = torch.full((n,), 1.0 if wants_halt else -1.0)
    return halting_decision(steps, q_halt, torch.zeros(n), max_steps=max_steps, training=True,
                            exploration_prob=prob, generator=generator or torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("seed", range(5))
def test_exploration_with_max_steps_two_holds_every_slot_exactly_until_step_two(seed: int) -> None:
    # The minimum step count is drawn from [2, 2]: with prob 1 nothing halts at step 1 and everything at 2.
    assert not explore(1, n=64, max_steps=2, seed=seed).any()
    assert explore(2, n=64, max_steps=2, seed=seed).all()


def test_exploration_minimum_step_is_uniform_on_two_to_max_steps() -> None:
    # prob 1, max 4: a slot at step s halts iff its minimum (uniform on {2, 3, 4}) is <= s.
    expected = {1: 0.0, 2: 1 / 3, 3: 2 / 3, 4: 1.0}
    for s, share in expected.items():
        assert explore(s, seed=s).float().mean().item() == pytest.approx(share, abs=0.04), f"step {s}"
    # prob 0.25: the other 75% halt at once, since q_halt > 0; explorers also halt at step 2 a third of the time.
    assert explore(1, prob=0.25).float().mean().item() == pytest.approx(0.75, abs=0.04)
    assert explore(2, prob=0.25).float().mean().item() == pytest.approx(0.75 + 0.25 / 3, abs=0.04)
    assert explore(4, prob=0.25).all()


def test_exploration_only_delays_a_halt_and_never_forces_one() -> None:
    for s in (1, 2, 3):  # q_halt < 0: exploring or not, nothing halts before max_steps ...
        assert not explore(s, wants_halt=False, seed=s).any()
    assert explore(4, wants_halt=False).all()  # ... and everything halts at it
    mixed = torch.tensor([1, 4, 2, 4, 3, 4] * 100, dtype=torch.int32)
    assert explore(mixed, n=600, wants_halt=False).tolist() == [False, True] * 300


def test_exploration_randomness_comes_only_from_the_generator() -> None:
    g = torch.Generator().manual_seed(11)
    state = g.get_state()
    torch.manual_seed(0)  # the global generator must play no part
    first = explore(2, n=256, prob=0.5, generator=g)  # both draws matter: whether to explore, and the minimum
    torch.manual_seed(1)
    assert torch.equal(explore(2, n=256, prob=0.5, generator=torch.Generator().manual_seed(11)), first)
    assert not torch.equal(g.get_state(), state)
    assert not torch.equal(explore(2, n=256, prob=0.5, generator=g), first)  # g advanced: the next call differs
    # At step 1 only the explore coin matters (a slot halts iff it does not explore): it too is drawn anew.
    assert not torch.equal(explore(1, n=256, prob=0.5, generator=g), explore(1, n=256, prob=0.5, generator=g))
    with pytest.raises(ValueError, match="Generator"):
        halting_decision(torch.ones(4, dtype=torch.int32), torch.ones(4), torch.zeros(4), max_steps=4,
                         training=True, exploration_prob=0.5)


@pytest.mark.parametrize("world_size", [2, 3])
def test_processes_explore_their_rows_of_the_global_batch_as_one_process_does(world_size: int) -> None:
    """Each rank drew its own exploration (seeded per rank), so one seed trained differently on 1 and N processes."""
    n = 40
    steps = torch.tensor([1, 2, 3, 4], dtype=torch.int32).repeat(world_size * n // 4)  # the global batch's
    one = torch.Generator().manual_seed(7)
    ranks = [torch.Generator().manual_seed(7) for _ in range(world_size)]
    for _ in range(3):  # the generators advance alike, call after call
        whole = explore(steps, n=world_size * n, prob=0.5, generator=one)
        shards = [halting_decision(steps[r * n:(r + 1) * n], torch.ones(n), torch.zeros(n), max_steps=4,
                                   training=True, exploration_prob=0.5, generator=ranks[r], shard=(r, world_size))
                  for r in range(world_size)]
        assert torch.equal(torch.cat(shards), whole)
        assert 0 < int(whole.sum()) < world_size * n  # the exploration decided some slots, not q_halt alone


def test_no_exploration_draws_nothing_and_follows_q_halt() -> None:
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    steps = torch.tensor([1, 1, 2, 3, 4, 4], dtype=torch.int32)
    q_halt = torch.tensor([0.5, -0.5, 2.0, -1.0, -3.0, 1.0])
    halted = halting_decision(steps, q_halt, torch.zeros(6), max_steps=4, training=True, exploration_prob=0.0,
                              generator=g)
    assert halted.tolist() == [True, False, True, False, True, True]
    assert torch.equal(g.get_state(), state)
    assert halting_decision(steps, q_halt, torch.zeros(6), max_steps=4, training=True).tolist() == halted.tolist()


def test_exploration_in_the_model_is_reproducible_and_never_halts_at_step_one() -> None:
    def run(seed: int) -> list[tuple[list[bool], list[int]]]:
        model = make(max_steps=4, q_bias=(5.0, -5.0), halt_exploration_prob=1.0).train()
        gen = torch.Generator().manual_seed(seed)
        carry, trace = model.initial_carry(batch(1, b=16)), []
        for _ in range(6):
            carry, _ = model(carry, batch(1, b=16), gen)
            trace.append((carry.halted.tolist(), carry.steps.tolist()))
        return trace

    trace = run(7)
    assert trace == run(7)
    halt_steps = [s for halted, steps in trace for h, s in zip(halted, steps, strict=True) if h]
    # q_halt > 0 everywhere, yet every slot explores: it halts after 2..4 steps, never after 1.
    assert halt_steps and min(halt_steps) >= 2 and len(set(halt_steps)) > 1


def test_provider_carry_detached_between_steps_and_loss_reaches_the_provider() -> None:
    model = make().train()
    a = batch(1)
    carry = model.initial_carry(a)
    carry, _ = model(carry, a)
    carry, out = model(carry, a)
    assert not carry.provider["acc"].requires_grad
    assert out["context"].requires_grad
    loss, _ = act_loss(out, carry.current_data["labels"], carry.halted, carry.steps)
    loss.backward()
    provider = model.provider
    assert isinstance(provider, CounterProvider) and provider.vec.grad is not None
    assert provider.vec.grad.abs().sum() > 0


def test_context_is_zero_padded_and_may_not_exceed_the_prefix() -> None:
    model = make(tokens=2).eval()
    a = batch(1)
    with torch.no_grad():
        carry, out = model(model.initial_carry(a), a)
        context = out["context"]
        x = model.decoder.embed(carry.current_data["inputs"], model.pad_context(context))
    assert torch.equal(x[:, :2], 4.0 * context) and x[:, 2].eq(0).all()
    with pytest.raises(ValueError, match="context tokens"):
        too_many = make(tokens=P + 1)
        too_many(too_many.initial_carry(a), a)


def test_q_continue_bootstrap_target() -> None:
    model = make(max_steps=2, q_bias=(0.5, -0.5), no_ACT_continue=False, halt_exploration_prob=0.0)
    with torch.no_grad():
        model.decoder.q_head.weight.normal_(0, 0.3)
    model.train()
    a = batch(1)
    carry: ACTCarry = model.initial_carry(a)
    for step in (1, 2):
        carry, out = model(carry, a)
        with torch.no_grad():
            prefix = model.pad_context(out["context"])
            _, _, nh, nc = model.decoder(carry.decoder, carry.current_data["inputs"], prefix)
        expected = torch.sigmoid(nh) if step == 2 else torch.sigmoid(torch.maximum(nh, nc))
        torch.testing.assert_close(out["target_q_continue"], expected)
        assert torch.equal(carry.halted, (out["q_halt_logits"] > out["q_continue_logits"]) | (step == 2))
        loss, metrics = act_loss(out, carry.current_data["labels"], carry.halted, carry.steps)
        assert "q_continue_loss" in metrics and metrics["q_continue_loss"] > 0
        loss.backward()
        carry = dataclasses.replace(carry, halted=torch.zeros(4, dtype=torch.bool)) if step == 1 else carry
    with torch.no_grad():
        _, out = model.eval()(model.initial_carry(a), a)
    assert "target_q_continue" not in out
