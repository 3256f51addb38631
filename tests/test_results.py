"""The published results regenerate, byte for byte, from their committed records by the README's own commands."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from conftest import REPO
from typer.testing import CliRunner

from etrmtrm_cli.cli import app

# A README line that writes a published report from committed records, e.g.
# `etrmtrm compare P0 E0a --runs-dir results/records/cpu --markdown results/overfit-cpu.md --plot ...`.
PUBLISHING = re.compile(r"^etrmtrm (compare .*--runs-dir results/records/.*--markdown (results/\S+\.md).*)$", re.M)


PUBLISHED: list[tuple[str, str]] = PUBLISHING.findall((REPO / "README.md").read_text())  # (command, report)


def test_the_readme_publishes_at_least_one_report_from_records() -> None:
    assert PUBLISHED, "no README command writes a results/*.md from results/records/"


@pytest.mark.parametrize(("command", "report"), PUBLISHED, ids=[report for _, report in PUBLISHED])
def test_a_published_report_regenerates_from_its_records(
    command: str, report: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = shlex.split(command)
    for option in ("--markdown", "--plot"):  # written under tmp_path, each at its path relative to the repository
        if option in args:
            at = args.index(option) + 1
            args[at] = str(tmp_path / args[at])
    monkeypatch.chdir(REPO)  # the report names its runs by the relative paths the command gave
    result = CliRunner().invoke(app, args, env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    # The markdown only: a PNG's bytes depend on matplotlib's version, and the figures are all in the markdown.
    assert (tmp_path / report).read_text() == (REPO / report).read_text(), (
        f"{report} is not what `etrmtrm {command}` writes from the committed records: run it again and commit"
    )
