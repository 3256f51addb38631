"""Two source trees' training steps, alternating step by step in one run: how much faster is B than A?

    git worktree add /tmp/old <commit>
    python benchmarks/bench_ab.py --src /tmp/old/src --src src --rounds 40 -- --encoder recurrent_standard \
        --hidden 64 --heads 4 --h-cycles 2 --l-cycles 2 --canvas 10 --max-demos 7 --demos-used arc --dtype bfloat16 \
        --compile

Each tree runs in a worker process of its own (that tree first on PYTHONPATH), which builds `bench_step.py`'s step
with the arguments after `--` (the same seeded batches in both), runs its warmup steps (and its compile) and then
waits. The driver then asks each worker in turn for one step, in rounds, swapping which goes first every round,
so that both sides of a round meet the machine in the same state: on a shared machine, two whole runs or two
benchmark processes minutes apart differ by 10-20 %, which hides a change of a few per cent. A worker that
waits uses no CPU. Prints each side's median step and the ratio A/B (> 1: B is faster) as a geometric mean of
the rounds' ratios with a 95 % t-interval on their logs (`analysis.stats.estimate`); consecutive rounds are not
fully independent, so read the interval as a guide, not a test. The last line is one JSON object.
Both trees must have what `bench_step.py` imports (`build_model`, `train_step`, ...).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from etrmtrm_cli.analysis.stats import estimate

BENCHMARKS = Path(__file__).resolve().parent


def worker(step_args: list[str]) -> None:
    """Build the step, warm it up, say "ready <its tree>"; then one step per "step" line on stdin, answered with
    its seconds."""
    import torch
    from bench_step import add_model_arguments, our_step, seeded_batches

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    for name, default in (("warmup", 3), ("threads", 2)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--demos-used", default="3")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args(step_args)
    torch.set_num_threads(args.threads)
    batches, _ = seeded_batches(args)
    step, _, _ = our_step(args, batches)
    for _ in range(args.warmup):
        step()
    import etrmtrm_cli

    print("ready", Path(etrmtrm_cli.__file__).parent.parent, flush=True)  # the tree it runs
    for line in sys.stdin:
        if line.strip() != "step":
            break
        start = time.perf_counter()
        step()
        print(time.perf_counter() - start, flush=True)


def start_worker(src: Path, step_args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src.resolve()), str(BENCHMARKS)])}
    return subprocess.Popen([sys.executable, __file__, "--worker", "--", *step_args], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def ask(proc: subprocess.Popen, request: str | None) -> str:
    if request is not None:
        proc.stdin.write(request + "\n")
        proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"a worker exited early (status {proc.wait()}); its error is above")
    return line.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, action="append", help="a source tree (its src/ dir): A, then B")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    step_args = rest[1:] if rest[:1] == ["--"] else rest
    if args.worker:
        worker(step_args)
        return
    if not args.src or len(args.src) != 2:
        parser.error("give exactly two --src trees: A, then B")
    if args.rounds < 2:
        parser.error("--rounds must be at least 2")
    workers = [start_worker(src, step_args) for src in args.src]
    try:
        for proc, src in zip(workers, args.src, strict=True):  # both built and warmed up before any step is timed
            if ask(proc, None) != f"ready {src.resolve()}":
                raise SystemExit(f"the worker for {src} did not start, or imported etrmtrm_cli from elsewhere")
        times: list[list[float]] = [[], []]  # seconds per step, A and B
        for round_ in range(args.rounds):
            for side in (0, 1) if round_ % 2 == 0 else (1, 0):
                times[side].append(float(ask(workers[side], "step")))
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.stdin.close()
                proc.wait()
    ratio = estimate([math.log(a / b) for a, b in zip(*times, strict=True)])
    result = {
        "src": [str(src) for src in args.src], "rounds": args.rounds,
        "a_ms_median": round(1000 * statistics.median(times[0]), 2),
        "b_ms_median": round(1000 * statistics.median(times[1]), 2),
        "a_over_b": round(math.exp(ratio.mean), 4),
        "ci95": [round(math.exp(ratio.lo), 4), round(math.exp(ratio.hi), 4)],
    }
    print(f"A {result['a_ms_median']} ms/step, B {result['b_ms_median']} ms/step (medians of {args.rounds}); "
          f"A/B {result['a_over_b']:.3f}x, 95 % interval [{result['ci95'][0]:.3f}, {result['ci95'][1]:.3f}], "
          f"n = {args.rounds} rounds")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
