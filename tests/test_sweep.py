"""`etrmtrm sweep` on this machine (submitit's local executor, real processes) and `etrmtrm status`.

One sweep is run per module: E0a, E0b and Broken (whose task folder holds no task, so its jobs fail at their
start) x seeds 0 and 1, two jobs at once, at the tiny profile. Before it, E0b seed 1 is started by hand and
stopped with SIGTERM after its first checkpoint: the sweep must resume it, not start it over. Then the same sweep
again: the finished runs are skipped untouched, the broken ones fail again.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import wait_until
from typer.testing import CliRunner

from etrmtrm_cli.cli import app
from etrmtrm_cli.experiments_file import load_experiments
from etrmtrm_cli.rundir import config_hash
from etrmtrm_cli.sweep_cost import Measured, estimate, flops_per_step
from etrmtrm_cli.sweep_job import usable_cores
from etrmtrm_cli.training import runtime
from etrmtrm_cli.training.runtime import with_dtype

REPO = Path(__file__).resolve().parents[1]
TINY = ["--profile", "tiny", "--set", "decoder=none", "--executor", "local"]
STEPS = 20  # tiny: checkpoints every 10 steps
BROKEN = """
[experiments.Broken]
description = "fails at its start: its task folder does not exist"
parent = "E0b"
data = { train_sources = ["no-tasks"] }
"""
runner = CliRunner()


@dataclass
class Out:
    code: int
    text: str


def cli_proc(*args: object, cwd: Path, timeout: float = 300) -> Out:
    """The CLI as its own process, as a user runs it."""
    env = {**os.environ, "COLUMNS": "250", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "etrmtrm_cli", *map(str, args)], cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    return Out(done.returncode, done.stdout)


def cli(*args: object) -> Out:
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})
    return Out(result.exit_code, result.output + (repr(result.exception) if result.exception and not isinstance(
        result.exception, SystemExit) else ""))


def records(runs: Path, kind: str) -> dict[str, dict]:
    return {p.name.removesuffix(f".{kind}.json"): json.loads(p.read_text())
            for p in (runs / ".submitit" / "records").glob(f"*.{kind}.json")}


def steps_logged(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


@dataclass
class Swept:
    project: Path
    first: Out
    second: Out
    stopped_at: int
    mtimes: dict[str, float]  # finished runs' summary.json after the first sweep


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Swept:
    project = tmp_path_factory.mktemp("sweep")
    (project / "experiments.toml").write_text((REPO / "experiments.toml").read_text() + BROKEN)
    (project / "no-tasks").mkdir()  # a folder (a missing one is refused before any job), without a task in it
    # E0b seed 1, stopped after its first checkpoint (a real SIGTERM: it saves a checkpoint and says interrupted)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "etrmtrm_cli", "train", "E0b", *TINY[:4], "--seeds", "1,",
                             "--max-steps", "100000", "--no-compile", "-q"], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_until(proc, (project / "runs/E0b/seed-1/checkpoints/step_00000010").is_dir, "the checkpoint of step 10")
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, out
    stopped_at = json.loads((project / "runs/E0b/seed-1/summary.json").read_text())["step"]
    assert 10 <= stopped_at < STEPS, f"stopped at step {stopped_at}: the sweep would have nothing to resume"

    sweep = ("sweep", "E0a", "E0b", "Broken", "--seeds", "2", "--jobs", "2", "--max-steps", STEPS, *TINY)
    first = cli_proc(*sweep, cwd=project)
    runs = project / "runs"
    mtimes = {str(p): p.stat().st_mtime for p in runs.glob("E0*/seed-*/summary.json")}
    second = cli_proc(*sweep, cwd=project)
    return Swept(project, first, second, stopped_at, mtimes)


def test_sweep_trains_every_run_and_a_failed_job_stops_no_other(swept: Swept) -> None:
    runs = swept.project / "runs"
    assert swept.first.code == 1, swept.first.text  # two runs failed
    assert "2 of 6 runs did not finish: Broken/seed-0, Broken/seed-1" in swept.first.text, swept.first.text
    for exp in ("E0a", "E0b"):
        for seed in (0, 1):
            run = runs / exp / f"seed-{seed}"
            summary = json.loads((run / "summary.json").read_text())
            assert (summary["status"], summary["step"]) == ("finished", STEPS), (run, summary)
            assert json.loads((run / "config.json").read_text())["seed"] == seed
            assert (run / "model.safetensors").is_file()
    assert not (runs / "Broken").exists()
    done = records(runs, "run")
    for seed in (0, 1):
        rec = done[f"Broken.seed-{seed}"]
        assert rec["state"] == "failed" and "no-tasks" in rec["error"], rec
        log = Path(rec["log_err"])
        assert log.is_file() and "no-tasks" in log.read_text(), log


def test_sweep_resumes_a_stopped_run_exactly_where_it_stopped(swept: Swept) -> None:
    run = swept.project / "runs/E0b/seed-1"
    assert steps_logged(run) == list(range(1, STEPS + 1))  # each step once: continued, not started over
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumes"] == 1, summary
    rec = records(swept.project / "runs", "run")["E0b.seed-1"]
    log = Path(rec["log_out"]).read_text()
    assert re.search(r"\[sweep\] E0b/seed-1 \(resumable\): .* --seeds 1, .*--resume", log), log
    assert not list(run.parent.glob("seed-1.old-*")), "the stopped run was moved aside instead of resumed"
    assert "resumes" not in json.loads((run.parent / "seed-0/summary.json").read_text())


def test_sweep_runs_jobs_at_once_with_the_cores_split(swept: Swept) -> None:
    done = [rec for name, rec in records(swept.project / "runs", "run").items()]
    assert len(done) == 6
    assert {rec["threads"] for rec in done} == {usable_cores() // 2}
    spans = sorted((rec["started"], rec["ended"]) for rec in done)
    at_once = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert at_once == 2, spans


def test_second_sweep_skips_finished_runs_and_fails_the_broken_again(swept: Swept) -> None:
    out = swept.second
    assert out.code == 1, out.text
    for exp in ("E0a", "E0b"):
        for seed in (0, 1):
            assert f"{exp}/seed-{seed}: finished run, skipped" in out.text, out.text
    assert "Broken/seed-0: failed: data.train_sources: no-tasks" in out.text, out.text
    now = {str(p): p.stat().st_mtime for p in (swept.project / "runs").glob("E0*/seed-*/summary.json")}
    assert now == swept.mtimes  # not touched


def test_status_table(swept: Swept) -> None:
    out = cli_proc("status", "--runs-dir", "runs", cwd=swept.project)
    assert out.code == 0, out.text
    rows = {(m[1], m[2]): m[3] for m in re.finditer(r"│ (\w+)\s+│\s+(\d+) │ (\w+)", out.text)}
    assert rows == {("Broken", "0"): "failed", ("Broken", "1"): "failed", ("E0a", "0"): "finished",
                    ("E0a", "1"): "finished", ("E0b", "0"): "finished", ("E0b", "1"): "finished"}, out.text
    assert f"{STEPS} / {STEPS}" in out.text
    assert "last train acc" in out.text  # one step's, not compare's mean over the last 10 % of steps
    assert re.search(r"Broken .* failed .*\.submitit/\d+_0_log\.err", out.text), out.text
    assert "4 finished, 2 failed" in out.text
    only = cli_proc("status", "E0b", "--runs-dir", "runs", cwd=swept.project)
    assert set(re.findall(r"│ (\w+)\s+│\s+\d+ │", only.text)) == {"E0b"} and "2 finished" in only.text, only.text
    queue = cli_proc("status", "week1", "--runs-dir", "runs", cwd=swept.project)  # E0a, E0b, E2b (none ran)
    assert set(re.findall(r"│ (\w+)\s+│\s+\d+ │", queue.text)) == {"E0a", "E0b"}, queue.text
    wrong = cli_proc("status", "E0x", "--runs-dir", "runs", cwd=swept.project)
    assert wrong.code == 1 and "E0x" in wrong.text and "Traceback" not in wrong.text, wrong.text


def test_status_tells_running_stopped_and_queued_apart(tmp_path: Path) -> None:
    """A run being written (its lock held), one stopped, and a job queued by a sweep that has not started."""
    project = tmp_path
    (project / "experiments.toml").write_text((REPO / "experiments.toml").read_text())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "etrmtrm_cli", "train", "E0a", *TINY[:4], "--max-steps", "100000",
                             "--no-compile", "-q"], cwd=project, env=env, stdout=subprocess.DEVNULL)
    try:
        wait_until(proc, (project / "runs/E0a/metrics.jsonl").is_file, "E0a's first logged step")
        from etrmtrm_cli.sweep_job import write_record

        write_record(project / "runs/.submitit", "E2b/seed-3", "submit", {
            "state": "submitted", "sweep_id": "s1", "exp_id": "E2b", "seed": 3, "waits_for": None,
            "run_dir": str(project / "runs/E2b/seed-3")})
        running = cli_proc("status", cwd=project)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        finally:
            proc.kill()
    stopped = cli_proc("status", cwd=project)
    assert re.search(r"E0a .* running .*/ 100,000", running.text), running.text
    assert re.search(r"E2b .* 3 │ queued", running.text), running.text
    assert re.search(r"E0a .* stopped", stopped.text), stopped.text


@pytest.mark.parametrize("whom", ["terminal", "sweep"])
def test_ctrl_c_stops_a_sweep_with_checkpoints_and_without_a_traceback(tmp_path: Path, whom: str) -> None:
    """Ctrl-C in a terminal (SIGINT to the sweep's whole process group) or `kill -INT` (the sweep alone): each
    running run saves a checkpoint and is interrupted, the sweep exits 130 saying how to resume, and no process
    of it prints a traceback. The sweep that gets `kill -INT` starts with SIGINT ignored, as a script's background
    job does (`etrmtrm sweep ... &`; and so does this test suite when it runs in the background): it must stop
    all the same. The terminal's sweep starts with SIGINT at its default, as a foreground job has it."""
    project = tmp_path
    (project / "experiments.toml").write_text((REPO / "experiments.toml").read_text())
    env = {**os.environ, "COLUMNS": "250", "OMP_NUM_THREADS": "1"}
    inherited = signal.SIG_DFL if whom == "terminal" else signal.SIG_IGN
    proc = subprocess.Popen([sys.executable, "-m", "etrmtrm_cli", "sweep", "E0a", "E0b", *TINY, "--jobs", "2",
                             "--max-steps", "100000", "--no-compile"], cwd=project, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, inherited))
    runs = [project / "runs/E0a", project / "runs/E0b"]
    try:
        deadline = time.monotonic() + 180  # until both runs have a checkpoint (step 10's may be pruned already)
        while not all(list((r / "checkpoints").glob("step_*")) for r in runs) and time.monotonic() < deadline:
            time.sleep(0.1)
        if whom == "terminal":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=180)  # until every job's controller ends: they hold the pipe too
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-TERM", "-f", f"{project}/"], check=False)  # runs left by a failure (own sessions)
    assert proc.returncode == 130, out
    assert "stopped. The same command resumes the sweep." in out and "Traceback" not in out, out
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "interrupted", (run, summary)
        assert (run / f"checkpoints/step_{summary['step']:08d}").is_dir(), (run, summary)


