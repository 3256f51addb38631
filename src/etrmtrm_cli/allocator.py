"""Which malloc a process runs on: tcmalloc where the machine has it, glibc's with raised thresholds otherwise.

Why: a training step frees and reallocates the same activation buffers thousands of times. Measured on the
2-core AVX2 EPYC this tool was tuned on, with bit-identical results (`benchmarks/bench_alloc.py`,
docs/performance.md): a cpu-profile E0b step at 2 threads 1.13x faster eager and 1.18x compiled, at about 100 MB
(eager) and 40 MB (compiled) less peak memory; two compiled runs side by side at one thread each (as
`sweep --jobs 2` runs them) 1.10x; a 500-step run 1.13x. The cause is glibc's: it hands freed memory at the top
of its heap back to the kernel once more than a threshold is free there, and mmaps every block above another
threshold anew, and the next step faults those pages in again; tcmalloc keeps them for the next step.

Where no tcmalloc is installed, glibc's malloc gets the same habit from two of its own settings (GLIBC_TUNABLES):
freed memory stays in the process (trim threshold 4 GiB) and blocks up to 32 MiB, the most glibc allows, come
from the heap rather than from fresh mmaps. That made the compiled bfloat16 cpu-profile step 1.11x as fast as
plain glibc (three alternating rounds, 2-core AVX512-BF16 EPYC; docs/performance.md) at the same peak RSS.

Both must be set before the process starts (LD_PRELOAD, GLIBC_TUNABLES), so the CLI's entry point re-executes
itself once with them (`reexec_env`); torch's own CPU launcher (`python -m torch.backends.xeon.run_cpu`) preloads
tcmalloc by LD_PRELOAD too. The same process id carries on, and torchrun workers and sweep jobs inherit the
environment. `ETRMTRM_ALLOCATOR=system-tuned` takes the tuned glibc even where tcmalloc is installed, and
`ETRMTRM_ALLOCATOR=system` keeps glibc's malloc as it is. The run's start line and meta.json
(`runtime.allocator`: tcmalloc, jemalloc, system-tuned or system) say which one ran. Measured on the CPU only;
with CUDA the host allocator matters less, and no gain there is shown.

Linux only: elsewhere nothing changes. tcmalloc comes from Debian/Ubuntu's `apt-get install libtcmalloc-minimal4`
(or conda's gperftools).
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path

from etrmtrm_cli.errors import ConfigError

ENV = "ETRMTRM_ALLOCATOR"
CHOICES = ("auto", "system-tuned", "system")
LIBRARIES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
KNOWN = {"libtcmalloc": "tcmalloc", "libjemalloc": "jemalloc"}  # mapped-library prefix -> allocator name
GLIBC_SETTINGS = {"glibc.malloc.trim_threshold": 4 * 2**30, "glibc.malloc.mmap_threshold": 32 * 2**20}


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


def reexec_env(environ: Mapping[str, str], platform: str, library: Path | None) -> dict[str, str] | None:
    """The environment to re-execute with: `library` (tcmalloc) preloaded, or where there is none or the choice
    is system-tuned, glibc's malloc tuned (GLIBC_SETTINGS). None when there is nothing to do: asked not to, not
    Linux, or already done (which also ends the re-exec); a user's own glibc malloc thresholds are theirs to keep."""
    choice = environ.get(ENV, "auto")
    if choice not in CHOICES:
        raise AllocatorChoiceError(f"{ENV}={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "system" or platform != "linux":
        return None
    if choice == "system-tuned" or library is None:
        tunables = [t for t in environ.get("GLIBC_TUNABLES", "").split(":") if t]
        if any(t.split("=")[0] in GLIBC_SETTINGS for t in tunables):
            return None
        ours = [f"{name}={value}" for name, value in GLIBC_SETTINGS.items()]
        return {**environ, "GLIBC_TUNABLES": ":".join([*tunables, *ours])}
    preloaded = environ.get("LD_PRELOAD", "").split()
    if str(library) in preloaded:
        return None
    return {**environ, "LD_PRELOAD": " ".join([*preloaded, str(library)])}


def is_etrmtrm_program(argv0: str) -> bool:
    """Whether the process is etrmtrm itself (its console script or `python -m etrmtrm_cli`), not another
    program that calls its main(): re-executing that one would run the other program again."""
    path = Path(argv0)
    return path.name == "etrmtrm" or (path.name == "__main__.py" and path.parent.name == "etrmtrm_cli")


def reexec_with_allocator() -> None:
    """Replace this process by itself with tcmalloc preloaded or glibc's malloc tuned, where reexec_env says to;
    else return."""
    env = reexec_env(os.environ, sys.platform, find_tcmalloc(library_dirs()))
    if env is not None and is_etrmtrm_program(sys.argv[0]):
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def loaded_allocator(maps: Path = Path("/proc/self/maps"), environ: Mapping[str, str] = os.environ) -> str:
    """The malloc this process runs on, from the libraries mapped into it: 'tcmalloc', 'jemalloc', or glibc's:
    'system-tuned' with GLIBC_SETTINGS in its environment, else 'system'."""
    try:
        rows = [line.split(maxsplit=5) for line in maps.read_text().splitlines()]  # addr perms offset dev inode path
    except OSError:
        return "system"
    mapped = {Path(row[5]).name for row in rows if len(row) == 6}
    found = next((name for prefix, name in KNOWN.items() if any(m.startswith(prefix) for m in mapped)), None)
    if found is not None:
        return found
    tunables = set(environ.get("GLIBC_TUNABLES", "").split(":"))
    tuned = all(f"{name}={value}" in tunables for name, value in GLIBC_SETTINGS.items())
    return "system-tuned" if tuned else "system"
