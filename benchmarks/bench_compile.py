"""Eager against torch.compile on a real experiment's batches: the compile time, then train steps of the two
models (same initial weights, same batches) in alternation, so that a change in machine load hits both alike.

    python benchmarks/bench_compile.py E0b --profile cpu --steps 40 --threads 2

The compile time is the compiled model's extra time over its first steps (dynamo compiles at step 1 and once
more when the demo packing's size first changes). From the medians it prints the step count where compiling
starts to pay and the estimated time of the profile's whole run both ways (its steps; evals not included).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from etrmtrm_cli.data import build_arc_data
from etrmtrm_cli.experiments_file import load_experiments
from etrmtrm_cli.models.build import build_model
from etrmtrm_cli.training.distributed import DistContext
from etrmtrm_cli.training.loop import TrainOptions, total_steps
from etrmtrm_cli.training.optim import build_optimizers
from etrmtrm_cli.training.step import Trainable, fresh_state, train_step

WARM = 5  # steps after which the compiled model has compiled everything it will (measured: 2 compiles)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--experiments", type=Path, default=Path("experiments.toml"))
    parser.add_argument("--steps", type=int, default=40, help="timed steps of each, after the first WARM")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", default="default", help="torch.compile mode: default | max-autotune | ...")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    exp = load_experiments(args.experiments).resolve(args.experiment, args.profile, ["decoder=none"])
    data = build_arc_data(exp.data, exp.seed)
    torch.manual_seed(exp.seed)
    eager_model = build_model(exp, data.seq_len, data.num_puzzle_ids).train()
    compiled_model = copy.deepcopy(eager_model)
    ctx = DistContext(0, 1, torch.device("cpu"))
    first = data.train_batch(0, exp.train.batch_size).as_dict()
    runs = {
        "eager": (Trainable(eager_model, eager_model, build_optimizers(eager_model, exp)),
                  fresh_state(eager_model, first, exp.seed)),
        "compiled": (Trainable(compiled_model, torch.compile(compiled_model, mode=args.mode),
                               build_optimizers(compiled_model, exp)),
                     fresh_state(compiled_model, first, exp.seed)),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for step in range(WARM + args.steps):
        batch = data.train_batch(step, exp.train.batch_size).as_dict()
        for name, (parts, state) in runs.items():
            start = time.perf_counter()
            train_step(parts, batch, state, exp, ctx, 10**6)
            times[name].append(time.perf_counter() - start)
    eager, compiled = (statistics.median(times[name][WARM:]) for name in runs)
    compile_s = sum(times["compiled"][:WARM]) - WARM * compiled
    saved = eager - compiled
    steps = total_steps(exp, data, TrainOptions())
    result = {
        "experiment": exp.id, "profile": args.profile, "threads": args.threads, "mode": args.mode,
        "steps_timed": args.steps,
        "eager_ms": round(1000 * eager, 1), "compiled_ms": round(1000 * compiled, 1),
        "speedup": round(eager / compiled, 3), "compile_s": round(compile_s, 1),
        "break_even_steps": round(compile_s / saved) if saved > 0 else None, "run_steps": steps,
        "run_eager_min": round(steps * eager / 60, 1),
        "run_compiled_min": round((steps * compiled + compile_s) / 60, 1),
    }
    print(f"{exp.id} ({args.profile}): eager {result['eager_ms']} ms/step, compiled {result['compiled_ms']} ms/step "
          f"({result['speedup']}x), compile {result['compile_s']} s, pays after {result['break_even_steps']} steps; "
          f"{steps} steps: {result['run_eager_min']} min eager, {result['run_compiled_min']} min compiled")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