def test_a_job_stopped_before_its_run_starts_does_not_start_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    """A SIGTERM that reaches the job while it prepares (a sweep stopped just after it submitted the job) stops
    the job: the run is not started behind the sweep's back, and the job's record says stopped."""
    from etrmtrm_cli import rundir, sweep_job

    for name, value in {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_FOLDER": str(tmp_path), "SUBMITIT_LOCAL_JOB_ID": "1",
                        "SUBMITIT_LOCAL_GLOBALID": "0", "SUBMITIT_LOCAL_LOCALID": "0"}.items():
        monkeypatch.setenv(name, value)
    started = tmp_path / "started"
    spec = sweep_job.JobSpec(key="E0a", exp_id="E0a", seed=None, run_dir=str(tmp_path / "runs/E0a"),
                             argv=(sys.executable, "-c", f"open({str(started)!r}, 'w')"), cwd=str(tmp_path),
                             threads=1, folder=str(tmp_path), sweep_id="s1")

    def status_then_stopped(run_dir: Path) -> str:
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to the job's handler before this returns
        return "new"

    monkeypatch.setattr(rundir, "run_status", status_then_stopped)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RuntimeError, match=r"E0a: stopped \(SIGTERM\)"):
        sweep_job.TrainJob(spec)()
    assert not started.exists()
    record = json.loads(sweep_job.record_path(tmp_path, "E0a", "run").read_text())
    assert record["state"] == "stopped" and record["exit_code"] is None, record
    assert signal.getsignal(signal.SIGTERM) is before  # the job's handler is gone again


