"""The TRM decoder: TRM's inner model, numerically equal to the reference when given its weights.

One ACT step, as TRM's inner model (models/recursive_reasoning/trm.py of TRM@e7b6871):

    x = embed(prefix ++ tokens) * sqrt(D)                      # computed once per step
    (H_cycles - 1) times, without gradient:
        L_cycles times: z_L = net(z_L, z_H + x)
        z_H = net(z_H, z_L)
    once more with gradient (same cycle)
    logits = lm_head(z_H[:, P:]);  (q_halt, q_continue) = q_head(z_H[:, 0])

The prefix (B, P, D) is whatever fills the P positions before the grid: TRM's learned puzzle embedding,
or an encoder's context (see act.py). The carry leaves each step detached (one-step gradient).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from etrmtrm_cli.config import ArchConfig
from etrmtrm_cli.models.layers import Block, CosSin, Embedding, Linear, RotaryEmbedding, trunc_normal_init_

# TRM scales (token + position) by this literal, not by 1/sqrt(2) to full precision.
LEARNED_POS_SCALE = 0.707106781


def compute_dtype(name: str) -> torch.dtype:
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise ValueError(f"forward_dtype must be one of {', '.join(dtypes)}, not {name!r} ('auto' is chosen per "
                         "machine by training.runtime.choose_dtype before a model is built)")
    return dtypes[name]


@dataclass
class DecoderCarry:
    """The recursive state; each (B, P + seq_len, D) in the decoder's compute dtype."""

    z_H: Tensor
    z_L: Tensor


# A decoder MLP call keeps its activations for backward up to these sizes, (eager, compiled), and recomputes them
# above (layers.SwiGLU); the demo encoders' own limits are in encoders/grid.py.
# Eager, recomputing cost 6-8 % of a step (`benchmarks/bench_recompute.py P0`, bfloat16, tcmalloc, two runs: 1.06x
# and 1.08x) and pays only where the activations are large. At the cpu profile (32 x 116 tokens, W = 256) a call
# keeps 7.3 MiB in bfloat16 and 14.5 in float32, 6 calls a step; at hidden 128 (W = 512) 14.5 MiB in bfloat16, 10
# a step, and 29 in float32. Eager, all but the last are kept; recomputing the last holds a hidden-128 float32 step
# under 1 GB. Compiled steps hold more: keeping at hidden 128 in bfloat16 took `static` and `trm_style` to 947-1,010
# and 996-1,039 MB (`bench_step.py`, 2 threads, tcmalloc, two runs; 852-855 and 902-944 recomputing), at the 1 GB
# limit, so compiled calls keep only up to 8 MiB: the cpu profile's bfloat16 calls, where keeping made the compiled
# E0b step 1.031x [1.013, 1.049] and 1.020x [1.004, 1.037] as fast (`benchmarks/bench_ab.py`, 60 rounds each, two
# runs; docs/performance.md).
MLP_KEEP_MAX_BYTES = (16 * 2**20, 8 * 2**20)


class ReasoningNet(nn.Module):
    """TRM's one shared network (its `L_level`): add the injection once, then the post-norm blocks."""

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            Block(arch.hidden_size, arch.num_heads, arch.expansion, arch.rms_norm_eps, norm_style="post",
                  mlp_keep_max_bytes=MLP_KEEP_MAX_BYTES)
            for _ in range(arch.L_layers)
        )

    def forward(self, h: Tensor, injection: Tensor, rope: CosSin | None = None) -> Tensor:
        # h, injection: (B, T, D) -> (B, T, D)
        h = h + injection
        for layer in self.layers:
            h = layer(h, rope)
        return h


