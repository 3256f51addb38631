"""The training loop on the tiny profile: runs, resume equivalence, faults, optimizer groups, DDP."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import CPU, EXPERIMENTS, logged_rows, tiny, wait_until
from rich.console import Console

from etrmtrm_cli import __version__, rundir
from etrmtrm_cli.analysis.diagnose.determinism import without_wall_clock
from etrmtrm_cli.errors import RunError
from etrmtrm_cli.models.build import build_model
from etrmtrm_cli.models.trm_import import ImportReport
from etrmtrm_cli.render import TrainProgress
from etrmtrm_cli.training.distributed import DistContext
from etrmtrm_cli.training.loop import StopFlag, TrainOptions, train
from etrmtrm_cli.training.optim import build_optimizers, lr_at, set_lr

SINGLE = DistContext(0, 1, CPU)
FAST = ["train.eval_interval=4", "train.checkpoint_interval=4", "data.eval_groups=1", "data.eval_num_aug=1"]


def read_metrics(run_dir: Path, wall_clock: bool = False) -> list[dict[str, Any]]:
    """metrics.jsonl, without its wall-clock metrics unless asked for (they differ between any two runs)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return rows if wall_clock else [without_wall_clock(row) for row in rows]


class Crash(Exception):
    pass


def crash_at(step: int):  # noqa: ANN201
    def on_event(kind: str, payload: dict[str, Any]) -> None:
        if kind == "step" and payload["step"] == step:
            raise Crash(step)

    return on_event


def test_run_directory_is_complete(tmp_path: Path) -> None:
    exp = tiny("E0b", FAST)
    summary = train(exp, TrainOptions(runs_dir=tmp_path, max_steps=6), SINGLE)
    run = tmp_path / "E0b"
    assert summary.status == "finished" and summary.step == 6
    assert {p.name for p in run.iterdir()} >= {"config.json", "meta.json", "metrics.jsonl", "summary.json",
                                               "model.safetensors", "checkpoints"}
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert "eval/pass@2" in rows[3] and "eval/pass@2" in rows[5] and "eval/pass@2" not in rows[0]
    timed = read_metrics(run, wall_clock=True)  # wall times: every step's, and each eval's on the steps that evaluate
    assert all(r["time/step_s"] > 0 for r in timed)
    assert [r["step"] for r in timed if "time/eval_s" in r] == [4, 6] and timed[3]["time/eval_s"] > 0
    for key in ("train/loss", "grad/encoder_share", "train/encoder_cross_sample_var", "train/encoder_carry_norm",
                "train/encoder_carry_change", "train/lr", "act/encoder_carry_change_01"):
        assert key in rows[0]
    assert [k for k in rows[1] if k.startswith("act/")] == ["act/encoder_carry_change_02"]  # nobody halted yet
    meta = json.loads((run / "meta.json").read_text())
    assert meta["seed"] == exp.seed and meta["train_tasks"] and not set(meta["train_tasks"]) & set(meta["eval_tasks"])
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert [p.name for p in rundir.list_checkpoints(run / "checkpoints")] == ["step_00000004", "step_00000006"]


def test_loss_falls_on_a_fixed_puzzle_set(tmp_path: Path) -> None:
    exp = tiny("E0a", ["data.num_aug=0", "data.eval_num_aug=0", "data.translate=false", "train.lr=3e-3",
                       "train.eval_interval=1000", "train.checkpoint_interval=1000", "arch.halt_max_steps=1"])
    train(exp, TrainOptions(runs_dir=tmp_path, max_steps=60), SINGLE)
    losses = [r["train/lm_loss"] for r in read_metrics(tmp_path / "E0a")]
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10, losses


@pytest.mark.parametrize("exp_id", ["E0b", "P0"])
def test_resume_after_a_kill_logs_identical_metrics(tmp_path: Path, exp_id: str) -> None:
    exp = tiny(exp_id, [*FAST, "train.ema=true"])
    train(exp, TrainOptions(runs_dir=tmp_path / "a", max_steps=10), SINGLE)
    with pytest.raises(Crash):  # dies after step 6: the latest checkpoint is step 4
        train(exp, TrainOptions(runs_dir=tmp_path / "b", max_steps=10), SINGLE, crash_at(6))
    assert len(read_metrics(tmp_path / "b" / exp_id)) == 6
    train(exp, TrainOptions(runs_dir=tmp_path / "b", max_steps=10, resume=True), SINGLE)
    assert read_metrics(tmp_path / "b" / exp_id) == read_metrics(tmp_path / "a" / exp_id)