def test_runs_waiting_for_a_failed_p0_are_not_started(tmp_path: Path) -> None:
    """P0 is trained once, first; when it fails, the runs that start from it fail without running."""
    text = (REPO / "experiments.toml").read_text()
    broken = text.replace('data = { query_mode = "leave_one_out" }',
                          'data = { query_mode = "leave_one_out", train_sources = ["no-tasks"] }', 1)
    assert broken != text
    (tmp_path / "experiments.toml").write_text(broken)
    (tmp_path / "no-tasks").mkdir()
    out = cli_proc("sweep", "E0a", "--seeds", "2", "--jobs", "2", "--max-steps", 12, "--profile", "tiny",
                   "--executor", "local", cwd=tmp_path)
    assert out.code == 1, out.text
    assert re.search(r"P0: start .*\n.*P0: failed: data.train_sources: no-tasks", out.text), out.text
    for seed in (0, 1):
        assert f"E0a/seed-{seed}: failed: not started: it starts from P0, which is failed" in out.text, out.text
    assert out.text.count(": start (") == 1  # P0 alone ran
    assert not (tmp_path / "runs/E0a").exists()
    status = cli_proc("status", cwd=tmp_path)
    assert re.search(r"E0a .* 1 │ failed .*it starts from P0", status.text), status.text


