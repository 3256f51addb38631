"""metrics.jsonl (always) and, on request, TensorBoard events and Weights & Biases logs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from etrmtrm_cli.config import Experiment
from etrmtrm_cli.errors import ConfigError, RunError
from etrmtrm_cli.rundir import METRICS, read_metrics, write_text


class MetricsLog:
    """One JSON object per logged step. On resume, lines past the checkpoint's step are dropped first:
    they were logged by the interrupted run after its last checkpoint and will be logged again. So is a
    partial or garbled line (a kill during an append leaves one), and a step logged twice keeps one line."""

    def __init__(self, run_dir: Path, *, resume_from: int, tensorboard: bool, wandb: bool, exp: Experiment) -> None:
        self.path = run_dir / METRICS
        if resume_from and self.path.exists():
            rows = {row["step"]: row for row in read_metrics(self.path) if row["step"] <= resume_from}
            write_text(self.path, "".join(json.dumps(rows[step]) + "\n" for step in sorted(rows)))
        try:
            self.file = self.path.open("a", encoding="utf-8")
        except OSError as err:
            raise RunError(f"{self.path}: cannot write ({err.strerror})") from None
        self.tb = _tensorboard(run_dir, resume_from) if tensorboard else None
        self.wandb = _wandb(run_dir, exp) if wandb else None

    def write(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}  # JSON has no NaN
        try:
            self.file.write(json.dumps({"step": step, **clean}) + "\n")
            self.file.flush()
        except OSError as err:
            raise RunError(f"{self.path}: cannot write ({err.strerror}); the last checkpoint is kept") from None
        finite = {k: v for k, v in clean.items() if v is not None}
        if self.tb is not None:
            for key, value in finite.items():
                self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(finite, step=step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def require_loggers(tensorboard: bool, wandb: bool) -> None:
    """Fail early (before a run directory exists) when an asked-for logger is not installed."""
    if tensorboard:
        _import_tensorboard()
    if wandb:
        _import_wandb()


def _import_tensorboard() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install 'etrmtrm[tensorboard]'") from None
    return SummaryWriter


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise ConfigError("--wandb needs the wandb package: pip install 'etrmtrm[wandb]' "
                          "(WANDB_MODE=offline logs without a network)") from None
    return wandb


def _tensorboard(run_dir: Path, resume_from: int) -> Any:
    """On resume, TensorBoard drops what the interrupted session logged past the checkpoint (purge_step), as
    metrics.jsonl does."""
    return _import_tensorboard()(log_dir=str(run_dir / "tensorboard"), purge_step=resume_from + 1 if resume_from
                                 else None)


WANDB_ID = "wandb_id"  # the run's Weights & Biases id, so that a resumed session logs to the same wandb run


def _wandb(run_dir: Path, exp: Experiment) -> Any:
    """A resumed run's sessions log to one wandb run. Steps past the checkpoint that the interrupted session
    logged are not logged again: wandb keeps a run's steps increasing, and a resume logs the same values."""
    id_file = run_dir / WANDB_ID
    known = id_file.read_text().strip() if id_file.is_file() else None
    run = _import_wandb().init(project="etrmtrm", name=exp.id, dir=str(run_dir), config=exp.model_dump(mode="json"),
                               id=known, resume="allow" if known else None)
    if known is None:
        write_text(id_file, run.id + "\n")
    return run
