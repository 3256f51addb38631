"""float32 attention on the CPU: torch's flash attention kernel (F.scaled_dot_product_attention) against
`layers.matmul_attention` (two batched matmuls around the whole score matrix), over sequence lengths and head
widths, forward + backward and forward alone, alternating in one run. This is the measurement behind
`layers.MATMUL_ATTENTION_BELOW`; rerun it on another CPU to check that rule there.

    python benchmarks/bench_attention_kernel.py --threads 2

Each shape has about the attention work of the cpu profile's decoder (32 x 116² scores per head); a ratio
flash/matmul > 1 means the matmul attention is faster. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor

from etrmtrm_cli.models.layers import matmul_attention


def by_matmuls(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return matmul_attention(q, k, v, None)[0]


def median_ms(attend, shape: tuple[int, ...], reps: int, backward: bool) -> float:
    q, k, v = (torch.randn(*shape, requires_grad=backward) for _ in range(3))
    grad_out = torch.randn(*shape)  # dense, as a real backward's (sum().backward() would hand a broadcast one)
    times = []
    for i in range(reps + 2):  # two warm-up calls
        start = time.perf_counter()
        out = attend(q, k, v)
        if backward:
            out.backward(grad_out)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--lengths", default="32,64,116,200,300,500,916")
    parser.add_argument("--head-dims", default="16,32,64")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for head_dim in [int(d) for d in args.head_dims.split(",")]:
        for length in [int(n) for n in args.lengths.split(",")]:
            shape = (max(1, 32 * 116 * 116 // length**2), 4, length, head_dim)  # (B, H, L, hd)
            row = {"shape": shape, "keys_x_head_dim": length * head_dim}
            for mode, backward in (("forward_backward", True), ("forward", False)):
                flash, matmul = [], []
                with torch.set_grad_enabled(backward):
                    for _ in range(2):  # alternating
                        flash.append(median_ms(F.scaled_dot_product_attention, shape, args.reps, backward))
                        matmul.append(median_ms(by_matmuls, shape, args.reps, backward))
                row[mode] = {"flash_ms": flash, "matmul_ms": matmul, "ratio": round(sum(flash) / sum(matmul), 3)}
            rows.append(row)
            print(f"(B, H, L, hd) {shape}: L x hd {length * head_dim:6d}, flash/matmul "
                  f"{row['forward_backward']['ratio']:.2f} forward + backward "
                  f"({' / '.join(f'{t:.2f}' for t in row['forward_backward']['flash_ms'])} against "
                  f"{' / '.join(f'{t:.2f}' for t in row['forward_backward']['matmul_ms'])} ms), "
                  f"{row['forward']['ratio']:.2f} forward", flush=True)
    print(json.dumps({"threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()
