"""The ACT wrapper: one call = one ACT step for every batch slot, written once for every model.

The P prefix positions of the decoder hold a *context* that comes from a **context provider**: TRM's
learned per-puzzle embedding (puzzle_embedding.py, the P0 model) or a demo encoder (encoders/). A
provider is an `nn.Module` with this protocol:

    initial_carry(batch_size: int, device) -> dict[str, Tensor]
        Its recurrent state, one row per batch slot; {} for a stateless provider.
    reset_carry(reset: Tensor (B,) bool, carry: dict[str, Tensor]) -> dict[str, Tensor]
        The carry with exactly the `reset` slots put back to their initial state.
    forward(carry: dict[str, Tensor], batch: dict[str, Tensor])
            -> (context (B, C, D), new_carry dict)  or  (context, new_carry, stats dict)
        `batch` is the ACT's current data (every slot's own example). The context and the new carry
        must keep their autograd graph: the task loss of this step has to reach every provider
        parameter through the context. ACTModel detaches the new carry *between* steps; a provider
        must never detach it inside a step.
        `stats` is optional: a few per-slot diagnostics {name: (B,) float}, computed in this call and
        handed out with its result (a provider keeps no "last batch" state for anyone to find). ACTModel
        returns each as outputs["provider_stats/<name>"], detached; the training step logs it as
        train/encoder_<name> (its mean over the global batch). The in-tree recurrent encoders give
        "update_ratio" (encoders/base.py). A 2-tuple provider (PuzzleEmbedding, third-party encoders)
        simply adds no such outputs.

C <= P: the context fills the first C prefix positions, the remaining P - C stay zero (C = 1 is the
layout of the official TRM checkpoints; `ArchConfig.context_tokens` is how many an encoder fills).

Step rules, as TRM's `TinyRecursiveReasoningModel_ACTV1.forward` (TRM@e7b6871), for a carry from the
previous step:
  1. slots that halted last step are reset (decoder AND provider carry), their step count set to 0,
     and they take the batch's new example at their position; other slots keep their data;
  2. context = provider(carry, data); the decoder runs one step on the data and the padded context;
  3. under no_grad: steps += 1, halted = steps >= halt_max_steps; in training (halt_max_steps > 1) also
     halted |= q_halt > 0 (or q_halt > q_continue when no_ACT_continue is False), with exploration:
     with probability halt_exploration_prob a slot must first reach a random step count in
     [2, halt_max_steps]. Eval never halts early, so a batch runs exactly halt_max_steps steps.
All randomness comes from the `generator` passed to `forward`. Under data parallel each process holds a contiguous
slice of the global batch (`shard`: its rank and the world size); every process draws the exploration of the whole
global batch from one seed and keeps its own rows, so N processes explore as one process does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from etrmtrm_cli.config import ArchConfig
from etrmtrm_cli.errors import PluginError
from etrmtrm_cli.models.decoder import DecoderCarry, TRMDecoder


class ContextProvider(Protocol):
    """What ACTModel needs from the module that fills the decoder's prefix (see the module docstring)."""

    def initial_carry(self, batch_size: int, device: torch.device | str | None) -> dict[str, Tensor]: ...

    def reset_carry(self, reset: Tensor, carry: dict[str, Tensor]) -> dict[str, Tensor]: ...

    def __call__(self, carry: dict[str, Tensor], batch: dict[str, Tensor]
                 ) -> tuple[Tensor, dict[str, Tensor]] | tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]: ...


PROVIDER_STATS = "provider_stats/"  # outputs[PROVIDER_STATS + name]: the provider's per-slot stats (B,)


@dataclass
class ACTCarry:
    decoder: DecoderCarry
    provider: dict[str, Tensor]
    steps: Tensor  # (B,) int32: ACT steps taken by each slot's current example
    halted: Tensor  # (B,) bool: the slot finished last step and takes a new example next step
    current_data: dict[str, Tensor] = field(default_factory=dict)


