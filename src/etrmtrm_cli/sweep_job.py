"""One job of a sweep: one (experiment, seed), trained by `etrmtrm train` in a child process of a submitit job.

The same callable runs under submitit's local executor and on SLURM. At its start it looks at the run
directory: a finished run is skipped, a stopped one is resumed (`--resume`), one stopped before its first
checkpoint starts over (`--force`, which moves it aside). The child's thread count is set explicitly
(`--threads`, OMP_NUM_THREADS).

Stopping and requeueing (the child saves a checkpoint on its first SIGTERM and exits; `--resume` continues it
exactly):
- time limit (SLURM, or a local --time-min): submitit catches the warning signal (USR2, `signal_delay_s` before
  the limit) and calls `checkpoint`, which stops the child (SIGTERM, then waits for its checkpoint) and hands
  submitit this job again to requeue. The child ignores USR2 itself.
- preemption, `scontrol requeue`, `scancel` (SLURM): SLURM sends SIGTERM to every process of the job, the
  child included; the job waits for the child and reports the run stopped. A requeued job starts here again
  and resumes.
- a stopped local sweep (Ctrl-C, or SIGINT to the sweep alone): the sweep sends SIGTERM to submitit's controller
  of each running job, which passes it on (the controller itself ignores SIGINT: sweep.run_local); the job, on
  that or on the terminal's SIGINT, forwards one SIGTERM to the child (which runs in its own session, so a
  terminal's Ctrl-C does not reach it twice).

What happened is written to a record beside submitit's files (`records/<key>.run.json`): `etrmtrm status`
reads it, with the run directories. This module does not import torch: the child does.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import UncompletedJobError

RECORDS = "records"  # in the sweep folder: <key>.submit.json (the sweep command), <key>.run.json (the job)
STOPPED_EXIT = 130  # `etrmtrm train` after a signal: checkpoint saved, run interrupted


@dataclass(frozen=True)
class JobSpec:
    """Everything a job needs, pickled by submitit: plain data only."""

    key: str  # "E0b/seed-1", or "P0" for a run without a seed axis
    exp_id: str
    seed: int | None  # None: runs/<ID>/ itself
    run_dir: str
    argv: tuple[str, ...]  # python -m etrmtrm_cli train ... (without --resume / --force / --threads)
    cwd: str
    threads: int | None  # None: the cores this job may use (SLURM's allocation), measured where it runs
    folder: str  # the sweep folder: submitit's files and the records
    sweep_id: str
    stop_timeout_s: float = 300.0  # how long `checkpoint` waits for the child to save and exit


def record_path(folder: str | Path, key: str, kind: str) -> Path:
    """records/<key>.<kind>.json, the key's '/' as '.' (E0b/seed-1 -> E0b.seed-1.run.json)."""
    return Path(folder) / RECORDS / f"{key.replace('/', '.')}.{kind}.json"


def write_record(folder: str | Path, key: str, kind: str, fields: dict[str, Any]) -> None:
    """records/<key>.<kind>.json := fields, the key and the time (atomically: a reader sees old or new)."""
    from etrmtrm_cli.rundir import write_json

    path = record_path(folder, key, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {**fields, "key": key, "updated": time.time()})


