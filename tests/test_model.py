"""Starting an experiment from a pretrained decoder: our P0 run, our checkpoint files, and mismatches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import CPU, tiny

from etrmtrm_cli import rundir
from etrmtrm_cli.errors import CheckpointError
from etrmtrm_cli.models.build import build_model, load_decoder
from etrmtrm_cli.training.distributed import DistContext
from etrmtrm_cli.training.loop import TrainOptions, train

SINGLE = DistContext(0, 1, CPU)


@pytest.fixture(scope="module")
def p0_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    train(tiny("P0", ["train.eval_interval=100", "train.checkpoint_interval=100"]),
          TrainOptions(runs_dir=runs, max_steps=3), SINGLE)
    return runs


def test_e0b_starts_from_the_p0_decoder(p0_runs: Path) -> None:
    exp = tiny("E0b", ["decoder=P0"])
    model = build_model(exp, 36, 10)
    report = load_decoder(model, exp, 36, p0_runs)
    saved = rundir.load_weights(p0_runs / "P0" / rundir.FINAL_WEIGHTS)
    assert report is not None and report.loaded and all(k.startswith("decoder.") for k in report.loaded)
    assert all(k.startswith("provider.") for k in report.missing)  # the fresh encoder
    assert "provider.weights" not in report.loaded  # the puzzle table stays behind
    for key in report.loaded:
        torch.testing.assert_close(model.state_dict()[key], saved[key])


def test_a_decoder_with_other_cycles_is_refused_unless_allowed(p0_runs: Path) -> None:
    path = str(p0_runs / "P0" / rundir.FINAL_WEIGHTS)
    exp = tiny("E0b", [f"decoder='{path}'", "arch.L_cycles=3"])
    with pytest.raises(CheckpointError, match=r"was trained with L_cycles 1 \(this experiment: 3\).*allow_decoder"):
        load_decoder(build_model(exp, 36, 10), exp, 36, p0_runs)
    allowed = tiny("E0b", [f"decoder='{path}'", "arch.L_cycles=3", "allow_decoder_mismatch=true"])
    assert load_decoder(build_model(allowed, 36, 10), allowed, 36, p0_runs) is not None


def test_a_decoder_of_another_size_is_refused(p0_runs: Path) -> None:
    path = str(p0_runs / "P0" / rundir.FINAL_WEIGHTS)
    exp = tiny("E0b", [f"decoder='{path}'", "arch.hidden_size=32"])
    with pytest.raises(CheckpointError, match=r"hidden_size 16 \(this experiment: 32\)"):
        load_decoder(build_model(exp, 36, 10), exp, 36, p0_runs)


def test_missing_decoder_file(tmp_path: Path) -> None:
    exp = tiny("E0b", [f"decoder='{tmp_path / 'nope.safetensors'}'"])
    with pytest.raises(CheckpointError, match="no such file"):
        load_decoder(build_model(exp, 36, 10), exp, 36, tmp_path)
