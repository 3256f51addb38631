"""Time paper-scale training batches: ARC-AGI-1 training, 256 examples, 30x30, 10 demo slots, num_aug 1000.

    python benchmarks/bench_batch.py [--batches 200] [--threads 1]

Prints ms per batch (median, min) and examples per second; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from etrmtrm_cli.config import DataConfig
from etrmtrm_cli.data.dataset import build_arc_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--query-mode", choices=["test", "leave_one_out"], default="test")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = DataConfig(train_groups="all", eval_groups=1, max_grid_size=30, max_demos=10, num_aug=1000,
                     query_mode=args.query_mode)
    start = time.perf_counter()
    data = build_arc_data(cfg, seed=0)
    build_s = time.perf_counter() - start
    for step in range(args.warmup):
        data.train_batch(step, args.batch_size)
    times, cpu_times = [], []  # wall clock, and this process's CPU time (robust to a busy machine)
    for step in range(args.warmup, args.warmup + args.batches):
        start, cpu_start = time.perf_counter(), time.process_time()
        data.train_batch(step, args.batch_size)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)

    median_ms, min_ms = 1e3 * statistics.median(times), 1e3 * min(times)
    cpu_median_ms = 1e3 * statistics.median(cpu_times)
    examples_per_s = args.batch_size * len(times) / sum(times)
    print(f"ArcData: {len(data.groups)} groups, {data.examples_per_epoch} examples/epoch, "
          f"built in {build_s:.2f} s")
    print(f"{args.batches} batches of {args.batch_size} ({args.query_mode}, {args.threads} thread(s)): "
          f"median {median_ms:.1f} ms, min {min_ms:.1f} ms, CPU median {cpu_median_ms:.1f} ms, "
          f"{examples_per_s:,.0f} examples/s")
    print(json.dumps({
        "batch_size": args.batch_size, "query_mode": args.query_mode, "threads": args.threads,
        "batches": args.batches, "median_ms": round(median_ms, 2), "min_ms": round(min_ms, 2),
        "cpu_median_ms": round(cpu_median_ms, 2),
        "examples_per_s": round(examples_per_s), "build_s": round(build_s, 2),
    }))


if __name__ == "__main__":
    main()
