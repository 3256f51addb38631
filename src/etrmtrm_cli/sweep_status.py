"""`etrmtrm status`: every run of a runs directory and where it stands.

It reads the run directories (summary.json, the tail of metrics.jsonl, the run's lock) and a sweep's records
(`<runs>/.submitit/records/`: what the sweep submitted, what each job did), so it works while a sweep runs and
after, locally or on a cluster's shared disk. One thing only the scheduler knows: whether a SLURM job that the
records call queued or running still is. A job cancelled while queued (its `afterok` decoder failed, or
`scancel`) or killed outright writes no record, so where such records exist and `squeue` answers, status asks it.

States: running (a process holds the run's lock, or its job says so from another host), finished, failed (the
run, or its job before the run could start; with the log to read), stopped (interrupted, or killed: it resumes
with `--resume` or the next sweep; or queued by a local sweep that has ended, or by a SLURM job that squeue no
longer lists), queued (submitted or waiting, not started yet).
"""

from __future__ import annotations

import getpass
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etrmtrm_cli.errors import ConfigError, RunError, first_line
from etrmtrm_cli.run_lock import LOCK
from etrmtrm_cli.rundir import (
    CONFIG,
    SEED_PREFIX,
    SUMMARY,
    experiment_folders,
    metrics_path,
    read_json,
    read_metrics,
    run_dirs,
    run_path,
    run_status,
    runs_without_config,
)
from etrmtrm_cli.slurm_query import slurm_live_jobs
from etrmtrm_cli.sweep_job import RECORDS

SWEEP_FOLDER = ".submitit"  # in the runs directory, unless `sweep --folder` says otherwise


@dataclass(frozen=True)
class RunRow:
    exp_id: str
    seed: int | None
    run_dir: Path
    state: str  # queued | running | finished | failed | stopped
    step: int | None
    total_steps: int | None
    train_accuracy: float | None
    wall_time_s: float | None
    log: str | None  # the job log to read (failed runs of a sweep)
    note: str | None  # why it failed, what it waits for


def run_rows(runs_dir: Path, folder: Path | None = None) -> list[RunRow]:
    """Every run under `runs_dir` and every run a sweep there submitted, sorted by experiment and seed."""
    if runs_dir.exists() and not runs_dir.is_dir():
        raise RunError(f"{runs_dir}: not a directory; pass the runs directory (default: runs)")
    folder = folder or runs_dir / SWEEP_FOLDER
    records, gone = _records_and_gone_slurm_jobs(folder, runs_dir)
    damaged = [p for child in experiment_folders(runs_dir) for p in runs_without_config(runs_dir, child.name)]
    dirs = {p.resolve(): None for p in sorted([*run_dirs(runs_dir), *damaged])}
    for path in records:
        dirs.setdefault(Path(path), None)
    local_sweep = lock_held(folder)  # a local sweep running now (cli_sweep's lock)
    rows = [_row(run_dir, records.get(str(run_dir), {}), local_sweep, gone) for run_dir in dirs]
    return sorted(rows, key=lambda r: (r.exp_id, -1 if r.seed is None else r.seed))


def read_records(folder: Path, runs_dir: Path) -> dict[str, dict[str, Any]]:
    """run directory -> {"submit": the sweep's record, "run": the job's record} (the latest of each). A record names
    its run by absolute path; where the folder is the runs directory's own (<runs>/.submitit), the run is read
    there instead, by experiment and seed, so that a runs directory moved or copied with its sweep lists its own
    runs, once each."""
    out: dict[str, dict[str, Any]] = {}
    root = folder / RECORDS
    if not root.is_dir():
        return out
    own = folder.resolve().is_relative_to(runs_dir.resolve())
    for path in sorted(root.glob("*.json")):
        kind = path.name.rsplit(".", 2)[-2]
        try:
            rec = read_json(path)
        except RunError:
            continue
        if kind in ("submit", "run") and isinstance(rec.get("run_dir"), str):
            out.setdefault(str(_record_run_dir(rec, runs_dir if own else None)), {})[kind] = rec
    return out


def _record_run_dir(rec: dict[str, Any], runs_dir: Path | None) -> Path:
    """The run a record is of: in `runs_dir` by its experiment and seed, else (or where it names none) its path."""
    exp_id, seed = rec.get("exp_id"), rec.get("seed")
    if runs_dir is not None and isinstance(exp_id, str) and (seed is None or isinstance(seed, int)):
        try:
            return run_path(runs_dir, exp_id, seed).resolve()
        except ConfigError:  # not a name a run can have: the recorded path
            pass
    return Path(rec["run_dir"]).resolve()


