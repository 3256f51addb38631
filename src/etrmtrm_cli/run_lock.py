"""One writer per run: the lock a process holds on the run directory it writes."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from etrmtrm_cli.errors import RunError

LOCK = ".lock"  # in the run directory; names the process that holds it


class RunLock:
    """One writer per run: an exclusive lock on <run>/.lock (flock), which the OS releases when the holding
    process ends, however it ends (kill -9 included), so a lock is never stale."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        try:
            self.file = self.path.open("a+", encoding="utf-8")
        except OSError as err:
            raise RunError(f"{self.path}: cannot open the run's lock ({err.strerror})") from None
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise RunError(f"{run_dir} is being written by {holder}; one process writes a run at a time: "
                           "wait for it to finish or stop it (Ctrl-C saves a checkpoint)") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        self.file.flush()

    def release(self) -> None:
        if not self.file.closed:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
