"""`etrmtrm sweep --executor slurm` on a real SLURM cluster: scripts/slurm-single-node.sh starts one on this
machine (as root, after `apt-get install slurm-wlm munge`). Where no cluster answers `sinfo`, the module starts one
with that script and stops it afterwards; where it cannot (not installed, not root, a configuration the script did
not write), the tests skip, saying why.

- a tiny sweep: P0 as one job, then 2 experiments x 2 seeds as a job array that waits for it (afterok); one
  running job is requeued with `scontrol requeue` (what preemption does): SLURM sends SIGTERM, the run saves a
  checkpoint, the job starts again and resumes it;
- a job at its time limit: SLURM warns it (USR2, `signal_delay_s` before the limit), submitit calls the job's
  checkpoint hook, which stops the run (checkpoint saved) and requeues the job, which resumes.

SLURM holds a requeued job for about two minutes before it may start again (its BeginTime); the tests release it
at once with `scontrol update jobid=<id> StartTime=now`. Run with `-s` to see what they print.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from etrmtrm_cli import rundir
from etrmtrm_cli.slurm_query import slurm_answers

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm-single-node.sh"
TINY = ["--profile", "tiny", "--set", "decoder=none", "--executor", "slurm", "--cpus-per-job", "1"]


@pytest.fixture(scope="module", autouse=True)
def slurm() -> Iterator[None]:
    """The cluster that answers `sinfo`, else a single-node one started here (and stopped after the module)."""
    answers, why = slurm_answers()
    started = False
    if not answers:
        out = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=300)
        print(f"$ {SCRIPT.name}\n{out.stdout}{out.stderr}")
        started, reason = out.returncode == 0, (out.stderr.strip().splitlines() or ["no output"])[-1]
        answers, why = slurm_answers() if started else (False, f"{why}; {SCRIPT.name}: {reason}")
    if not answers:
        pytest.skip(f"no SLURM cluster answers here ({why})")
    yield
    if started:
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, timeout=60)


def cli(*args: object, cwd: Path) -> str:
    env = {**os.environ, "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-m", "etrmtrm_cli", *map(str, args)], cwd=cwd, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    print(f"$ etrmtrm {' '.join(map(str, args))}\n{out.stdout}")
    assert out.returncode == 0, out.stdout
    return out.stdout


def record(project: Path, key: str, kind: str) -> dict:
    path = project / "runs/.submitit/records" / f"{key.replace('/', '.')}.{kind}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def squeue(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%t %r"], capture_output=True, text=True).stdout.strip()


# slurmd refuses a job started in the same second as its previous run's credential was revoked ("Job credential
# revoked": the job then fails), so a requeued job is released only after it has been seen held this long.
HELD_BEFORE_RELEASE_S = 3.0


def release_when_held(job_id: str, held_since: dict[str, float]) -> None:
    """A requeued job waits ~2 min (BeginTime): let it start now, once held for HELD_BEFORE_RELEASE_S."""
    if "BeginTime" not in squeue(job_id):
        held_since.pop(job_id, None)
    elif time.monotonic() - held_since.setdefault(job_id, time.monotonic()) >= HELD_BEFORE_RELEASE_S:
        subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True)
        print(f"$ scontrol update jobid={job_id} StartTime=now  (a requeued job is held ~2 min)")
        held_since.pop(job_id)


def wait_for(condition, timeout: float, what: str, job_ids: tuple[str, ...] = ()) -> None:  # noqa: ANN001
    deadline, held_since = time.monotonic() + timeout, {}
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        for job_id in job_ids:
            release_when_held(job_id, held_since)
        time.sleep(1)


def steps_logged(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_slurm_sweep_and_a_requeued_job_resumes(tmp_path: Path) -> None:
    project = tmp_path
    (project / "experiments.toml").write_text((REPO / "experiments.toml").read_text())
    tiny = [a for a in TINY if a not in ("--set", "decoder=none")]  # E0a and E0b start from P0
    out = cli("sweep", "E0a", "E0b", "--seeds", "2", "--max-steps", 300, *tiny, cwd=project)
    p0 = re.search(r"P0: start \(SLURM job (\d+)\)", out)
    assert p0, out
    assert re.search(rf"E0a/seed-0: start \(SLURM job (\d+)_0, after P0 \(job {p0[1]}\)\)", out), out  # an array
    keys = ["E0a/seed-0", "E0a/seed-1", "E0b/seed-0", "E0b/seed-1"]
    ids = {key: record(project, key, "submit")["job_id"] for key in keys}
    array = ids["E0a/seed-0"].split("_")[0]
    dependency = subprocess.run(["scontrol", "show", "job", array], capture_output=True, text=True).stdout
    print(f"$ scontrol show job {array} | grep Dependency\n" + "".join(re.findall(r".*Dependency=.*\n", dependency)))
    assert f"afterok:{p0[1]}" in dependency or (project / "runs/P0/model.safetensors").is_file(), dependency
    # Requeue the first job with a checkpoint, while it runs (`scontrol requeue` is what preemption does).
    target = None

    def one_has_a_checkpoint() -> bool:  # any checkpoint: a run keeps only its last ones, and on a fast CPU a
        nonlocal target                   # 300-step job passes step 20's within a second of one-second polls
        for key in keys:
            run = project / "runs" / key
            if rundir.latest_checkpoint(run) is not None and run_running(run):
                target = key
                return True
        return False

    wait_for(one_has_a_checkpoint, 240, "a running job with a checkpoint")
    assert target is not None
    subprocess.run(["scontrol", "requeue", ids[target]], check=True)
    print(f"$ scontrol requeue {ids[target]}  ({target})")
    wait_for(lambda: all(json.loads((project / "runs" / k / "summary.json").read_text()).get("status") == "finished"
                         for k in keys if (project / "runs" / k / "summary.json").is_file())
             and all((project / "runs" / k / "summary.json").is_file() for k in keys),
             420, "every run finished", tuple(ids.values()))
    status = cli("status", "--runs-dir", "runs", cwd=project)
    assert status.count("finished") >= 5 and "300 / 300" in status, status  # P0 and the 4 runs
    run = project / "runs" / target
    assert steps_logged(run) == list(range(1, 301))  # continued from its checkpoint, each step once
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumes"] == 1, summary
    log = Path(record(project, target, "run")["log_out"]).read_text()
    starts = re.findall(r"\[sweep\] \S+ \((\w+)\): .*", log)
    print(f"{target}'s job log, its starts:\n" + "\n".join(re.findall(r"\[sweep\] .*", log)))
    assert starts == ["new", "resumable"], log
    assert re.search(r"\(resumable\): .* --resume$", log, re.MULTILINE), log
    err = Path(record(project, target, "run")["log_err"]).read_text()
    assert "SIGTERM: finishing this step, then saving a checkpoint" in err, err


def test_a_rerun_while_p0_is_queued_waits_for_its_job_and_submits_it_once(tmp_path: Path) -> None:
    """A second sweep while P0's job is queued or running: P0 is not submitted again, and E0a waits for P0's job
    (before, it was submitted with no dependency and failed: "no finished run of P0")."""
    project = tmp_path
    (project / "experiments.toml").write_text((REPO / "experiments.toml").read_text())
    tiny = [a for a in TINY if a not in ("--set", "decoder=none")]
    p0 = re.search(r"P0: start \(SLURM job (\d+)\)", cli("sweep", "P0", "--max-steps", 5000, *tiny, cwd=project))
    assert p0, "P0 was not submitted"
    try:
        out = cli("sweep", "E0a", "--seeds", "1", "--max-steps", 5000, *tiny, cwd=project)
        assert f"P0: already in SLURM job {p0[1]}, not submitted again" in out, out
        e0a = re.search(rf"E0a/seed-0: start \(SLURM job (\d+), after P0 \(job {p0[1]}\)\)", out)
        assert e0a, out
        shown = subprocess.run(["scontrol", "show", "job", e0a[1]], capture_output=True, text=True).stdout
        assert f"afterok:{p0[1]}" in shown, shown
    finally:
        subprocess.run(["scancel", "-u", os.environ.get("USER", "root")], capture_output=True)


def test_status_asks_squeue_about_jobs_that_ended_without_a_word(tmp_path: Path) -> None:
    """A job cancelled while queued and a job killed outright write no record of their end; status must not
    call them queued and running forever. Before, E0a stayed "queued", and a job killed on another node than
    status's stayed "running"."""
    from etrmtrm_cli.sweep_status import run_rows

    project = tmp_path
    (project / "experiments.toml").write_text((REPO / "experiments.toml").read_text())
    tiny = [a for a in TINY if a not in ("--set", "decoder=none")]
    cli("sweep", "E0a", "--seeds", "1", "--max-steps", 100000, *tiny, cwd=project)
    p0, e0a = record(project, "P0", "submit")["job_id"], record(project, "E0a/seed-0", "submit")["job_id"]
    try:
        wait_for(lambda: record(project, "P0", "run").get("state") == "running", 180, "P0's job started")
        rows = {row.exp_id: row for row in run_rows(project / "runs")}
        assert (rows["P0"].state, rows["E0a"].state) == ("running", "queued"), rows
        subprocess.run(["scancel", e0a], check=True)
        # P0's job killed outright, as the kernel's OOM killer or a node's crash does: no chance to write a record
        # (scancel would send SIGTERM first, and the job would record that it stopped)
        wait_for(lambda: run_running(project / "runs/P0"), 180, "P0's run started")
        os.killpg(os.getpgid(record(project, "P0", "run")["pid"]), signal.SIGKILL)  # the job and its run
        wait_for(lambda: not squeue(e0a) and not squeue(p0), 120, "both jobs left the queue")
        rows = {row.exp_id: row for row in run_rows(project / "runs")}
        assert rows["E0a"].state == "stopped", rows["E0a"]
        assert f"SLURM job {e0a} left the queue without starting" in str(rows["E0a"].note), rows["E0a"]
        assert rows["P0"].state == "stopped", rows["P0"]
        assert f"SLURM job {p0} ended without recording how" in str(rows["P0"].note), rows["P0"]
        assert record(project, "P0", "run")["state"] == "running"  # what the files alone would say
        cli("status", "--runs-dir", "runs", cwd=project)
    finally:
        subprocess.run(["scancel", "-u", os.environ.get("USER", "root")], capture_output=True)


