"""Hardening: bad input, damaged run files and unlucky timing end in one clear message, never in a traceback,
a silently wrong run, or advice that leads nowhere.

Every test drives the real CLI, in process (typer's CliRunner; an exception that escapes the CLI is rendered
as the traceback the real command would print) or as `python -m etrmtrm_cli` where signals, concurrency, hangs
or huge allocations are involved. The common checks: the exit code (1 for a handled error), no "Traceback", a
message that names the file / key / ID and the problem, and pre-existing run directories left untouched
(file listing, sizes, mtimes and contents before and after). Where the tool suggests a command (in backticks,
or after "with:"), the command is run as printed, from the project directory, and must not fail with a
different error.

One small finished run is trained once per module (E0b, tiny profile, 12 steps, checkpoints at 10 and 12) and
copied into each test's project directory: <project>/experiments.toml + <project>/runs/.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import logged_rows, wait_until
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from etrmtrm_cli.cli import app

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "experiments.toml"
TINY = ["--profile", "tiny", "--set", "decoder=none"]
FIXTURE_STEPS = 12  # the module's finished run: checkpoints at 10 and 12 (tiny: checkpoint_interval = 10)
ID_RULE = re.compile(r"letters.*digits|\[A-Za-z0-9", re.IGNORECASE | re.DOTALL)
runner = CliRunner()


# --- running the CLI --------------------------------------------------------------------------------------------


@dataclass
class Out:
    code: int
    text: str  # stdout + stderr (+ the traceback of an exception that escaped the CLI)

    @property
    def lines(self) -> list[str]:
        return [line for line in self.text.splitlines() if line.strip()]


def cli(*args: object) -> Out:
    """The CLI in this process, from the current directory."""
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    text = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        text += "".join(traceback.format_exception(result.exception))  # what the real command prints
    return Out(result.exit_code, text)


def cli_env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}


def popen(*args: object, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "etrmtrm_cli", *map(str, args)], cwd=cwd, env=cli_env(),
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def cli_proc(*args: object, cwd: Path, timeout: float) -> Out:
    """The CLI as its own process; killed (SIGKILL: a hung step ignores SIGTERM) after `timeout` seconds."""
    proc = popen(*args, cwd=cwd)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return Out(-9, f"{out}\n[test] TIMED OUT after {timeout:.0f} s and was killed")
    return Out(proc.returncode, out)


@contextlib.contextmanager
def address_space_limit(extra_bytes: int) -> Iterator[None]:
    """This process may map at most `extra_bytes` more: an absurd allocation fails at once instead of
    taking the machine's memory (the soft limit is raised back afterwards)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    vm_kib = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm_kib * 1024 + extra_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def assert_handled(out: Out, code: int = 1) -> None:
    assert "Traceback" not in out.text, out.text
    assert out.code == code, f"exit code {out.code}, expected {code}:\n{out.text}"


def names_id(out: Out, name: str) -> bool:
    """The output names `name` (quoted when it is empty)."""
    return any(form in out.text for form in (repr(name), json.dumps(name), *([name] if name else [])))


def line_with(out: Out, *needles: str) -> str:
    """The first output line that contains every needle (fails, showing the output, when there is none)."""
    found = [line for line in out.lines if all(n in line for n in needles)]
    assert found, f"no line names {needles}:\n{out.text}"
    return found[0]


