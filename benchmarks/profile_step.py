"""Where the time of one training step goes, per dtype: torch.profiler over `train`'s own `train_step`.

    python benchmarks/profile_step.py --encoder recurrent_standard --hidden 64 --heads 4 --h-cycles 2 \
        --l-cycles 2 --canvas 10 --max-demos 7 --demos-used arc --dtypes float32,bfloat16 --top 15

For each dtype: the step's wall time, then the `--top` operators by self CPU time (their share of the
step), and the share of the time spent in matmuls (addmm/mm/bmm/linear and attention) against
everything else (elementwise, norms, indexing, autograd bookkeeping). Then how fast the two kinds of arithmetic
ran: the FLOPs of the step's matmuls (mm/addmm/bmm/baddbmm) and of its attention kernels, counted from the shapes
the profiler recorded, over the time spent in them, against this machine's matmul peak in the step's dtype (a
1024³ matmul). Attention forward is 2 matmuls of 2·B·H·Lq·Lk·hd FLOPs; torch's CPU flash attention backward
recomputes the scores and runs 5. In bfloat16 on the CPU most attention runs as batched matmuls instead
(`layers._attend`), counted with the matmuls. With `--compile --kernels`, inductor's generated C++ kernels are
listed by name (`cpp_fused_<the ops fused>`) instead of as one call per compiled graph. The last line is one JSON
object.
"""

from __future__ import annotations

import argparse
import json

import torch
from bench_decoder import matmul_peak_gflops
from bench_step import add_model_arguments, our_step, seeded_batches
from torch.profiler import ProfilerActivity, profile

ATTENTION_OPS = {"aten::_scaled_dot_product_flash_attention_for_cpu": 2,  # op -> matmuls of 2·B·H·Lq·Lk·hd each
                 "aten::_scaled_dot_product_flash_attention_for_cpu_backward": 5}
PLAIN_MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
MATMUL_OPS = (*PLAIN_MATMUL_OPS, *ATTENTION_OPS)


def op_flops(name: str, shapes: list[list[int]]) -> int:
    """FLOPs of one call of a matmul or attention op from its input shapes (profiler record_shapes)."""
    if name in ("aten::mm", "aten::bmm"):  # (..., m, k) @ (..., k, n)
        a, b = shapes[0], shapes[1]
    elif name in ("aten::addmm", "aten::baddbmm"):  # bias, (..., m, k), (..., k, n)
        a, b = shapes[1], shapes[2]
    else:  # attention: q (B, H, Lq, hd), k (B, H, Lk, hd); the backward's inputs start with grad_out, q, k
        q, k = shapes[1:3] if name.endswith("_backward") else shapes[0:2]
        return ATTENTION_OPS[name] * 2 * q[0] * q[1] * q[2] * k[2] * q[3]
    batch = a[0] if len(a) == 3 else 1
    return 2 * batch * a[-2] * a[-1] * b[-1]


def arithmetic_rates(events: list, steps: int, peak_gflops: float) -> dict[str, dict[str, float]]:
    """{"matmul" | "attention": {gflop_per_step, ms_per_step, gflops, frac_of_peak}} from shape-grouped events; a kind
    with no call in the step is left out (attention, where it all ran as batched matmuls)."""
    out = {}
    for kind, names in (("matmul", PLAIN_MATMUL_OPS), ("attention", tuple(ATTENTION_OPS))):
        chosen = [e for e in events if e.key in names]
        if not chosen:
            continue
        flops = sum(op_flops(e.key, e.input_shapes) * e.count for e in chosen) / steps
        seconds = sum(e.self_cpu_time_total for e in chosen) / 1e6 / steps
        rate = flops / seconds / 1e9 if seconds else 0.0
        out[kind] = {"gflop_per_step": round(flops / 1e9, 3), "ms_per_step": round(1000 * seconds, 1),
                     "gflops": round(rate, 1), "frac_of_peak": round(rate / peak_gflops, 3)}
    return out


def profile_dtype(args: argparse.Namespace, dtype: str, batches: list[dict]) -> dict:
    args.dtype = dtype
    step, _, _ = our_step(args, batches)
    for _ in range(args.warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.steps):
            step()
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]
    matmul_us = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    peak = matmul_peak_gflops(getattr(torch, dtype))
    return {
        "dtype": dtype, "ms_per_step": round(total_us / 1000 / args.steps, 1),
        "matmul_share": round(matmul_us / total_us, 3), "peak_gflops": round(peak, 1),
        "rates": arithmetic_rates(prof.key_averages(group_by_input_shape=True), args.steps, peak),
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
    parser.add_argument("--kernels", action="store_true", help="time each of inductor's C++ kernels under --compile")
    args = parser.parse_args()
    # Set before anything compiles; it makes the generated kernels record themselves with the profiler.
    torch._inductor.config.cpp.enable_kernel_profile = args.kernels
    torch.set_num_threads(args.threads)
    batches, _ = seeded_batches(args)
    results = [profile_dtype(args, dtype, batches) for dtype in args.dtypes.split(",")]
    for r in results:
        print(f"{r['dtype']}: {r['ms_per_step']} ms/step (profiled), matmuls {100 * r['matmul_share']:.0f} %")
        for name, share, count in r["top"]:
            print(f"  {100 * share:5.1f} %  {count:6d}x  {name}")
        for kind, rate in r["rates"].items():
            print(f"  {kind}: {rate['gflop_per_step']} GFLOP in {rate['ms_per_step']} ms per step, {rate['gflops']} "
                  f"GFLOP/s, {100 * rate['frac_of_peak']:.0f} % of the {r['peak_gflops']} GFLOP/s {r['dtype']} peak")
        if "attention" not in r["rates"]:
            print("  attention: no call of torch's kernel; it ran as batched matmuls, counted with them")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