def rows_where(flag: Tensor, new: Tensor, old: Tensor) -> Tensor:
    # flag: (B,) bool; new/old: (B, ...) -> per-slot choice
    return torch.where(flag.view(-1, *([1] * (new.ndim - 1))), new, old)


class ACTModel(nn.Module):
    """Decoder + context provider + the ACT halting rules. `forward(carry, batch)` is one ACT step."""

    def __init__(self, decoder: TRMDecoder, provider: nn.Module, arch: ArchConfig,
                 shard: tuple[int, int] = (0, 1)) -> None:
        super().__init__()
        if arch.puzzle_emb_len != decoder.prefix_len:
            raise ValueError(
                f"arch.puzzle_emb_len {arch.puzzle_emb_len} != the decoder's prefix {decoder.prefix_len}"
            )
        self.decoder = decoder
        self.provider = provider
        self.arch = arch
        self.shard = shard  # (rank, world size): this process's slice of the global batch, for the exploration

    def initial_carry(self, batch: Mapping[str, Tensor]) -> ACTCarry:
        """A carry in which every slot counts as halted, so the first step resets and loads all of them."""
        inputs = batch["inputs"]
        batch_size, device = inputs.shape[0], inputs.device
        provider = self.provider.initial_carry(batch_size, device)
        if (key := getattr(self.provider, "state_key", None)) is not None and key not in provider:
            # the carry entry whose norm and change the training step logs (encoders/base.py)
            raise PluginError(f"{self._provider_name}: its state_key {key!r} is not an entry of its initial_carry "
                              f"(keys: {sorted(provider)})")
        return ACTCarry(
            decoder=self.decoder.initial_carry(batch_size, device),
            provider=provider,
            steps=torch.zeros(batch_size, dtype=torch.int32, device=device),
            halted=torch.ones(batch_size, dtype=torch.bool, device=device),
            current_data={k: torch.zeros_like(v) for k, v in batch.items()},
        )

    def forward(self, carry: ACTCarry, batch: Mapping[str, Tensor],
                generator: torch.Generator | None = None) -> tuple[ACTCarry, dict[str, Tensor]]:
        """One ACT step -> (new carry, outputs).

        outputs: logits (B, S, V) f32, q_halt_logits (B,), q_continue_logits (B,), context (B, C, D)
        (with its graph, for metrics and diagnostics), target_q_continue (B,) when the training
        step bootstraps it (no_ACT_continue False), and "provider_stats/<name>" (B,), detached, for each
        stat the provider returned. `generator` draws the exploration; it is required in training when
        halt_exploration_prob > 0.
        """
        halted = carry.halted
        decoder_carry = self.decoder.reset_carry(halted, carry.decoder)
        provider_carry = self.provider.reset_carry(halted, carry.provider)
        check_carry(f"{self._provider_name}.reset_carry", carry.provider, provider_carry)
        steps = torch.where(halted, torch.zeros_like(carry.steps), carry.steps)
        data = {k: rows_where(halted, batch[k], v) for k, v in carry.current_data.items()}

        provided = self.provider(provider_carry, data)  # (context (B, C, D), carry[, stats])
        check_carry(f"{self._provider_name}.forward", provider_carry, provided[1])
        context, provider_carry = provided[0], provided[1]
        prefix = self.pad_context(context)  # (B, P, D)
        decoder_carry, logits, q_halt, q_continue = self.decoder(decoder_carry, data["inputs"], prefix)
        outputs = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_continue,
                   "context": context}
        if len(provided) > 2:
            outputs.update({PROVIDER_STATS + name: v.detach() for name, v in provided[2].items()})

        with torch.no_grad():
            steps = steps + 1
            is_last = steps >= self.arch.halt_max_steps
            new_halted = halting_decision(
                steps, q_halt, q_continue, max_steps=self.arch.halt_max_steps, training=self.training,
                no_act_continue=self.arch.no_ACT_continue, exploration_prob=self.arch.halt_exploration_prob,
                generator=generator, shard=self.shard,
            )
            if self.training and self.arch.halt_max_steps > 1 and not self.arch.no_ACT_continue:
                # Q-learning target from the next step's Q, without replay or target network (HRM).
                # It reuses this step's context: the bootstrap asks what the decoder would do next.
                _, _, next_halt, next_continue = self.decoder(decoder_carry, data["inputs"], prefix.detach())
                outputs["target_q_continue"] = torch.sigmoid(
                    torch.where(is_last, next_halt, torch.maximum(next_halt, next_continue))
                )

        new_provider_carry = {k: v.detach() for k, v in provider_carry.items()}
        return ACTCarry(decoder_carry, new_provider_carry, steps, new_halted, data), outputs

    @property
    def _provider_name(self) -> str:  # for the errors that a provider's broken contract raises
        return f"{type(self.provider).__module__}.{type(self.provider).__qualname__}"

    def pad_context(self, context: Tensor) -> Tensor:
        # context: (B, C, D) -> (B, P, D), zeros after position C
        num_ctx, prefix_len = context.shape[1], self.decoder.prefix_len
        if num_ctx > prefix_len:
            raise ValueError(f"the provider returned {num_ctx} context tokens, more than the {prefix_len} "
                             "prefix positions")
        return F.pad(context, (0, 0, 0, prefix_len - num_ctx))