def test_a_run_killed_without_a_summary_still_counts_the_wall_time_up_to_its_checkpoint(tmp_path: Path) -> None:
    """A SIGKILL (a session that ends) writes no summary: the resumed run takes its earlier sessions' wall time
    from the checkpoint it resumes."""
    exp = tiny("E0b", FAST)
    with pytest.raises(Crash):  # dies after step 6: the latest checkpoint is step 4
        train(exp, TrainOptions(runs_dir=tmp_path, max_steps=10), SINGLE, crash_at(6))
    run = tmp_path / "E0b"
    state_path = rundir.latest_checkpoint(run) / "state.rank0.pt"
    state = rundir.load_state(state_path)
    assert 0 < state["wall_time_s"] < 600
    rundir.save_state(state_path, {**state, "wall_time_s": 1000.0})  # as if its first session took 1000 s
    rundir.write_json(run / "summary.json", {"status": "running", "step": 0, "total_steps": 10})  # what a kill leaves
    started = time.perf_counter()
    train(exp, TrainOptions(runs_dir=tmp_path, max_steps=10, resume=True), SINGLE)
    summary = json.loads((run / "summary.json").read_text())
    assert 1000.0 < summary["wall_time_s"] <= 1000.0 + time.perf_counter() - started, summary
    assert summary["resumes"] == 1


class StopOnRead(StopFlag):
    """A stop request that arrives on the n-th time the loop asks (the loop asks before each step, the eval
    before each of its batches): a signal at a chosen moment, without a signal."""

    def __init__(self, on_read: int) -> None:
        super().__init__()
        self.reads, self.on_read = 0, on_read

    @property  # type: ignore[override]
    def requested(self) -> bool:
        self.reads += 1
        return self.reads >= self.on_read

    @requested.setter
    def requested(self, value: bool) -> None:
        pass


def test_a_signal_during_an_eval_checkpoints_the_step_and_resume_runs_its_eval(tmp_path: Path) -> None:
    exp = tiny("E0b", [*FAST, "train.checkpoint_interval=100"])
    train(exp, TrainOptions(runs_dir=tmp_path / "a", max_steps=8), SINGLE)
    # reads 1-4: before steps 1-4; read 5: before the first batch of step 4's eval -> stop inside the eval
    summary = train(exp, TrainOptions(runs_dir=tmp_path / "b", max_steps=8), SINGLE, stop=StopOnRead(5))
    run = tmp_path / "b" / "E0b"
    assert (summary.status, summary.step) == ("interrupted", 4)
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]  # step 4 waits for its eval
    assert rundir.latest_checkpoint(run).name == "step_00000004"
    train(exp, TrainOptions(runs_dir=tmp_path / "b", max_steps=8, resume=True), SINGLE)
    assert read_metrics(run) == read_metrics(tmp_path / "a" / "E0b")  # eval of step 4 included, exactly


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_logs_identical_metrics(tmp_path: Path) -> None:
    """Real processes, killed with SIGKILL after 1..5 more logged steps each time (a metrics append, a
    checkpoint write or an eval may be under way), resumed each time: the log equals an uninterrupted run's."""
    args = ["etrmtrm_cli", "train", "E0b", "--profile", "tiny", "--experiments", str(EXPERIMENTS), "--quiet",
            "--max-steps", "24", "--set", "decoder=none", "--set", "train.checkpoint_interval=3",
            "--set", "train.eval_interval=5", "--set", "data.eval_groups=1", "--set", "data.eval_num_aug=1"]
    reference = run_cli([*args, "--runs-dir", str(tmp_path / "a")], tmp_path)
    assert reference.wait(timeout=300) == 0, reference.communicate()[1]
    metrics, kills = tmp_path / "b" / "E0b" / "metrics.jsonl", 0
    for more in (2, 5, 1, 4, 3, 2):
        run = tmp_path / "b" / "E0b"  # as the tool advises: --resume from a checkpoint, else --force
        resume = ["--resume"] if rundir.latest_checkpoint(run) else ["--force"] if run.exists() else []
        proc = run_cli([*args, "--runs-dir", str(tmp_path / "b"), *resume], tmp_path)
        start = logged_rows(metrics)
        wait_until(proc, lambda: proc.poll() is not None or logged_rows(metrics) >= start + more,  # noqa: B023
                   f"{start + more} logged steps")
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.communicate()[1]
            break  # finished before this kill
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        kills += 1
    final = run_cli([*args, "--runs-dir", str(tmp_path / "b"), "--resume"], tmp_path)
    assert final.wait(timeout=300) == 0, final.communicate()[1]
    assert kills >= 4
    assert read_metrics(tmp_path / "b" / "E0b") == read_metrics(tmp_path / "a" / "E0b")


def test_stop_flag_checkpoints_and_resumes(tmp_path: Path) -> None:
    exp = tiny("E0b", FAST)
    stop = StopFlag()

    def request_stop(kind: str, payload: dict[str, Any]) -> None:
        if kind == "step" and payload["step"] == 5:
            stop.requested = True

    summary = train(exp, TrainOptions(runs_dir=tmp_path, max_steps=8), SINGLE, request_stop, stop)
    assert (summary.status, summary.step) == ("interrupted", 5)
    assert rundir.latest_checkpoint(tmp_path / "E0b").name == "step_00000005"
    assert rundir.run_status(tmp_path / "E0b") == "resumable"
    resumed = train(exp, TrainOptions(runs_dir=tmp_path, max_steps=8, resume=True), SINGLE)
    assert (resumed.status, resumed.step) == ("finished", 8)


