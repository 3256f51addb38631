"""Where the time of one training step goes, per dtype: torch.profiler over `train`'s own `train_step`.

    python benchmarks/profile_step.py --encoder recurrent_standard --hidden 64 --heads 4 --h-cycles 2 \
        --l-cycles 2 --canvas 10 --max-demos 7 --demos-used arc --dtypes float32,bfloat16 --top 15

For each dtype: the step's wall time, then the `--top` operators by self CPU time (their share of the
step), and the share of the time spent in matmuls (addmm/mm/bmm/linear and attention) against
everything else (elementwise, norms, indexing, autograd bookkeeping). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json

import torch
from bench_step import add_model_arguments, our_step, seeded_batches
from torch.profiler import ProfilerActivity, profile

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward", "aten::baddbmm")


def profile_dtype(args: argparse.Namespace, dtype: str, batches: list[dict]) -> dict:
    args.dtype = dtype
    step, _, _ = our_step(args, batches)
    for _ in range(args.warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]
    matmul_us = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    return {
        "dtype": dtype, "ms_per_step": round(total_us / 1000 / args.steps, 1),
        "matmul_share": round(matmul_us / total_us, 3),
        "top": [(e.key, round(e.self_cpu_time_total / total_us, 3), e.count // args.steps) for e in top],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--demos-used", default="3", help="a number, or 'arc' for ARC-AGI-1's distribution")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches, _ = seeded_batches(args)
    results = [profile_dtype(args, dtype, batches) for dtype in args.dtypes.split(",")]
    for r in results:
        print(f"{r['dtype']}: {r['ms_per_step']} ms/step (profiled), matmuls {100 * r['matmul_share']:.0f} %")
        for name, share, count in r["top"]:
            print(f"  {100 * share:5.1f} %  {count:6d}x  {name}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
