"""Training metrics as pure functions of tensors (context variance, carry norm and change, convergence, gradient
norms and shares); no logging, no side effects. What they should be is in analysis/thresholds.py."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn


def cross_sample_var(context: Tensor, puzzle_ids: Tensor) -> float:
    """Variance of the context across *distinct puzzles* in the batch, mean over tokens and dims.

    context: (B, C, D); puzzle_ids: (B,). Slots that share a puzzle (its several queries) see the same
    demos, so counting each of them would dilute the variance: one row per distinct puzzle is kept.
    NaN when fewer than two distinct puzzles are present.
    """
    _, first = _first_occurrences(puzzle_ids)
    if first.numel() < 2:
        return math.nan
    rows = context[first].float()  # (U, C, D)
    return float(rows.var(dim=0, unbiased=False).mean())


def same_step_var(context: Tensor, puzzle_ids: Tensor, steps: Tensor) -> float:
    """Variance of the context across distinct puzzles among the slots at the *same ACT step*, pooled over steps.

    context: (B, C, D); puzzle_ids, steps: (B,). A recurrent encoder's context changes from step to step, so
    cross_sample_var over the whole batch mixes a slot at step 1 with one at step 9; here slots are only
    compared with slots at their own step. For each step k whose slots hold U_k >= 2 distinct puzzles,
    v_k = cross_sample_var(context[steps == k], puzzle_ids[steps == k]) (the population variance over those
    U_k puzzles, mean over tokens and dims). With N = sum_k U_k and G the number of such steps:

        same_step_var = (sum_k U_k * v_k / N) * (N - 1) / (N - G)

    the mean of the v_k weighted by U_k, times a degrees-of-freedom correction: each group spends one degree
    of freedom on its own mean, so without it the figure shrinks by about (U_k - 1) / U_k when the slots are
    spread over many steps (2-3 puzzles per step in a CPU-size batch: about 0.65x). With it, a context that
    does not depend on the step (the static encoder) reads, in expectation, as its cross_sample_var; when
    all slots are at one step (G = 1, the usual case early in training) the two are equal exactly.
    NaN when no step has 2 distinct puzzles.
    """
    weighted, total, groups = 0.0, 0, 0
    for k in torch.unique(steps).tolist():
        at_k = steps == k
        unique = int(torch.unique(puzzle_ids[at_k]).numel())
        if unique < 2:
            continue
        weighted += unique * cross_sample_var(context[at_k], puzzle_ids[at_k])
        total, groups = total + unique, groups + 1
    if not groups:
        return math.nan
    return weighted / total * (total - 1) / (total - groups)


def _first_occurrences(ids: Tensor) -> tuple[Tensor, Tensor]:
    unique, inverse = torch.unique(ids, return_inverse=True)
    positions = torch.arange(ids.numel(), device=ids.device)
    first = torch.full((unique.numel(),), ids.numel(), dtype=torch.long, device=ids.device)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    return unique, first


def carry_norm(carry: Tensor) -> float:
    """Mean L2 norm of the carry per token. carry: (B, C, D)."""
    return float(carry.float().norm(dim=-1).mean())


def carry_change(new: Tensor, previous: Tensor) -> Tensor:
    """Per slot ||new - previous|| / ||previous||, norms over all tokens and dims. (B, C, D) x2 -> (B,)."""
    diff = (new.float() - previous.float()).flatten(1).norm(dim=1)
    return diff / previous.float().flatten(1).norm(dim=1).clamp_min(1e-12)


def update_convergence(converged_at: Tensor, change: Tensor, steps: Tensor, tol: float) -> Tensor:
    """The ACT step at which each slot's carry change first fell below `tol` (0 = not yet).

    converged_at, steps: (B,) int (steps = the step just taken, 1-based); change: (B,) float.
    A slot that was just reset must come in with converged_at = 0.
    """
    newly = (converged_at == 0) & (change < tol)
    return torch.where(newly, steps.to(converged_at.dtype), converged_at)


def convergence_steps(converged_at: Tensor, steps: Tensor, halted: Tensor) -> float:
    """Mean over halted slots of the steps until convergence; a slot that never converged counts all its
    steps. NaN when no slot halted.

    A censored mean: a slot that halts unconverged counts its halting step, so the figure is capped by
    the halting steps and cannot tell "converged at the last step" from "never converged";
    converged_fraction says how many did converge."""
    if not bool(halted.any()):
        return math.nan
    taken = torch.where(converged_at > 0, converged_at, steps.to(converged_at.dtype))
    return float(taken[halted].float().mean())


def converged_fraction(converged_at: Tensor, halted: Tensor) -> float:
    """Among the slots that halted, the fraction whose carry converged (converged_at > 0) before halting
    (at or before their last step). NaN when no slot halted."""
    if not bool(halted.any()):
        return math.nan
    return float((converged_at[halted] > 0).float().mean())


def grad_norms(model: nn.Module, encoder_params: Iterable[nn.Parameter]) -> dict[str, float]:
    """L2 norms of the gradients (call before clipping): encoder, decoder (everything else), total, and the
    encoder's share two ways: encoder_share = ||g_enc|| / ||g_total|| (a norm ratio, kept for old runs) and
    encoder_share_sq = ||g_enc||² / (||g_enc||² + ||g_dec||²), the encoder's fraction of the squared
    gradient norm, which is what "the encoder should get ~40% of gradients" means (the two fractions add
    up to 1). NaN shares when every gradient is zero."""
    encoder_ids = {id(p) for p in encoder_params}
    # is an encoder parameter -> its squared gradient norms, summed on the device (no sync per parameter)
    squares: dict[bool, list[Tensor]] = {True: [], False: []}
    for p in model.parameters():
        if p.grad is not None:
            squares[id(p) in encoder_ids].append(p.grad.detach().float().pow(2).sum())
    enc_sq, dec_sq = (float(torch.stack(v).sum()) if v else 0.0 for v in (squares[True], squares[False]))
    total = math.sqrt(enc_sq + dec_sq)
    return {
        "grad/encoder_norm": math.sqrt(enc_sq),
        "grad/decoder_norm": math.sqrt(dec_sq),
        "grad/total_norm": total,
        "grad/encoder_share": math.sqrt(enc_sq) / total if total > 0 else math.nan,
        "grad/encoder_share_sq": enc_sq / (enc_sq + dec_sq) if total > 0 else math.nan,
    }
