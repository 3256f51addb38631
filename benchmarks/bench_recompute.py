"""What the SwiGLU's recompute costs: a real experiment's train steps with it (our model) against the same
model with plain autograd MLPs (same initial weights, same batches), alternating, so that a change in machine
load hits both alike.

    python benchmarks/bench_recompute.py E0b --profile cpu --steps 30 --threads 2 [--compile]

The recompute (`models/layers.SwiGLU`) keeps no gate_up activation for backward and computes gate_up(x) again
there. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import types
from pathlib import Path

import torch
from torch import Tensor

from etrmtrm_cli.data import build_arc_data
from etrmtrm_cli.experiments_file import load_experiments
from etrmtrm_cli.models import layers
from etrmtrm_cli.models.build import build_model
from etrmtrm_cli.training.distributed import DistContext
from etrmtrm_cli.training.optim import build_optimizers
from etrmtrm_cli.training.step import Trainable, fresh_state, train_step

WARM = 5  # untimed steps of each (a compiled model compiles in its first two)


def plain_forward(self: layers.SwiGLU, x: Tensor) -> Tensor:
    """SwiGLU.forward without the recompute: autograd keeps gate_up(x) for backward."""
    return layers._swiglu(x, self.gate_up.weight.to(x.dtype), self.down.weight.to(x.dtype))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--experiments", type=Path, default=Path("experiments.toml"))
    parser.add_argument("--steps", type=int, default=30, help="timed steps of each, after WARM")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    exp = load_experiments(args.experiments).resolve(args.experiment, args.profile, ["decoder=none"])
    data = build_arc_data(exp.data, exp.seed)
    torch.manual_seed(exp.seed)
    ours = build_model(exp, data.seq_len, data.num_puzzle_ids).train()
    plain = copy.deepcopy(ours)
    for module in plain.modules():
        if isinstance(module, layers.SwiGLU):
            module.forward = types.MethodType(plain_forward, module)
    ctx = DistContext(0, 1, torch.device("cpu"))
    first = data.train_batch(0, exp.train.batch_size).as_dict()
    runs = {name: (Trainable(model, torch.compile(model) if args.compile else model, build_optimizers(model, exp)),
                   fresh_state(model, first, exp.seed))
            for name, model in (("recompute", ours), ("plain", plain))}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for step in range(WARM + args.steps):
        batch = data.train_batch(step, exp.train.batch_size).as_dict()
        for name, (parts, state) in runs.items():
            start = time.perf_counter()
            train_step(parts, batch, state, exp, ctx, 10**6)
            times[name].append(time.perf_counter() - start)
    median = {name: 1000 * statistics.median(t[WARM:]) for name, t in times.items()}
    result = {"experiment": exp.id, "profile": args.profile, "threads": args.threads, "compile": args.compile,
              "steps_timed": args.steps, **{f"{name}_ms": round(ms, 1) for name, ms in median.items()},
              "cost": round(median["recompute"] / median["plain"], 3)}
    print(f"{exp.id} ({args.profile}{', compiled' if args.compile else ''}): recompute {result['recompute_ms']} "
          f"ms/step, plain autograd {result['plain_ms']} ms/step: the recompute costs {result['cost']}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
