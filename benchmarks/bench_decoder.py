"""Time one decoder training step, `train`'s own `train_step` for P0's model: ACT forward + loss + backward +
AdamW + the puzzle table's SignSGD (no clipping, as TRM trains).

    python benchmarks/bench_decoder.py [--hidden 64 --heads 4 --layers 2 --h-cycles 2 --l-cycles 2
                                        --canvas 10 --prefix 16 --batch 32 --threads 2]
                                       [--reference-path /path/to/TinyRecursiveModels]

Prints ms/step (median), grid tokens/s and the fraction of this machine's matmul peak in the matmuls' dtype
(float32 or bfloat16, both measured in the same run) for float32, bfloat16 compute (forward_dtype) and
float32 weights under bfloat16 autocast. With --reference-path, TRM's reference model (imported from that
checkout at runtime; the project does not depend on it) is timed at the same config, its steps alternating
with ours, and how many times faster ours is printed. `--compile` compiles both (TRM's pretrain.py compiles
its model by default). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from etrmtrm_cli.config import ArchConfig, DataConfig, Experiment, TrainConfig
from etrmtrm_cli.models.build import build_model
from etrmtrm_cli.models.layers import swiglu_width
from etrmtrm_cli.training.distributed import DistContext
from etrmtrm_cli.training.optim import build_optimizers
from etrmtrm_cli.training.step import Trainable, fresh_state, train_step

VOCAB = 12
NUM_IDS = 64
MODES = ("float32", "bfloat16", "autocast")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--h-cycles", type=int, default=2)
    p.add_argument("--l-cycles", type=int, default=2)
    p.add_argument("--expansion", type=float, default=4.0)
    p.add_argument("--canvas", type=int, default=10, help="grid side S; seq_len = S*S")
    p.add_argument("--prefix", type=int, default=16, help="prefix positions P")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    p.add_argument("--compile", action="store_true", help="torch.compile both models (TRM's pretrain.py does)")
    p.add_argument("--reference-path", type=Path, default=None,
                   help="a TinyRecursiveModels checkout to time its model at the same config")
    return p.parse_args()


def matmul_peak_gflops(dtype: torch.dtype = torch.float32, n: int = 1024, repeats: int = 7) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times) / 1e9


def step_flops(args: argparse.Namespace) -> float:
    """Matmul FLOPs of one training step: all cycles forward, the last cycle (and heads) backward."""
    d, t, s = args.hidden, args.prefix + args.canvas**2, args.canvas**2
    width = swiglu_width(d, args.expansion)
    per_layer = 2 * t * d * (3 * d + d + 3 * width) + 4 * t * t * d  # projections + scores + AV
    per_net = args.layers * per_layer
    calls = args.h_cycles * (args.l_cycles + 1)
    grad_calls = args.l_cycles + 1
    heads = 2 * s * d * VOCAB + 2 * d * 2
    return args.batch * (calls * per_net + 2 * grad_calls * per_net + 3 * heads)


def make_batch(args: argparse.Namespace, gen: torch.Generator) -> dict[str, torch.Tensor]:
    s = args.canvas**2
    return {
        "inputs": torch.randint(0, VOCAB, (args.batch, s), generator=gen),
        "labels": torch.randint(0, VOCAB, (args.batch, s), generator=gen),
        "puzzle_ids": torch.randint(0, NUM_IDS, (args.batch,), generator=gen),
    }


def arch_for(args: argparse.Namespace, mode: str) -> ArchConfig:
    return ArchConfig(hidden_size=args.hidden, num_heads=args.heads, expansion=args.expansion,
                      L_layers=args.layers, H_cycles=args.h_cycles, L_cycles=args.l_cycles,
                      puzzle_emb_len=args.prefix, context_tokens=1,
                      forward_dtype="bfloat16" if mode == "bfloat16" else "float32")


def autocast_for(mode: str) -> contextlib.AbstractContextManager[Any]:
    if mode == "autocast":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def ours_step(args: argparse.Namespace, mode: str) -> Callable[[], None]:
    """`train`'s own `train_step` for P0's model (decoder + puzzle table), without clipping as TRM trains."""
    exp = Experiment(id="bench", model="trm", arch=arch_for(args, mode), data=DataConfig(max_grid_size=args.canvas),
                     train=TrainConfig(global_batch_size=args.batch, grad_clip_norm=0.0))
    model = build_model(exp, args.canvas**2, NUM_IDS).train()
    parts = Trainable(model, torch.compile(model) if args.compile else model, build_optimizers(model, exp))
    gen = torch.Generator().manual_seed(0)
    batch = make_batch(args, gen)
    state = fresh_state(model, batch, seed=0)
    ctx = DistContext(0, 1, torch.device("cpu"))

    def step() -> None:
        with autocast_for(mode):
            train_step(parts, batch, state, exp, ctx, total_steps=1_000_000)

    return step


@contextlib.contextmanager
def reference_on_path(path: Path) -> Iterator[None]:
    sys.path.insert(0, str(path))
    try:
        yield
    finally:
        sys.path.remove(str(path))


def reference_step(args: argparse.Namespace, mode: str, path: Path) -> Callable[[], None]:
    with reference_on_path(path):
        from models.losses import ACTLossHead  # type: ignore[import-not-found]
        from models.recursive_reasoning.trm import (  # type: ignore[import-not-found]
            TinyRecursiveReasoningModel_ACTV1,
        )
        from models.sparse_embedding import (  # type: ignore[import-not-found]
            CastedSparseEmbeddingSignSGD_Distributed,
        )
    config = {
        "batch_size": args.batch, "seq_len": args.canvas**2, "puzzle_emb_ndim": args.hidden,
        "num_puzzle_identifiers": NUM_IDS, "vocab_size": VOCAB, "H_cycles": args.h_cycles,
        "L_cycles": args.l_cycles, "H_layers": 0, "L_layers": args.layers, "hidden_size": args.hidden,
        "expansion": args.expansion, "num_heads": args.heads, "pos_encodings": "rope", "halt_max_steps": 16,
        "halt_exploration_prob": 0.1, "forward_dtype": "bfloat16" if mode == "bfloat16" else "float32",
        "puzzle_emb_len": args.prefix,
    }
    head = ACTLossHead(TinyRecursiveReasoningModel_ACTV1(config), "stablemax_cross_entropy")
    head.train()
    forward = torch.compile(head) if args.compile else head
    dense = torch.optim.AdamW(head.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    sparse = CastedSparseEmbeddingSignSGD_Distributed(head.model.puzzle_emb.buffers(), world_size=1,
                                                      lr=1e-2, weight_decay=0.1)
    ours = make_batch(args, torch.Generator().manual_seed(0))
    batch = {"inputs": ours["inputs"], "labels": ours["labels"],
             "puzzle_identifiers": ours["puzzle_ids"].to(torch.int32)}
    state = {"carry": head.initial_carry(batch)}

    def step() -> None:
        with autocast_for(mode):
            carry, loss, _, _, _ = forward(return_keys=[], carry=state["carry"], batch=batch)
        (loss / args.batch).backward()
        dense.step()
        sparse.step()
        dense.zero_grad(set_to_none=True)
        sparse.zero_grad(set_to_none=True)
        state["carry"] = carry

    return step


def time_steps(steps_by_name: dict[str, Callable[[], None]], warmup: int, steps: int,
               after_warmup: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Milliseconds of each step of each callable, timed in alternation so that a change in machine load
    (a shared CPU) hits all of them alike."""
    for step in steps_by_name.values():
        for _ in range(warmup):
            step()
    after_warmup()
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    for _ in range(steps):
        for name, step in steps_by_name.items():
            t0 = time.perf_counter()
            step()
            times[name].append(1e3 * (time.perf_counter() - t0))
    return times


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown mode(s) {', '.join(sorted(unknown))}; valid: {', '.join(MODES)}")
    peaks = {"float32": matmul_peak_gflops(), "bfloat16": matmul_peak_gflops(torch.bfloat16)}
    flops = step_flops(args)
    tokens = args.batch * args.canvas**2
    print(f"config: hidden {args.hidden}, heads {args.heads}, layers {args.layers}, H/L cycles "
          f"{args.h_cycles}/{args.l_cycles}, seq {args.canvas**2} + P {args.prefix}, batch {args.batch}, "
          f"threads {args.threads}, torch {torch.__version__}, {'compiled' if args.compile else 'eager'}")
    print(f"matmul peak (1024^3, best of 7): float32 {peaks['float32']:.1f} GFLOP/s, bfloat16 "
          f"{peaks['bfloat16']:.1f} GFLOP/s; model matmul FLOPs/step: {flops / 1e9:.3f} G")
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result: dict[str, Any] = {"config": config, "peak_gflops": {k: round(v, 2) for k, v in peaks.items()},
                              "step_gflop": round(flops / 1e9, 4)}
    for mode in modes:
        steps = {"ours": ours_step(args, mode)}
        if args.reference_path is not None:
            steps["reference"] = reference_step(args, mode, args.reference_path)
        timed = {name: statistics.median(ms) for name, ms in time_steps(steps, args.warmup, args.steps).items()}
        peak = peaks["float32" if mode == "float32" else "bfloat16"]  # the matmuls' dtype
        frac = {name: flops / (t / 1e3) / (peak * 1e9) for name, t in timed.items()}
        ms = timed["ours"]
        entry: dict[str, Any] = {"ms_per_step": round(ms, 2), "tokens_per_s": round(tokens / ms * 1e3, 1),
                                 "frac_of_peak": round(frac["ours"], 4)}
        line = (f"{mode:>9}: ours {ms:8.1f} ms/step  {entry['tokens_per_s']:9.0f} tok/s  "
                f"{100 * frac['ours']:5.1f}% of the {'float32' if mode == 'float32' else 'bfloat16'} peak")
        if "reference" in timed:
            ref_ms = timed["reference"]
            entry.update(reference_ms_per_step=round(ref_ms, 2), reference_frac_of_peak=round(frac["reference"], 4),
                         speedup_over_reference=round(ref_ms / ms, 3))
            line += (f"  | reference {ref_ms:8.1f} ms/step ({100 * frac['reference']:.1f}% of peak): "
                     f"ours {ref_ms / ms:.2f}x as fast")
        print(line)
        result[mode] = entry
    print(json.dumps(result))


if __name__ == "__main__":
    main()
