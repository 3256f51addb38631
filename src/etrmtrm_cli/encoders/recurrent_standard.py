"""`recurrent_standard` (ETRMTRM Variant A, E0b): a carry z_e refined by one read of the demos per ACT step.

    z_e <- norm(z_e + CrossAttn(z_e -> demo vectors));  z_e <- norm(z_e + MLP(z_e));  context = z_e

Its stats (base.py): update_ratio = per slot, the mean over those two post-norm sublayers of
||update|| / ||input|| (||CrossAttn(z_e)|| / ||z_e|| and ||MLP(z')|| / ||z'||), measured before each norm.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from etrmtrm_cli.config import ArchConfig
from etrmtrm_cli.encoders.base import Carry, DemoEncoder, ReadLayer, ReadResult, mean_ratio, reset_slots
from etrmtrm_cli.encoders.registry import register_encoder
from etrmtrm_cli.models.layers import trunc_normal_init_


class RecurrentStandardConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


@register_encoder("recurrent_standard", RecurrentStandardConfig, recurrent=True)
class RecurrentStandardEncoder(DemoEncoder):
    state_key = "z_e"

    def __init__(self, arch: ArchConfig, params: RecurrentStandardConfig, seq_len: int) -> None:
        super().__init__(arch, seq_len)
        # Fixed (not trained) like TRM's H_init: every fresh slot starts from the same state.
        self.register_buffer(
            "z_init", trunc_normal_init_(torch.empty(arch.context_tokens, arch.hidden_size), std=1.0)
        )
        self.update = ReadLayer(arch)

    def initial_carry(self, batch_size: int, device: torch.device) -> Carry:
        z = self.z_init.to(device=device, dtype=self.dtype)
        return {"z_e": z.expand(batch_size, -1, -1).clone()}  # (B, C, D)

    def reset_carry(self, reset: Tensor, carry: Carry) -> Carry:
        return reset_slots(reset, carry, {"z_e": self.z_init})

    def read(self, carry: Carry, demos: Tensor, demo_mask: Tensor) -> ReadResult:
        ratios: list[Tensor] | None = [] if self.training else None  # a training metric: eval skips it
        z = self.update(carry["z_e"].to(demos.dtype), demos, demo_mask, ratios)  # (B, C, D), with its graph
        return (z, {"z_e": z}, {"update_ratio": mean_ratio(ratios)}) if ratios else (z, {"z_e": z})
