"""`trm_style` (ETRMTRM Variant B): carries (z_e_H, z_e_L) refined by a small TRM-like net.

Each ACT step reads the demos into C slots (the injection), then runs the encoder's own recursion
    repeat encoder_h_cycles: { repeat encoder_l_cycles: z_L = net(z_L, z_H + injection);  z_H = net(z_H, z_L) }
and returns context = z_H. Unlike the decoder, every cycle keeps its graph: the carry is detached only
between ACT steps (by the ACT model), never inside one.

Its stats (base.py): update_ratio = per slot, the mean of ||update|| / ||input|| over every post-norm
sublayer that refines a carry in this step (the attention and the MLP of each of the net's blocks, in each
of the h_cycles * (l_cycles + 1) net calls; the input of a net call's first sublayer is carry + injection).
The demo summary (queries -> injection) updates no carry and is not counted.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from etrmtrm_cli.config import ArchConfig
from etrmtrm_cli.encoders.base import Carry, DemoEncoder, ReadLayer, ReadResult, mean_ratio, post_norm, reset_slots
from etrmtrm_cli.encoders.registry import register_encoder
from etrmtrm_cli.models.layers import Block, trunc_normal_init_


class TRMStyleConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    encoder_h_cycles: int = Field(2, ge=1)
    encoder_l_cycles: int = Field(2, ge=1)
    net_layers: int = Field(2, ge=1, description="post-norm blocks of the encoder's own net")


@register_encoder("trm_style", TRMStyleConfig, recurrent=True)
class TRMStyleEncoder(DemoEncoder):
    state_key = "z_e_H"

    def __init__(self, arch: ArchConfig, params: TRMStyleConfig, seq_len: int) -> None:
        super().__init__(arch, seq_len)
        self.h_cycles, self.l_cycles = params.encoder_h_cycles, params.encoder_l_cycles
        shape = (arch.context_tokens, arch.hidden_size)
        self.queries = nn.Parameter(trunc_normal_init_(torch.empty(shape), std=0.02))
        self.register_buffer("H_init", trunc_normal_init_(torch.empty(shape), std=1.0))
        self.register_buffer("L_init", trunc_normal_init_(torch.empty(shape), std=1.0))
        self.summary = ReadLayer(arch)
        self.net = nn.ModuleList(
            Block(arch.hidden_size, arch.num_heads, arch.expansion, arch.rms_norm_eps, norm_style="post")
            for _ in range(params.net_layers)
        )

    def initial_carry(self, batch_size: int, device: torch.device) -> Carry:
        init = {"z_e_H": self.H_init, "z_e_L": self.L_init}
        return {k: v.to(device=device, dtype=self.dtype).expand(batch_size, -1, -1).clone() for k, v in init.items()}

    def reset_carry(self, reset: Tensor, carry: Carry) -> Carry:
        return reset_slots(reset, carry, {"z_e_H": self.H_init, "z_e_L": self.L_init})

    def _net(self, h: Tensor, injection: Tensor, ratios: list[Tensor] | None) -> Tensor:
        h = h + injection
        for block in self.net:  # Block.forward (post-norm, no RoPE, no mask), recording each update's ratio
            h = post_norm(h, block.attn(h), block.eps, ratios)
            h = post_norm(h, block.mlp(h), block.eps, ratios)
        return h

    def read(self, carry: Carry, demos: Tensor, demo_mask: Tensor) -> ReadResult:
        # demos: (B, K, D) -> injection (B, C, D): the demo summary seen from the learned slots
        queries = self.queries.to(demos.dtype).expand(demos.shape[0], -1, -1)
        injection = self.summary(queries, demos, demo_mask)
        z_h, z_l = carry["z_e_H"].to(demos.dtype), carry["z_e_L"].to(demos.dtype)
        ratios: list[Tensor] | None = [] if self.training else None  # a training metric: eval skips it
        for _ in range(self.h_cycles):
            for _ in range(self.l_cycles):
                z_l = self._net(z_l, z_h + injection, ratios)
            z_h = self._net(z_h, z_l, ratios)
        carry = {"z_e_H": z_h, "z_e_L": z_l}
        return (z_h, carry, {"update_ratio": mean_ratio(ratios)}) if ratios else (z_h, carry)
