"""The CLI: help screens, exit codes, one-line errors without a traceback."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from etrmtrm_cli import __version__
from etrmtrm_cli.cli import PIPE_WIDTH, app
from etrmtrm_cli.errors import RunError

REPO = Path(__file__).resolve().parents[1]
REAL = str(REPO / "experiments.toml")
runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


@pytest.mark.parametrize("command", [[], ["experiments"], ["validate"], ["encoders"], ["data"]])
def test_every_help_screen(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and len(result.output.splitlines()) < 40


def test_experiments_table_lists_every_experiment_and_queue() -> None:
    result = runner.invoke(app, ["experiments", "--experiments", REAL], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for exp_id in ("P0", "E0a", "E0b", "E2b", "E4c", "week1", "week3", "recurrent_standard"):
        assert exp_id in result.output
    assert re.search(r"│ E0a +│ e0, week1 +│", result.output), result.output  # every queue it is in


def test_validate_ok() -> None:
    result = runner.invoke(app, ["validate", "--experiments", REAL])
    assert result.exit_code == 0 and "18 experiments, 4 queues" in result.output


def test_encoders_lists_the_registry() -> None:
    result = runner.invoke(app, ["encoders"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in ("static", "recurrent_standard", "trm_style", "encoder_h_cycles"):
        assert name in result.output


@pytest.mark.parametrize("columns", [None, "80"])
def test_output_into_a_pipe_keeps_its_tables_whole_unless_columns_says_otherwise(columns: str | None) -> None:
    env = {"PATH": ""} | ({"COLUMNS": columns} if columns else {})
    result = subprocess.run([sys.executable, "-m", "etrmtrm_cli", "experiments", "--experiments", REAL],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    widest = max(len(line) for line in result.stdout.splitlines())
    if columns is None:  # no terminal, no COLUMNS: room for the whole table, nothing cut short with an ellipsis
        assert 80 < widest <= PIPE_WIDTH and "…" not in result.stdout
    else:
        assert widest <= 80 and "…" in result.stdout


def test_bad_file_is_one_line_exit_1_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "experiments.toml"
    bad.write_text("[experiments.E0a]\narch = { halt_max_step = 3 }\n[profiles.cpu]\n")
    result = subprocess.run(
        [sys.executable, "-m", "etrmtrm_cli", "validate", "--experiments", str(bad)],
        capture_output=True, text=True, env={"COLUMNS": "300", "PATH": ""},
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert "E0a: arch.halt_max_step: unknown key; did you mean 'halt_max_steps'?" in result.stderr


def test_missing_file_exit_1(tmp_path: Path) -> None:
    result = runner.invoke(app, ["experiments", "--experiments", str(tmp_path / "x.toml")])
    assert result.exit_code == 1 and "no such experiments file" in result.output


@pytest.mark.parametrize(("args", "named"), [
    (["experiments", "--no-such-flag"], "--no-such-flag"),
    (["train", "E0a", "--max-steps", "0"], "--max-steps"),
    (["experiments", "--experiments", "."], "--experiments"),
    (["no-such-command"], "no-such-command"),
])
def test_a_usage_error_exits_1_naming_what_is_wrong(args: list[str], named: str) -> None:
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    assert named in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("quiet", [False, True])
def test_train_prints_plain_lines_when_not_a_terminal(tmp_path: Path, quiet: bool) -> None:
    args = ["train", "E0b", "--profile", "tiny", "--experiments", REAL, "--runs-dir", str(tmp_path),
            "--max-steps", "3", "--set", "decoder=none", *(["--quiet"] if quiet else [])]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "E0b finished at step 3/3" in result.output
    assert ("step 3/3: " in result.output) is not quiet
    rerun = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert rerun.exit_code == 1 and "exists: continue it with --resume" in rerun.output


def test_a_second_signal_says_how_to_go_on_from_what_was_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    """A second Ctrl-C stops at once (KeyboardInterrupt from the handler): before the first checkpoint there is no
    checkpoint to continue from, and the advice was 'continue from the last checkpoint with: ... --force'."""
    from etrmtrm_cli.training import loop

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train", interrupted)
    out = runner.invoke(app, ["train", "E0b", "--profile", "tiny", "--experiments", REAL, "--runs-dir", str(tmp_path),
                              "--set", "decoder=none"], env={"COLUMNS": "300"})
    said = " ".join(out.output.split())
    assert out.exit_code == 130, out.output
    assert "stopped at once, before its first checkpoint; start it over with: etrmtrm train E0b" in said, said
    assert said.endswith("--force") and "continue from" not in said, said

def test_queue_skips_finished_runs(tmp_path: Path) -> None:
    args = ["train", "week1", "--profile", "tiny", "--experiments", REAL, "--runs-dir", str(tmp_path),
            "--max-steps", "2", "--set", "decoder=none", "--quiet"]
    first = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert first.exit_code == 0, first.output
    assert [line.split()[0] for line in first.output.splitlines() if "finished at step" in line] == ["E0a", "E0b"]
    again = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert again.exit_code == 0 and again.output.count("finished run in") == 2


def test_a_queue_trains_a_configuration_once_and_compare_reads_it_for_both_names(tmp_path: Path) -> None:
    """week1 is E0a, E0b and E2b, and E2b resolves to E0b's configuration: its runs would repeat E0b's bit for bit.
    The queue trains E0b alone, saying so, and `compare E0a E2b` reads E0b's runs for E2b, saying so."""
    args = ["--profile", "tiny", "--experiments", REAL, "--runs-dir", str(tmp_path)]
    queue = runner.invoke(app, ["train", "week1", *args, "--max-steps", "2", "--set", "decoder=none", "--seeds", "2",
                                "--quiet"], env={"COLUMNS": "250"})
    assert queue.exit_code == 0, queue.output
    said = " ".join(queue.output.split())
    assert "not trained, each the configuration and seed of an earlier run here" in said, said
    assert "E2b seed 0 (E0b's), E2b seed 1 (E0b's)" in said, said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["E0a", "E0b"]
    compared = runner.invoke(app, ["compare", "E0a", "E2b", "--runs-dir", str(tmp_path), "--experiments", REAL,
                                   "--markdown", str(tmp_path.parent / "report.md")], env={"COLUMNS": "250"})
    assert compared.exit_code == 0, compared.output
    shown = " ".join(compared.output.split())
    assert "Runs read for another experiment: E2b's are E0b's." in shown, shown
    assert "E0b = E2b" in shown, shown
    report = (tmp_path.parent / "report.md").read_text()
    assert "# Comparison: E0a vs E0b = E2b" in report and "compare E0a E0b E2b --runs-dir" in report, report
    (tmp_path / "E3a").mkdir()  # another experiment's damaged run: named by what reads it, not by export week1
    (tmp_path / "E3a" / "config.json").write_text("not json")
    exported = runner.invoke(app, ["export", "week1", "--runs-dir", str(tmp_path), "--experiments", REAL, "--to",
                                   str(tmp_path.parent / "records")], env={"COLUMNS": "250"})
    assert exported.exit_code == 0, exported.output
    assert f"no run of its own {tmp_path / 'E2b'}: E0b's runs stand for it\n" in exported.output, exported.output
    # E2b named without E0b: its record needs E0b's runs, and `compare` reads them from the records for E2b
    records = tmp_path.parent / "records-e2b"
    alone = runner.invoke(app, ["export", "E0a", "E2b", "--runs-dir", str(tmp_path), "--experiments", REAL, "--to",
                                str(records)], env={"COLUMNS": "250"})
    assert alone.exit_code == 0, alone.output
    assert "E0b's runs stand for it, exported with them" in alone.output, alone.output
    assert sorted(p.name for p in records.iterdir()) == ["E0a", "E0b"]
    from_records = runner.invoke(app, ["compare", "E0a", "E2b", "--runs-dir", str(records), "--experiments", REAL],
                                 env={"COLUMNS": "250"})
    assert from_records.exit_code == 0, from_records.output
    assert "E0b = E2b" in " ".join(from_records.output.split()), from_records.output


