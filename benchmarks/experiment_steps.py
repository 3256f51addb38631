"""Shared by the benchmarks that time two models on a real experiment's batches: the experiment's command-line
arguments, its data, and train steps of the models in alternation, so that a change in machine load hits each
alike (bench_compile.py, bench_recompute.py)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from etrmtrm_cli.config import Experiment
from etrmtrm_cli.data import ArcData, build_arc_data
from etrmtrm_cli.experiments_file import load_experiments
from etrmtrm_cli.models.act import ACTModel
from etrmtrm_cli.models.build import build_model
from etrmtrm_cli.training.distributed import DistContext
from etrmtrm_cli.training.optim import build_optimizers
from etrmtrm_cli.training.runtime import choose_dtype
from etrmtrm_cli.training.step import ForwardFn, Trainable, fresh_state, train_step


def experiment_parser(doc: str | None, steps: int) -> argparse.ArgumentParser:
    """experiment, --profile, --experiments, --steps (timed steps of each model), --threads."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--experiments", type=Path, default=Path("experiments.toml"))
    parser.add_argument("--steps", type=int, default=steps, help="timed steps of each, after the untimed ones")
    parser.add_argument("--threads", type=int, default=2)
    return parser


def experiment_model(args: argparse.Namespace) -> tuple[Experiment, ArcData, ACTModel]:
    """The experiment (with no pretrained decoder: it does not change a step's cost, and in the dtype a run of it
    would take on this machine), its data and a fresh model."""
    torch.set_num_threads(args.threads)
    exp = load_experiments(args.experiments).resolve(args.experiment, args.profile, ["decoder=none"])
    exp = choose_dtype(exp, torch.device("cpu")).exp  # the dtype `etrmtrm train` would run it in here
    data = build_arc_data(exp.data, exp.seed)
    torch.manual_seed(exp.seed)
    return exp, data, build_model(exp, data.seq_len, data.num_puzzle_ids).train()


def alternate(models: dict[str, tuple[ACTModel, ForwardFn]], exp: Experiment, data: ArcData, steps: int
              ) -> dict[str, list[float]]:
    """name -> (model, the callable its steps run: the model or its compiled form) -> name -> each step's seconds.
    Every model takes the same batches, one step each in turn."""
    ctx = DistContext(0, 1, torch.device("cpu"))
    first = data.train_batch(0, exp.train.batch_size).as_dict()
    runs = {name: (Trainable(model, forward, build_optimizers(model, exp)), fresh_state(model, first, exp.seed))
            for name, (model, forward) in models.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for step in range(steps):
        batch = data.train_batch(step, exp.train.batch_size).as_dict()
        for name, (parts, state) in runs.items():
            start = time.perf_counter()
            train_step(parts, batch, state, exp, ctx, 10**6)
            times[name].append(time.perf_counter() - start)
    return times
