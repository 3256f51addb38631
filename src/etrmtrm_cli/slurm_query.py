"""What the SLURM commands say: whether a controller answers (`sinfo`) and which of our jobs it still holds
(`squeue`). The sweep asks both before it submits; `status` asks squeue about jobs its records call pending."""

from __future__ import annotations

import getpass
import shutil
import subprocess
from collections.abc import Iterable

from etrmtrm_cli.errors import RunError


def slurm_answers() -> tuple[bool, str]:
    """Whether a SLURM controller answers `sinfo`, and in words why (not)."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False, "sbatch/sinfo not found"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %a %D %t"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, f"sinfo: {err}"
    if out.returncode != 0:
        return False, f"sinfo failed: {last_line(out)}"
    return True, f"sinfo answers ({' | '.join(out.stdout.split(chr(10))[:3]).strip()})"


def slurm_live_jobs(users: Iterable[str] = ()) -> set[str]:
    """The ids of these users' SLURM jobs (default: this user's) that are queued or running, one per array task
    (`squeue -r`)."""
    who = ",".join(sorted(users)) or getpass.getuser()
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-u", who, "-o", "%i"], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RunError(f"squeue: {err}: cannot tell which of the sweep's jobs are still queued") from None
    if out.returncode != 0:
        raise RunError(f"squeue failed ({last_line(out)}): cannot tell which of the sweep's jobs are still queued")
    return set(out.stdout.split())


def last_line(out: subprocess.CompletedProcess) -> str:
    """What a failed SLURM command said last (its error), or its exit code."""
    lines = (out.stderr or out.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit code {out.returncode}"
