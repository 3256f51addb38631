"""One training step, written once: `train`, `diagnose` and every benchmark that times a step call these.

`forward_backward` is one ACT step for every batch slot, its loss (act_loss) and the backward of that loss
divided by the global batch (TRM's normalisation). `train_step` adds what an optimizer step does around it
(gradient all-reduce, norms, clipping, the learning-rate schedule, the updates, EMA) and the step's metrics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim import Optimizer

from etrmtrm_cli.config import Experiment
from etrmtrm_cli.errors import RunError
from etrmtrm_cli.models.act import PROVIDER_STATS, ACTCarry, ACTModel
from etrmtrm_cli.models.build import encoder_parameters
from etrmtrm_cli.models.losses import LossType, act_loss
from etrmtrm_cli.training.distributed import DistContext
from etrmtrm_cli.training.metrics import (
    carry_change,
    carry_norm,
    converged_fraction,
    convergence_steps,
    cross_sample_var,
    grad_norms,
    same_step_var,
    update_convergence,
)
from etrmtrm_cli.training.optim import all_reduce_grads, lr_at, set_lr, update_ema

_LOSS_SUMS = ("lm_loss", "q_halt_loss", "q_continue_loss")
_COUNT_SUMS = ("accuracy", "exact_accuracy", "q_halt_accuracy", "steps")
# (carry, batch, generator) -> (new carry, outputs): the model itself, or its torch.compile'd form
ForwardFn = Callable[[ACTCarry, Mapping[str, Tensor], torch.Generator | None], tuple[ACTCarry, dict[str, Tensor]]]


class NonFiniteError(RunError):
    """The loss or the gradient norm is not finite; raised before any weight is updated."""

    def __init__(self, what: str, value: float) -> None:
        super().__init__(f"{what} is {value}")
        self.what, self.value = what, value


@dataclass
class StepState:
    """Everything beyond the weights that a checkpoint must restore for an exact resume."""

    step: int  # optimizer steps taken
    carry: ACTCarry
    converged_at: Tensor  # (B,) int: ACT step where each slot's encoder carry converged (0 = not yet)
    halt_rng: torch.Generator  # draws the halting exploration


@dataclass(frozen=True)
class Trainable:
    """A model and what updates it: `forward` is the model or its compiled form, `ema` its EMA copy."""

    model: ACTModel
    forward: ForwardFn
    optimizers: list[Optimizer]
    ema: ACTModel | None = None


def fresh_state(model: ACTModel, first: Mapping[str, Tensor], seed: int) -> StepState:
    """The state before step 1: every slot halted (so step 1 loads `first`'s rows), exploration seeded alike on
    every rank (each keeps its rows of the global batch's draws: act.halting_decision)."""
    device = first["inputs"].device
    halt_rng = torch.Generator(device=device).manual_seed(seed * 1000)
    batch_size = first["inputs"].shape[0]
    return StepState(0, model.initial_carry(first), torch.zeros(batch_size, dtype=torch.int32, device=device),
                     halt_rng)


def forward_backward(forward: ForwardFn, carry: ACTCarry, batch: Mapping[str, Tensor],
                     generator: torch.Generator | None, loss_type: LossType, global_batch: int,
                     over_ranks: Callable[[Tensor], Tensor] = lambda loss: loss
                     ) -> tuple[ACTCarry, dict[str, Tensor], dict[str, Tensor]]:
    """One ACT step, its loss and backward -> (new carry, outputs, metric sums of act_loss).

    Gradients accumulate into .grad; a non-finite loss raises NonFiniteError before the backward. Under DDP
    `over_ranks` sums the ranks' losses (DistContext.total), so that every rank raises together: one raising
    alone would leave the others waiting in the gradient all-reduce."""
    new_carry, outputs = forward(carry, batch, generator)
    loss, sums = act_loss(outputs, new_carry.current_data["labels"], new_carry.halted, new_carry.steps, loss_type)
    summed = over_ranks(loss.detach())
    if not torch.isfinite(summed):
        raise NonFiniteError("train/loss", float(summed))
    (loss / global_batch).backward()
    return new_carry, outputs, sums


def train_step(parts: Trainable, batch: Mapping[str, Tensor], state: StepState, exp: Experiment,
               ctx: DistContext, total_steps: int) -> dict[str, float]:
    """Optimizer step `state.step + 1` on this rank's `batch`; advances `state`, returns the step's metrics."""
    t0 = time.perf_counter()
    model = parts.model
    model.train()
    step = state.step + 1
    before = state.carry
    carry, outputs, sums = forward_backward(parts.forward, before, batch, state.halt_rng, exp.arch.loss_type,
                                            exp.train.batch_size, ctx.total)
    all_reduce_grads(model, ctx.world_size)
    metrics = grad_norms(model, encoder_parameters(model))
    if not math.isfinite(metrics["grad/total_norm"]):
        raise NonFiniteError("grad/total_norm", metrics["grad/total_norm"])
    if exp.train.grad_clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), exp.train.grad_clip_norm)
    lr = lr_at(step, exp, total_steps)
    set_lr(parts.optimizers, lr)
    for opt in parts.optimizers:
        opt.step()
        opt.zero_grad(set_to_none=True)
    if parts.ema is not None:
        update_ema(parts.ema, model, exp.train.ema_rate)
    metrics.update(_reduce_train_sums(sums, exp, ctx))
    metrics.update(_encoder_metrics(model, exp, before, carry, outputs, state, ctx))
    state.step, state.carry = step, carry
    metrics["train/lr"] = lr
    metrics["time/step_s"] = time.perf_counter() - t0
    return metrics


