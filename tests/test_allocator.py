"""Which malloc a run uses: tcmalloc where the machine has it (the CLI re-executes itself with it preloaded),
glibc's with raised thresholds where it has not (ETRMTRM_ALLOCATOR=system-tuned), glibc's as it is with
ETRMTRM_ALLOCATOR=system; meta.json and the start line say which."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from etrmtrm_cli.allocator import (
    ENV,
    GLIBC_SETTINGS,
    AllocatorChoiceError,
    find_tcmalloc,
    is_etrmtrm_program,
    library_dirs,
    loaded_allocator,
    reexec_env,
)
from etrmtrm_cli.analysis.diagnose.determinism import without_wall_clock

REAL = str(Path(__file__).resolve().parents[1] / "experiments.toml")
TCMALLOC = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")


TUNED = ":".join(f"{name}={value}" for name, value in GLIBC_SETTINGS.items())


def test_reexec_env_adds_tcmalloc_once_and_only_where_it_should() -> None:
    env = reexec_env({"PATH": "/bin"}, "linux", TCMALLOC)
    assert env == {"PATH": "/bin", "LD_PRELOAD": str(TCMALLOC)}
    assert reexec_env(env, "linux", TCMALLOC) is None  # already preloaded: the re-executed process goes on
    kept = reexec_env({"LD_PRELOAD": "/opt/libfoo.so"}, "linux", TCMALLOC)
    assert kept is not None and kept["LD_PRELOAD"] == f"/opt/libfoo.so {TCMALLOC}"  # the user's preload stays
    assert reexec_env({}, "darwin", TCMALLOC) is None  # LD_PRELOAD is Linux's
    assert reexec_env({ENV: "system"}, "linux", TCMALLOC) is None
    assert reexec_env({ENV: "auto"}, "linux", TCMALLOC) is not None


def test_reexec_env_tunes_glibc_where_there_is_no_tcmalloc_and_keeps_the_users_own_settings() -> None:
    env = reexec_env({"PATH": "/bin"}, "linux", None)
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": TUNED}
    assert reexec_env(env, "linux", None) is None  # already tuned: the re-executed process goes on
    assert reexec_env({ENV: "system-tuned"}, "linux", TCMALLOC) == {ENV: "system-tuned", "GLIBC_TUNABLES": TUNED}
    other = reexec_env({"GLIBC_TUNABLES": "glibc.malloc.check=3"}, "linux", None)
    assert other is not None and other["GLIBC_TUNABLES"] == f"glibc.malloc.check=3:{TUNED}"
    assert reexec_env({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, "linux", None) is None  # theirs
    assert reexec_env({ENV: "system"}, "linux", None) is None
    assert reexec_env({}, "darwin", None) is None


@pytest.mark.skipif(sys.platform != "linux", reason="GLIBC_TUNABLES is glibc's, on Linux")
def test_glibc_honours_the_settings_freed_memory_stays_in_the_process() -> None:
    # A 16 MiB block, written and freed: plain glibc mmaps it and hands it back on free (the process's resident
    # memory drops by 16 MiB), the tuned one takes it from its heap and keeps it (the next step reuses it).
    probe = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL('libc.so.6'); libc.malloc.restype = ctypes.c_void_p\n"
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')\n"
        "n = 16 << 20; p = libc.malloc(n); ctypes.memset(p, 1, n); before = rss()\n"
        "libc.free(ctypes.c_void_p(p)); print(before - rss())\n"
    )

    def released_mib(env: dict[str, str]) -> float:
        done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return int(done.stdout) / 2**20

    plain = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "GLIBC_TUNABLES")}
    tuned = reexec_env(plain, "linux", None)
    assert tuned is not None
    assert released_mib(plain) >= 15
    assert released_mib(tuned) < 1


def test_only_etrmtrm_itself_is_re_executed() -> None:
    assert is_etrmtrm_program("/home/me/.venv/bin/etrmtrm")  # the console script
    assert is_etrmtrm_program("/home/me/src/etrmtrm_cli/__main__.py")  # python -m etrmtrm_cli (and torchrun -m)
    assert not is_etrmtrm_program("/home/me/.venv/bin/pytest")  # a program calling main() in its own process
    assert not is_etrmtrm_program("-c")
    assert not is_etrmtrm_program("/usr/lib/python3.11/site-packages/pip/__main__.py")


def test_a_wrong_allocator_choice_names_the_variable_and_the_choices() -> None:
    expected = r"ETRMTRM_ALLOCATOR='tcmaloc': expected one of auto, system-tuned, system"
    with pytest.raises(AllocatorChoiceError, match=expected):
        reexec_env({ENV: "tcmaloc"}, "linux", TCMALLOC)


def test_find_tcmalloc_takes_the_first_directory_that_has_one(tmp_path: Path) -> None:
    empty, conda, system = (tmp_path / name for name in ("empty", "conda", "system"))
    for d in (empty, conda, system):
        d.mkdir()
    (conda / "libtcmalloc.so.4").touch()
    (system / "libtcmalloc_minimal.so.4").touch()
    assert find_tcmalloc([empty, conda, system]) == conda / "libtcmalloc.so.4"
    assert find_tcmalloc([empty]) is None
    assert Path(sys.prefix) / "lib" in library_dirs()  # the environment's own (conda's gperftools)


def test_loaded_allocator_reads_the_mapped_libraries(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    rows = ["55d0c000-55d0d000 r--p 00000000 08:01 1234 /usr/bin/python3.11",
            "7f00a000-7f00b000 rw-p 00000000 00:00 0 [heap]",
            "7f00c000-7f00d000 r-xp 00000000 00:00 0",
            "7f00e000-7f00f000 r-xp 00000000 08:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6"]
    maps.write_text("\n".join(rows) + "\n")
    assert loaded_allocator(maps, {}) == "system"
    assert loaded_allocator(maps, {"GLIBC_TUNABLES": TUNED}) == "system-tuned"
    assert loaded_allocator(maps, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}) == "system"  # not ours
    maps.write_text("\n".join([*rows, f"7f01-7f02 r-xp 00000000 08:01 7 {TCMALLOC}"]) + "\n")
    assert loaded_allocator(maps, {"GLIBC_TUNABLES": TUNED}) == "tcmalloc"
    maps.write_text("7f01-7f02 r-xp 00000000 08:01 7 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n")
    assert loaded_allocator(maps) == "jemalloc"
    assert loaded_allocator(tmp_path / "missing") == "system"  # no /proc (not Linux)


def train(tmp_path: Path, allocator: str | None) -> subprocess.CompletedProcess[str]:
    """`python -m etrmtrm_cli train` as a user runs it (the entry point is where the re-exec happens)."""
    env = {k: v for k, v in os.environ.items() if k not in (ENV, "LD_PRELOAD", "GLIBC_TUNABLES")} | {"COLUMNS": "300"}
    if allocator is not None:
        env[ENV] = allocator
    return subprocess.run(
        [sys.executable, "-m", "etrmtrm_cli", "train", "E0b", "--experiments", REAL, "--profile", "tiny",
         "--runs-dir", str(tmp_path), "--max-steps", "2", "--set", "decoder=none", "--threads", "1"],
        env=env, capture_output=True, text=True, timeout=300)


def test_a_run_uses_tcmalloc_where_the_machine_has_it_and_says_so(tmp_path: Path) -> None:
    on_linux = sys.platform == "linux"
    auto = ("tcmalloc" if find_tcmalloc(library_dirs()) else "system-tuned") if on_linux else "system"
    expected = {"auto": auto, "system-tuned": "system-tuned" if on_linux else "system", "system": "system"}
    for choice, allocator in expected.items():
        done = train(tmp_path / choice, choice)
        assert done.returncode == 0, done.stderr
        meta = json.loads((tmp_path / choice / "E0b" / "meta.json").read_text())
        assert meta["runtime"]["allocator"] == allocator
        assert f"malloc {allocator}" in done.stdout

    # The allocator changes no number: the same metrics and the same weights, bit for bit.
    def metrics(run: Path) -> list[dict]:
        return [without_wall_clock(json.loads(line)) for line in (run / "metrics.jsonl").read_text().splitlines()]

    runs = [tmp_path / choice / "E0b" for choice in expected]
    assert metrics(runs[0]) == metrics(runs[1]) == metrics(runs[2])
    assert len({(run / "model.safetensors").read_bytes() for run in runs}) == 1


def test_a_wrong_allocator_choice_exits_1_before_anything_is_written(tmp_path: Path) -> None:
    done = train(tmp_path, "fast")
    assert done.returncode == 1
    assert "ETRMTRM_ALLOCATOR='fast': expected one of auto, system-tuned, system" in done.stderr
    assert "Traceback" not in done.stderr and not any(tmp_path.iterdir())
