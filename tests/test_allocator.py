"""Which malloc a run uses: tcmalloc where the machine has it (the CLI re-executes itself with it preloaded),
glibc's where it has not or where ETRMTRM_ALLOCATOR=system; meta.json and the start line say which."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from etrmtrm_cli.allocator import (
    ENV,
    AllocatorChoiceError,
    find_tcmalloc,
    is_etrmtrm_program,
    library_dirs,
    loaded_allocator,
    preload_env,
)
from etrmtrm_cli.analysis.diagnose.determinism import without_wall_clock

REAL = str(Path(__file__).resolve().parents[1] / "experiments.toml")
TCMALLOC = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")


def test_preload_env_adds_tcmalloc_once_and_only_where_it_should() -> None:
    env = preload_env({"PATH": "/bin"}, "linux", TCMALLOC)
    assert env == {"PATH": "/bin", "LD_PRELOAD": str(TCMALLOC)}
    assert preload_env(env, "linux", TCMALLOC) is None  # already preloaded: the re-executed process goes on
    kept = preload_env({"LD_PRELOAD": "/opt/libfoo.so"}, "linux", TCMALLOC)
    assert kept is not None and kept["LD_PRELOAD"] == f"/opt/libfoo.so {TCMALLOC}"  # the user's preload stays
    assert preload_env({}, "linux", None) is None  # no tcmalloc on this machine
    assert preload_env({}, "darwin", TCMALLOC) is None  # LD_PRELOAD is Linux's
    assert preload_env({ENV: "system"}, "linux", TCMALLOC) is None
    assert preload_env({ENV: "auto"}, "linux", TCMALLOC) is not None


def test_only_etrmtrm_itself_is_re_executed() -> None:
    assert is_etrmtrm_program("/home/me/.venv/bin/etrmtrm")  # the console script
    assert is_etrmtrm_program("/home/me/src/etrmtrm_cli/__main__.py")  # python -m etrmtrm_cli (and torchrun -m)
    assert not is_etrmtrm_program("/home/me/.venv/bin/pytest")  # a program calling main() in its own process
    assert not is_etrmtrm_program("-c")
    assert not is_etrmtrm_program("/usr/lib/python3.11/site-packages/pip/__main__.py")


def test_a_wrong_allocator_choice_names_the_variable_and_the_choices() -> None:
    with pytest.raises(AllocatorChoiceError, match=r"ETRMTRM_ALLOCATOR='tcmaloc': expected one of auto, system"):
        preload_env({ENV: "tcmaloc"}, "linux", TCMALLOC)


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
    assert loaded_allocator(maps) == "system"
    maps.write_text("\n".join([*rows, f"7f01-7f02 r-xp 00000000 08:01 7 {TCMALLOC}"]) + "\n")
    assert loaded_allocator(maps) == "tcmalloc"
    maps.write_text("7f01-7f02 r-xp 00000000 08:01 7 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n")
    assert loaded_allocator(maps) == "jemalloc"
    assert loaded_allocator(tmp_path / "missing") == "system"  # no /proc (not Linux)


def train(tmp_path: Path, allocator: str | None) -> subprocess.CompletedProcess[str]:
    """`python -m etrmtrm_cli train` as a user runs it (the entry point is where the re-exec happens)."""
    env = {k: v for k, v in os.environ.items() if k not in (ENV, "LD_PRELOAD")} | {"COLUMNS": "300"}
    if allocator is not None:
        env[ENV] = allocator
    return subprocess.run(
        [sys.executable, "-m", "etrmtrm_cli", "train", "E0b", "--experiments", REAL, "--profile", "tiny",
         "--runs-dir", str(tmp_path), "--max-steps", "2", "--set", "decoder=none", "--threads", "1"],
        env=env, capture_output=True, text=True, timeout=300)


def test_a_run_uses_tcmalloc_where_the_machine_has_it_and_says_so(tmp_path: Path) -> None:
    expected = "tcmalloc" if sys.platform == "linux" and find_tcmalloc(library_dirs()) else "system"
    done = train(tmp_path / "auto", None)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "auto" / "E0b" / "meta.json").read_text())["runtime"]["allocator"] == expected
    assert f"malloc {expected}" in done.stdout

    done = train(tmp_path / "system", "system")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "system" / "E0b" / "meta.json").read_text())["runtime"]["allocator"] == "system"

    # The allocator changes no number: the same metrics and the same weights, bit for bit.
    def metrics(run: Path) -> list[dict]:
        return [without_wall_clock(json.loads(line)) for line in (run / "metrics.jsonl").read_text().splitlines()]

    auto, system = tmp_path / "auto" / "E0b", tmp_path / "system" / "E0b"
    assert metrics(auto) == metrics(system)
    assert (auto / "model.safetensors").read_bytes() == (system / "model.safetensors").read_bytes()


def test_a_wrong_allocator_choice_exits_1_before_anything_is_written(tmp_path: Path) -> None:
    done = train(tmp_path, "fast")
    assert done.returncode == 1
    assert "ETRMTRM_ALLOCATOR='fast': expected one of auto, system" in done.stderr
    assert "Traceback" not in done.stderr and not any(tmp_path.iterdir())
