"""Sweeps: experiments x seeds as submitit jobs, on this machine or on a SLURM cluster.

- `plan_sweep`: the jobs, one per run (experiment, seed), in dependency order. A run that starts from another
  experiment's run (`decoder = "P0"`) waits for it, and that decoder run is part of the sweep, once (as
  `train --seeds` does it). Each job carries the run's state now (new, resumable, unsaved, finished).
- `run_local`: submitit's local executor, at most `jobs` at once, `cores // jobs` threads each; returns when
  every job has ended. A failed job does not stop the others; the jobs waiting for it are not started.
- `submit_slurm`: submitit's SLURM executor. The decoder runs others wait for are submitted first, each a job;
  the rest as job arrays, those that wait with `afterok:<decoder job>`. Returns once submitted.

Finished runs are never submitted; a job checks again when it starts (sweep_job.py), so a requeued job or a
second sweep resumes what stopped. Each job leaves records beside submitit's files: `records/<key>.submit.json`
(written here) and `records/<key>.run.json` (written by the job), which `etrmtrm status` reads.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from etrmtrm_cli.config import Experiment, SweepConfig
from etrmtrm_cli.errors import ConfigError
from etrmtrm_cli.experiments_file import ExperimentsFile, Run, split_repeats
from etrmtrm_cli.rundir import SEED_PREFIX, read_json, run_path, run_status
from etrmtrm_cli.slurm_query import slurm_answers, slurm_live_jobs
from etrmtrm_cli.sweep_job import JobSpec, TrainJob, record_path, usable_cores, write_record
from etrmtrm_cli.sweep_status import lock_held
from etrmtrm_cli.train_command import train_arguments

NO_LIMIT_MIN = 60 * 24 * 365 * 10  # a local job without --time-min (submitit's local executor needs a limit)
SLURM_DEFAULT_MIN = 60 * 24
EventFn = Callable[[str, "PlannedJob", str], None]  # (kind: start | end | skip, job, detail)


@dataclass(frozen=True)
class SweepRequest:
    """What `etrmtrm sweep` was asked: targets and the options it passes on to `etrmtrm train`."""

    targets: tuple[str, ...]
    experiments: Path
    profile: str
    overrides: tuple[str, ...] = ()
    seeds: tuple[int, ...] | None = None
    runs_dir: Path = Path("runs")
    max_steps: int | None = None
    device: str = "auto"
    compile: bool | None = None


@dataclass(frozen=True)
class PlannedJob:
    spec: JobSpec
    exp: Experiment
    state: str  # the run now: new | resumable | unsaved | finished (rundir.run_status), or running (locked)
    waits_for: str | None  # the key of the job whose run this one starts from (its decoder)

    @property
    def key(self) -> str:
        return self.spec.key


def job_key(exp_id: str, seed: int | None) -> str:
    return exp_id if seed is None else f"{exp_id}/{SEED_PREFIX}{seed}"


def plan_sweep(file: ExperimentsFile, req: SweepRequest, folder: Path, threads: int | None, sweep_id: str,
               stop_timeout_s: float = 300.0) -> tuple[list[PlannedJob], list[tuple[Experiment, Experiment]]]:
    """One job per run of `req.targets` (queues expanded), decoders first; and the runs left out as repeats of an
    earlier one (`split_repeats`). Every experiment is resolved (and so validated) here, before anything is
    submitted."""
    runs: list[Run] = []
    for target in req.targets:
        runs += file.jobs(target, req.profile, req.overrides, req.seeds)
    runs.sort(key=lambda run: run[0].seed if run[1] else -1)  # seed-major across targets too (stable)
    while missing := [exp.decoder for exp, _ in runs if exp.decoder in file.experiments
                      and all(other.id != exp.decoder for other, _ in runs)]:
        runs = [*file.jobs(missing[0], req.profile, req.overrides, None), *runs]  # each decoder once, first
    runs, repeats = split_repeats(runs, has_runs=lambda exp_id: (req.runs_dir / exp_id).exists())
    jobs: dict[str, PlannedJob] = {}
    for exp, per_seed in runs:
        seed = exp.seed if per_seed else None
        key = job_key(exp.id, seed)
        if key in jobs:
            continue
        run_dir = run_path(req.runs_dir, exp.id, seed).resolve()
        spec = JobSpec(key=key, exp_id=exp.id, seed=seed, run_dir=str(run_dir),
                       argv=tuple(_train_argv(exp, req, seed)), cwd=str(Path.cwd()), threads=threads,
                       folder=str(folder.resolve()), sweep_id=sweep_id, stop_timeout_s=stop_timeout_s)
        waits = job_key(exp.decoder, None) if exp.decoder in file.experiments else None
        state = "running" if lock_held(run_dir) else run_status(run_dir)  # running: written by another process
        jobs[key] = PlannedJob(spec, exp, state, waits)
    return list(jobs.values()), repeats


def _train_argv(exp: Experiment, req: SweepRequest, seed: int | None) -> list[str]:
    """The child's `etrmtrm train` command (absolute paths: a job may start in another directory)."""
    argv = [sys.executable, "-m", "etrmtrm_cli",
            *train_arguments(exp.id, req.profile, req.experiments.resolve(), req.runs_dir.resolve(), req.overrides,
                             req.max_steps, seed), "--device", req.device]
    if req.compile is not None:
        argv.append("--compile" if req.compile else "--no-compile")
    return argv


