"""The training loop's overhead: `train()` end to end (logging, metrics, eval, checkpoints amortized) against
the bare step (forward, loss, backward, clip, optimizer) on the same model and batches, in one run.

    python benchmarks/bench_loop.py E0a --profile cpu --steps 200 --threads 2

The eval and checkpoint intervals are scaled to --steps so they are amortized as in a real run
(`eval_interval / total steps` kept as in the profile's 5,000-step budget unless --eval-every is given).
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

from etrmtrm_cli.config import load_experiments
from etrmtrm_cli.data import build_arc_data
from etrmtrm_cli.distributed import DistContext
from etrmtrm_cli.evaluate import as_dict
from etrmtrm_cli.losses import act_loss
from etrmtrm_cli.model import build_model
from etrmtrm_cli.train import TrainOptions, build_optimizers, train


def bare_steps(exp, steps: int) -> float:  # noqa: ANN001
    """Seconds per step of the bare loop body."""
    data = build_arc_data(exp.data, exp.seed)
    model = build_model(exp, data.seq_len, data.num_puzzle_ids).train()
    optimizers = build_optimizers(model, exp)
    generator = torch.Generator().manual_seed(exp.seed)
    carry = model.initial_carry(as_dict(data.train_batch(0, exp.train.batch_size)))
    start = time.perf_counter()
    for step in range(steps):
        batch = as_dict(data.train_batch(step, exp.train.batch_size))
        carry, outputs = model(carry, batch, generator)
        loss, _ = act_loss(outputs, carry.current_data["labels"], carry.halted, carry.steps)
        (loss / exp.train.batch_size).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), exp.train.grad_clip_norm)
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--experiments", type=Path, default=Path("experiments.toml"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    file = load_experiments(args.experiments)
    exp = file.resolve(args.experiment, args.profile, ["decoder=none"])
    # Keep the profile's eval and checkpoint cost per step: one eval per eval_interval of a 5,000-step run.
    every = args.eval_every or max(1, args.steps * exp.train.eval_interval // 5000)
    exp = file.resolve(args.experiment, args.profile, ["decoder=none", f"train.eval_interval={every}",
                                                      f"train.checkpoint_interval={every}"])
    bare = bare_steps(exp, args.steps)
    with tempfile.TemporaryDirectory() as runs:
        start = time.perf_counter()
        train(exp, TrainOptions(runs_dir=Path(runs), max_steps=args.steps), DistContext(0, 1, torch.device("cpu")))
        loop = (time.perf_counter() - start) / args.steps
        rows = [json.loads(line) for line in (Path(runs) / exp.id / "metrics.jsonl").read_text().splitlines()]
    step_only = statistics.mean(r["time/step_s"] for r in rows)
    result = {
        "experiment": exp.id, "profile": args.profile, "steps": args.steps, "eval_every": every,
        "bare_ms": round(1000 * bare, 1), "loop_ms": round(1000 * loop, 1), "loop_step_ms": round(1000 * step_only, 1),
        "overhead": round(loop / bare - 1, 4), "steps_per_s": round(1 / loop, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(f"{exp.id} ({args.profile}): bare {result['bare_ms']} ms/step, train() {result['loop_ms']} ms/step "
          f"(eval every {every}), overhead {100 * result['overhead']:.1f} %")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