def test_dry_run_lists_jobs_steps_and_compute_per_profile(tmp_path: Path) -> None:
    out = cli("sweep", "week1", "--seeds", "2", "--dry-run", "--profile", "tiny", "--executor", "local",
              "--experiments", _two_tiny_profiles(tmp_path), "--runs-dir", tmp_path / "runs")
    assert out.code == 0, out.text
    jobs = re.findall(r"│ (P0|E\w+/seed-\d) +│ new +│ start +│ (P0)? *│ +([\d,]+) │ +([\d.]+ MFLOP)", out.text)
    # P0 first, then seed-major; E2b is E0b's configuration, so its runs would repeat E0b's: not trained
    assert [j[0] for j in jobs] == ["P0", "E0a/seed-0", "E0b/seed-0", "E0a/seed-1", "E0b/seed-1"], out.text
    assert [j[1] for j in jobs] == ["", *["P0"] * 4]  # P0 once, every other run waits for it
    assert "E2b seed 0 (E0b's), E2b seed 1 (E0b's)" in " ".join(out.text.split()), out.text
    assert re.search(r"│ tiny +│ +[\d,]+ │ +[\d.]+ GFLOP │ +unknown │ unknown: no tiny float32 run", out.text), out.text
    assert re.search(r"│ mini +│", out.text), out.text
    assert not (tmp_path / "runs").exists()  # nothing submitted


def test_dry_run_times_from_runs_measured_here(swept: Swept) -> None:
    out = cli_proc("sweep", "E0a", "--seeds", "3", "--dry-run", "--max-steps", STEPS, *TINY, cwd=swept.project)
    assert out.code == 0, out.text
    assert re.search(r"E0a/seed-2 +│ new +│ start .* [\d.]+ s │", out.text), out.text  # 2 measured, 1 new
    assert re.search(r"still to train at profile tiny: 1 of 3 runs, about [\d.]+ s of steps here", out.text), out.text
    assert re.search(r"E0a/seed-0 +│ finished +│ skip \(finished\)", out.text), out.text
    assert "run(s) of this config here" in out.text