# --- run directories --------------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under `root` with its size, mtime and content hash; a run's `.lock` is left out: it names
    the last process that held the lock (one that refused to touch the run may have held it)."""
    out: dict[str, tuple[object, ...]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.name == ".lock":
            continue
        if path.is_dir():
            out[rel + "/"] = ("dir",)
        else:
            st = path.stat()
            out[rel] = (st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def assert_untouched(root: Path, before: dict[str, tuple[object, ...]]) -> None:
    after = snapshot(root)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"{root} was modified: {changed}"


def metric_steps(run_dir: Path) -> list[int]:
    """The step of every line of metrics.jsonl; each line must be a JSON object with a step."""
    steps = []
    for n, line in enumerate((run_dir / "metrics.jsonl").read_text().splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        assert isinstance(row, dict) and isinstance(row.get("step"), int), f"metrics.jsonl line {n}: {line[:80]!r}"
        steps.append(row["step"])
    return steps


def summary_status(run_dir: Path) -> object:
    return json.loads((run_dir / "summary.json").read_text()).get("status")


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted(p for p in (run_dir / "checkpoints").glob("step_*") if p.is_dir() and p.suffix == "")
    return found[-1] if found else None


# --- the tool's advice ------------------------------------------------------------------------------------------


def suggested_commands(text: str) -> list[str]:
    """`etrmtrm ...` in backticks, and `... with: etrmtrm ...` up to the end of the line."""
    found = re.findall(r"`(etrmtrm\s[^`]+)`", text)
    found += [m.rstrip(" .;)") for m in re.findall(r"with:\s+(etrmtrm\s[^`\n]+)$", text, re.MULTILINE)]
    return list(dict.fromkeys(c.strip() for c in found))


def follow_suggestions(out: Out, same_problem: str | None = None) -> None:
    """Run every command the output suggests, as printed, from the current directory. Each must succeed, or
    fail only with the problem that made the tool suggest it (`same_problem`, a regex), never another error."""
    for command in suggested_commands(out.text):
        argv = shlex.split(command)[1:]
        result = cli(*argv)
        assert "Traceback" not in result.text, f"suggested `{command}` crashed:\n{result.text}"
        if result.code != 0:
            assert same_problem and re.search(same_problem, result.text, re.IGNORECASE), (
                f"suggested `{command}` fails with another error (exit {result.code}):\n{result.text}")


# --- fixtures ---------------------------------------------------------------------------------------------------


def project_text() -> str:
    """The real experiments.toml, plus a queue of one run and a second small profile (`mini`)."""
    text = REAL.read_text(encoding="utf-8")
    assert "[queues]\n" in text
    text = text.replace("[queues]\n", '[queues]\nsolo = ["E2b"]\n', 1)
    return text + (
        "\n[profiles.mini]  # tests: tiny with a wider model\n"
        'arch = { hidden_size = 32, num_heads = 2, L_layers = 1, H_cycles = 2, L_cycles = 1, puzzle_emb_len = 4, '
        'context_tokens = 4, forward_dtype = "float32" }\n'
        "data = { max_grid_size = 6, max_demos = 3, num_aug = 3, eval_num_aug = 2, train_groups = 4, "
        "eval_groups = 2 }\n"
        "train = { batch_divisor = 64, epochs = 20, lr_warmup_steps = 2, eval_interval = 10, "
        "checkpoint_interval = 10 }\n"
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project: experiments.toml and runs/E0b (tiny, finished at step 12) and runs/E0a (mini, 2 steps)."""
    root = tmp_path_factory.mktemp("project")
    (root / "experiments.toml").write_text(project_text(), encoding="utf-8")
    common = ["--experiments", root / "experiments.toml", "--runs-dir", root / "runs", "--quiet"]
    e0b = cli("train", "E0b", *TINY, "--max-steps", FIXTURE_STEPS, *common)
    assert e0b.code == 0, e0b.text
    e0a = cli("train", "E0a", "--profile", "mini", "--set", "decoder=none", "--max-steps", 2, *common)
    assert e0a.code == 0, e0a.text
    run = root / "runs" / "E0b"
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step_00000010", "step_00000012"]
    assert metric_steps(run) == list(range(1, FIXTURE_STEPS + 1))
    return root


