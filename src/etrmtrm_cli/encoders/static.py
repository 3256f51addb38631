"""`static` (ETRM, E0a): read the demos once per step into C learned query slots; no carry."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from etrmtrm_cli.config import ArchConfig
from etrmtrm_cli.encoders.base import Carry, DemoEncoder, ReadLayer
from etrmtrm_cli.encoders.registry import register_encoder
from etrmtrm_cli.models.layers import trunc_normal_init_


class StaticConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    set_layers: int = Field(1, ge=1, description="cross-attention + MLP layers over the demo vectors")


@register_encoder("static", StaticConfig, recurrent=False)
class StaticEncoder(DemoEncoder):
    def __init__(self, arch: ArchConfig, params: StaticConfig, seq_len: int) -> None:
        super().__init__(arch, seq_len)
        self.queries = nn.Parameter(
            trunc_normal_init_(torch.empty(arch.context_tokens, arch.hidden_size), std=0.02)
        )
        self.layers = nn.ModuleList(ReadLayer(arch) for _ in range(params.set_layers))

    def read(self, carry: Carry, demos: Tensor, demo_mask: Tensor) -> tuple[Tensor, Carry]:
        # demos: (B, K, D) -> context (B, C, D), already RMS-normalised by the post-norm layers
        z = self.queries.to(demos.dtype).expand(demos.shape[0], -1, -1)
        for layer in self.layers:
            z = layer(z, demos, demo_mask)
        return z, carry