def choose_executor(kind: str) -> tuple[str, str]:
    """auto | local | slurm -> (local or slurm, why). SLURM is used when its client answers (`sinfo`)."""
    if kind == "local":
        return "local", "--executor local"
    answers, why = slurm_answers()
    if kind == "slurm":
        if not answers:
            raise ConfigError(f"--executor slurm: no SLURM cluster answers here ({why})")
        return "slurm", "--executor slurm"
    return ("slurm", f"auto: {why}") if answers else ("local", f"auto: no SLURM ({why})")


def local_threads(jobs: int, cores: int | None = None) -> int:
    """Threads per job when `jobs` run at once here: the cores split evenly, never more threads than cores."""
    cores = cores or usable_cores()
    if jobs > cores:
        raise ConfigError(f"--jobs {jobs}: this machine gives {cores} cores to this process; at most {cores} "
                          "jobs can run at once without oversubscribing them (each job needs a core)")
    return cores // jobs


def make_executor(kind: str, folder: Path, config: SweepConfig, threads: int | None) -> Any:
    import submitit

    if kind == "local":  # its own class: AutoExecutor does not pass signal_delay_s to a local job
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=config.max_requeues)
        executor.update_parameters(timeout_min=config.time_min or NO_LIMIT_MIN, name="etrmtrm",
                                   signal_delay_s=config.signal_delay_s)
        return executor
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=config.max_requeues)
    executor.update_parameters(
        name="etrmtrm", timeout_min=config.time_min or SLURM_DEFAULT_MIN, cpus_per_task=threads,
        gpus_per_node=config.gpus_per_job or None, mem_gb=config.mem_gb, slurm_partition=config.partition,
        slurm_array_parallelism=config.array_parallelism, slurm_signal_delay_s=config.signal_delay_s,
        slurm_account=config.account, slurm_qos=config.qos,
        slurm_additional_parameters={"requeue": True, "kill-on-invalid-dep": "yes"},
    )
    return executor


def _submit_record(job: PlannedJob, state: str, **fields: Any) -> None:
    spec = job.spec
    write_record(spec.folder, spec.key, "submit", {
        "state": state, "sweep_id": spec.sweep_id, "exp_id": spec.exp_id, "seed": spec.seed,
        "run_dir": spec.run_dir, "waits_for": job.waits_for, "user": getpass.getuser(), **fields})


