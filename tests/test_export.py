"""`etrmtrm export`: records of finished runs read as the runs themselves, and a sweep skips them."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from test_compare import write_run
from typer.testing import CliRunner

from etrmtrm_cli import rundir
from etrmtrm_cli.cli import app

runner = CliRunner()
ENV = {"COLUMNS": "250"}


def cli(*args: object) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args], env=ENV)
    return result.exit_code, result.output


def seeded_runs(runs: Path) -> None:
    for seed in (0, 1, 2):
        write_run(runs, "E0a", [0.5 + 0.01 * i + 0.02 * seed for i in range(30)], seed=seed)
        write_run(runs, "E0b", [0.5 + 0.012 * i + 0.03 * seed for i in range(30)], seed=seed)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_record_compares_as_its_run_and_exports_to_the_same_bytes(tmp_path: Path) -> None:
    runs, records = tmp_path / "runs", tmp_path / "records"
    seeded_runs(runs)
    running = write_run(runs, "E0b", [0.4] * 10, seed=3, status="running", total=30)
    code, out = cli("export", "E0a", "E0b", "--runs-dir", runs, "--to", records)
    assert code == 0, out
    assert len(re.findall(r"^exported ", out, re.M)) == 6, out
    assert re.search(r"^not finished .*E0b/seed-3 ", out, re.M), out
    assert not (records / "E0b/seed-3").exists()  # an unfinished run is no record
    assert sorted(p.name for p in (records / "E0a/seed-0").iterdir()) == [
        "config.json", "meta.json", "metrics.jsonl.gz", "summary.json"]  # no weights unless asked

    shutil.rmtree(running)  # compared below: the finished runs against their records
    reports = {}
    for name, where in (("run", runs), ("record", records)):
        code, out = cli("compare", "E0a", "E0b", "--runs-dir", where, "--markdown", tmp_path / f"{name}.md")
        assert code == 0, out
        text = (tmp_path / f"{name}.md").read_text()
        reports[name] = text.replace(str(where), "DIR")  # the "Runs:" line names the directory
    assert reports["run"] == reports["record"]
    assert "E0b - E0a: +6.60 points" in reports["record"]  # the paired figure over 3 seeds, read from the records

    before = files(records)
    code, out = cli("export", "E0a", "E0b", "--runs-dir", runs, "--to", records)
    assert code == 0 and len(re.findall(r"^unchanged ", out, re.M)) == 6, out
    assert files(records) == before  # gzip without a timestamp: the same run gives the same record


def test_a_sweep_skips_the_runs_a_copied_record_holds(tmp_path: Path) -> None:
    runs, records = tmp_path / "runs", tmp_path / "records"
    for seed in (0, 1, 2):  # E0a as the experiments file has it: from P0's decoder
        write_run(runs, "E0a", [0.5 + 0.01 * i for i in range(30)], seed=seed, overrides=["decoder='P0'"])
    write_run(runs, "P0", [0.5] * 30)  # that decoder, exported with its weights
    (runs / "P0/model.safetensors").write_bytes(b"weights")
    assert cli("export", "P0", "--runs-dir", runs, "--to", records)[0] == 0
    assert not (records / "P0/model.safetensors").exists()
    code, out = cli("export", "P0", "--runs-dir", runs, "--to", records, "--weights")
    assert code == 0 and out.startswith("updated "), out  # the same run, now with its weights
    assert cli("export", "E0a", "--runs-dir", runs, "--to", records)[0] == 0
    assert (records / "P0/model.safetensors").read_bytes() == b"weights"
    assert rundir.run_status(records / "E0a/seed-1") == "finished"
    assert rundir.run_status(records / "E0a/seed-3") == "new"

    code, out = cli("sweep", "E0a", "--seeds", "4", "--dry-run", "--profile", "tiny", "--executor", "local",
                    "--max-steps", "30", "--runs-dir", records)  # the records' 30 steps
    assert code == 0, out
    states = dict(re.findall(r"│ (P0|E0a/seed-\d) +│ (\w+) ", out))
    assert states == {"P0": "finished", "E0a/seed-0": "finished", "E0a/seed-1": "finished",
                      "E0a/seed-2": "finished", "E0a/seed-3": "new"}, out


def test_a_record_of_another_run_is_left_as_it_is(tmp_path: Path) -> None:
    runs, records = tmp_path / "runs", tmp_path / "records"
    write_run(runs, "E0a", [0.5] * 20)
    write_run(records, "E0a", [0.7] * 20)
    meta = json.loads((records / "E0a/meta.json").read_text())
    (records / "E0a/meta.json").write_text(json.dumps({**meta, "git_sha": "another"}))
    before = files(records)
    code, out = cli("export", "E0a", "--runs-dir", runs, "--to", records)
    assert code == 1 and "holds a record of another run" in out and "Traceback" not in out, out
    assert files(records) == before

    code, out = cli("export", "E9z", "--runs-dir", runs, "--to", records)
    assert code == 1 and "unknown experiment or queue 'E9z'" in out and "Traceback" not in out, out
    code, out = cli("export", "E0a", "--runs-dir", tmp_path / "elsewhere", "--to", records)
    assert code == 1 and "no run of E0a to export" in out, out
    assert files(records) == before


def test_a_queue_exports_the_runs_its_sweep_has_so_far(tmp_path: Path) -> None:
    runs, records = tmp_path / "runs", tmp_path / "records"
    write_run(runs, "E1a", [0.5] * 20, seed=0)  # week 2's first run; E2c, E2d, E3b have none yet
    code, out = cli("export", "week2", "--runs-dir", runs, "--to", records)
    assert code == 0, out
    assert re.search(r"^exported .*E1a/seed-0 ", out, re.M), out
    assert sorted(re.findall(r"^no run yet \S+/(\w+) ", out, re.M)) == ["E2c", "E2d", "E3b"], out
    assert sorted(p.name for p in records.iterdir()) == ["E1a"]


def test_a_run_that_compare_could_not_read_is_not_exported(tmp_path: Path) -> None:
    runs, records = tmp_path / "runs", tmp_path / "records"
    seeded_runs(runs)
    (runs / "E0b/seed-1/meta.json").write_text('{"experiment": "E0b", "se')  # truncated
    code, out = cli("export", "E0b", "--runs-dir", runs, "--to", records)
    assert code == 1 and f"{runs / 'E0b/seed-1/meta.json'}: not valid JSON" in " ".join(out.split()), out
    (runs / "E0b/seed-1/meta.json").unlink()
    (runs / "E0a/seed-2/metrics.jsonl").unlink()
    for exp_id, lacking in (("E0b", "seed-1: finished, but without meta.json"),
                            ("E0a", "seed-2: finished, but without metrics.jsonl")):
        code, out = cli("export", exp_id, "--runs-dir", runs, "--to", records)
        assert code == 1 and lacking in " ".join(out.split()), out
    code, out = cli("export", "E0a", "--runs-dir", runs, "--to", runs / "E0b")
    assert code == 1 and "inside the runs directory" in out, out
    assert not records.exists() and not (runs / "E0b" / "E0a").exists()


def test_a_run_folder_without_its_config_is_named_not_left_out(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    seeded_runs(runs)
    (runs / "E0b/seed-1/config.json").unlink()
    for command in ("compare", "export"):
        code, out = cli(command, "E0a", "E0b", "--runs-dir", runs, *(["--to", tmp_path / "rec"] if command == "export"
                                                                     else []))
        said = " ".join(out.split())
        assert code == 1 and f"{runs / 'E0b/seed-1'}: a run without config.json, so what it ran is unknown" in said, out


def test_an_empty_config_is_not_a_run_of_another_profile(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    seeded_runs(runs)
    (runs / "E0b/seed-1/config.json").write_text("{}")
    code, out = cli("compare", "E0a", "E0b", "--runs-dir", runs)
    assert code == 1, out
    assert f"{runs / 'E0b/seed-1/config.json'}: not a run's config (no id, profile, arch, data, train)" in " ".join(
        out.split()), out


def test_a_summary_with_a_status_no_run_has_is_named(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    seeded_runs(runs)
    (runs / "E0b/seed-1/summary.json").write_text('{"status": 5}')
    train = ["train", "E0b", "--seeds", "2", "--profile", "tiny", "--set", "decoder=none", "--max-steps", "30"]
    for command in (["compare", "E0a", "E0b"], train):
        code, out = cli(*command, "--runs-dir", runs)
        said = " ".join(out.split())
        assert code == 1 and f"{runs / 'E0b/seed-1/summary.json'}: status 5 is not one of running, interrupted, " \
                             "failed, finished" in said, out
