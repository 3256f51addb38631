"""What `diagnose` checks and how it reports: the subject (an experiment, its data, a run's weights), the model
built from it, and the measurements and result of a check."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from etrmtrm_cli import rundir
from etrmtrm_cli.config import Experiment
from etrmtrm_cli.data.dataset import ArcData, build_arc_data
from etrmtrm_cli.errors import ConfigError, RunError, first_line
from etrmtrm_cli.models.act import ACTModel
from etrmtrm_cli.models.build import build_model
from etrmtrm_cli.training.runtime import choose_dtype

Status = Literal["pass", "warn", "fail", "info"]  # info: a row shown for reference, judged by nothing
MIN_MEASURE_BATCH = 16  # gradient share and variance on a tiny profile's 4-row batch are mostly noise


@dataclass(frozen=True)
class Measurement:
    """One row of a check's table: what was measured, its value, what it should be, and the verdict."""

    what: str
    value: str
    threshold: str
    verdict: Status


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    rows: list[Measurement]
    message: str


@dataclass(frozen=True)
class Subject:
    """What is diagnosed: an experiment, its data, and the weights of a run (None = a fresh model)."""

    exp: Experiment
    data: ArcData
    device: torch.device
    weights: dict[str, Tensor] | None = None
    source: str = "fresh model"
    run_dir: Path | None = None
    logged: list[dict[str, Any]] = field(default_factory=list)  # the run's metrics.jsonl rows
    log_error: str | None = None  # why metrics.jsonl could not be read (only encoder-variance reads it)


def fresh_subject(exp: Experiment, device: torch.device) -> Subject:
    _require_encoder(exp)
    exp = choose_dtype(exp, device).exp  # the dtype a run of it would compute in on `device` (`auto` resolved)
    return Subject(exp, build_arc_data(exp.data, exp.seed), device,
                   source=f"fresh {exp.id} model ({exp.profile} profile, no decoder weights)")


def run_subject(run_dir: Path, device: torch.device) -> Subject:
    """A run's config.json and the weights it is judged by (rundir.judged_weights: final, else latest EMA)."""
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run folder; pass a run's folder, runs/<ID>/ or runs/<ID>/seed-<N>/")
    if not (run_dir / rundir.CONFIG).is_file():
        seeds = [p.name for p in rundir.seed_folders(run_dir) if (p / rundir.CONFIG).is_file()]
        raise RunError(f"{run_dir}: not a run (no {rundir.CONFIG}); " + (
            f"it holds the seed runs {', '.join(seeds)}: pass one, e.g. --run {run_dir / seeds[0]}" if seeds else
            "pass a run's folder, runs/<ID>/ or runs/<ID>/seed-<N>/"))
    exp = rundir.read_config(run_dir)
    _require_encoder(exp)
    weights_path, weights = rundir.load_judged_weights(run_dir)
    try:
        logged, log_error = rundir.read_metrics(run_dir / rundir.METRICS, strict=True), None
    except RunError as err:  # the checks that do not read the log still run
        logged, log_error = [], first_line(err)
    return Subject(exp, build_arc_data(exp.data, exp.seed), device, weights, f"{weights_path}", run_dir, logged,
                   log_error)


def _require_encoder(exp: Experiment) -> None:
    if exp.model != "etrm":
        raise ConfigError(f"{exp.id} is a TRM model with a learned puzzle embedding: diagnose checks demo "
                          "encoders; pick an ETRM experiment such as E0a or E0b")


def build(subject: Subject, trained: bool = True) -> ACTModel:
    """The subject's model, seeded as train() seeds it; with the run's weights when `trained`."""
    torch.manual_seed(subject.exp.seed)
    model = build_model(subject.exp, subject.data.seq_len, subject.data.num_puzzle_ids)
    if trained and subject.weights is not None:
        rundir.load_fitting(model, subject.weights, subject.source)
    return model.to(subject.device)


def worst(verdicts: Sequence[Status]) -> Status:
    return "fail" if "fail" in verdicts else "warn" if "warn" in verdicts else "pass"


def train_batch(subject: Subject, step: int, size: int) -> dict[str, Tensor]:
    return subject.data.train_batch(step, size).to(subject.device).as_dict()


def generator(subject: Subject) -> torch.Generator:
    return torch.Generator(device=subject.device).manual_seed(subject.exp.seed)


def number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.3g}" if value == 0 or 1e-3 <= abs(value) < 1e4 else f"{value:.2e}"