def test_a_queue_says_when_a_stopped_run_resumes_in_another_dtype_than_its_new_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seed 0 stopped in float32 where auto chose it; the queue goes on where auto is bfloat16. Seed 0 resumes in
    float32 (a run keeps its dtype) and seed 1 starts in bfloat16: compare would show two configurations, so the
    queue says so before it trains, with the setting that keeps every seed in one dtype."""
    import torch

    from etrmtrm_cli.experiments_file import load_experiments
    from etrmtrm_cli.rundir import saved_config
    from etrmtrm_cli.training import runtime
    from etrmtrm_cli.training.distributed import DistContext
    from etrmtrm_cli.training.loop import StopFlag, TrainOptions, train

    overrides = ["decoder=none", "arch.forward_dtype=auto"]
    monkeypatch.setattr(runtime, "cpu_has_native_bfloat16", lambda: False)  # auto: float32
    [(exp, _)] = load_experiments(Path(REAL)).jobs("E0a", "tiny", overrides, (0,), 1)
    stop = StopFlag()

    def stop_at_one(kind: str, payload: dict[str, object]) -> None:
        stop.requested = stop.requested or (kind == "step" and payload["step"] == 1)

    stopped = train(exp, TrainOptions(runs_dir=tmp_path, max_steps=2, per_seed=True),
                    DistContext(0, 1, torch.device("cpu")), stop_at_one, stop)
    assert (stopped.status, stopped.step) == ("interrupted", 1)
    monkeypatch.setattr(runtime, "cpu_has_native_bfloat16", lambda: True)  # auto: bfloat16
    args = ["E0a", "--seeds", "2", "--profile", "tiny", "--experiments", REAL, "--runs-dir", str(tmp_path),
            "--max-steps", "2", *(arg for o in overrides for arg in ("--set", o))]
    note = (f"{tmp_path / 'E0a' / 'seed-0'}: stopped in float32, resumes in float32 (a run keeps the dtype it started "
            "in), beside seeds of E0a in bfloat16: compare keeps the two dtypes apart as two configurations; "
            "to train the rest in float32 too, add `--set arch.forward_dtype=float32`")
    sweep = runner.invoke(app, ["sweep", *args, "--executor", "local", "--dry-run"], env={"COLUMNS": "300"})
    assert sweep.exit_code == 0 and note in " ".join(sweep.output.split()), sweep.output
    queue = runner.invoke(app, ["train", *args, "--quiet"], env={"COLUMNS": "300"})
    assert queue.exit_code == 0 and note in " ".join(queue.output.split()), queue.output
    dtypes = [saved_config(tmp_path / "E0a" / f"seed-{seed}")["arch"]["forward_dtype"] for seed in (0, 1)]
    assert dtypes == ["float32", "bfloat16"]
    # seed 2 stopped in float32 too, resumed by a command that starts no seed: its finished seed 1 is in bfloat16
    monkeypatch.setattr(runtime, "cpu_has_native_bfloat16", lambda: False)
    stop.requested = False
    train(exp.model_copy(update={"seed": 2}), TrainOptions(runs_dir=tmp_path, max_steps=2, per_seed=True),
          DistContext(0, 1, torch.device("cpu")), stop_at_one, stop)
    monkeypatch.setattr(runtime, "cpu_has_native_bfloat16", lambda: True)
    resumed = runner.invoke(app, ["train", *args[:2], "1,2", *args[3:], "--quiet"], env={"COLUMNS": "300"})
    assert resumed.exit_code == 0, resumed.output
    assert (f"{tmp_path / 'E0a' / 'seed-2'}: stopped in float32, resumes in float32 (a run keeps the dtype it started "
            "in), beside seeds of E0a in bfloat16") in " ".join(resumed.output.split()), resumed.output


def test_queue_refuses_a_finished_run_that_is_not_the_experiment(tmp_path: Path) -> None:
    """A `--set` run under E0b's name, finished: a queue would skip it as E0b and compare would count it as E0b."""
    tiny = ["--profile", "tiny", "--experiments", REAL, "--runs-dir", str(tmp_path), "--max-steps", "2",
            "--set", "decoder=none", "--quiet"]
    other = runner.invoke(app, ["train", "E0b", *tiny, "--set", "arch.recurrent_encoder_type=static"])
    assert other.exit_code == 0, other.output
    queue = runner.invoke(app, ["train", "week1", *tiny], env={"COLUMNS": "250"})
    assert queue.exit_code == 1, queue.output
    said = " ".join(queue.output.split())
    assert ("E0b: finished, but not as E0b is now (arch.recurrent_encoder_type: 'static' in the run, "
            "'recurrent_standard' now), so it cannot count as E0b") in said
    assert not (tmp_path / "E0a").exists()  # refused before the queue's first run


