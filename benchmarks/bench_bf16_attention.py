"""Attention on bfloat16 inputs on the CPU: torch's SDPA kernel against `layers._matmul_attention` (two batched
bfloat16 matmuls around a float32 softmax), forward + backward and forward alone, over sequence lengths and head
widths, alternating in one run. This is the measurement behind `layers.BFLOAT16_CPU_MATMUL_ATTENTION_MAX_SCORES`;
rerun it on another CPU to check that rule there.

    python benchmarks/bench_bf16_attention.py --threads 2

Each shape has about the attention work of the cpu profile's decoder (32 x 116² scores per head); a ratio
SDPA/matmul > 1 means the matmuls are faster. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from etrmtrm_cli.models.layers import _matmul_attention

Attend = Callable[[Tensor, Tensor, Tensor], Tensor]
KERNELS: dict[str, Attend] = {
    "sdpa": F.scaled_dot_product_attention,
    "matmul": lambda q, k, v: _matmul_attention(q, k, v, None),
}


def median_ms(attend: Attend, shape: tuple[int, ...], reps: int, backward: bool) -> float:
    q, k, v = (torch.randn(*shape, dtype=torch.bfloat16, requires_grad=backward) for _ in range(3))
    times = []
    with torch.set_grad_enabled(backward):
        for i in range(reps + 2):  # two warm-up calls
            start = time.perf_counter()
            out = attend(q, k, v)
            if backward:
                out.float().sum().backward()
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
            row: dict = {"shape": shape, "keys_x_head_dim": length * head_dim}
            for backward in (True, False):
                times: dict[str, list[float]] = {name: [] for name in KERNELS}
                for _ in range(2):  # alternating
                    for name, attend in KERNELS.items():
                        times[name].append(median_ms(attend, shape, args.reps, backward))
                pass_name = "forward_backward" if backward else "forward"
                row[pass_name] = {**{f"{name}_ms": ms for name, ms in times.items()},
                                  "ratio": round(sum(times["sdpa"]) / sum(times["matmul"]), 3)}
            rows.append(row)
            print(f"(B, H, L, hd) {shape}: L x hd {length * head_dim:6d}, SDPA/matmul "
                  + ", ".join(f"{p.replace('_', ' + ')} {row[p]['ratio']:.2f} (SDPA "
                              f"{' / '.join(f'{t:.2f}' for t in row[p]['sdpa_ms'])}, matmul "
                              f"{' / '.join(f'{t:.2f}' for t in row[p]['matmul_ms'])} ms)"
                              for p in ("forward_backward", "forward")), flush=True)
    print(json.dumps({"threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()
