"""carry-reset: halted slots restart from init (decoder and encoder carry), the others continue; and a recurrent
encoder's step depends on the carry it is handed (else it reads once, whatever its carry says)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor

from etrmtrm_cli.analysis.diagnose.subject import (
    CheckResult,
    Measurement,
    Status,
    Subject,
    build,
    generator,
    number,
    train_batch,
    worst,
)
from etrmtrm_cli.encoders.base import Carry
from etrmtrm_cli.models.act import ACTCarry, ACTModel, rows_where
from etrmtrm_cli.models.decoder import DecoderCarry

WARMUP_STEPS = 3  # ACT steps that move every carry away from its init before the halting pattern is imposed
MIN_SLOTS = 4  # carry-reset needs halted and running slots side by side
EXACT_TOL = 1e-5  # carries computed two ways from identical inputs: equal up to float reassociation
CARRY_MOVED = 1e-3  # a warm carry this far from init must change a step that reads it (tiny recurrent_standard: 2.2)


def check_carry_reset(subject: Subject) -> CheckResult:
    """Impose halted = [T, F, T, F, ...] on a carry that has run a few steps, take one step, and compare it
    with the same step from a carry whose halted slots were put at their init state by hand."""
    model = build(subject).train()
    size = max(subject.exp.train.batch_size, MIN_SLOTS)
    first, new = train_batch(subject, 0, size), train_batch(subject, 1, size)
    gen = generator(subject)
    with torch.no_grad():
        carry = model.initial_carry(first)
        for _ in range(WARMUP_STEPS):
            carry, _ = model(carry, first, gen)
            carry.halted = torch.zeros_like(carry.halted)  # hold every slot, so its state keeps moving
        halted = torch.arange(size, device=subject.device) % 2 == 0
        before = replace(carry, halted=halted)
        by_hand = _reset_by_hand(model, before, new, halted)
        after, _ = model(before, new, gen)
        expected = _step_without_reset(model, by_hand)
        enc_init = model.provider.initial_carry(size, subject.device)
        from_init = _step_without_reset(model, replace(by_hand, provider=enc_init))  # every slot's encoder at init
        dec_direct = model.decoder.reset_carry(halted, before.decoder)
        enc_direct = model.provider.reset_carry(halted, before.provider)

    slots = ", ".join(str(i) for i in halted.nonzero().flatten().tolist())
    keys = sorted(before.provider)
    enc_name = f"encoder carry ({', '.join(keys)})" if keys else "encoder carry"

    def dec_diff(a: DecoderCarry, b: DecoderCarry, rows: Tensor) -> float:
        return max(_max_diff(a.z_H, b.z_H, rows), _max_diff(a.z_L, b.z_L, rows))

    def enc_diff(a: Carry, b: Carry, rows: Tensor) -> float:
        return max((_max_diff(a[k], b[k], rows) for k in keys), default=0.0)

    moved = min(dec_diff(before.decoder, by_hand.decoder, halted),
                enc_diff(before.provider, by_hand.provider, halted) if keys else math.inf)
    rows = [Measurement(f"warm-up ({WARMUP_STEPS} steps) moved the carries away from init", number(moved),
                        f"> {EXACT_TOL:g} (else this check proves nothing)", "pass" if moved > EXACT_TOL else "warn")]
    # The reset functions alone: which carry is at fault.
    rows.append(_equal_row(f"decoder.reset_carry puts halted slots [{slots}] at init",
                           dec_diff(dec_direct, by_hand.decoder, halted)))
    rows.append(_equal_row("decoder.reset_carry leaves the other slots untouched",
                           dec_diff(dec_direct, before.decoder, ~halted)))
    if keys:
        rows.append(_equal_row(f"provider.reset_carry puts the {enc_name} of halted slots at init",
                               enc_diff(enc_direct, by_hand.provider, halted)))
        rows.append(_equal_row("provider.reset_carry leaves the other slots untouched",
                               enc_diff(enc_direct, before.provider, ~halted)))
        rows.append(_carry_use_row(enc_name, enc_diff(before.provider, enc_init, ~halted),
                                   enc_diff(expected.provider, from_init.provider, ~halted)))
    else:
        rows.append(Measurement("encoder carry", "none", "stateless encoder", "pass"))
    # One whole ACT step against the same step from a carry reset by hand.
    rows.append(_equal_row(f"after one step: decoder carry (z_H, z_L) of halted slots [{slots}] as if from init",
                           dec_diff(after.decoder, expected.decoder, halted)))
    if keys:
        rows.append(_equal_row(f"after one step: {enc_name} of halted slots as if from init",
                               enc_diff(after.provider, expected.provider, halted)))
    rows.append(_equal_row("after one step: decoder carry of the other slots continued from their previous state",
                           dec_diff(after.decoder, expected.decoder, ~halted)))
    if keys:
        rows.append(_equal_row(f"after one step: {enc_name} of the other slots continued from their previous state",
                               enc_diff(after.provider, expected.provider, ~halted)))
    rows.append(_data_row(before, after, new, halted))
    steps_ok = torch.equal(after.steps, expected.steps)  # by_hand's steps + 1
    rows.append(Measurement("step count: halted slots restart at 1, the others count on",
                            "as expected" if steps_ok else f"{after.steps.tolist()}",
                            f"{expected.steps.tolist()}", "pass" if steps_ok else "fail"))
    return CheckResult("carry-reset", worst([r.verdict for r in rows]), rows,
                       _carry_message(rows, enc_name, subject.exp.arch.recurrent_encoder_type))


def _reset_by_hand(model: ACTModel, carry: ACTCarry, new: dict[str, Tensor], halted: Tensor) -> ACTCarry:
    """`carry` with the halted slots at init and holding the new example, marked as not halted: stepping it
    must give what the ACT step computes when it does the reset itself."""
    size, device = halted.shape[0], halted.device
    dec_init = model.decoder.initial_carry(size, device)
    enc_init = model.provider.initial_carry(size, device)
    pick = lambda a, b: rows_where(halted, a, b)  # noqa: E731
    return ACTCarry(
        decoder=DecoderCarry(z_H=pick(dec_init.z_H, carry.decoder.z_H), z_L=pick(dec_init.z_L, carry.decoder.z_L)),
        provider={k: pick(enc_init[k].to(v.dtype), v) for k, v in carry.provider.items()},
        steps=pick(torch.zeros_like(carry.steps), carry.steps),
        halted=torch.zeros_like(halted),
        current_data={k: pick(new[k], v) for k, v in carry.current_data.items()},
    )


def _step_without_reset(model: ACTModel, carry: ACTCarry) -> ACTCarry:
    """The carries one ACT step computes from `carry` as it stands, by the encoder and decoder directly: the step
    itself would apply its own reset, so a step that reset every slot would agree with itself (halting is left
    out: the carries do not depend on it)."""
    context, provider_carry = model.provider(carry.provider, carry.current_data)[:2]
    decoder_carry = model.decoder(carry.decoder, carry.current_data["inputs"], model.pad_context(context))[0]
    return replace(carry, decoder=decoder_carry, provider=provider_carry, steps=carry.steps + 1)


def _max_diff(a: Tensor, b: Tensor, rows: Tensor) -> float:
    if not bool(rows.any()):
        return 0.0
    return float((a[rows].float() - b[rows].float()).abs().max())


def _carry_use_row(enc_name: str, moved: float, diff: float) -> Measurement:
    """Whether the slots that did not halt compute another encoder carry from their own than from the init state:
    an encoder that ignores the carry it is handed reads its demos once, however many ACT steps it is given."""
    what = f"one step of the {enc_name} of the other slots, from their carry against from init"
    if not moved > CARRY_MOVED:  # a carry barely off init may leave a step's output within float rounding
        return Measurement(what, f"max |Δ| {number(diff)}", f"their carry moved {number(moved)} from init: not "
                           "measurable", "warn")
    return Measurement(what, f"max |Δ| {number(diff)}", f"> {EXACT_TOL:g} (the carry is read)",
                       "pass" if diff > EXACT_TOL else "fail")


def _equal_row(what: str, diff: float) -> Measurement:
    return Measurement(what, f"max |Δ| {number(diff)}", f"≤ {EXACT_TOL:g}", "pass" if diff <= EXACT_TOL else "fail")


def _data_row(before: ACTCarry, after: ACTCarry, new: dict[str, Tensor], halted: Tensor) -> Measurement:
    keys = sorted(before.current_data)
    took_new = all(torch.equal(after.current_data[k][halted], new[k][halted]) for k in keys)
    kept_old = all(torch.equal(after.current_data[k][~halted], before.current_data[k][~halted]) for k in keys)
    differs = int((new["inputs"][halted] != before.current_data["inputs"][halted]).any(-1).sum())
    what = "current_data: halted slots took the new batch's example, the others kept theirs"
    if not (took_new and kept_old):
        wrong = "halted slots kept their old example" if not took_new else "running slots were given a new example"
        return Measurement(what, wrong, "new only where halted", "fail")
    verdict: Status = "pass" if differs else "warn"  # the same example twice would hide a missed swap
    return Measurement(what, f"yes ({differs}/{int(halted.sum())} new examples differ)", "new only where halted",
                       verdict)


def _carry_message(rows: Sequence[Measurement], enc_name: str, encoder: str) -> str:
    """The cause, found in the order faults propagate: a slot that kept its old example, or a reset function that
    is wrong, makes every row after one step differ too; those rows alone mean the ACT step does not apply a reset
    function that is right."""
    failed = [r.what for r in rows if r.verdict == "fail"]
    if not failed:
        warned = [r.what for r in rows if r.verdict == "warn"]
        return "inconclusive: " + "; ".join(warned) if warned else \
            "halted slots restart from init (decoder and encoder), the others continue"
    if broken := [r.what for r in rows if r.value.endswith(("nan", "inf"))]:
        return (f"the carries are not finite ({'; '.join(broken[:2])}: NaN or inf), so no reset can be checked: the "
                "model computes non-finite values (gradient-flow names them)")
    if any(w.startswith("current_data") for w in failed):
        row = next(r for r in rows if r.what.startswith("current_data"))
        return (f"the ACT step does not swap the new batch's example into halted slots alone ({row.value}): a slot "
                "goes on with another puzzle than the one it now holds (the other rows follow from it)")
    found = []
    if any(w.startswith("provider.reset_carry puts") for w in failed):
        found.append(f"the encoder {encoder!r}: reset_carry does not put the {enc_name} of halted slots at its init "
                     "state, so a new puzzle starts from the previous puzzle's encoder state")
    if any(w.startswith("provider.reset_carry leaves") for w in failed):
        found.append(f"the encoder {encoder!r}: reset_carry changes the {enc_name} of slots that did not halt")
    if any(w.startswith("one step of the") for w in failed):
        found.append(f"the encoder {encoder!r} ignores its carry: a step from the {enc_name} it is handed computes "
                     "what a step from its init state does, so it reads its demos once, not refining across ACT steps")
    if any(w.startswith("decoder.reset_carry") for w in failed):
        found.append("the decoder's reset_carry does not reset the carry (z_H, z_L) exactly where a slot halted")
    if found:
        return "; ".join(found) + " (the rows after one step follow from it)"
    if after := [w for w in failed if w.startswith("after one step")]:
        carries = list(dict.fromkeys(f"the {enc_name} of {encoder!r}" if enc_name in w
                                     else "the decoder carry (z_H, z_L)" for w in after))
        faults = [fault for rows, fault in (("halted slots", "does not apply the reset where a slot halts"),
                                            ("other slots", "changes slots that did not halt (as if it reset them)"))
                  if any(rows in w for w in after)]
        return (f"the reset functions are right, but the ACT step {' and '.join(faults)}: {' and '.join(carries)} "
                f"after one step {'are' if len(carries) > 1 else 'is'} not what a reset by hand gives")
    return "carry reset is wrong: the failed rows: " + "; ".join(failed)