def test_a_setting_that_sbatch_refuses_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "experiments.toml").write_text((REPO / "experiments.toml").read_text())
    out = subprocess.run([sys.executable, "-m", "etrmtrm_cli", "sweep", "E0a", "--max-steps", "5", *TINY,
                          "--partition", "no_such_partition"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "sbatch refused the job: " in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) <= 3, out.stderr


def run_running(run: Path) -> bool:
    from etrmtrm_cli.sweep_status import lock_held

    return bool(lock_held(run))


def test_slurm_job_at_its_time_limit_checkpoints_requeues_and_resumes(tmp_path: Path) -> None:
    project = tmp_path
    # A 2-minute limit, warned 30 s before. SLURM may send the warning up to 60 s early (sbatch --signal), so it
    # comes 30-90 s after the start. (A 1-minute limit let it come at once, before the job's handler was in.)
    (project / "experiments.toml").write_text((REPO / "experiments.toml").read_text()
                                              + "\n[sweep]\ntime_min = 2\nsignal_delay_s = 30\n")
    cli("sweep", "E0b", "--max-steps", 100000, "--no-compile", *TINY, cwd=project)
    job_id = record(project, "E0b", "submit")["job_id"]
    run = project / "runs/E0b"

    def resumed() -> bool:
        rec = record(project, "E0b", "run")
        return rec.get("action") == "resumable" and rec.get("state") == "running" and run_running(run)

    try:
        # 480 s: room for a second time limit where the first warning came before the job's handler was in
        wait_for(resumed, 480, "the job requeued at its time limit and running again", (job_id,))
    finally:
        subprocess.run(["scancel", job_id], check=False)
    wait_for(lambda: not run_running(run), 120, "the run stopped after scancel")
    rec = record(project, "E0b", "run")
    log = Path(rec["log_out"]).read_text() + Path(rec["log_err"]).read_text()  # submitit: INFO out, WARNING err
    print("the job's log:\n" + "\n".join(line for line in log.splitlines()
                                         if re.search(r"SIGUSR2|checkpoint|Requeued|SIGTERM|\[sweep\]", line)))
    assert "Caught signal SIGUSR2" in log and "Calling checkpoint method" in log, log
    assert re.search(r"Requeued job \d+", log), log
    steps = steps_logged(run)
    assert steps == list(range(1, len(steps) + 1)), "the resumed run did not continue where it stopped"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["resumes"] >= 1, summary
    cli("status", "--runs-dir", "runs", cwd=project)