def _records_and_gone_slurm_jobs(folder: Path, runs_dir: Path) -> tuple[dict[str, dict[str, Any]], frozenset[str]]:
    """The records, and the SLURM jobs they call queued or running that squeue no longer lists (empty where none
    is pending or squeue cannot answer). The records are read again after squeue: a job that ended in between
    has written how, and a job submitted in between is not in the first reading, so neither is taken for gone."""
    records = read_records(folder, runs_dir)
    pending = _pending_slurm_jobs(records)
    if not pending:
        return records, frozenset()
    try:  # the jobs of whoever submitted them: a shared runs directory may hold another user's sweep
        live = slurm_live_jobs(set(pending.values()))
    except RunError:  # no SLURM here (the records were copied, or the disk is mounted elsewhere): files only
        return records, frozenset()
    records = read_records(folder, runs_dir)
    return records, frozenset((pending.keys() & _pending_slurm_jobs(records).keys()) - live)


def _pending_slurm_jobs(records: dict[str, dict[str, Any]]) -> dict[str, str]:
    """job id -> the user who submitted it, of the SLURM jobs whose latest record says submitted, running or
    requeued (records from before they named the user: this user)."""
    out = {}
    for rec in records.values():
        submit, job = _this_sweeps(rec)
        latest = job or submit or {}
        if latest.get("executor") == "slurm" and latest.get("state") in ("submitted", "running", "requeued"):
            out[str(latest.get("job_id"))] = str((submit or {}).get("user") or getpass.getuser())
    return out


