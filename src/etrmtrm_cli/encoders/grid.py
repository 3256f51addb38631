"""DemoGridEncoder (`encoder_type = "standard"`): one vector per demonstration pair.

Each pair (input grid, output grid) is embedded as input-token + output-token embeddings on the canvas,
run through `encoder_num_layers` transformer blocks with RoPE, attending only to real (non-PAD) cells,
and mean-pooled over those cells. Two things keep the cost to the real data, not the padding:
- only the valid demos are encoded (packed from (B, K) slots into N rows);
- the canvas is cropped to the batch's real extent. RoPE positions stay those of the full canvas, so the
  result equals the masked computation over the full padded canvas (tests/test_encoders.py checks it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from etrmtrm_cli.config import ArchConfig
from etrmtrm_cli.layers import Block, Embedding, RotaryEmbedding, rms_norm

PAD = 0
VOCAB = 12


class DemoGridEncoder(nn.Module):
    def __init__(self, arch: ArchConfig, seq_len: int) -> None:
        super().__init__()
        self.side = math.isqrt(seq_len)
        if self.side * self.side != seq_len:
            raise ValueError(f"seq_len {seq_len} is not a square canvas")
        d = arch.hidden_size
        self.eps = arch.rms_norm_eps
        self.norm_style = arch.encoder_norm_style
        self.dtype = getattr(torch, arch.forward_dtype)
        self.embed_scale = math.sqrt(d)
        self.input_embed = Embedding(VOCAB, d, init_std=1.0 / math.sqrt(d), cast_to=self.dtype)
        self.output_embed = Embedding(VOCAB, d, init_std=1.0 / math.sqrt(d), cast_to=self.dtype)
        # Input cells sit at positions [0, S²), output cells at [S², 2S²), as on the full canvas.
        self.rotary = RotaryEmbedding(d // arch.num_heads, 2 * seq_len, arch.rope_theta)
        self.blocks = nn.ModuleList(
            Block(d, arch.num_heads, arch.expansion, arch.rms_norm_eps, norm_style=arch.encoder_norm_style)
            for _ in range(arch.encoder_num_layers)
        )

    def forward(self, demo_inputs: Tensor, demo_labels: Tensor, demo_mask: Tensor) -> Tensor:
        # demo_inputs, demo_labels: (B, K, S²) long; demo_mask: (B, K) bool -> demo vectors (B, K, D)
        b, k, _ = demo_inputs.shape
        inputs, outputs = demo_inputs[demo_mask], demo_labels[demo_mask]  # (N, S²) valid demos only
        rows, cols = self._extent(inputs, outputs)
        crop = self._crop_index(rows, cols, inputs.device)  # (T,) flat canvas positions kept
        tokens = torch.cat([inputs[:, crop], outputs[:, crop]], dim=1)  # (N, 2T)
        real = tokens != PAD  # (N, 2T)
        t = crop.numel()
        x = torch.cat([self.input_embed(tokens[:, :t]), self.output_embed(tokens[:, t:])], dim=1)
        x = self.embed_scale * x  # (N, 2T, D)
        cos, sin = self.rotary()
        positions = torch.cat([crop, crop + self.side * self.side])
        rope = (cos[positions], sin[positions])
        for block in self.blocks:
            x = block(x, rope=rope, key_mask=real)
        if self.norm_style == "pre":  # pre-norm leaves the residual stream unnormalised
            x = rms_norm(x, self.eps)
        weights = real.to(x.dtype).unsqueeze(-1)  # (N, 2T, 1)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (N, D)
        out = pooled.new_zeros(b, k, pooled.shape[-1])
        out[demo_mask] = pooled
        return out  # (B, K, D), zeros in empty slots

    def _extent(self, inputs: Tensor, outputs: Tensor) -> tuple[int, int]:
        """Rows and columns of the canvas that hold any real token of any demo in the batch."""
        real = ((inputs != PAD) | (outputs != PAD)).view(-1, self.side, self.side).any(0)  # (S, S)
        if not bool(real.any()):
            return 1, 1
        rows = int(real.any(1).nonzero().max()) + 1
        cols = int(real.any(0).nonzero().max()) + 1
        return rows, cols

    def _crop_index(self, rows: int, cols: int, device: torch.device) -> Tensor:
        r = torch.arange(rows, device=device).unsqueeze(1)
        c = torch.arange(cols, device=device).unsqueeze(0)
        return (r * self.side + c).reshape(-1)  # (rows*cols,) row-major canvas positions
