"""The training loop's overhead: `train()` end to end (logging, metrics, eval, checkpoints amortized) against
the bare `train_step` (forward, loss, backward, clip, optimizer, the step's metrics) on the same model and
batches, in one run.

    python benchmarks/bench_loop.py E0a --profile cpu --steps 50 --threads 2

Steps are timed between the loop's step events (metrics, logging and the display hook included); one
eval is timed apart and amortized over the profile's eval_interval.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from etrmtrm_cli.data import build_arc_data
from etrmtrm_cli.experiments_file import load_experiments
from etrmtrm_cli.models.build import build_model
from etrmtrm_cli.training.distributed import DistContext
from etrmtrm_cli.training.evaluate import evaluate
from etrmtrm_cli.training.loop import TrainOptions, train
from etrmtrm_cli.training.optim import build_optimizers
from etrmtrm_cli.training.runtime import choose_dtype
from etrmtrm_cli.training.step import Trainable, fresh_state, train_step


def bare_steps(exp, steps: int) -> float:  # noqa: ANN001
    """Seconds per step of `train_step` alone (what the loop calls), on the loop's own batches."""
    data = build_arc_data(exp.data, exp.seed)
    model = build_model(exp, data.seq_len, data.num_puzzle_ids).train()
    parts = Trainable(model, model, build_optimizers(model, exp))
    ctx = DistContext(0, 1, torch.device("cpu"))
    state = fresh_state(model, data.train_batch(0, exp.train.batch_size).as_dict(), exp.seed)
    start = time.perf_counter()
    for step in range(steps):
        train_step(parts, data.train_batch(step, exp.train.batch_size).as_dict(), state, exp, ctx, steps)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--experiments", type=Path, default=Path("experiments.toml"))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    file = load_experiments(args.experiments)
    exp = choose_dtype(file.resolve(args.experiment, args.profile, ["decoder=none"]), torch.device("cpu")).exp
    interval = exp.train.eval_interval
    bare = bare_steps(exp, args.steps)

    stamps: list[float] = []
    def on_event(kind: str, payload: dict) -> None:  # noqa: ANN001
        if kind == "step":
            stamps.append(time.perf_counter())

    # One eval (at the last step) and one checkpoint; both timed apart from the steps between them.
    one_run = file.resolve(args.experiment, args.profile, ["decoder=none", f"train.eval_interval={args.steps}",
                                                           f"train.checkpoint_interval={args.steps}"])
    with tempfile.TemporaryDirectory() as runs:
        train(one_run, TrainOptions(runs_dir=Path(runs), max_steps=args.steps),
              DistContext(0, 1, torch.device("cpu")), on_event)
        rows = [json.loads(line) for line in (Path(runs) / exp.id / "metrics.jsonl").read_text().splitlines()]
    between = [b - a for a, b in zip(stamps[:-2], stamps[1:-1], strict=True)]  # steps without eval
    loop = statistics.mean(between)
    last_step = stamps[-1] - stamps[-2] - rows[-1]["time/step_s"]  # eval + logging of the final step
    data = build_arc_data(exp.data, exp.seed)
    model = build_model(exp, data.seq_len, data.num_puzzle_ids)
    start = time.perf_counter()
    evaluate(model, data, exp.train.eval_batch_size or exp.train.batch_size, torch.device("cpu"))
    eval_s = time.perf_counter() - start
    amortized = loop + eval_s / interval
    result = {
        "experiment": exp.id, "profile": args.profile, "dtype": exp.arch.forward_dtype, "steps": args.steps,
        "eval_interval": interval,
        "bare_ms": round(1000 * bare, 1), "loop_ms": round(1000 * loop, 1), "eval_s": round(eval_s, 2),
        "final_step_extra_s": round(last_step, 2), "loop_amortized_ms": round(1000 * amortized, 1),
        "overhead": round(amortized / bare - 1, 4), "steps_per_s": round(1 / amortized, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(f"{exp.id} ({args.profile}, {exp.arch.forward_dtype}): bare {result['bare_ms']} ms/step; loop "
          f"{result['loop_ms']} ms/step, "
          f"eval {eval_s:.1f} s every {interval} steps -> {result['loop_amortized_ms']} ms/step, "
          f"overhead {100 * result['overhead']:.1f} %")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