class TrainJob(submitit.helpers.Checkpointable):
    """The submitit callable of one job (checkpointable: requeued after a time limit, resumed from its run)."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self._proc: subprocess.Popen[bytes] | None = None
        self._signalled: int | None = None
        self._record: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:  # a running child is never pickled
        return {"spec": self.spec}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["spec"])  # type: ignore[misc]

    def __call__(self) -> dict[str, Any]:
        with self._signals():  # from the start: a stop that comes before the child exists must still stop the job
            return self._run()

    def _run(self) -> dict[str, Any]:
        from etrmtrm_cli.rundir import run_status

        spec, env = self.spec, submitit.JobEnvironment()
        logs = {"job_id": env.job_id, "log_out": str(env.paths.stdout), "log_err": str(env.paths.stderr),
                "host": socket.gethostname(), "pid": os.getpid(), "executor": os.environ.get("SUBMITIT_EXECUTOR")}
        record = self._record = {k: v for k, v in asdict(spec).items()
                                     if k not in ("key", "argv", "threads", "stop_timeout_s")} | logs
        status = run_status(Path(spec.run_dir))
        if status == "finished":
            write_record(spec.folder, spec.key, "run", {**record, "state": "finished", "skipped": True})
            print(f"[sweep] {spec.key}: finished run in {spec.run_dir}, skipped", flush=True)
            return {"key": spec.key, "state": "finished", "skipped": True}
        threads = spec.threads or usable_cores()
        flags = {"resumable": ["--resume"], "unsaved": ["--force"]}.get(status, [])
        argv = [*spec.argv, "--threads", str(threads), *flags]
        print(f"[sweep] {spec.key} ({status}): {shlex.join(argv)}", flush=True)
        started = time.time()
        write_record(spec.folder, spec.key, "run", {**record, "state": "running", "started": started,
                                                    "threads": threads, "action": status})
        code: int | None = None  # stays None when a stop came before the child would start: it is not started
        try:
            if self._signalled is None:
                self._proc = subprocess.Popen(argv, cwd=spec.cwd, env=_child_env(threads), preexec_fn=_ignore_usr2,
                                              start_new_session=logs["executor"] == "local")
                if self._signalled is not None and logs["executor"] != "slurm":  # came while it started: pass it on
                    self._stop_child(wait=False)
                while (code := self._proc.poll()) is None:
                    time.sleep(0.5)
        except UncompletedJobError as err:  # raised by submitit's time-limit handler: no requeue left
            write_record(spec.folder, spec.key, "run", {**record, "state": "stopped", "started": started,
                                                        "ended": time.time(), "reason": f"time limit: {err}"})
            raise
        ended = {"started": started, "ended": time.time(), "threads": threads, "exit_code": code, "action": status}
        if code == 0:
            write_record(spec.folder, spec.key, "run", {**record, **ended, "state": "finished"})
            return {"key": spec.key, "state": "finished", "skipped": False}
        if code == STOPPED_EXIT or self._signalled is not None:
            why = signal.Signals(self._signalled).name if self._signalled else "a signal to the run itself"
            if logs["executor"] == "slurm":
                why += " from SLURM: requeued, preempted or cancelled"
            write_record(spec.folder, spec.key, "run", {**record, **ended, "state": "stopped", "reason": why})
            raise RuntimeError(f"{spec.key}: stopped ({why}); the run resumes from its checkpoint when the job runs "
                               "again")
        if code is not None and code < 0:  # killed without a chance to say why: SIGKILL is often the kernel's OOM
            error = (f"etrmtrm train was killed by {signal.Signals(-code).name}, often the kernel's out-of-memory "
                     "killer; the same sweep command resumes the run from its last checkpoint, if it saved one")
        else:
            error = last_error(Path(logs["log_err"])) or f"etrmtrm train exited with code {code}"
        write_record(spec.folder, spec.key, "run", {**record, **ended, "state": "failed", "error": error})
        raise RuntimeError(f"{spec.key}: {error} (log: {logs['log_err']})")

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """submitit's hook at a time limit: stop the child (it saves a checkpoint), then requeue this job."""
        self._stop_child(wait=True)
        write_record(self.spec.folder, self.spec.key, "run", {**self._record, "state": "requeued"})
        return submitit.helpers.DelayedSubmission(TrainJob(self.spec))

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGTERM/SIGINT to this job: noted; locally also passed on to the child (once). On SLURM the child
        gets SLURM's own signal, and a second one would stop it without a checkpoint."""

        def handler(signum: int, frame: object) -> None:
            first = self._signalled is None
            self._signalled = signum
            if first and os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
                self._stop_child(wait=False)

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _stop_child(self, *, wait: bool) -> None:
        proc = self._proc
        if proc is None or _exited(proc):
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.spec.stop_timeout_s
        while wait and not _exited(proc) and time.monotonic() < deadline:
            time.sleep(0.2)


def usable_cores() -> int:
    """The cores this process may use: a SLURM job's allocation (SLURM_CPUS_PER_TASK, else SLURM_CPUS_ON_NODE:
    without task affinity a job sees every core of its node), else its CPU affinity, else the machine's."""
    for name in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    return env


def _ignore_usr2() -> None:
    """In the child before exec: the time-limit warning is for submitit (the job), not for the training."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether the child has ended, without reaping it from a signal handler (Popen's own wait may hold its
    lock): its /proc entry is gone or a zombie."""
    if proc.returncode is not None:
        return True
    try:
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
    except OSError:
        return proc.poll() is not None
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def last_error(log: Path, tail_bytes: int = 65536) -> str | None:
    """The last `error: ...` line of a job's stderr log (what `etrmtrm train` printed before exiting 1), else
    its last non-empty line."""
    try:
        with log.open("rb") as fh:
            fh.seek(max(0, log.stat().st_size - tail_bytes))
            lines = [line.strip() for line in fh.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        return None
    errors = [line for line in lines if line.startswith("error:")]
    return (errors[-1].removeprefix("error:").strip() if errors else lines[-1]) if lines else None
