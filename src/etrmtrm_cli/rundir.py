"""The run directory: its format, written and read here only (train, diagnose, compare and queues use it).

runs/<ID>/
  config.json        the resolved experiment (the sidecar of model.safetensors)
  meta.json          seed, code version, torch version, device, world size
  metrics.jsonl      one JSON object per logged step
  summary.json       status (running | interrupted | failed | finished), final metrics, wall time
  model.safetensors  the final weights (the EMA weights when EMA is on): what `decoder = "<ID>"` loads
  checkpoints/step_<N>/
    model.safetensors, ema.safetensors (EMA on), state.rank<r>.pt (optimizer, RNG, ACT carry, ...)

A checkpoint directory is written as step_<N>.tmp and renamed when complete, so a kill at any moment
leaves the previous checkpoint intact; `latest_checkpoint` ignores *.tmp leftovers. The weights a run is
judged by (compare --per-puzzle, diagnose --run) are `judged_weights`: its final weights, or while it is
in progress the latest checkpoint's EMA weights (its model weights without EMA).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from etrmtrm_cli.errors import CheckpointError, ConfigError, RunError

CONFIG = "config.json"
META = "meta.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
FINAL_WEIGHTS = "model.safetensors"
CHECKPOINTS = "checkpoints"
_PREFIX = "step_"
Row = dict[str, Any]  # one metrics.jsonl line: step plus metric values (None where NaN)


@dataclass(frozen=True)
class RunFiles:
    """A run directory's files, as written by training/loop.py."""

    exp_id: str
    run_dir: Path
    config: dict[str, Any]
    meta: dict[str, Any]
    summary: dict[str, Any]
    rows: list[Row]


def prepare_run_dir(run_dir: Path, *, resume: bool, force: bool) -> None:
    """Refuse to overwrite a run; --force moves the old one aside (never deletes it)."""
    if resume:
        if latest_checkpoint(run_dir) is None:
            raise RunError(f"{run_dir}: nothing to resume (no checkpoint); start it without --resume")
        return
    if run_dir.exists():
        if not force:
            how = "continue it with --resume, or start over" if latest_checkpoint(run_dir) else (
                "it has no checkpoint to resume from; start over")
            raise RunError(f"{run_dir} exists: {how} with --force (the old run is moved aside, not deleted)")
        aside = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(aside)
    run_dir.mkdir(parents=True)


def run_status(run_dir: Path) -> str:
    """'finished', 'resumable' (a checkpoint to continue from), 'unsaved' (started, stopped before its
    first checkpoint) or 'new' (no run directory)."""
    summary = run_dir / SUMMARY
    if summary.is_file() and read_json(summary).get("status") == "finished":
        return "finished"
    if latest_checkpoint(run_dir) is not None:
        return "resumable"
    return "unsaved" if run_dir.exists() else "new"


def write_run_files(run_dir: Path, config: dict[str, Any], meta: dict[str, Any], total_steps: int) -> None:
    """config.json, meta.json and a "running" summary.json of a new run."""
    write_json(run_dir / CONFIG, config)
    write_json(run_dir / META, meta)
    write_json(run_dir / SUMMARY, {"status": "running", "step": 0, "total_steps": total_steps})


def write_summary(run_dir: Path, *, status: str, step: int, total_steps: int, wall_time_s: float,
                  last: dict[str, float], error: str | None, resumed: bool) -> None:
    """summary.json: status (finished | interrupted | failed, with the error) and the wall time of all sessions."""
    previous = read_json(run_dir / SUMMARY) if resumed and (run_dir / SUMMARY).is_file() else {}
    write_json(run_dir / SUMMARY, {
        "status": status, "step": step, "total_steps": total_steps,
        "wall_time_s": wall_time_s + float(previous.get("wall_time_s", 0.0)), "last": last,
        **({"error": error} if error else {}),
    })


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise RunError(f"{path}: unreadable ({err})") from None


def load_runs(runs_dir: Path, exp_ids: Sequence[str]) -> list[RunFiles]:
    """Every named run; one error naming every missing run and the command that produces it."""
    if not exp_ids:
        raise ConfigError("compare needs at least one run, e.g. `etrmtrm compare E0a E0b`")
    missing = [e for e in exp_ids if not (runs_dir / e / CONFIG).is_file()]
    if missing:
        raise RunError("\n".join(f"{runs_dir / e}: no such run (no {CONFIG}); produce it with "
                                 f"`etrmtrm train {e}`" for e in missing))
    return [load_run(runs_dir / e) for e in exp_ids]


def load_run(run_dir: Path) -> RunFiles:
    config = read_json(run_dir / CONFIG)
    meta_path, summary_path = run_dir / META, run_dir / SUMMARY
    meta = read_json(meta_path) if meta_path.is_file() else {}
    summary = read_json(summary_path) if summary_path.is_file() else {"status": "running"}
    return RunFiles(str(config.get("id", run_dir.name)), run_dir, config, meta, summary,
                    read_metrics(run_dir / METRICS))


def read_metrics(path: Path) -> list[Row]:
    """metrics.jsonl's rows; a partial last line (a run killed mid-write) is skipped."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):
                break
            raise RunError(f"{path}: line {n} is not valid JSON") from None
    return rows


def judged_weights(run_dir: Path) -> Path | None:
    """The weights a run is judged by: final, else the latest checkpoint's EMA (or model) weights."""
    final = run_dir / FINAL_WEIGHTS
    if final.is_file():
        return final
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return None
    ema = latest / "ema.safetensors"
    return ema if ema.is_file() else latest / "model.safetensors"


def read_sidecar(weights: Path) -> dict[str, Any]:
    """The resolved config saved beside a model.safetensors file."""
    sidecar = weights.parent / CONFIG
    if not sidecar.is_file():
        raise CheckpointError(f"{weights}: no {CONFIG} beside it; is it one of our checkpoints?")
    config: dict[str, Any] = read_json(sidecar)
    return config


def save_weights(path: Path, state: dict[str, Tensor]) -> None:
    # safetensors refuses shared or non-contiguous storage: store independent contiguous copies.
    save_file({k: v.detach().contiguous().clone().cpu() for k, v in state.items()}, str(path))


def load_weights(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for truncated/corrupt files
        raise CheckpointError(f"{path}: unreadable weights ({err})") from None


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"{_PREFIX}{step:08d}"


def temp_checkpoint_dir(run_dir: Path, step: int) -> Path:
    """Where step `step` is written before `commit_checkpoint` makes it visible."""
    return checkpoint_dir(run_dir, step).with_suffix(".tmp")


def begin_checkpoint(run_dir: Path, step: int) -> Path:
    """A fresh temporary directory for step `step` (replacing what a previous try left there)."""
    tmp = temp_checkpoint_dir(run_dir, step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit_checkpoint(tmp: Path, keep: int) -> Path:
    """Make a fully written checkpoint visible, then drop all but the newest `keep`."""
    final = tmp.with_suffix("")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(final.parent)[:-keep]:
        shutil.rmtree(old)
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    if not ckpt_root.is_dir():
        return []
    return sorted(p for p in ckpt_root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX) and p.suffix == "")


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir / CHECKPOINTS)
    return found[-1] if found else None


def save_state(path: Path, state: dict[str, Any]) -> None:
    torch.save(state, path)


def load_state(path: Path) -> dict[str, Any]:
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except Exception as err:
        raise CheckpointError(f"{path}: unreadable training state ({err})") from None
    return state