def _reduce_train_sums(sums: dict[str, Tensor], exp: Experiment, ctx: DistContext) -> dict[str, float]:
    """TRM's normalisation: losses by the global batch, the other sums by the count of halted slots."""
    keys = ["count", *_COUNT_SUMS, *[k for k in _LOSS_SUMS if k in sums]]
    flat = torch.stack([sums[k].double() for k in keys])
    if ctx.world_size > 1:
        dist.all_reduce(flat)
    values = dict(zip(keys, flat.tolist(), strict=True))
    count = values.pop("count")
    out = {"train/count": count}
    for key in _COUNT_SUMS:
        out[f"train/{key}"] = values[key] / count if count else math.nan
    for key in _LOSS_SUMS:
        if key in values:
            out[f"train/{key}"] = values[key] / exp.train.batch_size
    out["train/loss"] = out["train/lm_loss"] + 0.5 * sum(out.get(f"train/{k}", 0.0) for k in _LOSS_SUMS[1:])
    return out


@torch.no_grad()
def _encoder_metrics(model: ACTModel, exp: Experiment, before: ACTCarry, after: ACTCarry,
                     outputs: dict[str, Tensor], state: StepState, ctx: DistContext) -> dict[str, float]:
    """The encoder's health figures, over the global batch (each rank's rows are gathered first):
    - train/encoder_cross_sample_var: the context's variance across distinct puzzles (metrics.cross_sample_var);
    - train/encoder_var_same_step: the same, among slots at the same ACT step only (metrics.same_step_var);
    - train/encoder_<name>: the mean over slots of each per-slot stat the provider hands out (act.py), e.g.
      train/encoder_update_ratio of the recurrent encoders (encoders/base.py);
    and for recurrent encoders (a `state_key`) the carry's norm and change, the censored mean steps until the
    carry converged (train/encoder_convergence_steps) and the fraction of halted slots whose carry converged
    before halting (train/encoder_converged_fraction)."""
    rows = ctx.gather_rows
    context, puzzle_ids, steps = rows(outputs["context"]), rows(after.current_data["puzzle_ids"]), rows(after.steps)
    out = {"train/encoder_cross_sample_var": cross_sample_var(context, puzzle_ids),
           "train/encoder_var_same_step": same_step_var(context, puzzle_ids, steps)}
    for name in sorted(k for k in outputs if k.startswith(PROVIDER_STATS)):
        out[f"train/encoder_{name[len(PROVIDER_STATS):]}"] = float(rows(outputs[name]).float().mean())
    key = getattr(model.provider, "state_key", None)
    if key is None:
        return out
    previous = model.provider.reset_carry(before.halted, before.provider)[key]  # what this step started from
    change = carry_change(after.provider[key], previous)  # (B,)
    converged = torch.where(before.halted, torch.zeros_like(state.converged_at), state.converged_at)
    state.converged_at = update_convergence(converged, change, after.steps, exp.arch.encoder_convergence_tol)
    change, halted = rows(change), rows(after.halted)
    out["train/encoder_carry_norm"] = carry_norm(rows(after.provider[key]))
    out["train/encoder_carry_change"] = float(change.mean())
    # The carry's evolution across ACT steps (the plan's "carry should evolve early, stabilize later"):
    # the mean change of the slots that just took their k-th step.
    for k in torch.unique(steps).tolist():
        out[f"act/encoder_carry_change_{k:02d}"] = float(change[steps == k].mean())
    converged_at = rows(state.converged_at)
    out["train/encoder_convergence_steps"] = convergence_steps(converged_at, steps, halted)
    out["train/encoder_converged_fraction"] = converged_fraction(converged_at, halted)
    return out