def halting_decision(steps: Tensor, q_halt: Tensor, q_continue: Tensor, *, max_steps: int, training: bool,
                     no_act_continue: bool = True, exploration_prob: float = 0.0,
                     generator: torch.Generator | None = None, shard: tuple[int, int] = (0, 1)) -> Tensor:
    """Which slots halt after this step; steps (B,) already counts it. -> (B,) bool.

    Eval (or max_steps == 1) halts only at max_steps. Training also halts on q_halt > 0 (q_halt >
    q_continue with the Q-continue head), except that with probability `exploration_prob` a slot must
    first reach a minimum step count drawn uniformly from [2, max_steps] (two draws from `generator`, each
    for the global batch of world size x B rows, of which rank `shard[0]` keeps rows rank x B onwards).
    """
    halted = steps >= max_steps
    if not training or max_steps <= 1:
        return halted
    wants_halt = q_halt > 0 if no_act_continue else q_halt > q_continue
    halted = halted | wants_halt
    if exploration_prob > 0:
        if generator is None:
            raise ValueError("ACT exploration in training needs an explicit torch.Generator")
        (rank, world_size), n, gen_device = shard, steps.shape[0], generator.device
        mine = slice(rank * n, (rank + 1) * n)
        explore = torch.rand(world_size * n, generator=generator, device=gen_device)[mine] < exploration_prob
        min_steps = torch.randint(2, max_steps + 1, (world_size * n,), generator=generator, device=gen_device)[mine]
        min_steps = (explore * min_steps).to(device=steps.device, dtype=steps.dtype)
        halted = halted & (steps >= min_steps)
    return halted


def check_carry(name: str, before: Mapping[str, Tensor], after: object) -> None:
    """The protocol's carry, checked where `name` returned it: the keys of the carry handed in, each a tensor of the
    shape it had, a row per slot. A wrong one would otherwise fail steps later, as a KeyError or AttributeError in the
    training step, or as a context of the wrong shape. (Under torch.compile this runs while tracing: keys and shapes
    are fixed there.)"""
    if not isinstance(after, Mapping) or set(after) != set(before):
        got = sorted(after) if isinstance(after, Mapping) else type(after).__name__
        raise PluginError(f"{name} returned a carry with keys {got}; expected the keys of its initial_carry, "
                          f"{sorted(before)} ({{}} for a stateless encoder)")
    for key, value in after.items():
        if not isinstance(value, Tensor) or value.shape != before[key].shape:
            got = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            raise PluginError(f"{name} returned carry[{key!r}] of {got}; expected a tensor of the shape it was "
                              f"handed, {tuple(before[key].shape)} (a row per slot)")