def test_a_new_seed_of_another_configuration_is_refused_beside_finished_seeds(tmp_path: Path) -> None:
    """`--seeds 3, --set arch.halt_max_steps=8` beside E0a's finished seeds 0-1: compare read seed 3 as E0a too, a
    second configuration of the same name, and took it as E0b's parent."""
    tiny = ["E0a", "--profile", "tiny", "--experiments", REAL, "--runs-dir", str(tmp_path), "--max-steps", "2",
            "--set", "decoder=none"]
    assert runner.invoke(app, ["train", *tiny, "--seeds", "2", "--quiet"]).exit_code == 0
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    other = [*tiny, "--set", "arch.halt_max_steps=8", "--seeds", "3,"]
    for command in (["train", *other], ["sweep", *other, "--executor", "local", "--dry-run"]):
        out = runner.invoke(app, command, env={"COLUMNS": "300"})
        said = " ".join(out.output.split())
        assert out.exit_code == 1, (command, out.output)
        assert (f"{tmp_path / 'E0a' / 'seed-3'}: a new seed of E0a beside seed-0, a finished seed of another "
                "configuration (arch.halt_max_steps: 16 there, 8 now): compare would read both as E0a") in said, said
        assert "start all of the seeds over together (`etrmtrm train` with --force and --seeds naming each)" in said
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    same = runner.invoke(app, ["train", *tiny, "--seeds", "3,", "--quiet"])  # of their configuration: it trains
    assert same.exit_code == 0 and (tmp_path / "E0a" / "seed-3" / "summary.json").is_file(), same.output
    # --force starts over the seeds it names, not the others: seed 0 alone would leave 1 and 3 as they were
    alone = runner.invoke(app, ["train", *tiny, "--set", "arch.halt_max_steps=8", "--seeds", "0,", "--force"],
                          env={"COLUMNS": "300"})
    assert alone.exit_code == 1 and "a new seed of E0a beside seed-1" in " ".join(alone.output.split()), alone.output
    # every seed started over in the other configuration, as the refusal and check_finished_run advise: it trains
    again = runner.invoke(app, ["train", *tiny, "--set", "arch.halt_max_steps=8", "--seeds", "0,1,3", "--force",
                                "-q"])
    assert again.exit_code == 0, again.output


