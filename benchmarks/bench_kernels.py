"""How near this machine's peak the kernels of a cpu-profile step run: the linears' matmuls and attention.

    python benchmarks/bench_kernels.py [--hidden 64 --heads 4 --tokens 3712 --batch 32 --seq 116 --threads 2]

Matmuls: GFLOP/s of each linear of a block at the profile's shapes ((tokens x D) @ (D x out), tokens = batch x
(prefix + canvas cells)), against a 1024³ matmul, the machine's practical peak. Attention at the decoder's shape
(batch, heads, seq, D / heads), forward and backward: torch's SDPA as the model calls it (its flash kernel on
the CPU) against the same computation as two batched matmuls and a softmax ("math"), forward alone and with
backward. The packed encoder's gather of q, k, v rows into its attention buckets (`--encoder-tokens` rows of
(heads, D / heads), gathered in a random order), forward and backward: advanced indexing `x[index]` against
`index_select`, whose backward is an index_add instead of an accumulating index_put. Best of 3 repeats each;
the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from bench_decoder import matmul_peak_gflops
from torch import Tensor


def best_ms(fn: Callable[[], object], reps: int, repeats: int = 3) -> float:
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - start) / reps * 1000)
    return best


def matmul_gflops(m: int, k: int, n: int, reps: int) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    return 2 * m * k * n / best_ms(lambda: a @ b, reps) / 1e6


def math_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # (B, H, T, T)
    return torch.softmax(scores, dim=-1) @ v


def attention_ms(attend: Callable[[Tensor, Tensor, Tensor], Tensor], shape: tuple[int, ...], backward: bool,
                 reps: int) -> float:
    q, k, v = (torch.randn(shape, requires_grad=backward) for _ in range(3))
    grad = torch.randn(shape)
    if backward:  # gradients returned, not accumulated into .grad
        return best_ms(lambda: torch.autograd.grad(attend(q, k, v), (q, k, v), grad), reps)
    with torch.no_grad():
        return best_ms(lambda: attend(q, k, v), reps)


def gather_ms(gather: Callable[[Tensor, Tensor], Tensor], rows: int, heads: int, head_dim: int, reps: int) -> float:
    """Forward and backward of gathering q, k and v (rows, heads, head_dim) in a random row order."""
    qkv = [torch.randn(rows, heads, head_dim, requires_grad=True) for _ in range(3)]
    index = torch.randperm(rows)
    grad = torch.randn(rows, heads, head_dim)
    return best_ms(lambda: torch.autograd.grad([gather(x, index) for x in qkv], qkv, [grad] * 3), reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in (("hidden", 64), ("heads", 4), ("tokens", 3712), ("batch", 32), ("seq", 116),
                          ("mlp-width", 256), ("encoder-tokens", 11200), ("threads", 2), ("reps", 30)):
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d, t = args.hidden, args.tokens
    result: dict[str, object] = {"threads": args.threads, "peak_gflops": round(matmul_peak_gflops(), 1)}
    print(f"{args.threads} threads; matmul 1024³: {result['peak_gflops']} GFLOP/s")
    linears = {"qkv": (t, d, 3 * d), "out": (t, d, d), "gate_up": (t, d, 2 * args.mlp_width),
               "down": (t, args.mlp_width, d)}
    rates = {name: round(matmul_gflops(m, k, n, args.reps), 1) for name, (m, k, n) in linears.items()}
    for name, (m, k, n) in linears.items():
        print(f"  linear {name:8s} ({m} x {k}) @ ({k} x {n}): {rates[name]} GFLOP/s")
    result["linears_gflops"] = rates
    shape = (args.batch, args.heads, args.seq, d // args.heads)
    result["attention_shape"] = list(shape)
    forward_flop = 4 * args.batch * args.seq**2 * d  # q @ k^T and p @ v over all heads
    for backward in (False, True):
        label = "forward+backward" if backward else "forward"
        flash = attention_ms(F.scaled_dot_product_attention, shape, backward, args.reps)
        math = attention_ms(math_attention, shape, backward, args.reps)
        result[f"attention_{label}_ms"] = {"sdpa": round(flash, 2), "math": round(math, 2)}
        gflops = "" if backward else f" ({forward_flop / flash / 1e6:.0f} and {forward_flop / math / 1e6:.0f} GFLOP/s)"
        print(f"  attention {shape} {label}: sdpa {flash:.2f} ms, math {math:.2f} ms{gflops} "
              f"(sdpa/math {flash / math:.2f})")
    gathers = {"indexing": lambda x, i: x[i], "index_select": lambda x, i: x.index_select(0, i)}
    head_dim = d // args.heads
    times = {name: gather_ms(fn, args.encoder_tokens, args.heads, head_dim, args.reps) for name, fn in gathers.items()}
    result["gather_forward+backward_ms"] = {name: round(ms, 2) for name, ms in times.items()}
    print(f"  gather q, k, v ({args.encoder_tokens}, {args.heads}, {head_dim}) forward+backward: indexing "
          f"{times['indexing']:.2f} ms, index_select {times['index_select']:.2f} ms "
          f"(indexing/index_select {times['indexing'] / times['index_select']:.2f})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
