"""Activation memory of one training step: what autograd keeps from the forward for the backward.

    python benchmarks/bench_memory.py --encoder static    (the model sizes of bench_step.py; --demos-used a number)

Counts each saved tensor's storage once, so a tensor kept by two layers (a norm's output, which the next
linear also needs) counts once. This is the allocator-independent part of a step's memory; peak RSS
(bench_step.py) adds torch itself and whatever the allocator keeps resident. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np
import torch
from bench_step import add_model_arguments, experiment, random_batch

from etrmtrm_cli.models.build import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--demos-used", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = build_model(experiment(args), args.canvas**2, num_puzzle_ids=args.batch + 1).train()
    batch = random_batch(args, np.random.default_rng(args.seed), None)
    carry = model.initial_carry(batch)
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}
    by_shape: Counter[str] = Counter()

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters and storage.data_ptr() not in saved:
            saved[storage.data_ptr()] = storage.nbytes()
            by_shape[str(tuple(tensor.shape))] += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model(carry, batch, torch.Generator().manual_seed(args.seed))
    mib = sum(saved.values()) / 2**20
    print(f"{args.encoder}: {mib:.1f} MiB of activations saved for backward, largest by shape:")
    for shape, size in by_shape.most_common(5):
        print(f"  {size / 2**20:7.1f} MiB  {shape}")
    print(json.dumps({"encoder": args.encoder, "saved_mib": round(mib, 1), "tensors": len(saved)}))


if __name__ == "__main__":
    main()