def test_extending_a_finished_run_is_recorded_and_it_is_not_finished_while_it_runs(tmp_path: Path) -> None:
    exp = tiny("E0b", FAST)
    train(exp, TrainOptions(runs_dir=tmp_path, max_steps=3), SINGLE)
    run = tmp_path / "E0b"
    seen: list[str] = []

    def status_while_training(kind: str, payload: dict[str, Any]) -> None:
        if kind == "step":
            summary = rundir.read_summary(run)
            seen.append(f"{summary['status']} of {summary['total_steps']}")  # the new length: status read "4 / 3"

    longer = train(exp, TrainOptions(runs_dir=tmp_path, max_steps=5, resume=True), SINGLE, status_while_training)
    assert (longer.status, longer.step) == ("finished", 5) and seen == ["running of 5", "running of 5"]
    meta = json.loads((run / rundir.META).read_text())
    assert meta["resumed_with_changes"] == [{"step": 3, "changed": {"total_steps": [3, 5]}}]  # its lr schedule
    assert meta["encoder"] == {"name": "recurrent_standard",
                               "origin": "etrmtrm_cli.encoders.recurrent_standard:RecurrentStandardEncoder",
                               "package": f"etrmtrm {__version__}"}


def test_a_resume_under_another_version_of_the_encoders_package_is_recorded(tmp_path: Path) -> None:
    exp = tiny("E0b", FAST)
    train(exp, TrainOptions(runs_dir=tmp_path, max_steps=2), SINGLE)
    run = tmp_path / "E0b"
    meta = json.loads((run / rundir.META).read_text())
    older = {**meta["encoder"], "package": "etrmtrm 0.0.1"}
    (run / rundir.META).write_text(json.dumps({**meta, "encoder": older}))
    train(exp, TrainOptions(runs_dir=tmp_path, max_steps=2, resume=True), SINGLE)
    history = json.loads((run / rundir.META).read_text())["resumed_with_changes"]
    assert history == [{"step": 2, "changed": {"encoder": [older, meta["encoder"]]}}], history


def test_a_resume_without_max_steps_does_not_change_the_length_a_run_was_started_with(tmp_path: Path) -> None:
    """`train E0b --resume` on a run started with --max-steps 3 trained on to the experiment's own length, replacing
    the finished run's final weights; a run stopped at step 2 would have changed its lr schedule as silently."""
    exp = tiny("E0b", FAST)
    train(exp, TrainOptions(runs_dir=tmp_path, max_steps=3), SINGLE)
    run = tmp_path / "E0b"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    with pytest.raises(RunError, match=r"a run of 3 steps \(finished\), which this command without --max-steps would "
                                       r"make \d+ steps long, .* and replacing its final weights\. Resume it as it is "
                                       r"with --max-steps 3, or extend it with --max-steps \d+"):
        train(exp, TrainOptions(runs_dir=tmp_path, resume=True), SINGLE)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"} == before
    assert train(exp, TrainOptions(runs_dir=tmp_path, max_steps=3, resume=True), SINGLE).step == 3  # as it is
    epochs = tiny("E0b", [*FAST, f"train.epochs={exp.train.epochs + 1}"])  # epochs never set this run's length
    with pytest.raises(RunError, match=r"a run of 3 steps \(finished\), which this command without --max-steps"):
        train(epochs, TrainOptions(runs_dir=tmp_path, resume=True), SINGLE)
    longer = tiny("E0b", [*FAST, "train.max_steps=4"])  # a new length in the config: asked for, it goes on
    assert train(longer, TrainOptions(runs_dir=tmp_path, resume=True), SINGLE).step == 4
    by_epochs = tiny("E0b", [*FAST, "train.epochs=1"])  # a run as long as its config's epochs make it
    first = train(by_epochs, TrainOptions(runs_dir=tmp_path / "b"), SINGLE).step
    more = tiny("E0b", [*FAST, "train.epochs=3"])  # the config's new length: it goes on
    assert train(more, TrainOptions(runs_dir=tmp_path / "b", resume=True), SINGLE).step > first

