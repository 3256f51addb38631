"""The `etrmtrm train` arguments of one run, written once: what the tool advises (cli.py, which repeats the
command a run was started with so that its advice works as printed) and what a sweep job runs (sweep.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

DEFAULT_EXPERIMENTS = Path("experiments.toml")
DEFAULT_RUNS = Path("runs")


def train_arguments(exp_id: str, profile: str, experiments: Path, runs_dir: Path, overrides: Sequence[str],
                    max_steps: int | None, seed: int | None) -> list[str]:
    """`train <ID> --profile ...` for this run (seed None: no seed axis); paths equal to the defaults left out."""
    words = ["train", exp_id, "--profile", profile]
    if experiments != DEFAULT_EXPERIMENTS:
        words += ["--experiments", str(experiments)]
    if runs_dir != DEFAULT_RUNS:
        words += ["--runs-dir", str(runs_dir)]
    if max_steps is not None:
        words += ["--max-steps", str(max_steps)]
    if seed is not None:
        words += ["--seeds", f"{seed},"]
    for item in overrides:
        words += ["--set", item]
    return words