def test_a_new_seed_in_another_dtype_than_its_finished_seeds_is_noted_not_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seeds of two machines may differ in the dtype `auto` chose (so may a resumed run): said, with the setting that
    keeps one dtype, not refused; a SLURM job, on a machine the sweep cannot see, would otherwise fail on its node."""
    from etrmtrm_cli.training import runtime

    tiny = ["E0a", "--profile", "tiny", "--experiments", REAL, "--runs-dir", str(tmp_path), "--max-steps", "2",
            "--set", "decoder=none", "--set", "arch.forward_dtype=auto", "--quiet"]
    monkeypatch.setattr(runtime, "cpu_has_native_bfloat16", lambda: False)  # auto: float32
    assert runner.invoke(app, ["train", *tiny, "--seeds", "1"]).exit_code == 0
    monkeypatch.setattr(runtime, "cpu_has_native_bfloat16", lambda: True)  # auto: bfloat16
    out = runner.invoke(app, ["train", *tiny, "--seeds", "1,"], env={"COLUMNS": "300"})
    said = " ".join(out.output.split())
    assert out.exit_code == 0, out.output
    assert (f"{tmp_path / 'E0a' / 'seed-1'}: a new seed computing in bfloat16 here, beside seed-0, which ran in "
            "float32: compare keeps the two dtypes apart as two configurations; to train the rest in float32 too, "
            "add `--set arch.forward_dtype=float32`") in said, said
    # bfloat16 asked for by name: float32 where it would be emulated, bfloat16 where native, as auto's two choices
    named = [str(tmp_path / "named") if a == str(tmp_path) else "arch.forward_dtype=bfloat16"
             if a == "arch.forward_dtype=auto" else a for a in tiny]
    monkeypatch.setattr(runtime, "cpu_has_native_bfloat16", lambda: False)
    assert runner.invoke(app, ["train", *named, "--seeds", "1"]).exit_code == 0
    monkeypatch.setattr(runtime, "cpu_has_native_bfloat16", lambda: True)
    out = runner.invoke(app, ["train", *named, "--seeds", "1,"], env={"COLUMNS": "300"})
    assert out.exit_code == 0 and "a new seed computing in bfloat16 here, beside seed-0, which ran in float32" in \
        " ".join(out.output.split()), out.output

def test_seed_runs_and_a_run_without_seeds_never_share_a_directory(tmp_path: Path) -> None:
    """runs/E0b/seed-<N>/ are what compare and status count: a run without seeds there would move them aside with
    it (a queue took their folder for a run stopped before its first checkpoint), and vice versa."""
    tiny = ["--profile", "tiny", "--experiments", REAL, "--runs-dir", str(tmp_path), "--max-steps", "2",
            "--set", "decoder=none", "--quiet"]
    seeded = runner.invoke(app, ["train", "E0b", *tiny, "--seeds", "2"])
    assert seeded.exit_code == 0, seeded.output
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for args in (["E0b"], ["E0b", "--force"], ["E0b", "--resume"], ["week1"]):
        out = runner.invoke(app, ["train", *args, *tiny], env={"COLUMNS": "250"})
        assert out.exit_code == 1, (args, out.output)
        assert (f"{tmp_path / 'E0b'} holds the seed runs seed-0, seed-1: train them with --seeds"
                in " ".join(out.output.split())), (args, out.output)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing moved or started

    single = runner.invoke(app, ["train", "E0a", *tiny])
    assert single.exit_code == 0, single.output
    out = runner.invoke(app, ["train", "E0a", *tiny, "--seeds", "2"], env={"COLUMNS": "250"})
    assert out.exit_code == 1 and "is a run without seeds, so seed runs cannot go inside it" in out.output, out.output
    assert not (tmp_path / "E0a" / "seed-0").exists()


def test_queue_starts_over_a_run_killed_before_its_first_checkpoint(tmp_path: Path) -> None:
    killed = tmp_path / "E0a"  # what a kill at step 1 leaves: no checkpoints/ yet
    killed.mkdir()
    (killed / "summary.json").write_text('{"status": "running", "step": 0}')
    (killed / "metrics.jsonl").write_text('{"step": 1, "train/loss": 2.0}\n')
    args = ["train", "week1", "--profile", "tiny", "--experiments", REAL, "--runs-dir", str(tmp_path),
            "--max-steps", "2", "--set", "decoder=none", "--quiet"]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "E0a: stopped before its first checkpoint; moved aside, starting over" in result.output
    assert "E0a finished at step 2/2" in result.output
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("E0a.old-")]
    assert len(aside) == 1 and (aside[0] / "metrics.jsonl").read_text().startswith('{"step": 1')


def test_single_run_without_checkpoint_points_to_force(tmp_path: Path) -> None:
    (tmp_path / "E0b").mkdir()
    result = runner.invoke(app, ["train", "E0b", "--profile", "tiny", "--experiments", REAL,
                                 "--runs-dir", str(tmp_path), "--set", "decoder=none"], env={"COLUMNS": "200"})
    assert result.exit_code == 1 and "it has no checkpoint to resume from; start over with --force" in result.output


def test_summary_line_gives_the_train_figures_compare_gives(tmp_path: Path) -> None:
    from etrmtrm_cli.render import summary_line
    from etrmtrm_cli.training.loop import RunSummary

    # 20 logged steps, the last with no halted slot (no accuracy): the last 10 % of the 19 logged accuracies are
    # steps 18 and 19, weighted by their halted slots: (0.5 * 1 + 0.8 * 3) / 4 = 72.5 %, not step 20's nothing.
    rows = [{"step": s, "train/accuracy": 0.5, "train/count": 1} for s in range(1, 19)]
    rows += [{"step": 19, "train/accuracy": 0.8, "train/count": 3}, {"step": 20, "train/accuracy": None}]
    summary = RunSummary("E0b", "finished", 20, 20, 12.0, tmp_path, {"eval/pass@2": 0.25})
    line = summary_line(summary, rows)
    assert "train acc 72.5% (last 10% of steps)" in line and "pass@2 25.0%" in line
    assert "train exact" not in line and "eval acc" not in line  # not logged: not shown


@pytest.mark.parametrize("file", ["runs", "runs/E0b", "runs/E0b/seed-0"])
def test_a_file_where_a_run_folder_goes_is_named(tmp_path: Path, file: str) -> None:
    (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / file).write_text("not a folder")
    seeds = ["--seeds", "1"] if "seed-" in file else []
    for target in ("E0b", "week1"):  # one run, and a queue (which checks every run before the first starts)
        out = runner.invoke(app, ["train", target, "--profile", "tiny", "--experiments", REAL, "--runs-dir",
                                  str(tmp_path / "runs"), "--max-steps", "2", "--set", "decoder=none", *seeds],
                            env={"COLUMNS": "250"})
        assert out.exit_code == 1, out.output
        assert f"{tmp_path / file}: a file where a folder is expected" in " ".join(out.output.split()), out.output
        assert "moved aside" not in out.output and (tmp_path / file).read_text() == "not a folder"


def test_a_decoder_that_is_a_directory_says_so(tmp_path: Path) -> None:
    out = runner.invoke(app, ["train", "E0b", "--profile", "tiny", "--experiments", REAL, "--runs-dir",
                              str(tmp_path / "runs"), "--max-steps", "2", "--set", f"decoder={tmp_path}"])
    assert out.exit_code == 1 and "a directory, not a checkpoint file" in out.output, out.output


def test_a_queue_counts_a_finished_run_only_at_the_length_and_dtype_it_would_train(tmp_path: Path) -> None:
    from conftest import tiny as tiny_exp

    from etrmtrm_cli.rundir import file_sha256, finished_run_differences

    args = ["train", "week1", "--profile", "tiny", "--experiments", REAL, "--runs-dir", str(tmp_path),
            "--set", "decoder=none", "--quiet"]
    assert runner.invoke(app, [*args, "--max-steps", "2"]).exit_code == 0
    longer = runner.invoke(app, [*args, "--max-steps", "3"], env={"COLUMNS": "250"})
    said = " ".join(longer.output.split())
    assert longer.exit_code == 1 and "E0a: finished, but not as E0a is now (steps: 2 in the run, 3 now)" in said, said
    assert "Start it over with `etrmtrm train E0a --profile tiny" in said and "--max-steps 3 " in said, said

    run = tmp_path / "E0a"  # computed in float32 (tiny)
    # where the machine that would train it is unknown (a SLURM job's), auto's or an emulated bfloat16's choice
    assert finished_run_differences(run, tiny_exp("E0a", ["arch.forward_dtype='auto'"]), 2) == ""
    assert finished_run_differences(run, tiny_exp("E0a", ["arch.forward_dtype='bfloat16'"]), 2) == ""
    # here, what auto would choose: a bfloat16 seed beside float32 ones would split the arm in two
    assert finished_run_differences(run, tiny_exp("E0a", ["arch.forward_dtype='float32'"]), 2, True) == ""
    assert finished_run_differences(run, tiny_exp("E0a", ["arch.forward_dtype='bfloat16'"]), 2, True) == (
        "arch.forward_dtype: 'float32' in the run, 'bfloat16' now")
    config = (run / "config.json").read_text()
    (run / "config.json").write_text(config.replace('"forward_dtype": "float32"', '"forward_dtype": "bfloat16"'))
    assert finished_run_differences(run, tiny_exp("E0a"), 2) == (
        "arch.forward_dtype: 'bfloat16' in the run, 'float32' now")
    # a decoder file named by another path (a record on another machine): the same weights by their sha256
    weights = tmp_path / "elsewhere" / "step_9"
    weights.parent.mkdir()
    weights.write_bytes(b"decoder weights")
    (run / "config.json").write_text(config.replace('"decoder": "none"', '"decoder": "ckpt/step_9"'))
    meta = json.loads((run / "meta.json").read_text())
    (run / "meta.json").write_text(json.dumps({**meta, "decoder": {"sha256": file_sha256(weights)}}))
    assert finished_run_differences(run, tiny_exp("E0a", [f"decoder='{weights}'"]), 2) == ""
    weights.write_bytes(b"other weights")
    assert finished_run_differences(run, tiny_exp("E0a", [f"decoder='{weights}'"]), 2).startswith(
        f"decoder: 'ckpt/step_9' in the run, '{weights}' now")
    (run / "config.json").write_text('{"id": "E0a"}')  # the schema's defaults stood in for every other setting
    with pytest.raises(RunError, match=r"config.json: not a run's config \(no profile, arch, data, train\)"):
        finished_run_differences(run, tiny_exp("E0a"), 2)


def test_seed_runs_moved_aside_do_not_block_a_run_without_seeds(tmp_path: Path) -> None:
    from etrmtrm_cli.rundir import check_run_layout

    (tmp_path / "E0b" / "seed-0.old-20240101-000000").mkdir(parents=True)  # as --force leaves one
    check_run_layout(tmp_path / "E0b", per_seed=False)
    (tmp_path / "E0b" / "seed-3").mkdir()
    with pytest.raises(RunError, match="holds the seed runs seed-3: train them with --seeds"):
        check_run_layout(tmp_path / "E0b", per_seed=False)


def test_the_progress_line_gives_the_plans_share_of_the_gradient() -> None:
    from etrmtrm_cli.render import TrainProgress

    # ||g_enc|| / ||g|| = 0.4 is a share of 0.16 of the gradient (its squared norm): the plan's "~40 %" is the latter
    line = TrainProgress._metrics_text({"grad/encoder_share": 0.4, "grad/encoder_share_sq": 0.16}, TrainProgress._SHOWN)
    assert line == "enc grad share 0.16"


def test_resume_and_force_together_are_refused(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "E0a", "--profile", "tiny", "--runs-dir", str(tmp_path), "--resume",
                                 "--force"])
    assert result.exit_code == 1 and "--resume and --force" in result.output, result.output
    assert not any(tmp_path.iterdir())  # nothing started, nothing moved aside


def test_the_advice_to_resume_a_multi_process_run_launches_as_many() -> None:
    """A checkpoint of 2 processes resumes with 2: `etrmtrm train ... --resume` alone was refused."""
    from conftest import tiny

    from etrmtrm_cli.cli import _train_command

    exp = tiny("E0b")
    assert _train_command(exp, Path("experiments.toml"), Path("runs"), [], 12, world_size=2) == (
        "torchrun --nproc-per-node 2 -m etrmtrm_cli train E0b --profile tiny --max-steps 12")
    assert _train_command(exp, Path("experiments.toml"), Path("runs"), [], None) == "etrmtrm train E0b --profile tiny"
    assert _train_command(exp, Path("experiments.toml"), Path("runs"), [], None, world_size=8, local_world_size=4
                          ).startswith("torchrun --nnodes 2 --nproc-per-node 4 -m etrmtrm_cli train E0b")


def test_a_repeat_is_read_either_way_round_and_left_out_only_without_runs_of_its_own(tmp_path: Path) -> None:
    """A queue that lists E2b before E0b trains E2b, and compare reads E2b's runs for E0b. An experiment that already
    has runs of its own trains on: left out, compare would not read the other's runs for it."""
    experiments = tmp_path / "experiments.toml"
    week1 = 'week1 = ["E0a", "E0b", "E2b"]'
    experiments.write_text(Path(REAL).read_text().replace(week1, f'{week1}\nswapped = ["E0a", "E2b", "E0b"]'))
    runs = tmp_path / "runs"
    args = ["--profile", "tiny", "--experiments", str(experiments), "--runs-dir", str(runs)]
    train_args = [*args, "--max-steps", "2", "--set", "decoder=none", "--quiet"]
    swapped = runner.invoke(app, ["train", "swapped", *train_args], env={"COLUMNS": "250"})
    assert swapped.exit_code == 0 and "E0b seed 0 (E2b's)" in " ".join(swapped.output.split()), swapped.output
    assert sorted(p.name for p in runs.iterdir()) == ["E0a", "E2b"]
    compared = runner.invoke(app, ["compare", "E0a", "E0b", "--runs-dir", str(runs), "--experiments",
                                   str(experiments)], env={"COLUMNS": "250"})
    assert compared.exit_code == 0, compared.output
    assert "Runs read for another experiment: E0b's are E2b's." in " ".join(compared.output.split())

    own = tmp_path / "own"
    own_args = [a if a != str(runs) else str(own) for a in train_args]
    assert runner.invoke(app, ["train", "E2b", *own_args, "--seeds", "0,"]).exit_code == 0
    queue = runner.invoke(app, ["train", "week1", *own_args, "--seeds", "2"], env={"COLUMNS": "250"})
    assert queue.exit_code == 0 and "not trained" not in queue.output, queue.output
    assert sorted(p.name for p in (own / "E2b").iterdir()) == ["seed-0", "seed-1"]  # it trains on, as before