def _this_sweeps(rec: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(submit, job) records of a run; a job of an earlier sweep than the submission is dropped."""
    submit, job = rec.get("submit"), rec.get("run")
    if submit and job and job.get("sweep_id") != submit.get("sweep_id"):
        job = None  # a job of an earlier sweep: this sweep's submission is newer
    return submit, job


def _row(run_dir: Path, rec: dict[str, Any], local_sweep: bool | None = None,
         gone: frozenset[str] = frozenset()) -> RunRow:
    submit, job = _this_sweeps(rec)
    summary = _read(run_dir / SUMMARY)
    config = _read(run_dir / CONFIG)
    per_seed = run_dir.name.startswith(SEED_PREFIX)
    exp_id = str(config.get("id") or (job or submit or {}).get("exp_id")
                 or (run_dir.parent.name if per_seed else run_dir.name))
    seed = (job or submit or {}).get("seed")
    if seed is None and per_seed:
        seed = int(run_dir.name[len(SEED_PREFIX):])
    held = lock_held(run_dir)
    state, log, note = _state(run_dir, summary, submit, job, held, local_sweep, gone)
    if not config and not held and ((run_dir / CONFIG).exists() or (run_dir / SUMMARY).is_file()):
        state, log, note = "unreadable", None, _config_error(run_dir)  # a run's files without its config: named
    step, accuracy = _progress(run_dir, summary)
    wall = summary.get("wall_time_s") if isinstance(summary.get("wall_time_s"), int | float) else None
    if state == "running" and held:  # this session so far: since the lock was taken, plus earlier sessions
        wall = (wall if summary.get("status") != "running" else 0.0) or 0.0
        wall += max(0.0, time.time() - (run_dir / LOCK).stat().st_mtime)
    total = summary.get("total_steps") if isinstance(summary.get("total_steps"), int) else None
    return RunRow(exp_id, seed, run_dir, state, step, total, accuracy, wall, log, note)


def _state(run_dir: Path, summary: dict[str, Any], submit: dict[str, Any] | None, job: dict[str, Any] | None,
           held: bool | None, local_sweep: bool | None = None, gone: frozenset[str] = frozenset()
           ) -> tuple[str, str | None, str | None]:
    """(state, log, note) from the lock, the run's files and the records, in that order of trust; `gone`: the
    SLURM jobs that squeue no longer lists."""
    if held:
        return "running", None, None
    try:
        status_now = run_status(run_dir)
    except RunError as err:  # one unreadable run: named in its row, the others still listed
        return "unreadable", None, first_line(err)
    if status_now == "finished":
        return "finished", None, None
    latest = job or submit or {}
    if latest.get("executor") == "slurm" and str(latest.get("job_id")) in gone:
        job_id = latest["job_id"]
        if not job:
            return "stopped", None, (f"SLURM job {job_id} left the queue without starting (cancelled: `sacct -j "
                                     f"{job_id}` says why); the same sweep command submits it again")
        return "stopped", job.get("log_err"), (
            f"SLURM job {job_id} ended without recording how (killed or cancelled: `sacct -j {job_id}` says which); "
            "the same sweep command resumes the run from its last checkpoint, if it saved one")
    if job:
        log = job.get("log_err")
        if job.get("state") == "failed":
            return "failed", log, job.get("error")
        if job.get("state") == "running" and _job_alive(job):
            return "running", None, "starting" if not summary else None
        if job.get("state") == "requeued":
            return "queued", None, "requeued after its time limit"
    elif submit:
        if submit.get("state") == "failed":
            return "failed", None, submit.get("error")
        if submit.get("state") in ("queued", "submitted") and submit.get("executor") == "local" and \
                local_sweep is False:  # no local sweep runs now: nothing will start it
            return "stopped", None, "its sweep ended before it started; the same sweep command starts it"
        if submit.get("state") in ("queued", "submitted"):
            waits = submit.get("waits_for")
            pending = waits and run_status(_dep_dir(run_dir, waits, submit)) != "finished"
            return "queued", None, f"waits for {waits}" if pending else None
    status = summary.get("status")
    if status == "failed":
        error = str(summary.get("error") or "").strip()
        return "failed", job.get("log_err") if job else None, error.splitlines()[0] if error else None
    if status == "running" and held is None:  # written by a process on another host, which we cannot check
        return "running", None, "on another host"
    if job and job.get("state") == "stopped":
        return "stopped", None, job.get("reason")
    return "stopped", None, "resumes with --resume" if status_now == "resumable" else None


def _dep_dir(run_dir: Path, waits: str, submit: dict[str, Any]) -> Path:
    """The run directory of the decoder run `waits` (the runs directory is two or one levels up)."""
    runs = run_dir.parent.parent if submit.get("seed") is not None else run_dir.parent
    return runs / waits


def _job_alive(job: dict[str, Any]) -> bool:
    """A job that says it is running: true if its process lives (this host) or if it is on another host."""
    if job.get("host") != socket.gethostname():
        return True
    pid = job.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_held(run_dir: Path) -> bool | None:
    """Whether a process holds the run's lock: True / False here, None if the holder is on another host.

    Read from the kernel's lock table (/proc/locks), never by taking the lock: a status that locked the run,
    even for a moment, could make the training it looks at refuse to start."""
    lock = run_dir / LOCK
    try:
        st = lock.stat()
        text = lock.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    holder = re.search(r"process (\d+) on (\S+)", text)
    if holder and holder[2] != socket.gethostname():
        return None
    try:
        table = Path("/proc/locks").read_text()
    except OSError:  # no lock table: the process named in the lock file, if it lives
        return bool(holder) and _job_alive({"host": holder[2], "pid": int(holder[1])})
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino} "
    return any("FLOCK" in line and ident in line for line in table.splitlines())


def _progress(run_dir: Path, summary: dict[str, Any]) -> tuple[int | None, float | None]:
    """The latest step logged and the latest train accuracy (from the end of metrics.jsonl)."""
    step = summary.get("step") if isinstance(summary.get("step"), int) else None
    accuracy = None
    try:
        rows = read_metrics(metrics_path(run_dir), tail_bytes=1 << 16)
    except RunError:  # unreadable: the summary's step, no accuracy
        rows = []
    for row in reversed(rows):
        if step is None or row["step"] > step:
            step = row["step"]
        value = row.get("train/accuracy")
        if isinstance(value, int | float):
            accuracy = float(value)
            break
    return step, accuracy


def _config_error(run_dir: Path) -> str:
    try:
        read_json(run_dir / CONFIG)
    except RunError as err:
        return first_line(err)
    return f"{run_dir / CONFIG}: empty"


def _read(path: Path) -> dict[str, Any]:
    try:
        return read_json(path) if path.is_file() else {}
    except RunError:
        return {}


def wait_unlocked(run_dirs: list[Path], timeout_s: float) -> list[Path]:
    """Wait until no process holds these runs' locks (stopped runs saving their checkpoint) -> those still held."""
    deadline = time.monotonic() + timeout_s
    held = [d for d in run_dirs if lock_held(d)]
    while held and time.monotonic() < deadline:
        time.sleep(0.5)
        held = [d for d in held if lock_held(d)]
    return held
