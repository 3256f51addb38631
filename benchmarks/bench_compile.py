"""Eager against torch.compile on a real experiment's batches: the compile time, then train steps of the two
models (same initial weights, same batches) in alternation, so that a change in machine load hits both alike.

    python benchmarks/bench_compile.py E0b --profile cpu --steps 40 --threads 2

The compile time is the compiled model's extra time over its first steps (dynamo compiles at step 1 and once
more when the demo packing's size first changes). From the medians it prints the step count where compiling
starts to pay and the estimated time of the profile's whole run both ways (its steps; evals not included).
The last line is one JSON object.
"""

from __future__ import annotations

import copy
import json
import statistics

from experiment_steps import alternate, experiment_model, experiment_parser

from etrmtrm_cli.training.loop import TrainOptions, total_steps
from etrmtrm_cli.training.runtime import compile_model

WARM = 5  # steps after which the compiled model has compiled everything it will (measured: 2 compiles)


def main() -> None:
    parser = experiment_parser(__doc__, steps=40)
    parser.add_argument("--mode", default="default", help="torch.compile mode: default | max-autotune | ...")
    args = parser.parse_args()
    exp, data, eager_model = experiment_model(args)
    compiled_model = copy.deepcopy(eager_model)
    times = alternate({"eager": (eager_model, eager_model),
                       "compiled": (compiled_model, compile_model(compiled_model, mode=args.mode))},
                      exp, data, WARM + args.steps)
    eager, compiled = (statistics.median(times[name][WARM:]) for name in times)
    compile_s = sum(times["compiled"][:WARM]) - WARM * compiled
    saved = eager - compiled
    steps = total_steps(exp, data, TrainOptions())
    result = {
        "experiment": exp.id, "profile": args.profile, "dtype": exp.arch.forward_dtype, "threads": args.threads,
        "mode": args.mode, "steps_timed": args.steps,
        "eager_ms": round(1000 * eager, 1), "compiled_ms": round(1000 * compiled, 1),
        "speedup": round(eager / compiled, 3), "compile_s": round(compile_s, 1),
        "break_even_steps": round(compile_s / saved) if saved > 0 else None, "run_steps": steps,
        "run_eager_min": round(steps * eager / 60, 1),
        "run_compiled_min": round((steps * compiled + compile_s) / 60, 1),
    }
    print(f"{exp.id} ({args.profile}, {exp.arch.forward_dtype}): eager {result['eager_ms']} ms/step, compiled "
          f"{result['compiled_ms']} ms/step ({result['speedup']}x), compile {result['compile_s']} s, pays after "
          f"{result['break_even_steps']} steps; "
          f"{steps} steps: {result['run_eager_min']} min eager, {result['run_compiled_min']} min compiled")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