@pytest.fixture
def project(built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh copy of the module's project; the current directory, so that suggested commands run as printed."""
    root = tmp_path / "project"
    shutil.copytree(built, root)
    monkeypatch.chdir(root)
    return root


def write_experiments(path: Path, extra: str = "", replace: tuple[str, str] | None = None) -> Path:
    text = REAL.read_text(encoding="utf-8")
    if replace is not None:
        assert replace[0] in text
        text = text.replace(replace[0], replace[1], 1)
    path.write_text(text + extra, encoding="utf-8")
    return path


# ================================================================================================================
# Silently wrong today
# ================================================================================================================

BAD_IDS = ["../../x", "/abs/x", "", "..", "a/b", ".hidden"]


@pytest.mark.parametrize("bad_id", BAD_IDS, ids=["parent-path", "absolute", "empty", "dotdot", "slash", "dot"])
def test_validate_rejects_an_experiment_id_that_is_a_path(tmp_path: Path, bad_id: str) -> None:
    exp_file = write_experiments(tmp_path / "experiments.toml",
                                 f'\n[experiments.{json.dumps(bad_id)}]\ndescription = "a path"\n')
    out = cli("validate", "--experiments", exp_file)
    assert_handled(out)
    assert names_id(out, bad_id), f"the ID {bad_id!r} is not named:\n{out.text}"
    assert ID_RULE.search(out.text), f"the allowed pattern is not stated:\n{out.text}"


@pytest.mark.parametrize("bad_id", BAD_IDS, ids=["parent-path", "absolute", "empty", "dotdot", "slash", "dot"])
def test_train_refuses_an_experiment_id_that_is_a_path(project: Path, bad_id: str) -> None:
    runs = project / "a" / "b" / "runs"  # "../../x" would land in project/a/x
    shutil.copytree(project / "runs" / "E0b", runs / "E0b")
    if bad_id.startswith("/"):
        bad_id = str(project / "elsewhere" / "x")
    exp_file = write_experiments(project / "paths.toml",
                                 f'\n[experiments.{json.dumps(bad_id)}]\ndescription = "a path"\n')
    before_project = {k: v for k, v in snapshot(project).items() if not k.startswith("a/b/runs/")}
    before_run = snapshot(runs / "E0b")
    out = cli("train", bad_id, *TINY, "--max-steps", 1, "--quiet", "--experiments", exp_file, "--runs-dir", runs)
    assert_handled(out)
    assert ID_RULE.search(out.text), f"the allowed pattern is not stated:\n{out.text}"
    after_project = {k: v for k, v in snapshot(project).items() if not k.startswith("a/b/runs/")}
    assert sorted(set(after_project) - set(before_project)) == [], "created outside --runs-dir"
    assert sorted(p.name for p in runs.iterdir()) == ["E0b"], "created inside --runs-dir"
    assert_untouched(runs / "E0b", before_run)


@pytest.mark.parametrize("queue", ["../q", "a/b", ".q", ""])
def test_validate_rejects_a_queue_name_that_is_a_path(tmp_path: Path, queue: str) -> None:
    exp_file = write_experiments(tmp_path / "experiments.toml",
                                 replace=("[queues]\n", f'[queues]\n{json.dumps(queue)} = ["E0a"]\n'))
    out = cli("validate", "--experiments", exp_file)
    assert_handled(out)
    assert names_id(out, queue), f"the queue {queue!r} is not named:\n{out.text}"
    assert ID_RULE.search(out.text), f"the allowed pattern is not stated:\n{out.text}"


@pytest.mark.parametrize(("override", "key", "old", "new"), [
    ("train.lr=5e-4", "train.lr", ("0.0001", "1e-04", "1e-4"), ("0.0005", "5e-04", "5e-4")),
    ("arch.halt_max_steps=4", "arch.halt_max_steps", ("16",), ("4",)),
    ("data.train_groups=2", "data.train_groups", ("4",), ("2",)),
])
def test_resume_refuses_a_config_that_changes_the_model_or_data(
        project: Path, override: str, key: str, old: tuple[str, ...], new: tuple[str, ...]) -> None:
    run = project / "runs" / "E0b"
    before = snapshot(run)
    out = cli("train", "E0b", "--resume", *TINY, "--max-steps", FIXTURE_STEPS + 2, "--set", override)
    assert_handled(out)
    line = line_with(out, key)
    assert any(o in line for o in old) and any(n in line for n in new), (
        f"{key}: the old {old[0]} and the new {new[0]} are not both named:\n{out.text}")
    assert_untouched(run, before)
    follow_suggestions(out, same_problem=re.escape(key))


def test_resume_advice_of_a_moved_runs_directory_names_where_it_is_now(project: Path) -> None:
    """The advice is the command that started the run: with the run moved, its --runs-dir named the old place, and
    following it resumed (or failed on) the runs there instead."""
    (project / "runs").rename(project / "moved")
    run = project / "moved" / "E0b"
    before = snapshot(run)
    out = cli("train", "E0b", "--resume", *TINY, "--max-steps", FIXTURE_STEPS + 2, "--runs-dir", "moved",
              "--set", "train.lr=5e-4")
    assert_handled(out)
    (advice,) = suggested_commands(out.text)
    assert "--runs-dir moved" in advice and "--resume" in advice, advice
    assert_untouched(run, before)
    follow_suggestions(out, same_problem="train.lr")  # as printed: resumes the moved run, at its new length

def test_resume_accepts_more_steps(project: Path) -> None:
    run = project / "runs" / "E0b"
    out = cli("train", "E0b", "--resume", *TINY, "--max-steps", FIXTURE_STEPS + 2, "--quiet")
    assert_handled(out, 0)
    assert metric_steps(run) == list(range(1, FIXTURE_STEPS + 3))
    assert summary_status(run) == "finished"


def test_absurd_halt_max_steps_is_refused(project: Path) -> None:
    # Unchecked, a step with halt_max_steps = 1e9 would never end (and ignore SIGTERM): run it as a killable
    # process. The timeout only bounds a hang: a loaded machine (xdist's workers beside training) took 15 s to exit.
    before = snapshot(project / "runs")
    out = cli_proc("train", "E2b", *TINY, "--max-steps", 2, "--set", "arch.halt_max_steps=1000000000",
                   cwd=project, timeout=90)
    assert_handled(out)
    line_with(out, "arch.halt_max_steps")
    assert_untouched(project / "runs", before)


@pytest.mark.parametrize("steps", [-5, 0])
def test_max_steps_must_be_positive(project: Path, steps: int) -> None:
    before = snapshot(project / "runs")
    out = cli("train", "E2b", *TINY, "--max-steps", steps)
    assert_handled(out)
    assert re.search(r"max[-_]steps", out.text), out.text
    assert "finished" not in out.text, out.text
    assert_untouched(project / "runs", before)


def test_compare_warns_about_runs_of_different_profiles(project: Path) -> None:
    out = cli("compare", "E0a", "E0b")
    assert "Traceback" not in out.text, out.text
    assert out.code in (0, 1), out.text
    warned = [line for line in out.lines if "tiny" in line and "mini" in line and "profile" in line.lower()
              and re.search(r"warn|error|refus", line, re.IGNORECASE)]
    assert warned, f"no warning or error names the profiles tiny and mini:\n{out.text}"


def test_two_ctrl_c_do_not_mark_the_run_finished(project: Path) -> None:
    # Steps of ~80 ms (a wider, deeper-cycled tiny model): the second SIGINT lands inside the step the first
    # one asked to finish, which is where it aborts the run.
    sets = ["--set", "train.checkpoint_interval=5", "--set", "train.eval_interval=100000",
            "--set", "arch.hidden_size=128", "--set", "arch.L_cycles=4"]
    run = project / "runs" / "E2b"
    proc = popen("train", "E2b", *TINY, *sets, "--max-steps", 60, cwd=project)  # the reproduction
    wait_until(proc, lambda: logged_rows(run / "metrics.jsonl") >= 7, "7 logged steps")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    try:
        text, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"still running 60 s after two SIGINTs: {proc.communicate()[0]}")
    out = Out(proc.returncode, text)
    assert "Traceback" not in out.text, out.text
    assert out.code != 0, out.text
    assert summary_status(run) in ("stopped", "interrupted", "failed"), (
        f"summary.json says {summary_status(run)!r} after two Ctrl-C:\n{out.text}")

    shown = cli("compare", "E2b")
    assert "Traceback" not in shown.text and shown.code == 0, shown.text
    assert re.search(r"stopped|interrupted|failed", shown.text), f"compare shows the run as finished:\n{shown.text}"

    latest = latest_checkpoint(run)
    steps = int(latest.name.removeprefix("step_")) if latest is not None else 2
    queued = cli("train", "solo", *TINY, *sets, "--max-steps", steps, "--quiet")
    assert "Traceback" not in queued.text, queued.text
    assert "skipped" not in queued.text, f"the queue treats the aborted run as finished:\n{queued.text}"
    follow_suggestions(out)  # "continue with: etrmtrm train E2b --resume ..."


