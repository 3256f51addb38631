"""DemoGridEncoder (`encoder_type = "standard"`): one vector per demonstration pair.

Each pair (input grid, output grid) is embedded as input-token + output-token embeddings on the canvas,
run through `encoder_num_layers` transformer blocks with RoPE, attending only to real (non-PAD) cells,
and mean-pooled over those cells. Only real data costs compute:
- only the valid demos are encoded (packed from (B, K) slots into N rows);
- of each demo only its real cells are gathered, each keeping its canvas position for RoPE, so the
  result equals the masked computation over the full padded canvas (tests/test_encoders.py checks it).
  Demos with similar counts of real cells share one padded length (a few buckets).
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
        self.seq_len = seq_len  # S² canvas cells: output cells sit at positions [S², 2S²)
        d = arch.hidden_size
        self.eps = arch.rms_norm_eps
        self.norm_style = arch.encoder_norm_style
        self.dtype = getattr(torch, arch.forward_dtype)
        self.hidden = d
        self.max_buckets = 16  # buckets of >= 8 demos each
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
        # Valid demos only, input cells at positions [0, S²) and output cells at [S², 2S²) as on the canvas.
        tokens = torch.cat([demo_inputs[demo_mask], demo_labels[demo_mask]], dim=1)  # (N, 2S²)
        real = tokens != PAD
        counts = real.sum(1)  # (N,)
        positions = torch.argsort(~real, dim=1, stable=True)  # (N, 2S²): real cells first, in canvas order
        pooled = tokens.new_zeros(tokens.shape[0], self.hidden, dtype=self.dtype)
        # Demos with similar counts share one padded length: the few buckets keep PAD out at little overhead.
        order = torch.argsort(counts)
        for bucket in torch.tensor_split(order, min(self.max_buckets, max(1, order.numel() // 8))):
            if bucket.numel():
                length = max(1, int(counts[bucket].max()))
                pooled[bucket] = self._encode(tokens[bucket], positions[bucket, :length])
        out = pooled.new_zeros(b, k, pooled.shape[-1])
        out[demo_mask] = pooled
        return out  # (B, K, D), zeros in empty slots

    def _encode(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """Encode n demos from their cells at `positions` (n, L) of the (n, 2S²) canvas tokens -> (n, D)."""
        cells = tokens.gather(1, positions)  # (n, L)
        real = cells != PAD  # (n, L): False only in the bucket's padding
        is_output = (positions >= self.seq_len).unsqueeze(-1)  # (n, L, 1)
        x = torch.where(is_output, self.output_embed(cells), self.input_embed(cells))
        x = self.embed_scale * x  # (n, L, D)
        cos, sin = self.rotary()
        rope = (cos[positions].unsqueeze(1), sin[positions].unsqueeze(1))  # (n, 1, L, head_dim): per-demo positions
        for block in self.blocks:
            x = block(x, rope=rope, key_mask=real)
        if self.norm_style == "pre":  # pre-norm leaves the residual stream unnormalised
            x = rms_norm(x, self.eps)
        weights = real.to(x.dtype).unsqueeze(-1)  # (n, L, 1)
        return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (n, D)
