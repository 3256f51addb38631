"""Shared helpers: experiments from the real experiments.toml at the `tiny` profile."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from etrmtrm_cli.config import Experiment
from etrmtrm_cli.experiments_file import load_experiments

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments.toml"
CPU = torch.device("cpu")
# Tiny models run fastest on one thread, and a busy 2-core machine makes a second thread cost 10-20x.
torch.set_num_threads(1)


def tiny(exp_id: str = "E0b", overrides: Sequence[str] = (), world_size: int = 1) -> Experiment:
    """A real experiment at the tiny profile, from scratch unless the overrides say otherwise."""
    return load_experiments(EXPERIMENTS).resolve(exp_id, "tiny", ["decoder='none'", *overrides], world_size)