def test_the_progress_of_a_model_without_an_encoder_shows_no_encoder_share(tmp_path: Path) -> None:
    """P0 has no demo encoder: its lines said "enc grad share 0.00", as if an encoder got no gradient."""
    shown = {}
    for exp_id in ("P0", "E0b"):
        out = runner.invoke(app, ["train", exp_id, "--profile", "tiny", "--experiments", REAL, "--runs-dir",
                                  str(tmp_path), "--max-steps", "2", "--set", "decoder=none"], env={"COLUMNS": "200"})
        assert out.exit_code == 0, out.output
        shown[exp_id] = next(line for line in out.output.splitlines() if line.startswith("step 2/2: "))
    assert "enc grad share" not in shown["P0"] and "enc grad share" in shown["E0b"], shown


def test_a_queue_with_auto_refuses_finished_runs_of_another_dtype(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    """Seeds 0-1 trained in float32, then the queue asked for seeds 0-2 with auto on a CPU where auto is bfloat16:
    before, seeds 0-1 were skipped as done and seed 2 trained in bfloat16, and compare showed two configurations
    both labelled E0a."""
    from etrmtrm_cli.training import runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bfloat16", lambda: True)  # whatever this machine's CPU is
    args = ["train", "week1", "--profile", "tiny", "--experiments", REAL, "--runs-dir", str(tmp_path),
            "--max-steps", "2", "--set", "decoder=none", "--quiet"]
    assert runner.invoke(app, [*args, "--seeds", "2"]).exit_code == 0  # tiny: float32
    queue = runner.invoke(app, [*args, "--seeds", "3", "--set", "arch.forward_dtype=auto"], env={"COLUMNS": "300"})
    said = " ".join(queue.output.split())
    assert queue.exit_code == 1, queue.output
    assert "finished, but not as E0a is now (arch.forward_dtype: 'float32' in the run, 'bfloat16' now)" in said, said
    assert "to train the rest in the dtype it ran in, add `--set arch.forward_dtype=float32`" in said, said
    assert not (tmp_path / "E0a" / "seed-2").exists()
    # A bfloat16 run where bfloat16 is emulated: adding its dtype could not help, so the advice does not say to
    bf16 = [*(str(tmp_path / "bf16") if a == str(tmp_path) else a for a in args),
            "--set", "arch.forward_dtype=bfloat16"]
    assert runner.invoke(app, [*bf16, "--seeds", "1"]).exit_code == 0  # native here (patched above)
    monkeypatch.setattr(runtime, "cpu_has_native_bfloat16", lambda: False)
    again = runner.invoke(app, [*bf16, "--seeds", "2"], env={"COLUMNS": "300"})
    said = " ".join(again.output.split())
    assert again.exit_code == 1 and "it ran in bfloat16, which this machine would emulate" in said, said
    assert "add `--set arch.forward_dtype" not in said, said