def test_a_resume_that_cannot_go_on_leaves_the_finished_run_as_it_was(tmp_path: Path) -> None:
    """A shorter --max-steps than the run has trained, or a damaged meta.json, stops the resume before it writes
    anything (before, the first rewrote the run's length and the second left it marked running); a resume with
    no step left keeps the run's last metrics (before, they were emptied)."""
    exp = tiny("E0b", FAST)
    train(exp, TrainOptions(runs_dir=tmp_path, max_steps=3), SINGLE)
    run = tmp_path / "E0b"
    files = {name: (run / name).read_bytes() for name in (rundir.SUMMARY, rundir.META, rundir.CONFIG)}
    with pytest.raises(RunError, match=r"its checkpoint is at step 3, past the 2 steps asked .* not shorten it"):
        train(exp, TrainOptions(runs_dir=tmp_path, max_steps=2, resume=True), SINGLE)
    assert {name: (run / name).read_bytes() for name in files} == files
    meta = json.loads(files[rundir.META])
    (run / rundir.META).write_text(json.dumps({**meta, "resumed_with_changes": 5}))
    with pytest.raises(RunError, match="resumed_with_changes is not a list"):
        train(exp, TrainOptions(runs_dir=tmp_path, max_steps=4, resume=True), SINGLE)
    assert (run / rundir.SUMMARY).read_bytes() == files[rundir.SUMMARY]  # still "finished", not "running"
    (run / rundir.META).write_bytes(files[rundir.META])
    last = json.loads(files[rundir.SUMMARY])["last"]
    assert last and train(exp, TrainOptions(runs_dir=tmp_path, max_steps=3, resume=True), SINGLE).status == "finished"
    assert json.loads((run / rundir.SUMMARY).read_text())["last"] == last


def test_a_resumed_run_compiles_or_not_as_it_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """auto decides by the run's length, not the steps it has left: compiled and eager steps differ in their last
    bits, so a resume that switched would not log what the uninterrupted run logs."""
    from etrmtrm_cli.training import loop

    asked: list[int] = []
    monkeypatch.setattr(loop, "choose_compile", lambda device, steps, compile: (asked.append(steps), (False, ""))[1])
    exp, stop = tiny("E0b", FAST), StopFlag()

    def request_stop(kind: str, payload: dict[str, Any]) -> None:
        stop.requested = stop.requested or (kind == "step" and payload["step"] == 2)

    train(exp, TrainOptions(runs_dir=tmp_path, max_steps=6), SINGLE, request_stop, stop)
    train(exp, TrainOptions(runs_dir=tmp_path, max_steps=6, resume=True), SINGLE)
    assert asked == [6, 6]


def test_kill_during_checkpoint_write_keeps_the_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exp = tiny("E0b", FAST)
    real_save_state = rundir.save_state

    def dies_at_step_8(path: Path, state: dict[str, Any]) -> None:
        if state["step"] == 8:
            raise Crash("killed mid-write")
        real_save_state(path, state)

    monkeypatch.setattr(rundir, "save_state", dies_at_step_8)
    with pytest.raises(Crash):
        train(exp, TrainOptions(runs_dir=tmp_path, max_steps=10), SINGLE)
    run = tmp_path / "E0b"
    assert (run / "checkpoints" / "step_00000008.tmp").is_dir()  # the half-written one
    assert rundir.latest_checkpoint(run).name == "step_00000004"
    monkeypatch.undo()
    assert train(exp, TrainOptions(runs_dir=tmp_path, max_steps=10, resume=True), SINGLE).step == 10


