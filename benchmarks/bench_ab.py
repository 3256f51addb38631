"""Two training steps, alternating step by step in one run: how much faster is B than A?

    git worktree add /tmp/old <commit>
    python benchmarks/bench_ab.py --src /tmp/old/src --src src --rounds 40 -- --encoder recurrent_standard \
        --hidden 64 --heads 4 --h-cycles 2 --l-cycles 2 --canvas 10 --max-demos 7 --demos-used arc --dtype bfloat16 \
        --compile

A side is a source tree (`--src`: its src/ dir) or the public ETRM code (`--reference`: a checkout of
github.com/bdsaglam/etrm; ETRM for `static`, ETRMTRM for `recurrent_standard`, as `bench_step.py
--reference-path` builds them). `--malloc A,B` gives each side its malloc: `tcmalloc` (preloaded, as `etrmtrm`
runs itself), `system` (glibc's, as the public code runs) or `inherit` (this process's environment, the
default). So the public code against ours, each on the malloc it runs on:

    python benchmarks/bench_ab.py --reference /path/to/etrm --src src --malloc system,tcmalloc --rounds 30 -- \
        --encoder static --dtype bfloat16 --compile    # A/B = how many times faster ours is

Each side runs in a worker process of its own (a tree first on PYTHONPATH), which builds `bench_step.py`'s step
with the arguments after `--` (the same seeded batches in both), runs its warmup steps (and its compile) and then
waits. The driver then asks each worker in turn for one step, in rounds, swapping which goes first every round,
so that both sides of a round meet the machine in the same state: on a shared machine, two whole runs or two
benchmark processes minutes apart differ by 10-20 %, which hides a change of a few per cent. A worker that
waits uses no CPU. Prints each side's median step and the ratio A/B (> 1: B is faster) as a geometric mean of
the rounds' ratios with a 95 % t-interval on their logs (`analysis.stats.estimate`); consecutive rounds are not
fully independent, so read the interval as a guide, not a test. The last line is one JSON object.
Both trees must have what `bench_step.py` imports (`build_model`, `train_step`, `allocator`, ...).
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

from etrmtrm_cli.allocator import ENV, find_tcmalloc, library_dirs
from etrmtrm_cli.analysis.stats import estimate

BENCHMARKS = Path(__file__).resolve().parent
MALLOCS = ("inherit", "system", "tcmalloc")


def worker(step_args: list[str], reference: Path | None) -> None:
    """Build the step (ours, or the public code's at `reference`), warm it up, say "ready <its tree> <its
    malloc>"; then one step per "step" line on stdin, answered with its seconds."""
    import torch
    from bench_step import add_model_arguments, our_step, reference_step, seeded_batches

    from etrmtrm_cli.allocator import loaded_allocator

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    for name, default in (("warmup", 3), ("threads", 2)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--demos-used", default="3")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args(step_args)
    args.reference_path = reference
    torch.set_num_threads(args.threads)
    batches, _ = seeded_batches(args)
    step, _, _ = reference_step(args, batches) if reference else our_step(args, batches)
    for _ in range(args.warmup):
        step()
    import etrmtrm_cli

    # What it runs: the checkout the public code was imported from, or the tree of etrmtrm_cli.
    module = sys.modules["models.losses"] if reference else etrmtrm_cli
    tree = Path(module.__file__).parents[1]
    print("ready", tree.resolve(), loaded_allocator(), sep="\t", flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        start = time.perf_counter()
        step()
        print(time.perf_counter() - start, flush=True)


def worker_env(kind: str, path: Path, malloc: str) -> dict[str, str]:
    """The environment of a side's worker: a tree first on PYTHONPATH (the reference side's batches are drawn by
    this process's etrmtrm_cli), and LD_PRELOAD as `malloc` says."""
    import etrmtrm_cli

    tree = path if kind == "src" else Path(etrmtrm_cli.__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree.resolve()), str(BENCHMARKS)])}
    if malloc == "inherit":
        return env
    env.pop(ENV, None)
    preloaded = [lib for lib in env.pop("LD_PRELOAD", "").split() if "tcmalloc" not in Path(lib).name]
    if malloc == "tcmalloc":
        library = find_tcmalloc(library_dirs())
        if library is None:
            raise SystemExit("--malloc tcmalloc: no tcmalloc library here (apt-get install libtcmalloc-minimal4)")
        preloaded.append(str(library))
    if preloaded:
        env["LD_PRELOAD"] = " ".join(preloaded)
    return env