def test_one_writer_per_run(project: Path) -> None:
    run = project / "runs" / "E0b"
    # --no-compile: 100,000 steps would compile (runtime.choose_compile), for a minute or more on a loaded machine
    first = popen("train", "E0b", "--resume", *TINY, "--max-steps", 100000, "--no-compile", cwd=project)
    # The timeouts only bound a hang: on a loaded machine (xdist's workers beside training) the first process can
    # take most of a minute to import torch and take its first steps.
    wait_until(first, lambda: max(metric_steps_tolerant(run / "metrics.jsonl"), default=0) >= FIXTURE_STEPS + 3,
               f"the first run at step {FIXTURE_STEPS + 3}")
    try:
        second = cli_proc("train", "E0b", "--resume", *TINY, "--max-steps", 100000, "--no-compile", cwd=project,
                          timeout=180)
    finally:
        first.send_signal(signal.SIGTERM)
        first_text, _ = first.communicate(timeout=180)
    assert_handled(second)
    assert re.search(r"lock", second.text, re.IGNORECASE) or str(first.pid) in second.text, (
        f"the refusal names neither the lock nor process {first.pid}:\n{second.text}")
    assert first.returncode == 130, first_text
    steps = metric_steps(run)
    assert len(steps) == len(set(steps)), f"steps logged twice: {sorted({s for s in steps if steps.count(s) > 1})}"
    assert steps == list(range(1, len(steps) + 1))


