"""What `layers.matmul_attention` gains in a real experiment's train steps: the model as it runs (float32
attention on the CPU below `layers.MATMUL_ATTENTION_BELOW` as two batched matmuls) against the same model with
torch's flash attention kernel everywhere (same initial weights, same batches), alternating, so that a change
in machine load hits both alike.

    python benchmarks/bench_matmul_attention.py E0b --profile cpu --steps 30 --threads 2 [--compile]

The kernels alone, over shapes: benchmarks/bench_attention_kernel.py. The last line is one JSON object.
"""

from __future__ import annotations

import copy
import json
import statistics

import torch
from experiment_steps import alternate, experiment_model, experiment_parser

from etrmtrm_cli.models import layers

WARM = 5  # untimed steps of each (a compiled model compiles in its first two)


def with_threshold(forward, threshold: int):  # noqa: ANN001, ANN201
    """`forward` run with layers.MATMUL_ATTENTION_BELOW = threshold (read at forward time; dynamo guards it)."""
    def run(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        layers.MATMUL_ATTENTION_BELOW = threshold
        return forward(*args, **kwargs)
    return run


def main() -> None:
    parser = experiment_parser(__doc__, steps=30)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    exp, data, ours = experiment_model(args)
    flash = copy.deepcopy(ours)
    compiled = torch.compile if args.compile else (lambda model: model)
    default = layers.MATMUL_ATTENTION_BELOW
    times = alternate({"matmul": (ours, with_threshold(compiled(ours), default)),
                       "flash": (flash, with_threshold(compiled(flash), 0))}, exp, data, WARM + args.steps)
    layers.MATMUL_ATTENTION_BELOW = default
    median = {name: 1000 * statistics.median(t[WARM:]) for name, t in times.items()}
    result = {"experiment": exp.id, "profile": args.profile, "threads": args.threads, "compile": args.compile,
              "steps_timed": args.steps, **{f"{name}_ms": round(ms, 1) for name, ms in median.items()},
              "speedup": round(median["flash"] / median["matmul"], 3)}
    print(f"{exp.id} ({args.profile}{', compiled' if args.compile else ''}): matmul attention {result['matmul_ms']} "
          f"ms/step, flash attention {result['flash_ms']} ms/step: {result['speedup']}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
