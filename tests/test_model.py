"""Starting an experiment from a pretrained decoder: our P0 run, our checkpoint files, and mismatches."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from conftest import CPU, tiny
from safetensors.torch import load_file

from etrmtrm_cli import rundir
from etrmtrm_cli.config import Experiment
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


def load_p0_into_a_fresh_e0b(exp: Experiment, runs: Path) -> None:
    """Load P0's final decoder into a fresh model of `exp`; check every tensor against the files and the init."""
    torch.manual_seed(1)
    model = build_model(exp, 36, 10)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    decoder_keys = {k for k in fresh if k.startswith("decoder.")}
    encoder_keys = {k for k in fresh if k.startswith("provider.")}
    assert decoder_keys and encoder_keys and decoder_keys | encoder_keys == set(fresh)
    saved = load_file(str(runs / "P0" / rundir.FINAL_WEIGHTS))  # read with safetensors itself
    assert "provider.weights" in saved  # P0's puzzle table, which must stay behind
    assert any(not torch.equal(fresh[k], saved[k]) for k in decoder_keys)  # else the check below proves nothing

    report = load_decoder(model, exp, 36, runs)
    assert report is not None
    assert set(report.loaded) == decoder_keys and len(report.loaded) == len(decoder_keys)
    assert set(report.missing) == encoder_keys and report.unexpected == ()
    weights = Path(report.source or "")
    assert weights.samefile(runs / "P0" / rundir.FINAL_WEIGHTS)  # meta.json records which file, and its hash
    assert report.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    state = model.state_dict()
    for key in decoder_keys:  # every decoder tensor is P0's, bit for bit
        assert torch.equal(state[key], saved[key]), key
    for key in encoder_keys:  # the encoder keeps its fresh init
        assert torch.equal(state[key], fresh[key]), key
    assert model.decoder.arch == exp.arch  # the experiment's own settings (cycles included) stay


def test_e0b_starts_from_the_p0_decoder(p0_runs: Path) -> None:
    load_p0_into_a_fresh_e0b(tiny("E0b", ["decoder=P0"]), p0_runs)


def test_a_decoder_with_other_cycles_is_refused_unless_allowed(p0_runs: Path) -> None:
    path = str(p0_runs / "P0" / rundir.FINAL_WEIGHTS)
    exp = tiny("E0b", [f"decoder='{path}'", "arch.L_cycles=3"])
    with pytest.raises(CheckpointError, match=r"was trained with L_cycles 1 \(this experiment: 3\).*allow_decoder"):
        load_decoder(build_model(exp, 36, 10), exp, 36, p0_runs)
    allowed = tiny("E0b", [f"decoder='{path}'", "arch.L_cycles=3", "allow_decoder_mismatch=true"])
    load_p0_into_a_fresh_e0b(allowed, p0_runs)  # P0 ran L_cycles 1; the model keeps its 3


def test_a_decoder_of_another_size_is_refused(p0_runs: Path) -> None:
    path = str(p0_runs / "P0" / rundir.FINAL_WEIGHTS)
    exp = tiny("E0b", [f"decoder='{path}'", "arch.hidden_size=32"])
    with pytest.raises(CheckpointError, match=r"hidden_size 16 \(this experiment: 32\)"):
        load_decoder(build_model(exp, 36, 10), exp, 36, p0_runs)


def test_missing_decoder_file(tmp_path: Path) -> None:
    exp = tiny("E0b", [f"decoder='{tmp_path / 'nope.safetensors'}'"])
    with pytest.raises(CheckpointError, match="no such file"):
        load_decoder(build_model(exp, 36, 10), exp, 36, tmp_path)


def test_p0_trained_on_other_tasks_is_refused_and_seeds_of_p0_resolve_to_one_run(p0_runs: Path,
                                                                                  tmp_path: Path) -> None:
    from etrmtrm_cli.data.dataset import build_arc_data

    def train_tasks(e: Experiment) -> list[str]:
        data = build_arc_data(e.data, e.seed)
        return [g.task.id for g in data.groups[: data.num_train_groups]]

    exp = tiny("E0b", ["decoder=P0"])
    ours = train_tasks(exp)
    assert load_decoder(build_model(exp, 36, 10), exp, 36, p0_runs, ours) is not None  # the same tasks load
    other = tiny("E0b", ["decoder=P0", "data.subset_seed=7"])  # another draw of the tasks
    theirs = train_tasks(other)
    assert set(theirs) != set(ours)
    with pytest.raises(CheckpointError, match=r"was trained on other tasks \(4 against this experiment's 4: "
                                              r"\d of ours not among them, \d of its not ours\)"):
        load_decoder(build_model(other, 36, 10), other, 36, p0_runs, theirs)
    by_path = other.model_copy(update={"decoder": str(p0_runs / "P0" / "model.safetensors")})
    with pytest.raises(CheckpointError, match="was trained on other tasks"):  # named by its path: checked too
        load_decoder(build_model(by_path, 36, 10), by_path, 36, p0_runs, theirs)
    # P0 trained with --seeds: runs/P0/seed-<N>/ -> the lowest finished seed is the one every user loads
    for seed in (3, 1):
        train(tiny("P0", ["train.eval_interval=100", "train.checkpoint_interval=100", f"seed={seed}"]),
              TrainOptions(runs_dir=tmp_path, max_steps=1, per_seed=True), SINGLE)
    assert rundir.decoder_run(tmp_path, "P0") == tmp_path / "P0" / "seed-1"