def test_an_auto_experiment_is_timed_by_runs_in_the_dtype_it_would_run_in_here(monkeypatch: pytest.MonkeyPatch
                                                                              ) -> None:
    exp = load_experiments(REPO / "experiments.toml").resolve("E0a", "tiny", ["decoder='none'",
                                                                              "arch.forward_dtype=auto"])
    def run(dtype: str, s_per_step: float, name: str = "E0a") -> Measured:
        ran = with_dtype(exp, dtype).model_dump(mode="json")
        return Measured(Path(name), config_hash(ran), "tiny", "cpu", dtype, s_per_step, 1e9 / s_per_step)

    measured = [run("float32", 2.0), run("bfloat16", 1.0)]
    monkeypatch.setattr(runtime, "cpu_has_native_bfloat16", lambda: True)
    assert estimate(exp, 10, "cpu", measured).seconds == 10.0  # its bfloat16 run
    monkeypatch.setattr(runtime, "cpu_has_native_bfloat16", lambda: False)
    assert estimate(exp, 10, "cpu", measured).seconds == 20.0  # its float32 run
    # No run of this configuration: the FLOP rate of the profile's runs in the same dtype, never the other's.
    other = exp.model_copy(update={"id": "E0b", "arch": exp.arch.model_copy(update={"recurrent_encoder_type":
                                                                                    "recurrent_standard"})})
    by_rate = estimate(other, 10, "cpu", measured)
    assert by_rate.seconds == pytest.approx(by_rate.flops / 0.5e9) and "tiny float32 run(s)" in by_rate.basis
    monkeypatch.setattr(runtime, "cpu_has_native_bfloat16", lambda: True)
    assert "no tiny bfloat16 run" in estimate(other, 10, "cpu", measured[:1]).basis


def test_flops_are_what_a_real_step_counts_and_scale_with_the_batch() -> None:
    """The dry run's count (matmuls not computed) equals the count of the real step computed; twice the batch,
    twice the FLOPs; and attention is counted on the CPU too."""
    from etrmtrm_cli.data.dataset import build_arc_data
    from etrmtrm_cli.models.build import build_model
    from etrmtrm_cli.sweep_cost import flop_counter
    from etrmtrm_cli.training.step import forward_backward

    file = load_experiments(REPO / "experiments.toml")
    exp = file.resolve("E0b", "tiny", ["decoder='none'"])
    data = build_arc_data(exp.data, exp.seed)
    torch.manual_seed(0)
    model = build_model(exp, data.seq_len, data.num_puzzle_ids)
    batch = data.train_batch(0, 1).as_dict()
    with flop_counter() as real:
        forward_backward(model, model.initial_carry(batch), batch, torch.Generator().manual_seed(0),
                         exp.arch.loss_type, 1)
    counted = flops_per_step(exp)
    assert counted == real.get_total_flops() * exp.train.batch_size > 0
    kinds = {str(op) for op in real.get_flop_counts()["Global"]}
    assert {"aten.mm", "aten._scaled_dot_product_flash_attention_for_cpu"} <= kinds, kinds
    double = file.resolve("E0b", "tiny", ["decoder='none'", "train.global_batch_size=512"])
    assert flops_per_step(double) == 2 * counted


@pytest.mark.parametrize(("table", "args", "expected"), [
    ("[sweep]\npartiton = 'gpu'\n", (), r"experiments\.toml: sweep\.partiton: unknown key; did you mean 'partition'"),
    ("[sweep]\njobs = 0\n", (), r"experiments\.toml: sweep\.jobs: Input should be greater than or equal to 1"),
    ("", ("--jobs", "0"), r"--jobs: Input should be greater than or equal to 1"),
    ("", ("--executor", "pbs"), r"--executor: Input should be 'auto', 'local' or 'slurm'"),
    ("", ("--jobs", usable_cores() + 1), r"--jobs \d+: this machine gives \d+ cores"),
    ("", ("--seeds", "two"), r"--seeds 'two': expected a count"),
    ("", ("--seeds", "99999999999"), r"--seeds 99999999999: at most 1000 seeds at a time"),
    ("", ("--seeds", "1,,2"), r"--seeds '1,,2': expected a count"),
    ("", ("--device", "gpu"), r"--device 'gpu': expected auto, cpu or cuda"),
])
def test_bad_sweep_settings_are_one_line_naming_the_key(tmp_path: Path, table: str, args: tuple, expected: str
                                                       ) -> None:
    path = tmp_path / "experiments.toml"
    path.write_text((REPO / "experiments.toml").read_text() + "\n" + table)
    executor = () if "--executor" in args else ("--executor", "local")
    out = cli("sweep", "E0a", "--dry-run", "--profile", "tiny", *executor, "--experiments", path,
              "--runs-dir", tmp_path / "runs", *args)
    assert out.code == 1, out.text
    assert re.search(expected, out.text), out.text
    assert "Traceback" not in out.text and len(out.text.strip().splitlines()) == 1, out.text
    assert not (tmp_path / "runs").exists()


