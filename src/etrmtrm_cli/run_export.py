"""Export finished runs as records: what `compare` and `status` read, without checkpoints.

A record is a run directory holding config.json, meta.json, summary.json and metrics.jsonl.gz (gzip, no
timestamp: exporting one run twice gives the same bytes), plus model.safetensors only when asked (the
weights of a decoder that later runs start from, e.g. P0). It is small enough to commit beside a published
report, so the report can be regenerated from it, and a sweep continued on another machine (copy the records
into its runs directory) skips the runs it holds as finished.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from etrmtrm_cli.errors import RunError
from etrmtrm_cli.rundir import (
    CONFIG,
    FINAL_WEIGHTS,
    META,
    METRICS,
    METRICS_GZ,
    SUMMARY,
    check_configs,
    load_run,
    metrics_path,
    read_summary,
    seed_runs,
)


@dataclass(frozen=True)
class Exported:
    source: Path
    dest: Path
    action: str  # exported | updated | unchanged | not finished (left out) | no run yet


def export_runs(runs_dir: Path, exp_ids: Sequence[str], to: Path, *, weights: bool = False) -> list[Exported]:
    """Export every finished run (each seed) of the named experiments from `runs_dir` into `to`, keeping the
    layout (<ID>/ or <ID>/seed-<N>/). An experiment without a run yet is reported, so that one command exports a
    sweep while it runs; none with a run at all is an error (a wrong --runs-dir). A record already there of
    another run (its meta.json differs) is an error and is left as it is."""
    found = {exp_id: seed_runs(runs_dir, exp_id) for exp_id in exp_ids}
    if not any(found.values()):
        raise RunError(f"{runs_dir}: no run of {', '.join(exp_ids)} to export")
    if to.resolve().is_relative_to(runs_dir.resolve()):
        raise RunError(f"--to {to}: inside the runs directory {runs_dir}, where it would write into its runs; "
                       "export into another directory")
    check_configs(runs_dir, exp_ids)
    for run in (run for runs in found.values() for run in runs):  # all before any is written
        if read_summary(run).get("status") == "finished":
            _check_readable(run, weights)
    exported = []
    for exp_id, runs in found.items():
        if not runs:
            exported.append(Exported(runs_dir / exp_id, to / exp_id, "no run yet"))
        exported += [_export_run(run, to / run.relative_to(runs_dir), weights=weights) for run in runs]
    return exported


def _export_run(run_dir: Path, dest: Path, *, weights: bool = False) -> Exported:
    if read_summary(run_dir).get("status") != "finished":
        return Exported(run_dir, dest, "not finished")
    record = _record_files(run_dir, weights)
    if dest.exists():
        if (dest / META).is_file() and (dest / META).read_bytes() != record[META]:
            raise RunError(f"{dest}: holds a record of another run (its {META} differs from {run_dir / META}); "
                           "export into another directory or move it away")
        held = {p.name: p.read_bytes() for p in dest.iterdir() if p.is_file()}
        if all(held.get(name) == data for name, data in record.items()):
            return Exported(run_dir, dest, "unchanged")
    tmp = dest.with_name(dest.name + ".export-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, data in record.items():
        (tmp / name).write_bytes(data)
    if not dest.exists():
        tmp.rename(dest)
        return Exported(run_dir, dest, "exported")
    old = dest.with_name(dest.name + ".export-old")  # the same run: its old record goes once the new is complete
    shutil.rmtree(old, ignore_errors=True)
    dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old)
    return Exported(run_dir, dest, "updated")


def _check_readable(run_dir: Path, weights: bool) -> None:
    """A finished run's files are all there and read as compare reads them: a record of it must compare."""
    wanted = (META, SUMMARY, *([FINAL_WEIGHTS] if weights else []))
    if lacking := [name for name in wanted if not (run_dir / name).is_file()] + (
            [] if metrics_path(run_dir).is_file() else [METRICS]):
        raise RunError(f"{run_dir}: finished, but without {', '.join(lacking)}: a record of it could not be compared")
    load_run(run_dir)


def _record_files(run_dir: Path, weights: bool) -> dict[str, bytes]:
    """name -> content of the record of a finished run."""
    files = {name: (run_dir / name).read_bytes() for name in (CONFIG, META, SUMMARY) if (run_dir / name).is_file()}
    if (run_dir / METRICS).is_file():
        files[METRICS_GZ] = gzip.compress((run_dir / METRICS).read_bytes(), compresslevel=9, mtime=0)
    elif (run_dir / METRICS_GZ).is_file():  # a record exported again
        files[METRICS_GZ] = (run_dir / METRICS_GZ).read_bytes()
    if weights:  # there: _check_readable asked for them
        files[FINAL_WEIGHTS] = (run_dir / FINAL_WEIGHTS).read_bytes()
    return files
