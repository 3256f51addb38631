"""Before a run starts: will one training step fit in this machine's memory? An estimate, not a promise.

Parameters are counted exactly (the model is built on the meta device, which allocates nothing). The
step's activations are estimated from a measured constant: autograd keeps about ACTIVATION_FLOATS floats
per (token, hidden unit, layer) of the decoder's gradient cycle (120 MiB for TRM at hidden 128, batch 32,
116 tokens, 2 layers; `benchmarks/bench_memory.py --encoder trm`). The encoder reads only real cells:
we count TYPICAL_DEMOS demo pairs (most ARC tasks have 2-4) whose grids fill TYPICAL_FILL of the canvas.
The check refuses only runs whose estimate exceeds the memory available, so it errs towards starting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from etrmtrm_cli.config import Experiment
from etrmtrm_cli.errors import ConfigError
from etrmtrm_cli.models.build import build_model

ACTIVATION_FLOATS = 33
TYPICAL_DEMOS = 3
TYPICAL_FILL = 0.25
OPTIMIZER_COPIES = 4  # weights, gradient, Adam's two moments (float32 each)
TORCH_OVERHEAD = 512 * 2**20  # torch itself and its allocator's slack, measured ~320-450 MiB on the CPU
GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int
    parameter_bytes: int  # with gradients, optimizer state and the EMA copy
    activation_bytes: int  # one step, this rank's batch

    @property
    def total_bytes(self) -> int:
        return self.parameter_bytes + self.activation_bytes + TORCH_OVERHEAD


def estimate_memory(exp: Experiment, seq_len: int, num_puzzle_ids: int, world_size: int = 1) -> MemoryEstimate:
    with torch.device("meta"):
        model = build_model(exp, seq_len, num_puzzle_ids)
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers())
    copies = OPTIMIZER_COPIES + (1 if exp.train.ema else 0)
    arch, batch = exp.arch, exp.train.batch_size // world_size
    decoder = batch * (seq_len + arch.puzzle_emb_len) * arch.hidden_size * arch.L_layers
    demo_cells = min(exp.data.max_demos, TYPICAL_DEMOS) * 2 * seq_len * TYPICAL_FILL
    encoder = 0 if exp.model == "trm" else batch * demo_cells * arch.hidden_size * arch.encoder_num_layers
    activations = int(4 * ACTIVATION_FLOATS * (decoder + encoder))
    return MemoryEstimate(params, 4 * (params * copies + buffers), activations)


def available_bytes(device: torch.device) -> int | None:
    """Memory a new run can use on `device`: free GPU memory, or MemAvailable of /proc/meminfo on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(exp: Experiment, seq_len: int, num_puzzle_ids: int, device: torch.device,
                 world_size: int = 1, local_world_size: int = 1) -> MemoryEstimate:
    """Refuse, before anything is allocated or written, a run this machine cannot hold. On the CPU the
    `local_world_size` processes of one machine share its memory; a GPU is each process's own."""
    need = estimate_memory(exp, seq_len, num_puzzle_ids, world_size)
    sharing = local_world_size if device.type == "cpu" else 1
    have = available_bytes(device)
    if have is not None and sharing * need.total_bytes > have:
        each = f" each, {sharing * need.total_bytes / GIB:.1f} GiB for the {sharing} processes on it" if sharing > 1 \
            else ""
        raise ConfigError(
            f"{exp.id}: one training step needs about {need.total_bytes / GIB:.1f} GiB ({need.parameters:,} "
            f"parameters: {need.parameter_bytes / GIB:.1f} GiB with gradients and optimizer state; activations "
            f"of one step: about {need.activation_bytes / GIB:.1f} GiB){each}, but {device} has "
            f"{have / GIB:.1f} GiB available: lower arch.hidden_size or train.global_batch_size"
        )
    return need