def _job_logs(job: Any) -> dict[str, str]:
    return {"job_id": str(job.job_id), "log_out": str(job.paths.stdout), "log_err": str(job.paths.stderr)}


def run_local(planned: Sequence[PlannedJob], executor: Any, jobs: int, on_event: EventFn,
              poll_s: float = 0.3) -> dict[str, str]:
    """Run the jobs here, at most `jobs` at once, each after the job it waits for has finished -> key -> final
    state (finished | failed | stopped | skipped). Ctrl-C stops the running jobs (each saves a checkpoint)."""
    outcome: dict[str, str] = {}
    waiting: list[PlannedJob] = []
    for job in planned:
        if job.state in ("finished", "running"):
            outcome[job.key] = "skipped" if job.state == "finished" else "running elsewhere"
            on_event("skip", job, job.spec.run_dir)
        else:
            _submit_record(job, "queued", executor="local")
            waiting.append(job)
    running: dict[str, tuple[PlannedJob, Any]] = {}
    # Python ignores SIGINT for good when it starts ignored (a script's `etrmtrm sweep ... &`): `kill -INT` must
    # stop such a sweep too, as it stops `etrmtrm train`.
    interrupt = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while waiting or running:
            for key, (job, handle) in list(running.items()):
                if handle.done():
                    del running[key]
                    outcome[key], detail = _local_outcome(job, handle)
                    on_event("end", job, f"{outcome[key]}{f': {detail}' if detail else ''}")
            for job in list(waiting):
                dep = outcome.get(job.waits_for) if job.waits_for else "finished"
                if dep is None or len(running) >= jobs:
                    continue  # its decoder is still to finish, or every slot is taken
                waiting.remove(job)
                if dep not in ("finished", "skipped"):
                    outcome[job.key] = "failed"
                    why = f"not started: it starts from {job.waits_for}, which is {dep}"
                    _submit_record(job, "failed", executor="local", error=why)
                    on_event("end", job, f"failed: {why}")
                    continue
                # A run that every other waits for (P0) runs alone: it takes every job's cores, not one share
                alone = not running and bool(waiting) and all(other.waits_for == job.key for other in waiting)
                spec = replace(job.spec, threads=job.spec.threads * jobs) if alone and job.spec.threads else job.spec
                with _sigint_ignored_by_children():
                    handle = executor.submit(TrainJob(spec))
                running[job.key] = (job, handle)
                _submit_record(job, "submitted", executor="local", **_job_logs(handle))
                on_event("start", job, f"job {handle.job_id}, {spec.threads} threads, log {handle.paths.stdout}")
            time.sleep(poll_s)
    except KeyboardInterrupt:  # a terminal's Ctrl-C reached the jobs too; a signal to this process alone did not
        time.sleep(1.5)
        for _, handle in running.values():  # the controller passes SIGTERM to its job, the job once to its run
            if not handle.done():  # (an ended controller's pid may already be another process's)
                with contextlib.suppress(ProcessLookupError):  # submitit's cancel() sends SIGINT: ignored, see below
                    os.kill(int(handle.job_id), signal.SIGTERM)  # a local job's id is its controller's pid
        raise
    finally:
        signal.signal(signal.SIGINT, interrupt)
    return outcome


