"""DemoGridEncoder (`encoder_type = "standard"`): one vector per demonstration pair.

Each pair (input grid, output grid) is embedded as input-token + output-token embeddings on the canvas,
run through `encoder_num_layers` transformer blocks with RoPE, attending only to real (non-PAD) cells,
and mean-pooled over those cells. Only real data costs compute:
- only the valid demos are encoded (packed from (B, K) slots into N rows);
- of each demo only its real cells are kept, packed back to back with their canvas positions for RoPE;
  linears, norms and MLPs run on the packed cells, and attention per bucket of demos of similar length
  (layers.Packing). The result equals the masked computation over the full padded canvas
  (tests/test_encoders.py checks it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from etrmtrm_cli.config import ArchConfig
from etrmtrm_cli.models.layers import Block, Embedding, Packing, RotaryEmbedding, rms_norm

PAD = 0
VOCAB = 12

# A block's MLP keeps its activations for backward in compiled calls up to this size and recomputes them above, and
# in every eager call (layers.SwiGLU's (eager, compiled) limits). A call keeps 4W values per packed cell: 4 KiB in
# bfloat16 at hidden 128 (W = 512), about 32 MiB for the ~8,000 cells of a batch there; half that per cell at the cpu
# profile. Keeping made the compiled bfloat16 `recurrent_standard` step at hidden 128 1.088x [1.063, 1.114] as fast
# under glibc's malloc and 1.017x [1.005, 1.029] under tcmalloc, the cpu profile's 1.016x [0.995, 1.039]
# (`benchmarks/bench_ab.py`, 40-60 rounds; docs/performance.md), for 20-90 MB more peak RSS (hidden-128 steps
# stay under 1 GB). Eager calls recompute: an eager float32 step at hidden 128 is already near 1 GB.
MLP_KEEP_MAX_BYTES = (0, 64 * 2**20)


class DemoGridEncoder(nn.Module):
    def __init__(self, arch: ArchConfig, seq_len: int) -> None:
        super().__init__()
        self.seq_len = seq_len  # S² canvas cells: output cells sit at positions [S², 2S²)
        d = arch.hidden_size
        self.eps = arch.rms_norm_eps
        self.norm_style = arch.encoder_norm_style
        self.dtype = getattr(torch, arch.forward_dtype)
        self.hidden = d
        self.embed_scale = math.sqrt(d)
        self.input_embed = Embedding(VOCAB, d, init_std=1.0 / math.sqrt(d), cast_to=self.dtype)
        self.output_embed = Embedding(VOCAB, d, init_std=1.0 / math.sqrt(d), cast_to=self.dtype)
        # Input cells sit at positions [0, S²), output cells at [S², 2S²), as on the full canvas.
        self.rotary = RotaryEmbedding(d // arch.num_heads, 2 * seq_len, arch.rope_theta)
        self.blocks = nn.ModuleList(
            Block(d, arch.num_heads, arch.expansion, arch.rms_norm_eps, norm_style=arch.encoder_norm_style,
                  mlp_keep_max_bytes=MLP_KEEP_MAX_BYTES)
            for _ in range(arch.encoder_num_layers)
        )

    def forward(self, demo_inputs: Tensor, demo_labels: Tensor, demo_mask: Tensor) -> Tensor:
        # demo_inputs, demo_labels: (B, K, S²) long; demo_mask: (B, K) bool -> demo vectors (B, K, D)
        b, k, _ = demo_inputs.shape
        cells, positions, slots, packing = _pack(demo_inputs, demo_labels, demo_mask)
        is_output = (positions >= self.seq_len).unsqueeze(-1)  # (T, 1)
        x = self.embed_scale * torch.where(is_output, self.output_embed(cells), self.input_embed(cells))  # (T, D)
        cos, sin = self.rotary()
        rope = (cos[positions].unsqueeze(1), sin[positions].unsqueeze(1))  # (T, 1, head_dim): canvas positions
        for block in self.blocks:
            x = block(x, rope=rope, packing=packing)
        if self.norm_style == "pre":  # pre-norm leaves the residual stream unnormalised
            x = rms_norm(x, self.eps)
        out = x.new_zeros(b * k, self.hidden).index_copy(0, slots, packing.mean(x))  # (N, D) into valid slots
        return out.view(b, k, self.hidden)  # zeros in empty slots


@torch.compiler.disable  # nonzero and mask indexing have data-dependent sizes: eager, outside compiled graphs
def _pack(demo_inputs: Tensor, demo_labels: Tensor, demo_mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Packing]:
    """The real cells of the valid demos, demo by demo -> cells (T,), their canvas positions (T,), the
    flat (B * K) slot of each valid demo (N,), and their packing."""
    # Input cells at positions [0, S²) and output cells at [S², 2S²), as on the canvas.
    tokens = torch.cat([demo_inputs[demo_mask], demo_labels[demo_mask]], dim=1)  # (N, 2S²)
    demo_of, positions = (tokens != PAD).nonzero(as_tuple=True)  # (T,) each
    slots = demo_mask.flatten().nonzero().squeeze(1)  # (N,)
    return tokens[demo_of, positions], positions, slots, Packing(demo_of, tokens.shape[0])
