"""Shared helpers: experiments from the real experiments.toml at the `tiny` profile."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from unittest import mock

import pytest
import torch

from etrmtrm_cli.config import Experiment
from etrmtrm_cli.experiments_file import load_experiments

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments.toml"
CPU = torch.device("cpu")
# Tiny models run fastest on one thread, and a busy 2-core machine makes a second thread cost 10-20x.
torch.set_num_threads(1)
# The CLI's Rich consoles take their width from COLUMNS once, at import; each test passes the width it needs
# with its invocation (env={"COLUMNS": ...}), which an inherited COLUMNS (xdist's workers have 80) would fix.
os.environ.pop("COLUMNS", None)


def tiny(exp_id: str = "E0b", overrides: Sequence[str] = (), world_size: int = 1) -> Experiment:
    """A real experiment at the tiny profile, from scratch unless the overrides say otherwise."""
    return load_experiments(EXPERIMENTS).resolve(exp_id, "tiny", ["decoder='none'", *overrides], world_size)


def logged_rows(metrics: Path) -> int:
    """Rows in a run's metrics.jsonl; 0 while it is absent (a --force run moves the old run's file aside)."""
    try:
        return len(metrics.read_text().splitlines())
    except FileNotFoundError:
        return 0


def wait_until(proc: subprocess.Popen, ready: Callable[[], bool], what: str, timeout: float = 300) -> None:
    """Wait for `ready()` while `proc` runs. If it ends first, or `timeout` s pass (a hang), it is killed and the test
    fails naming `what`: a signal sent to a run not yet at that point (still importing torch on a loaded machine)
    would test something else."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"{what}: not reached, the process {'ended' if proc.returncode != -9 else 'was killed'} "
                        f"(exit code {proc.returncode}):\n{out or ''}{err or ''}")
        time.sleep(0.05)


@contextlib.contextmanager
def registered(encoders: dict[str, tuple[type, type, bool]]) -> Iterator[None]:
    """Planted encoders (name -> (class, config class, recurrent)) in the registry, for the with-block only."""
    from etrmtrm_cli.encoders import registry

    registry.list_encoders()  # load the in-tree ones first, so the restored registry keeps them
    with mock.patch.dict(registry._ENCODERS):
        for name, (cls, config, recurrent) in encoders.items():
            registry.register_encoder(name, config, recurrent=recurrent)(cls)
        yield


def pytest_collection_modifyitems(items: list) -> None:
    """The SLURM tests first: they mostly wait on the scheduler, and collected last (alphabetically) they ran alone
    on one xdist worker after the other had finished its share. A clean-clone CI with SLURM present took 492 s that
    way and 360 s this way (one run each, on a 2-core EPYC where it took 263 s without SLURM)."""
    items.sort(key=lambda item: item.get_closest_marker("slurm") is None)  # stable: the rest keep their order