@contextlib.contextmanager
def _sigint_ignored_by_children() -> Iterator[None]:
    """Processes started in the block begin with SIGINT ignored, which Python then keeps. Otherwise a Ctrl-C
    makes submitit's job controller print a KeyboardInterrupt traceback and kill its job a second later. The
    job still hears the terminal's Ctrl-C: it installs its own handler (sweep_job.TrainJob). The sweep ignores
    SIGINT for the moment a submit takes too; a Ctrl-C in that moment is lost (press it again)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _local_outcome(job: PlannedJob, handle: Any) -> tuple[str, str]:
    """The ended job's state from its record (the job writes it), else from submitit."""
    path = record_path(job.spec.folder, job.key, "run")
    record = read_json(path) if path.is_file() else {}
    if record.get("sweep_id") == job.spec.sweep_id and record.get("state") in ("finished", "failed", "stopped"):
        detail = record.get("error") or record.get("reason") or ""
        if record["state"] == "failed":
            detail += f" (log: {record.get('log_err')})"
        return record["state"], detail.strip()
    if record.get("sweep_id") == job.spec.sweep_id and record.get("state") == "requeued":
        why = "time limit: requeued as often as the local executor restarts a job (sweep.max_requeues)"
        write_record(job.spec.folder, job.key, "run", {**record, "state": "stopped", "reason": why})
        return "stopped", why
    return "failed", f"the job ended without saying how (log: {handle.paths.stderr})"


def submit_slurm(planned: Sequence[PlannedJob], executor_for: Callable[[str | None], Any],
                 on_event: EventFn) -> dict[str, str]:
    """Submit the unfinished runs' jobs -> key -> SLURM job id. `executor_for(dependency)` makes an executor
    whose jobs carry that sbatch dependency (None: none). A run whose last SLURM job is still queued or running
    is not submitted again, and the runs that start from it wait for that job; a run that starts from a decoder
    which another process is writing is not submitted (rerun the sweep after it)."""
    live = slurm_live_jobs()
    ids: dict[str, str] = {}
    todo = []
    for job in planned:
        previous = _read_record(job, "submit")
        if job.state != "finished" and previous.get("executor") == "slurm" and previous.get("job_id") in live:
            ids[job.key] = previous["job_id"]
            on_event("queued", job, f"already in SLURM job {previous['job_id']}, not submitted again")
        elif job.state in ("finished", "running"):
            on_event("skip", job, job.spec.run_dir)
        else:
            todo.append(job)
    state = {job.key: job.state for job in planned}
    blocked = [job for job in todo if job.waits_for and job.waits_for not in ids and state[job.waits_for] == "running"]
    for job in blocked:  # its decoder is written by a process of no SLURM job of ours: nothing to wait for
        why = f"not started: it starts from {job.waits_for}, which is running elsewhere; rerun the sweep after it"
        _submit_record(job, "failed", executor="slurm", error=why)
        on_event("end", job, f"failed: {why}")
    todo = [job for job in todo if job not in blocked]
    waited = {job.waits_for for job in todo if job.waits_for}
    first = [job for job in todo if job.key in waited]  # decoders others wait for: one job each, first
    rest = [job for job in todo if job.key not in waited]
    for job in first:
        _submit_group([job], executor_for(None), ids, on_event)
    groups: dict[str | None, list[PlannedJob]] = {}
    for job in rest:  # a decoder that is finished (or not in the sweep) has no job to wait for
        groups.setdefault(ids.get(job.waits_for) if job.waits_for else None, []).append(job)
    for dep_id, group in groups.items():
        _submit_group(group, executor_for(f"afterok:{dep_id}" if dep_id else None), ids, on_event, dep_id)
    return ids


def _read_record(job: PlannedJob, kind: str) -> dict[str, Any]:
    path = record_path(job.spec.folder, job.key, kind)
    return read_json(path) if path.is_file() else {}


def _submit_group(group: Sequence[PlannedJob], executor: Any, ids: dict[str, str], on_event: EventFn,
                  dep_id: str | None = None) -> None:
    """One job, or a job array (submitit's batch) for several; `dep_id`: the job they wait for."""
    with executor.batch():
        handles = [executor.submit(TrainJob(job.spec)) for job in group]
    for job, handle in zip(group, handles, strict=True):
        ids[job.key] = str(handle.job_id)
        _submit_record(job, "submitted", executor="slurm", **_job_logs(handle))
        on_event("start", job, f"SLURM job {handle.job_id}" + (f", after {job.waits_for} (job {dep_id})"
                                                                 if dep_id else ""))