def metric_steps_tolerant(path: Path) -> list[int]:
    """Steps of the lines written so far (a line being written may be incomplete)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            out.append(int(json.loads(line)["step"]))
    return out


# ================================================================================================================
# Tracebacks today
# ================================================================================================================


@pytest.mark.parametrize("content", [
    b"\xff\xfe\x00\x01\x02binary\x00\x89PNG\r\n",
    "# caf\xe9 au lait\n".encode("latin-1") + REAL.read_bytes(),
], ids=["binary", "latin-1"])
def test_experiments_file_that_is_not_utf8(tmp_path: Path, content: bytes) -> None:
    exp_file = tmp_path / "experiments.toml"
    exp_file.write_bytes(content)
    for command in (["validate"], ["train", "E0b", *TINY, "--max-steps", "1", "--runs-dir", str(tmp_path / "runs")]):
        out = cli(*command, "--experiments", exp_file)
        assert_handled(out)
        line = line_with(out, str(exp_file))
        assert re.search(r"utf-?8|binary|encod|decod", line, re.IGNORECASE), out.text
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("seed", ["-5", str(2**63)])
def test_out_of_range_seed_is_refused(project: Path, seed: str) -> None:
    before = snapshot(project / "runs")
    out = cli("train", "E2b", *TINY, "--max-steps", 1, "--set", f"seed={seed}")
    assert_handled(out)
    line_with(out, "seed")
    assert_untouched(project / "runs", before)


@pytest.mark.parametrize("override", ["arch.hidden_size=1000000000", "data.max_demos=1000000000",
                                      "data.num_aug=1000000000"])
def test_absurd_sizes_are_refused_before_allocating(project: Path, override: str) -> None:
    key = override.partition("=")[0]
    before = snapshot(project / "runs")
    with address_space_limit(4 << 30):  # a refusal needs no memory; an attempt fails here, not in the machine
        out = cli("train", "E2b", *TINY, "--max-steps", 1, "--quiet", "--set", override)
    assert_handled(out)
    assert key in out.text or re.search(r"\d\s*[GT]i?B", out.text), (
        f"neither {key} nor the memory needed is named:\n{out.text}")
    assert_untouched(project / "runs", before)


def _damage(weights: Path, how: str) -> None:
    state = load_file(str(weights))
    name = next(k for k, v in state.items() if v.dim() == 2 and v.shape[0] > 1)
    if how == "reshaped":
        state[name] = state[name].reshape(1, -1).contiguous()
    else:
        del state[name]
    save_file(state, str(weights))


@pytest.mark.parametrize("how", ["reshaped", "missing"])
def test_resume_from_a_checkpoint_that_does_not_fit_the_model(project: Path, how: str) -> None:
    run = project / "runs" / "E0b"
    latest = latest_checkpoint(run)
    assert latest is not None
    _damage(latest / "model.safetensors", how)
    before = snapshot(run)
    out = cli("train", "E0b", "--resume", *TINY, "--max-steps", FIXTURE_STEPS + 2)
    assert_handled(out)
    assert "Error(s) in loading state_dict" not in out.text, out.text
    line_with(out, latest.name, "model.safetensors")
    assert len(out.lines) <= 3, f"not one clear line:\n{out.text}"
    assert_untouched(run, before)
    follow_suggestions(out, same_problem=re.escape(latest.name))


def test_resume_over_a_damaged_metrics_log(project: Path) -> None:
    run = project / "runs" / "E0b"
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    lines.insert(5, "garbage {not json")
    metrics.write_text("\n".join(lines) + '\n{"step": 13, "train/lo')  # killed in the middle of a line
    out = cli("train", "E0b", "--resume", *TINY, "--max-steps", FIXTURE_STEPS + 2, "--quiet")
    assert_handled(out, 0)
    assert metric_steps(run) == list(range(1, FIXTURE_STEPS + 3))


def test_read_only_runs_directory(project: Path) -> None:
    runs = project / "readonly-runs"
    runs.mkdir()
    runs.chmod(0o555)
    mounted = False
    try:
        if os.access(runs, os.W_OK):  # root ignores the mode: a read-only tmpfs mounted there instead
            mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(runs)],
                                   capture_output=True, text=True)
            if mount.returncode != 0:
                pytest.skip(f"chmod does not block writes here (root) and a read-only mount failed: {mount.stderr}")
            mounted = True
        out = cli("train", "E2b", *TINY, "--max-steps", 1, "--runs-dir", runs)
        assert_handled(out)
        line_with(out, "readonly-runs")
        assert list(runs.iterdir()) == []
    finally:
        if mounted:
            subprocess.run(["umount", str(runs)], check=True)
        runs.chmod(0o755)


def test_runs_dir_that_is_a_file(project: Path) -> None:
    not_a_dir = project / "runs-file"
    not_a_dir.write_text("keep me\n")
    out = cli("train", "E2b", *TINY, "--max-steps", 1, "--runs-dir", not_a_dir)
    assert_handled(out)
    line_with(out, "runs-file")
    assert not_a_dir.read_text() == "keep me\n"


def test_force_when_the_aside_name_is_taken(project: Path) -> None:
    runs = project / "runs"
    now = time.time()
    for dt in range(-2, 20):  # every name `--force` can pick in the next seconds is taken, and not empty
        aside = runs / f"E0b.old-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now + dt))}"
        aside.mkdir(exist_ok=True)
        (aside / "keep.txt").write_text("an earlier run\n")
    taken = {p.name for p in runs.iterdir() if p.name.startswith("E0b.old-")}
    before_taken = {name: snapshot(runs / name) for name in taken}
    original = (runs / "E0b" / "metrics.jsonl").read_bytes()
    before_run = snapshot(runs / "E0b")
    out = cli("train", "E0b", *TINY, "--max-steps", 2, "--force", "--quiet")
    assert "Traceback" not in out.text, out.text
    assert out.code in (0, 1), out.text
    for name, before in before_taken.items():
        assert_untouched(runs / name, before)
    if out.code == 0:  # the old run was moved aside under a name of its own
        moved = [p for p in runs.iterdir() if p.name.startswith("E0b.old") and p.name not in taken]
        assert len(moved) == 1 and (moved[0] / "metrics.jsonl").read_bytes() == original, out.text
        assert metric_steps(runs / "E0b") == [1, 2]
    else:  # or refused, naming the directory in the way, with the run left as it was
        line_with(out, "E0b.old-")
        assert_untouched(runs / "E0b", before_run)


WRONG_SHAPES = [
    ("config.json", "[1, 2, 3]\n"),
    ("summary.json", '"finished"\n'),
    ("meta.json", "[]\n"),
    ("metrics.jsonl", '[1, 2]\n"step"\n3\n'),
]


@pytest.mark.parametrize(("name", "content"), WRONG_SHAPES, ids=[n for n, _ in WRONG_SHAPES])
def test_compare_names_a_run_file_of_the_wrong_shape(project: Path, name: str, content: str) -> None:
    run = project / "runs" / "E0b"
    (run / name).write_text(content)
    before = snapshot(run)
    out = cli("compare", "E0b")
    assert_handled(out)
    line_with(out, name)
    assert_untouched(run, before)


@pytest.mark.parametrize(("name", "content", "check", "code"), [(*WRONG_SHAPES[0], "carry-reset", 1),
                                                                 (*WRONG_SHAPES[3], "encoder-variance", 3)],
                         ids=["config.json", "metrics.jsonl"])
def test_diagnose_names_a_run_file_of_the_wrong_shape(project: Path, name: str, content: str, check: str,
                                                      code: int) -> None:
    """A damaged config.json stops every check; a damaged metrics.jsonl is named by the one check that reads the
    log, as a warning (the others do not read it)."""
    run = project / "runs" / "E0b"
    (run / name).write_text(content)
    before = snapshot(run)
    out = cli("diagnose", "--run", "runs/E0b", "--check", check)
    assert_handled(out, code)
    line_with(out, name)
    assert_untouched(run, before)


# ================================================================================================================
# Advice that leads nowhere
# ================================================================================================================


def test_non_finite_loss_advice_is_true_and_runnable(project: Path) -> None:
    run = project / "runs" / "E2b"
    out = cli("train", "E2b", *TINY, "--max-steps", 8, "--set", "train.lr=1e30")  # nan at step 2
    assert_handled(out)
    problem = r"\b(nan|inf)\b|non-finite"
    assert re.search(problem, out.text, re.IGNORECASE), out.text
    assert len(re.findall(r"--set train\.lr=", out.text)) == 1, out.text  # the new lr, not beside the old one
    if latest_checkpoint(run) is None:
        assert not re.search(r"checkpoint[^.]*\bkept|kept[^.]*checkpoint", out.text, re.IGNORECASE), (
            f"claims a checkpoint is kept, but {run} has none:\n{out.text}")
        assert "--resume" not in out.text, f"advises --resume without a checkpoint:\n{out.text}"
    follow_suggestions(out, same_problem=problem)


def test_diagnose_of_a_run_without_checkpoint_does_not_advise_resume(project: Path) -> None:
    run = project / "runs" / "E0b"  # what a kill before the first checkpoint leaves
    shutil.rmtree(run / "checkpoints")
    (run / "model.safetensors").unlink()
    (run / "summary.json").write_text('{"status": "running", "step": 0, "total_steps": 12}\n')
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in (run / "metrics.jsonl").read_text()
                                               .splitlines()[:3]))
    before = snapshot(run)
    out = cli("diagnose", "--run", "runs/E0b", "--check", "carry-reset")
    assert_handled(out)
    assert "--resume" not in out.text, f"advises --resume, which fails without a checkpoint:\n{out.text}"
    assert_untouched(run, before)
    follow_suggestions(out)


@pytest.mark.parametrize(("edits", "names"), [
    ([("[experiments.E0b]\n", '[experiments.E0b]\ndecoder = "E0b"\n')], ("E0b",)),
    ([("[experiments.E0a]\n", '[experiments.E0a]\ndecoder = "E0b"\n'),
      ("[experiments.E0b]\n", '[experiments.E0b]\ndecoder = "E0a"\n')], ("E0a", "E0b")),
], ids=["itself", "E0a-E0b"])
def test_validate_catches_a_decoder_cycle(tmp_path: Path, edits: list[tuple[str, str]],
                                          names: tuple[str, ...]) -> None:
    text = REAL.read_text(encoding="utf-8")
    for old, new in edits:
        assert old in text
        text = text.replace(old, new, 1)
    exp_file = tmp_path / "experiments.toml"
    exp_file.write_text(text, encoding="utf-8")
    out = cli("validate", "--experiments", exp_file)
    assert_handled(out)
    line = line_with(out, *names)
    assert re.search(r"cycle|itself|circular", line, re.IGNORECASE), out.text


def test_corrupt_summary_is_reported_before_resuming(project: Path) -> None:
    run = project / "runs" / "E0b"
    (run / "summary.json").write_text('{"status": "finish')
    before = snapshot(run)
    out = cli("train", "E0b", "--resume", *TINY, "--max-steps", FIXTURE_STEPS + 2, "--quiet")
    assert_handled(out)
    line_with(out, "summary.json")
    assert_untouched(run, before)  # no step was trained, logged or checkpointed first
    follow_suggestions(out, same_problem=r"summary\.json")


def test_a_full_disk_is_one_line_and_the_run_says_failed(project: Path) -> None:
    full = project / "full-disk"
    full.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(full)], capture_output=True,
                           text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill: {mount.stderr.strip()}")
    try:
        out = cli("train", "E0b", *TINY, "--max-steps", 30, "--set", "train.checkpoint_interval=5",
                  "--runs-dir", full)
        assert_handled(out)
        line_with(out, "cannot write")
        run = full / "E0b"
        assert summary_status(run) == "failed"  # the half-written checkpoint was dropped to make room for it
        assert not list((run / "checkpoints").glob("*.tmp"))
    finally:
        subprocess.run(["umount", "-l", str(full)], check=True)  # lazily: a test failure may hold a file