class TRMDecoder(nn.Module):
    def __init__(self, arch: ArchConfig, seq_len: int, vocab_size: int = 12) -> None:
        super().__init__()
        self.arch = arch
        self.seq_len = seq_len
        self.vocab_size = vocab_size
        self.prefix_len = arch.puzzle_emb_len
        self.forward_dtype = compute_dtype(arch.forward_dtype)
        hidden = arch.hidden_size
        positions = self.prefix_len + seq_len

        self.embed_scale = math.sqrt(hidden)
        self.embed_tokens = Embedding(vocab_size, hidden, init_std=1.0 / self.embed_scale,
                                      cast_to=self.forward_dtype)
        self.lm_head = Linear(hidden, vocab_size)
        self.q_head = Linear(hidden, 2, bias=True)
        self.rotary: RotaryEmbedding | None = None
        self.embed_pos: Embedding | None = None
        if arch.pos_encodings == "rope":
            self.rotary = RotaryEmbedding(hidden // arch.num_heads, positions, arch.rope_theta)
        elif arch.pos_encodings == "learned":
            self.embed_pos = Embedding(positions, hidden, init_std=1.0 / self.embed_scale,
                                       cast_to=self.forward_dtype)
        self.net = ReasoningNet(arch)

        # Fixed (untrained) initial states, broadcast over batch and positions; kept in float32 so the
        # saved weights do not depend on forward_dtype.
        self.H_init: Tensor
        self.L_init: Tensor
        self.register_buffer("H_init", trunc_normal_init_(torch.empty(hidden), std=1.0), persistent=True)
        self.register_buffer("L_init", trunc_normal_init_(torch.empty(hidden), std=1.0), persistent=True)

        # q_halt starts at -5: early in training no slot halts on its own, every slot runs all steps.
        with torch.no_grad():
            self.q_head.weight.zero_()
            assert self.q_head.bias is not None
            self.q_head.bias.fill_(-5.0)

    @property
    def num_positions(self) -> int:
        return self.prefix_len + self.seq_len

    def initial_carry(self, batch_size: int, device: torch.device | str | None = None) -> DecoderCarry:
        """A carry already at the init state (TRM leaves it uninitialised; the first reset fills it)."""
        shape = (batch_size, self.num_positions, self.arch.hidden_size)
        z_H = self.H_init.to(device=device, dtype=self.forward_dtype).expand(shape).clone()
        z_L = self.L_init.to(device=device, dtype=self.forward_dtype).expand(shape).clone()
        return DecoderCarry(z_H=z_H, z_L=z_L)

    def reset_carry(self, reset: Tensor, carry: DecoderCarry) -> DecoderCarry:
        """Slots where reset (B,) is True go back to the init state; the others keep theirs."""
        flag = reset.view(-1, 1, 1)
        return DecoderCarry(
            z_H=torch.where(flag, self.H_init.to(self.forward_dtype), carry.z_H),
            z_L=torch.where(flag, self.L_init.to(self.forward_dtype), carry.z_L),
        )

    def embed(self, inputs: Tensor, prefix: Tensor) -> Tensor:
        # inputs: (B, S) long, prefix: (B, P, D) -> x: (B, P + S, D) in the compute dtype
        if prefix.shape[1] != self.prefix_len:
            raise ValueError(f"prefix has {prefix.shape[1]} positions, the decoder expects {self.prefix_len}")
        if inputs.shape[1] != self.seq_len:
            raise ValueError(f"inputs have {inputs.shape[1]} tokens, the decoder expects {self.seq_len}")
        tokens = self.embed_tokens(inputs.to(torch.int32))
        x = torch.cat((prefix.to(self.forward_dtype), tokens), dim=-2)
        if self.embed_pos is not None:
            x = LEARNED_POS_SCALE * (x + self.embed_pos.table())
        # The sqrt(D) scale covers the prefix as well as the tokens.
        return self.embed_scale * x

    def forward(self, carry: DecoderCarry, inputs: Tensor, prefix: Tensor
                ) -> tuple[DecoderCarry, Tensor, Tensor, Tensor]:
        """One ACT step -> (new carry (detached), logits (B, S, V), q_halt (B,), q_continue (B,)).

        inputs: (B, S) token ids; prefix: (B, P, D). Logits and Q values are float32 whatever the
        compute dtype.
        """
        rope = self.rotary() if self.rotary is not None else None
        x = self.embed(inputs, prefix)
        z_H, z_L = carry.z_H, carry.z_L
        with torch.no_grad():
            for _ in range(self.arch.H_cycles - 1):
                z_H, z_L = self._cycle(z_H, z_L, x, rope)
        # Only the last cycle is differentiated (TRM's "1-step" gradient through n+1 net calls).
        z_H, z_L = self._cycle(z_H, z_L, x, rope)

        new_carry = DecoderCarry(z_H=z_H.detach(), z_L=z_L.detach())
        logits = self.lm_head(z_H[:, self.prefix_len:]).to(torch.float32)  # (B, S, V)
        q = self.q_head(z_H[:, 0]).to(torch.float32)  # (B, 2): prefix position 0
        return new_carry, logits, q[:, 0], q[:, 1]

    def _cycle(self, z_H: Tensor, z_L: Tensor, x: Tensor, rope: CosSin | None) -> tuple[Tensor, Tensor]:
        for _ in range(self.arch.L_cycles):
            z_L = self.net(z_L, z_H + x, rope)
        z_H = self.net(z_H, z_L, rope)
        return z_H, z_L