def test_several_targets_run_seed_major_too(tmp_path: Path) -> None:
    out = cli("sweep", "E0b", "E0a", "--seeds", "2", "--dry-run", "--profile", "tiny", "--executor", "local",
              "--experiments", _two_tiny_profiles(tmp_path), "--runs-dir", tmp_path / "runs")
    assert out.code == 0, out.text
    jobs = re.findall(r"│ (P0|E\w+/seed-\d) +│ new", out.text)
    assert jobs == ["P0", "E0b/seed-0", "E0a/seed-0", "E0b/seed-1", "E0a/seed-1"], out.text


def test_status_of_a_missing_runs_directory(tmp_path: Path) -> None:
    out = cli("status", "--runs-dir", tmp_path / "nowhere")
    assert out.code == 1 and "nowhere: no such runs directory" in out.text, out.text


def _two_tiny_profiles(tmp_path: Path) -> Path:
    """The real file with the tiny profile and a `mini` one only (the paper profile's count takes seconds)."""
    text = (REPO / "experiments.toml").read_text()
    text = re.sub(r"\[profiles\.paper\].*?(?=\[profiles\.tiny\])", "", text, flags=re.DOTALL)
    tiny = text[text.index("[profiles.tiny]"):]
    path = tmp_path / "experiments.toml"
    path.write_text(text + "\n" + tiny.replace("[profiles.tiny]", "[profiles.mini]").replace("hidden_size = 16",
                                                                                           "hidden_size = 32"))
    return path


def test_help_names_the_sweep_table_it_reads_defaults_from() -> None:
    # Rich reads "[sweep]" as a markup tag and drops it unless escaped.
    out = cli("sweep", "--help")
    assert out.code == 0, out.text
    assert "Default: [sweep] or auto." in out.text and "Default: [sweep] or 1." in out.text
    assert "also from the [sweep] table" in out.text


def test_a_finished_run_that_is_not_the_experiment_is_refused_not_skipped(swept: Swept) -> None:
    """A run finished with other settings (a `--set` run under the experiment's name) would count as the experiment
    in every comparison: the sweep says so before it submits anything."""
    out = cli("sweep", "E0a", "--seeds", "2", "--dry-run", "--max-steps", STEPS, *TINY, "--set",
              "arch.halt_max_steps=3", "--experiments", swept.project / "experiments.toml",
              "--runs-dir", swept.project / "runs")
    assert out.code == 1, out.text
    said = " ".join(out.text.split())
    assert re.search(r"E0a/seed-0: finished, but not as E0a is now \(arch.halt_max_steps: \d+ in the run, 3 now\)",
                     said), out.text
    assert re.search(r"Start it over with `etrmtrm train E0a --profile tiny .*--max-steps 20 --seeds 0, "
                     r"--set decoder=none --set arch.halt_max_steps=3 --force` \(the old run is kept beside it; "
                     r"name in --seeds each seed of it that differs too\)", said), out.text
    shorter = cli("sweep", "E0a", "--seeds", "2", "--dry-run", "--max-steps", STEPS // 2, *TINY,
                  "--experiments", swept.project / "experiments.toml", "--runs-dir", swept.project / "runs")
    assert shorter.code == 1 and f"(steps: {STEPS} in the run, {STEPS // 2} now)" in shorter.text, shorter.text
    single = cli("sweep", "E0a", "--dry-run", *TINY, "--experiments", swept.project / "experiments.toml",
                 "--runs-dir", swept.project / "runs")  # no --seeds: a run without seeds, where seed runs are
    assert single.code == 1 and "holds the seed runs seed-0, seed-1: train them with --seeds" in " ".join(
        single.text.split()), single.text


def test_slurm_settings_given_to_a_local_sweep_are_named_unused(tmp_path: Path) -> None:
    out = cli("sweep", "E0a", "--dry-run", "--profile", "tiny", "--executor", "local", "--partition", "gpu",
              "--mem-gb", "8", "--runs-dir", tmp_path / "runs")
    assert out.code == 0, out.text
    assert "--partition, --mem-gb: SLURM settings, unused by the local executor" in out.text, out.text