def test_nan_loss_stops_before_the_update(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import etrmtrm_cli.training.step as step_module

    exp = tiny("E0b", FAST)
    real_loss = step_module.act_loss
    calls = {"n": 0}

    def nan_at_step_6(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        loss, sums = real_loss(*args, **kwargs)
        return (loss * float("nan") if calls["n"] == 6 else loss), sums

    monkeypatch.setattr(step_module, "act_loss", nan_at_step_6)
    with pytest.raises(RunError, match=r"train/loss is nan at step 6.*start over with a lower learning rate"):
        train(exp, TrainOptions(runs_dir=tmp_path, max_steps=10), SINGLE)
    assert rundir.latest_checkpoint(tmp_path / "E0b").name == "step_00000004"
    summary = json.loads((tmp_path / "E0b" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"].startswith("step 6: E0b: train/loss is nan")


def test_refuses_to_overwrite_and_force_moves_aside(tmp_path: Path) -> None:
    exp = tiny("E0b", FAST)
    train(exp, TrainOptions(runs_dir=tmp_path, max_steps=2), SINGLE)
    with pytest.raises(RunError, match="exists: continue it with --resume, or start over with --force"):
        train(exp, TrainOptions(runs_dir=tmp_path, max_steps=2), SINGLE)
    train(exp, TrainOptions(runs_dir=tmp_path, max_steps=2, force=True), SINGLE)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("E0b.old-")]
    assert len(aside) == 1 and (aside[0] / "model.safetensors").is_file()


def test_missing_decoder_fails_before_touching_the_run(tmp_path: Path) -> None:
    from etrmtrm_cli.errors import CheckpointError
    from etrmtrm_cli.experiments_file import load_experiments

    exp = load_experiments(EXPERIMENTS).resolve("E0b", "tiny")  # decoder = "P0", never trained here
    with pytest.raises(CheckpointError, match=re.escape(f"produce it with `etrmtrm train P0 --profile tiny --runs-dir "
                                                        f"{tmp_path}`")):
        train(exp, TrainOptions(runs_dir=tmp_path, max_steps=2), SINGLE)
    assert not (tmp_path / "E0b").exists()


def test_runs_from_a_retrained_decoder_are_refused_beside_runs_from_the_first(tmp_path: Path) -> None:
    from etrmtrm_cli.errors import CheckpointError

    options = TrainOptions(runs_dir=tmp_path, max_steps=2)
    train(tiny("P0", FAST), options, SINGLE)
    train(tiny("E0b", [*FAST, "decoder=P0"]), options, SINGLE)
    train(tiny("E0a", [*FAST, "decoder=P0"]), options, SINGLE)  # the same P0: fine
    first = json.loads((tmp_path / "E0b" / "meta.json").read_text())["decoder"]["sha256"]
    train(tiny("P0", [*FAST, "train.lr=3e-3"]), TrainOptions(runs_dir=tmp_path, max_steps=2, force=True), SINGLE)
    assert rundir.file_sha256(tmp_path / "P0" / "model.safetensors") != first  # P0 again: other weights
    with pytest.raises(CheckpointError, match=re.escape(f"started from (E0a, E0b: sha256 {first}); runs from two "
                                                        "decoders do not compare")):
        train(tiny("E0c", [*FAST, "decoder=P0"]), options, SINGLE)
    assert not (tmp_path / "E0c").exists()
    for old in ("E0a", "E0b"):  # moved aside, as --force does: no longer runs of this directory
        (tmp_path / old).rename(tmp_path / f"{old}.old-20261205-000000")
    assert train(tiny("E0c", [*FAST, "decoder=P0"]), options, SINGLE).status == "finished"


def test_encoder_lr_scale_makes_its_own_group() -> None:
    exp = tiny("E3d")  # encoder_lr_scale = 0.5
    model = build_model(exp, 36, 10)
    optimizers = build_optimizers(model, exp)
    set_lr(optimizers, 1e-3)
    groups = {g["name"]: g for g in optimizers[0].param_groups}
    assert groups["encoder"]["lr"] == pytest.approx(5e-4) and groups["decoder"]["lr"] == pytest.approx(1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    encoder = {names[id(p)] for p in groups["encoder"]["params"]}
    decoder = {names[id(p)] for p in groups["decoder"]["params"]}
    assert encoder and all(n.startswith("provider.") for n in encoder)  # the encoder owns the provider's params
    assert decoder and not any(n.startswith("provider.") for n in decoder)
    assert encoder | decoder == set(names.values())  # every parameter in exactly one group
    single = build_optimizers(model, tiny("E3a"))[0].param_groups
    assert len(single) == 1 and len(single[0]["params"]) == len(list(model.parameters()))


def test_lr_schedule_warmup_then_cosine() -> None:
    exp = tiny("E0b", ["train.lr=1.0", "train.lr_warmup_steps=10", "train.lr_min_ratio=0.1"])
    assert lr_at(5, exp, 110) == pytest.approx(0.5)
    assert lr_at(10, exp, 110) == pytest.approx(1.0)
    assert lr_at(60, exp, 110) == pytest.approx(0.55)
    assert lr_at(110, exp, 110) == pytest.approx(0.1)
    scaled = tiny("E0b", ["train.lr=1.0", "train.lr_warmup_steps=10", "train.lr_scale=3.0"])
    assert lr_at(10, scaled, 110) == pytest.approx(3.0)


def run_cli(args: list[str], cwd: Path, env_extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "COLUMNS": "200", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(tmp_path: Path) -> None:
    args = ["etrmtrm_cli", "train", "E0b", "--profile", "tiny", "--experiments", str(EXPERIMENTS),
            "--runs-dir", str(tmp_path), "--max-steps", "100000", "--no-compile", "--set", "decoder=none",
            "--set", "train.checkpoint_interval=100000", "--set", "train.eval_interval=100000"]
    proc = run_cli(args, tmp_path)
    wait_until(proc, lambda: logged_rows(tmp_path / "E0b" / "metrics.jsonl") >= 2, "2 logged steps")
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert re.search(r"continue with: etrmtrm train E0b --profile tiny .*--resume$", err, re.MULTILINE)
    assert "Traceback" not in err
    assert rundir.latest_checkpoint(tmp_path / "E0b") is not None


@pytest.mark.slow
def test_two_process_gloo_equals_one_process(tmp_path: Path) -> None:
    common = ["train", "E0b", "--profile", "tiny", "--experiments", str(EXPERIMENTS), "--max-steps", "6",
              "--set", "decoder=none", "--set", "train.eval_interval=3",
              "--set", "data.eval_num_aug=1", "--quiet", "--device", "cpu"]
    single = run_cli(["etrmtrm_cli", *common, "--runs-dir", str(tmp_path / "one")], tmp_path)
    ddp = run_cli(["torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29631", "-m",
                   "etrmtrm_cli", *common, "--runs-dir", str(tmp_path / "two")], tmp_path, {"OMP_NUM_THREADS": "1"})
    for proc in (single, ddp):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, out + err
    one, two = read_metrics(tmp_path / "one" / "E0b"), read_metrics(tmp_path / "two" / "E0b")
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(1, 7))
    for a, b in zip(one, two, strict=True):  # every metric, the encoder's included, over the global batch
        assert set(a) == set(b)
        for key in a:
            if a[key] is None:
                assert b[key] is None, key
            else:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (a["step"], key)
    weights_one = rundir.load_weights(tmp_path / "one" / "E0b" / "model.safetensors")
    weights_two = rundir.load_weights(tmp_path / "two" / "E0b" / "model.safetensors")
    for key, value in weights_one.items():
        torch.testing.assert_close(weights_two[key], value, rtol=1e-4, atol=1e-5)
    # Halting exploration (on, at E0b's 0.5) only delays a halt that q_halt asks for, which a fresh model's does not
    # in 6 steps: that the ranks drew the single process's numbers shows in their generators' states.
    final = {name: rundir.latest_checkpoint(tmp_path / name / "E0b") for name in ("one", "two")}
    single = rundir.load_state(final["one"] / "state.rank0.pt")["halt_rng"]
    for rank in (0, 1):
        assert torch.equal(rundir.load_state(final["two"] / f"state.rank{rank}.pt")["halt_rng"], single), rank


@pytest.mark.slow
def test_a_wrong_setting_under_torchrun_is_said_once(tmp_path: Path) -> None:
    """Every rank read the experiments file before the ranks met, and each printed the same error."""
    bad = run_cli(["torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29640", "-m", "etrmtrm_cli",
                   "train", "E0b", "--profile", "tiny", "--experiments", str(EXPERIMENTS), "--max-steps", "2",
                   "--set", "train.eval_batch_size=3", "--runs-dir", str(tmp_path / "runs"), "--device", "cpu"],
                  tmp_path, {"OMP_NUM_THREADS": "1"})
    out, err = bad.communicate(timeout=300)
    assert bad.returncode != 0, out + err
    said = [line for line in (out + err).splitlines() if line.startswith("error: ")]
    assert len(said) == 1 and "not divisible by the world size 2" in said[0], out + err
    assert not (tmp_path / "runs").exists()


class _Killed(Exception):
    """The process dying at this point."""


def test_saving_a_step_again_never_leaves_its_checkpoint_half_deleted(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop on a checkpoint step saves that step twice; a kill during the second save must leave a whole
    checkpoint as the latest."""
    run, real_rmtree = tmp_path / "run", shutil.rmtree

    def save(step: int, text: str) -> None:
        tmp = rundir.begin_checkpoint(run, step)
        for name in ("a", "b"):
            (tmp / name).write_text(text)
        with contextlib.suppress(_Killed):
            rundir.commit_checkpoint(tmp, keep=3)

    def killed_midway(path: Any, *args: Any, **kwargs: Any) -> None:  # a kill while step 4's directory is deleted
        if Path(path).name == "step_00000004":
            next(Path(path).iterdir()).unlink()
            raise _Killed
        real_rmtree(path, *args, **kwargs)

    save(2, "old")
    save(4, "old")
    monkeypatch.setattr(rundir.shutil, "rmtree", killed_midway)
    save(4, "new")
    latest = rundir.latest_checkpoint(run)
    assert latest is not None and sorted(p.name for p in latest.iterdir()) == ["a", "b"], latest


def test_weights_that_fail_mid_write_leave_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    path = tmp_path / "model.safetensors"
    rundir.save_weights(path, {"w": torch.ones(3)})

    def dies_half_written(tensors: dict[str, torch.Tensor], filename: str) -> None:
        Path(filename).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", dies_half_written)
    with pytest.raises(RunError, match="No space left on device"):
        rundir.save_weights(path, {"w": torch.zeros(3)})
    assert torch.equal(rundir.load_weights(path)["w"], torch.ones(3)) and not list(tmp_path.glob("*.tmp"))


class _StopOnRankOne:
    """A stop request that only rank 1 sees, from its third look on (as a signal that reaches one rank first)."""

    def __init__(self, rank: int) -> None:
        self.rank, self.looks = rank, 0

    @property
    def requested(self) -> bool:
        self.looks += 1
        return self.rank == 1 and self.looks >= 3


def _train_rank(rank: int, runs_dir: str, port: int, case: str) -> None:
    """Rank `rank` of a 2-process gloo run; case "stop": only rank 1 sees a stop request; "inf": only rank 1's
    loss is infinite, at step 2; "crash": rank 1's step 3 raises; "resume": both resume the run. Writes the error
    the rank ends with to rank<N>.err, as "<its type>: <its message>"."""
    import torch.distributed as dist

    from etrmtrm_cli.training import step

    if case in ("inf", "crash") and rank == 1:
        real_loss, calls = step.act_loss, []

        def failing_at(*args: Any) -> Any:
            calls.append(1)
            loss, sums = real_loss(*args)
            if case == "crash" and len(calls) == 3:
                raise ValueError("rank 1 broke at step 3")
            return (loss * float("inf") if case == "inf" and len(calls) == 2 else loss), sums

        step.act_loss = failing_at
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        exp = tiny("E0b", ["decoder=none", "train.eval_interval=100", "train.checkpoint_interval=100"])
        stop = _StopOnRankOne(rank) if case == "stop" else StopFlag()
        options = TrainOptions(runs_dir=Path(runs_dir), max_steps=50, resume=case == "resume")
        train(exp, options, DistContext(rank, 2, CPU), stop=stop)
    except Exception as err:  # noqa: BLE001 (what the rank ended with is the test's subject)
        Path(runs_dir, f"rank{rank}.err").write_text(f"{type(err).__name__}: {err}")
    finally:
        dist.destroy_process_group()


def _two_ranks(runs_dir: Path, port: int, case: str) -> None:
    context = torch.multiprocessing.start_processes(_train_rank, args=(str(runs_dir), port, case), nprocs=2,
                                                    join=False, start_method="spawn")
    deadline = time.time() + 300
    while not context.join(timeout=1):
        if time.time() > deadline:
            for proc in context.processes:
                proc.kill()
            pytest.fail("the ranks did not stop together: the run hung")


@pytest.mark.slow
def test_a_stop_seen_by_one_rank_stops_every_rank_at_the_same_step(tmp_path: Path) -> None:
    """Without agreement one rank waits at the checkpoint's barrier and the other in the gradient all-reduce."""
    _two_ranks(tmp_path, 29633, "stop")
    summary = rundir.read_summary(tmp_path / "E0b")
    assert (summary["status"], summary["step"]) == ("interrupted", 2), summary
    assert rundir.latest_checkpoint(tmp_path / "E0b") == rundir.checkpoint_dir(tmp_path / "E0b", 2)


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_stops_every_rank_with_the_same_error(tmp_path: Path) -> None:
    """Rank 1 raising alone would leave rank 0 in the gradient all-reduce (a broken connection under gloo, a hang
    under NCCL): the ranks' losses are summed first, so both see it."""
    _two_ranks(tmp_path, 29634, "inf")
    for rank in (0, 1):
        said = (tmp_path / f"rank{rank}.err").read_text()
        assert said.startswith("RunError: E0b: train/loss is inf at step 2; stopped before the update"), (rank, said)


@pytest.mark.slow
def test_a_rank_that_fails_alone_is_the_one_that_says_why(tmp_path: Path) -> None:
    """A rank that cannot start, or fails mid-run, while the other can: before, the other crashed at its next
    collective with gloo's "Connection closed by peer", which the run's summary then recorded as its error (and a
    run whose checkpoint rank 1 could not read was marked failed by rank 0)."""
    def ended_with() -> tuple[str, str]:
        return tuple((tmp_path / f"rank{rank}.err").read_text() for rank in (0, 1))  # type: ignore[return-value]

    (tmp_path / "E0b").mkdir()  # a run folder, without a checkpoint: rank 0 refuses it, rank 1 cannot know
    _two_ranks(tmp_path, 29635, "new")
    said = ended_with()
    assert said[0].startswith("RunError: ") and "E0b exists" in said[0], said
    assert said[1] == "PeerFailed: another process of the run failed; it reports why", said
    (tmp_path / "E0b").rmdir()

    _two_ranks(tmp_path, 29636, "stop")  # interrupted at step 2, with a checkpoint of both ranks
    state = rundir.checkpoint_dir(tmp_path / "E0b", 2) / "state.rank1.pt"
    state.write_bytes(b"garbage")
    before = (tmp_path / "E0b" / "summary.json").read_text()
    _two_ranks(tmp_path, 29637, "resume")
    said = ended_with()
    assert said[0] == "PeerFailed: another process of the run failed; it reports why", said
    assert said[1].startswith("CheckpointError: ") and "state.rank1.pt: not a readable" in said[1], said
    assert (tmp_path / "E0b" / "summary.json").read_text() == before  # still interrupted at step 2, resumable

    shutil.rmtree(tmp_path / "E0b")  # a checkpoint of 1 process, resumed by 2: rank 0 says so, once
    exp = tiny("E0b", ["decoder=none", "train.eval_interval=100", "train.checkpoint_interval=100"])
    train(exp, TrainOptions(runs_dir=tmp_path, max_steps=2), DistContext(0, 1, CPU))
    _two_ranks(tmp_path, 29639, "resume")
    said = ended_with()
    assert said[0].startswith("RunError: ") and "written by 1 processes; resume it with as many" in said[0], said
    assert said[1] == "PeerFailed: process 0 failed too, and reports why", said  # its missing state file, unsaid

    shutil.rmtree(tmp_path / "E0b")
    _two_ranks(tmp_path, 29638, "crash")
    said = ended_with()
    assert said == ("PeerFailed: step 3: another process of the run ended (its output, if any, says why)",
                    "ValueError: rank 1 broke at step 3"), said
    summary = rundir.read_summary(tmp_path / "E0b")
    assert (summary["status"], summary["error"]) == ("failed", "step 3: another process of the run ended (its "
                                                                "output, if any, says why)"), summary


def test_missing_optional_logger_gives_an_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from etrmtrm_cli.errors import ConfigError

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    monkeypatch.setitem(sys.modules, "wandb", None)
    exp = tiny("E0b", FAST)
    with pytest.raises(ConfigError, match=r"pip install 'etrmtrm\[tensorboard\]'"):
        train(exp, TrainOptions(runs_dir=tmp_path, max_steps=1, tensorboard=True), SINGLE)
    with pytest.raises(ConfigError, match=r"pip install 'etrmtrm\[wandb\]'.*WANDB_MODE=offline"):
        train(exp, TrainOptions(runs_dir=tmp_path, max_steps=1, wandb=True), SINGLE)
    assert not (tmp_path / "E0b").exists()  # nothing was started


def test_tensorboard_and_offline_wandb_log_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch.utils.tensorboard")
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # no network: wandb writes its files into the run directory
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(tiny("E0b", FAST), TrainOptions(runs_dir=tmp_path, max_steps=2, tensorboard=True, wandb=True), SINGLE)
    run = tmp_path / "E0b"
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert list((run / "wandb").glob("offline-run-*"))


def test_a_resumed_run_logs_each_step_once_to_tensorboard_and_to_one_wandb_run(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    exp = tiny("E0b", ["train.eval_interval=100", "train.checkpoint_interval=2"])

    def killed_after_step_3(kind: str, payload: dict[str, Any]) -> None:  # steps 3 logged, checkpoint at 2
        if kind == "step" and payload["step"] == 3:
            raise Crash("killed")

    with pytest.raises(Crash):
        train(exp, TrainOptions(runs_dir=tmp_path, max_steps=4, tensorboard=True, wandb=True), SINGLE,
              killed_after_step_3)
    train(exp, TrainOptions(runs_dir=tmp_path, max_steps=4, tensorboard=True, wandb=True, resume=True), SINGLE)
    run = tmp_path / "E0b"
    events = event_accumulator.EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    sessions = sorted((run / "wandb").glob("offline-run-*"))
    # offline-run-<date>_<time>-<run id>, "-1" appended where both sessions started in the same second
    ids = {re.fullmatch(r"offline-run-\d{8}_\d{6}-([a-z0-9]+)(-\d+)?", s.name)[1] for s in sessions}
    assert len(sessions) == 2 and len(ids) == 1, sessions  # one wandb run


def test_the_start_line_says_where_the_decoder_comes_from() -> None:
    def start_line(start_step: int, report: ImportReport | None) -> str:
        console = Console(record=True, width=300, force_terminal=False)
        runtime = {"forward_dtype": "float32", "dtype_note": None, "dtype_hint": None, "compile": False,
                   "compile_note": "off", "allocator": "system"}
        TrainProgress(console, quiet=False).on_event("start", {
            "exp": tiny("E0b", ["decoder=P0"]), "total_steps": 10, "start_step": start_step, "decoder_report": report,
            "run_dir": Path("runs/E0b"), "device": "cpu", "world_size": 1, "runtime": runtime})
        return console.export_text()

    loaded = ImportReport(loaded=("decoder.a", "decoder.b"), missing=("provider.c",), unexpected=(), sha256="6e7f8c")
    assert "10 steps from 0; decoder P0 (sha256 6e7f8c): 2 tensors loaded, 1 new, 0 unused" in start_line(0, loaded)
    assert "10 steps from 4; decoder from step 4's checkpoint" in start_line(4, None)  # a resume loads no decoder
    assert "decoder from scratch" in start_line(0, None)


def test_weights_pruned_while_they_are_chosen_are_chosen_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """diagnose --run and compare --per-puzzle on a run that trains now: its latest checkpoint can be pruned between
    being chosen and being read ("step_...6/model.safetensors: missing")."""
    exp = tiny("E0b", [*FAST, "train.checkpoint_interval=2", "train.keep_checkpoints=3"])
    stop = StopFlag()

    def stop_at_six(kind: str, payload: dict[str, Any]) -> None:
        stop.requested = stop.requested or (kind == "step" and payload["step"] == 6)

    train(exp, TrainOptions(runs_dir=tmp_path, max_steps=8), SINGLE, stop_at_six, stop)  # interrupted: no final weights
    run, real = tmp_path / "E0b", rundir.load_weights
    calls: list[Path] = []

    def pruned_once(path: Path) -> dict[str, torch.Tensor]:
        calls.append(path)
        if len(calls) == 1:
            shutil.rmtree(path.parent)  # the training run prunes it just now
        return real(path)

    monkeypatch.setattr(rundir, "load_weights", pruned_once)
    path, weights = rundir.load_judged_weights(run)
    assert [p.parent.name for p in calls] == ["step_00000006", "step_00000004"] and path == calls[1] and weights
    path.write_bytes(b"damaged")  # not pruned: an error at once, not another choice
    with pytest.raises(rundir.CheckpointError, match="unreadable weights"):
        rundir.load_judged_weights(run)
    assert len(calls) == 3
