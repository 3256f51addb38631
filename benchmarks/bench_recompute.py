"""What the SwiGLU's recompute costs: a real experiment's train steps with it (our model) against the same
model with plain autograd MLPs (same initial weights, same batches), alternating, so that a change in machine
load hits both alike.

    python benchmarks/bench_recompute.py E0b --profile cpu --steps 30 --threads 2 [--compile]

The recompute (`models/layers.SwiGLU`) keeps no gate_up activation for backward and computes gate_up(x) again
there. The last line is one JSON object.
"""

from __future__ import annotations

import copy
import json
import statistics
import types

import torch
from experiment_steps import alternate, experiment_model, experiment_parser
from torch import Tensor

from etrmtrm_cli.models import layers

WARM = 5  # untimed steps of each (a compiled model compiles in its first two)


def plain_forward(self: layers.SwiGLU, x: Tensor) -> Tensor:
    """SwiGLU.forward without the recompute: autograd keeps gate_up(x) for backward."""
    return layers._swiglu(x, self.gate_up.weight.to(x.dtype), self.down.weight.to(x.dtype))


def main() -> None:
    parser = experiment_parser(__doc__, steps=30)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    exp, data, ours = experiment_model(args)
    plain = copy.deepcopy(ours)
    for module in plain.modules():
        if isinstance(module, layers.SwiGLU):
            module.forward = types.MethodType(plain_forward, module)
    forward = torch.compile if args.compile else (lambda model: model)
    times = alternate({"recompute": (ours, forward(ours)), "plain": (plain, forward(plain))}, exp, data,
                      WARM + args.steps)
    median = {name: 1000 * statistics.median(t[WARM:]) for name, t in times.items()}
    result = {"experiment": exp.id, "profile": args.profile, "dtype": exp.arch.forward_dtype, "threads": args.threads,
              "compile": args.compile, "steps_timed": args.steps,
              **{f"{name}_ms": round(ms, 1) for name, ms in median.items()},
              "cost": round(median["recompute"] / median["plain"], 3)}
    print(f"{exp.id} ({args.profile}, {exp.arch.forward_dtype}{', compiled' if args.compile else ''}): recompute "
          f"{result['recompute_ms']} ms/step, plain autograd {result['plain_ms']} ms/step: the recompute costs "
          f"{result['cost']}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