def test_status_lists_every_run_when_one_cannot_be_read(tmp_path: Path) -> None:
    from test_compare import write_run

    for seed in (0, 1):
        write_run(tmp_path, "E0b", [0.5] * 5, seed=seed)
    (tmp_path / "E0b/seed-1/summary.json").write_text('{"status": "done"}')
    out = cli("status", "--runs-dir", tmp_path)
    assert out.code == 0, out.text
    assert re.search(r"│ E0b +│ +0 │ finished", out.text), out.text
    assert re.search(r"│ E0b +│ +1 │ unreadable .*seed-1/summary.json: status 'done' is not one of", out.text), out.text
    # A damaged config.json: the run was listed as experiment "seed-2", finished, or left out (a folder there)
    for seed, damage in ((2, "truncate"), (3, "folder")):
        write_run(tmp_path, "E0b", [0.5] * 5, seed=seed)
        config = tmp_path / f"E0b/seed-{seed}/config.json"
        config.unlink()
        config.write_text('{"id": "E0') if damage == "truncate" else config.mkdir()
    out = cli("status", "E0b", "--runs-dir", tmp_path)
    assert out.code == 0, out.text
    assert re.search(r"│ E0b +│ +2 │ unreadable .*seed-2/config.json: not valid JSON", out.text), out.text
    assert re.search(r"│ E0b +│ +3 │ unreadable .*seed-3/config.json: cannot read", out.text), out.text


def test_a_time_limit_shorter_than_the_checkpoint_warning_is_refused(tmp_path: Path) -> None:
    """A job told to checkpoint signal_delay_s (120 s) before a 1-minute limit stopped as it started, and again
    at every requeue."""
    out = cli("sweep", "E0a", "--dry-run", "--profile", "tiny", "--executor", "local", "--time-min", "1",
              "--runs-dir", tmp_path / "runs")
    assert out.code == 1, out.text
    assert "error: sweep settings: time_min 1 is too short for signal_delay_s 120" in " ".join(out.text.split()), \
        out.text  # not "--(sweep)"
    assert "at least twice that (4 min)" in " ".join(out.text.split()), out.text
    assert cli("sweep", "E0a", "--dry-run", "--profile", "tiny", "--executor", "local", "--time-min", "4",
               "--runs-dir", tmp_path / "runs").code == 0


def test_a_second_local_sweep_over_the_same_runs_is_refused(tmp_path: Path) -> None:
    """Two local sweeps at once each started the other's queued runs, and one then failed on the other's lock."""
    from etrmtrm_cli.run_lock import RunLock

    folder = tmp_path / "runs" / ".submitit"
    folder.mkdir(parents=True)
    first = RunLock(folder)  # the running sweep's lock
    try:
        out = cli("sweep", "E0a", "--profile", "tiny", "--executor", "local", "--max-steps", "2", "--runs-dir",
                  tmp_path / "runs")
    finally:
        first.release()
    assert out.code == 1 and "another local sweep (process" in out.text and "is running over these runs" in out.text
    assert not (folder / "records").exists()  # nothing queued, nothing started


def test_status_reads_a_queued_run_whose_local_sweep_ended_as_stopped(tmp_path: Path) -> None:
    from etrmtrm_cli.run_lock import RunLock
    from etrmtrm_cli.sweep_job import write_record

    runs, folder = tmp_path / "runs", tmp_path / "runs" / ".submitit"
    run_dir = runs / "E0a" / "seed-0"
    write_record(folder, "E0a/seed-0", "submit", {"state": "queued", "sweep_id": "s", "exp_id": "E0a", "seed": 0,
                                                  "run_dir": str(run_dir.resolve()), "waits_for": None,
                                                  "executor": "local"})
    out = cli("status", "--runs-dir", runs)
    assert re.search(r"E0a +│ +0 +│ stopped .*its sweep ended before it started", out.text), out.text
    sweep = RunLock(folder)  # while a local sweep runs, the same record is a queued run
    try:
        assert re.search(r"E0a +│ +0 +│ queued", cli("status", "--runs-dir", runs).text)
    finally:
        sweep.release()