def start_worker(kind: str, path: Path, malloc: str, step_args: list[str]) -> subprocess.Popen:
    reference = ["--worker-reference", str(path.resolve())] if kind == "reference" else []
    return subprocess.Popen([sys.executable, __file__, "--worker", *reference, "--", *step_args],
                            env=worker_env(kind, path, malloc), text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)


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
    parser.add_argument("--src", dest="sides", action="append", type=lambda p: ("src", Path(p)),
                        help="a source tree (its src/ dir) as the next side: A, then B")
    parser.add_argument("--reference", dest="sides", action="append", type=lambda p: ("reference", Path(p)),
                        help="a checkout of the public ETRM code as the next side")
    parser.add_argument("--malloc", default="inherit,inherit", help=f"A's and B's malloc, each one of {MALLOCS}")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-reference", type=Path, default=None, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    step_args = rest[1:] if rest[:1] == ["--"] else rest
    if args.worker:
        worker(step_args, args.worker_reference)
        return
    mallocs = args.malloc.split(",")
    if not args.sides or len(args.sides) != 2:
        parser.error("give exactly two sides, --src or --reference: A, then B")
    if len(mallocs) != 2 or not set(mallocs) <= set(MALLOCS):
        parser.error(f"--malloc takes two of {', '.join(MALLOCS)}, A's then B's: got {args.malloc!r}")
    if args.rounds < 2:
        parser.error("--rounds must be at least 2")
    from bench_step import add_model_arguments

    model = argparse.ArgumentParser(add_help=False)
    add_model_arguments(model)
    if any(kind == "reference" for kind, _ in args.sides) and \
            model.parse_known_args(step_args)[0].encoder not in ("static", "recurrent_standard"):
        parser.error("--reference compares the public code with `static` and `recurrent_standard` only")
    workers = [start_worker(kind, path, malloc, step_args)
               for (kind, path), malloc in zip(args.sides, mallocs, strict=True)]
    try:
        ran = []  # what each worker says it runs: its tree and its malloc
        for proc, (_, path), malloc in zip(workers, args.sides, mallocs, strict=True):  # all warm before timing
            _, tree, loaded = (ask(proc, None).split("\t") + ["", "", ""])[:3]
            if tree != str(path.resolve()) or malloc not in ("inherit", loaded):
                raise SystemExit(f"the worker for {path} did not start, imported etrmtrm_cli from elsewhere, or "
                                 f"runs on another malloc than {malloc} ({loaded or 'none said'})")
            ran.append(loaded)
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
        "sides": [f"{kind} {path}" for kind, path in args.sides], "malloc": ran, "rounds": args.rounds,
        "a_ms_median": round(1000 * statistics.median(times[0]), 2),
        "b_ms_median": round(1000 * statistics.median(times[1]), 2),
        "a_over_b": round(math.exp(ratio.mean), 4),
        "ci95": [round(math.exp(ratio.lo), 4), round(math.exp(ratio.hi), 4)],
    }
    (kind_a, _), (kind_b, _) = args.sides
    print(f"A ({kind_a}, {ran[0]}) {result['a_ms_median']} ms/step, B ({kind_b}, {ran[1]}) "
          f"{result['b_ms_median']} ms/step (medians of {args.rounds}); "
          f"A/B {result['a_over_b']:.3f}x, 95 % interval [{result['ci95'][0]:.3f}, {result['ci95'][1]:.3f}], "
          f"n = {args.rounds} rounds")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
