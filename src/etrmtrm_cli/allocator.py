"""Which malloc a process runs on: tcmalloc where the machine has it, glibc's otherwise.

Why: a training step frees and reallocates the same activation buffers thousands of times. Measured on the
2-core AVX2 EPYC this tool was tuned on, with bit-identical results (`benchmarks/bench_alloc.py`,
docs/performance.md): a cpu-profile E0b step at 2 threads 1.13x faster eager and 1.18x compiled, at about 100 MB
(eager) and 40 MB (compiled) less peak memory; two compiled runs side by side at one thread each (as
`sweep --jobs 2` runs them) 1.10x; a 500-step run 1.13x. The likely cause (not profiled): glibc hands large
freed blocks back to the kernel and faults them in again, where tcmalloc keeps them for the next step.

The allocator must be chosen before the process starts (LD_PRELOAD), so the CLI's entry point re-executes
itself once with tcmalloc preloaded (`preload_env`); torch's own CPU launcher (`python -m
torch.backends.xeon.run_cpu`) preloads it by LD_PRELOAD too. The same process id
carries on, so torchrun and sweep jobs see nothing of it. `ETRMTRM_ALLOCATOR=system` keeps glibc's malloc.
The run's start line and meta.json (`runtime.allocator`) say which one ran. Measured on the CPU only; with
CUDA the host allocator matters less, and no gain there is shown.

Linux only: elsewhere, or where no tcmalloc library is installed (Debian/Ubuntu: `apt-get install
libtcmalloc-minimal4`), nothing changes.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path

from etrmtrm_cli.errors import ConfigError

ENV = "ETRMTRM_ALLOCATOR"
CHOICES = ("auto", "system")
LIBRARIES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
KNOWN = {"libtcmalloc": "tcmalloc", "libjemalloc": "jemalloc"}  # mapped-library prefix -> allocator name


class AllocatorChoiceError(ConfigError):
    """ETRMTRM_ALLOCATOR holds something other than CHOICES."""


def library_dirs() -> list[Path]:
    """Where shared libraries live: the Python environment's own (conda installs gperftools there), then the
    system's, multiarch first."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    system = [Path(root) / multiarch for root in ("/usr/lib", "/lib") if multiarch]
    return [Path(sys.prefix) / "lib", Path("/usr/local/lib"), *system, Path("/usr/lib64"), Path("/usr/lib")]


def find_tcmalloc(dirs: list[Path]) -> Path | None:
    """The first tcmalloc library in `dirs`, or None."""
    return next((d / name for d in dirs for name in LIBRARIES if (d / name).is_file()), None)


def preload_env(environ: Mapping[str, str], platform: str, library: Path | None) -> dict[str, str] | None:
    """The environment to re-execute with so that `library` (tcmalloc) is preloaded, or None when there is
    nothing to do: asked not to, not Linux, no library, or already preloaded (which also ends the re-exec)."""
    choice = environ.get(ENV, "auto")
    if choice not in CHOICES:
        raise AllocatorChoiceError(f"{ENV}={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "system" or platform != "linux" or library is None:
        return None
    preloaded = environ.get("LD_PRELOAD", "").split()
    if str(library) in preloaded:
        return None
    return {**environ, "LD_PRELOAD": " ".join([*preloaded, str(library)])}


def is_etrmtrm_program(argv0: str) -> bool:
    """Whether the process is etrmtrm itself (its console script or `python -m etrmtrm_cli`), not another
    program that calls its main(): re-executing that one would run the other program again."""
    path = Path(argv0)
    return path.name == "etrmtrm" or (path.name == "__main__.py" and path.parent.name == "etrmtrm_cli")


def reexec_with_tcmalloc() -> None:
    """Replace this process by itself with tcmalloc preloaded, where preload_env says to; else return."""
    env = preload_env(os.environ, sys.platform, find_tcmalloc(library_dirs()))
    if env is not None and is_etrmtrm_program(sys.argv[0]):
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def loaded_allocator(maps: Path = Path("/proc/self/maps")) -> str:
    """The malloc this process runs on, from the libraries mapped into it: 'tcmalloc', 'jemalloc' or 'system'."""
    try:
        rows = [line.split(maxsplit=5) for line in maps.read_text().splitlines()]  # addr perms offset dev inode path
    except OSError:
        return "system"
    mapped = {Path(row[5]).name for row in rows if len(row) == 6}
    return next((name for prefix, name in KNOWN.items() if any(m.startswith(prefix) for m in mapped)), "system")