@pytest.mark.skipif(usable_cores() < 2, reason="--jobs 2 needs two cores")
def test_the_decoder_that_every_run_waits_for_takes_every_core(tmp_path: Path) -> None:
    """P0 runs alone while the others wait for it: it got one job's share of the cores, the rest sat idle."""
    (tmp_path / "experiments.toml").write_text((Path(__file__).resolve().parents[1] / "experiments.toml").read_text())
    out = cli_proc("sweep", "E0a", "--seeds", "1", "--jobs", "2", "--max-steps", "2", "--profile", "tiny",
                   "--executor", "local", cwd=tmp_path)
    assert out.code == 0, out.text
    done = records(tmp_path / "runs", "run")
    assert (done["P0"]["threads"], done["E0a.seed-0"]["threads"]) == (usable_cores(), usable_cores() // 2), done


@pytest.mark.parametrize(("child", "state", "says"), [
    ("raise SystemExit(130)", "stopped", "a signal to the run itself"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "failed",
     "killed by SIGKILL, often the kernel's out-of-memory killer; the same sweep command resumes the run"),
])
def test_a_run_that_a_signal_ended_says_why_and_what_comes_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 child: str, state: str, says: str) -> None:
    """A run interrupted by a signal to it (exit 130, a checkpoint saved) is stopped, not "exit code 130"; one
    killed outright is failed, and the record says that the sweep resumes it."""
    from etrmtrm_cli import sweep_job

    for name, value in {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_FOLDER": str(tmp_path), "SUBMITIT_LOCAL_JOB_ID": "1",
                        "SUBMITIT_LOCAL_GLOBALID": "0", "SUBMITIT_LOCAL_LOCALID": "0"}.items():
        monkeypatch.setenv(name, value)
    spec = sweep_job.JobSpec(key="E0a", exp_id="E0a", seed=None, run_dir=str(tmp_path / "runs/E0a"),
                             argv=(sys.executable, "-c", child), cwd=str(tmp_path), threads=1, folder=str(tmp_path),
                             sweep_id="s1")
    with pytest.raises(RuntimeError, match=re.escape(says)):
        sweep_job.TrainJob(spec)()
    record = json.loads(sweep_job.record_path(tmp_path, "E0a", "run").read_text())
    assert record["state"] == state and says in (record.get("reason") or record.get("error")), record


def test_status_of_a_runs_directory_copied_or_moved_with_its_sweep_lists_each_run_once(tmp_path: Path) -> None:
    """The records name runs by absolute path: a copy listed the original's runs beside its own, and a moved
    directory a phantom row for the path that no longer exists."""
    import shutil

    from test_compare import write_run

    from etrmtrm_cli.sweep_job import write_record

    runs = tmp_path / "runs"
    for seed in (0, 1):
        run_dir = write_run(runs, "E0a", [0.5] * 5, seed=seed)
        fields = {"sweep_id": "s", "exp_id": "E0a", "seed": seed, "run_dir": str(run_dir.resolve()),
                  "executor": "local"}
        write_record(runs / ".submitit", f"E0a/seed-{seed}", "submit", {**fields, "state": "queued", "waits_for": None})
        write_record(runs / ".submitit", f"E0a/seed-{seed}", "run", {**fields, "state": "finished"})
    shutil.copytree(runs, tmp_path / "copy")
    (runs).rename(tmp_path / "moved")
    for where in ("copy", "moved"):
        out = cli("status", "--runs-dir", tmp_path / where)
        assert out.code == 0, out.text
        rows = re.findall(r"│ (\w+)\s+│\s+(\d+) │ (\w+)", out.text)
        assert rows == [("E0a", "0", "finished"), ("E0a", "1", "finished")], (where, out.text)

def test_status_prints_a_note_with_brackets_as_it_is() -> None:
    """A run's error may hold brackets (gloo's "[/__w/pytorch/.../pair.cc:553]"): read as markup, it crashed status."""
    from rich.console import Console

    from etrmtrm_cli.sweep_render import status_table
    from etrmtrm_cli.sweep_status import RunRow

    note = "step 7: [/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer"
    console = Console(record=True, width=300)
    console.print(status_table([RunRow("E0b", None, Path("runs/E0b"), "failed", 6, 12, None, None, None, note)], "t"))
    assert note in console.export_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_local_sweep_on_a_device_this_machine_lacks_is_refused_up_front(tmp_path: Path) -> None:
    """Before, the error came only where a run was finished (its check resolved the device), else the dry run
    went on and timed the jobs on cuda."""
    out = cli("sweep", "E0a", "--dry-run", "--profile", "tiny", "--executor", "local", "--device", "cuda",
              "--runs-dir", tmp_path / "runs")
    assert out.code == 1 and "--device cuda: no CUDA device is available" in out.text, out.text
