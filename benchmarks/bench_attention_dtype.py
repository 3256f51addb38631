"""Attention forward + backward on bfloat16 inputs: torch's bfloat16 kernel against the same inputs in float32
(cast back to bfloat16), over sequence lengths and head widths, alternating in one run. This is the measurement
behind `layers.BFLOAT16_CPU_ATTENTION_IN_FLOAT32_BELOW`; rerun it on another CPU to check that rule there.

    python benchmarks/bench_attention_dtype.py --threads 2

Each shape has about the attention work of the cpu profile's decoder (32 x 116² scores per head); a ratio
bf16/float32 > 1 means float32 is faster. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor


def in_float32(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)


def forward_backward_ms(attend, shape: tuple[int, ...], reps: int) -> float:
    q, k, v = (torch.randn(*shape, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    times = []
    for i in range(reps + 2):  # two warm-up calls
        start = time.perf_counter()
        attend(q, k, v).float().sum().backward()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--lengths", default="32,64,116,200,300,500,916")
    parser.add_argument("--head-dims", default="16,64")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for head_dim in [int(d) for d in args.head_dims.split(",")]:
        for length in [int(n) for n in args.lengths.split(",")]:
            shape = (max(1, 32 * 116 * 116 // length**2), 4, length, head_dim)  # (B, H, L, hd)
            bf16, f32 = [], []
            for _ in range(2):  # alternating
                bf16.append(forward_backward_ms(F.scaled_dot_product_attention, shape, args.reps))
                f32.append(forward_backward_ms(in_float32, shape, args.reps))
            ratio = sum(bf16) / sum(f32)
            rows.append({"shape": shape, "keys_x_head_dim": length * head_dim, "bfloat16_ms": bf16,
                         "float32_ms": f32, "ratio": round(ratio, 3)})
            print(f"(B, H, L, hd) {shape}: L x hd {length * head_dim:6d}, bfloat16 "
                  f"{' / '.join(f'{t:.2f}' for t in bf16)} ms, float32 {' / '.join(f'{t:.2f}' for t in f32)} ms, "
                  f"bfloat16/float32 {ratio:.2f}", flush=True)
    print(json.dumps({"threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()
