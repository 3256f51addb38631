"""Build an experiment's model: TRM decoder + context provider (demo encoder or puzzle embedding) + ACT,
and start its decoder from the experiment's `decoder` setting."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from torch import nn

from etrmtrm_cli import rundir
from etrmtrm_cli.config import Experiment, names_a_run
from etrmtrm_cli.encoders import build_encoder
from etrmtrm_cli.errors import CheckpointError
from etrmtrm_cli.models.act import ACTModel
from etrmtrm_cli.models.decoder import TRMDecoder
from etrmtrm_cli.models.puzzle_embedding import PuzzleEmbedding
from etrmtrm_cli.models.trm_import import ImportReport, load_trm_checkpoint

# Decoder settings that must agree with a pretrained decoder's; cycles can be overridden explicitly.
_SHAPE_KEYS = ("hidden_size", "num_heads", "expansion", "L_layers", "puzzle_emb_len", "pos_encodings")
_CYCLE_KEYS = ("H_cycles", "L_cycles")


def build_model(exp: Experiment, seq_len: int, num_puzzle_ids: int, shard: tuple[int, int] = (0, 1)) -> ACTModel:
    """A freshly initialised model for `exp` on a canvas of `seq_len` tokens; `shard` (rank, world size) is the
    slice of the global batch that this process trains on (act.py: the halting exploration)."""
    decoder = TRMDecoder(exp.arch, seq_len)
    provider: nn.Module
    if exp.model == "trm":
        provider = PuzzleEmbedding(num_puzzle_ids, exp.arch.hidden_size, tokens=1)
    else:
        provider = build_encoder(exp.arch, seq_len)
    return ACTModel(decoder, provider, exp.arch, shard)


def encoder_parameters(model: ACTModel) -> list[nn.Parameter]:
    """The parameters the encoder owns (empty for P0, whose table is a buffer)."""
    return list(model.provider.parameters())


def load_decoder(model: ACTModel, exp: Experiment, seq_len: int, runs_dir: Path,
                 train_tasks: Sequence[str] | None = None) -> ImportReport | None:
    """Load the pretrained decoder named by ``exp.decoder`` into `model` (None when it is 'none').

    'P0' (or any experiment ID) is one finished run of it in `runs_dir` (rundir.decoder_run: runs/P0/, else
    its lowest seed); a path is a TRM `step_N` file or one of our model.safetensors files (with its config.json
    beside it). Ours are refused when trained on another canvas, or on other tasks than `train_tasks` where
    their meta.json names them. A TRM file names no tasks, so nothing checks them: TRM's public ARC
    checkpoints also trained on the evaluation tasks' demo pairs. A named run is refused where runs in `runs_dir`
    that name it started from other weights (`_check_same_start`).
    """
    if exp.decoder == "none":
        return None
    path = Path(exp.decoder)
    named = names_a_run(exp.decoder)
    if named:
        found = rundir.decoder_run(runs_dir, exp.decoder)
        if found is None:
            raise CheckpointError(
                f"{exp.id}: decoder = {exp.decoder!r}: no finished run of it in {runs_dir} (no "
                f"{runs_dir / exp.decoder / rundir.FINAL_WEIGHTS}); produce it with "
                f"`etrmtrm train {exp.decoder} --profile {exp.profile} --runs-dir {runs_dir}` (and the same "
                "--experiments file), or start from an untrained decoder with `--set decoder=none`"
            )
        path = found / rundir.FINAL_WEIGHTS
    if not path.is_file():
        what = "a directory, not a checkpoint file" if path.is_dir() else "no such file"
        raise CheckpointError(f"{exp.id}: decoder = {exp.decoder!r}: {what}")
    sha = rundir.file_sha256(path)
    if named:
        _check_same_start(exp, runs_dir, path, sha)
    if path.suffix == ".safetensors":  # ours; a TRM step_N file has no task list to check
        if train_tasks is not None:
            _check_same_tasks(exp, path.parent, train_tasks)
        report = _load_our_decoder(model, exp, path)
    else:
        report = load_trm_checkpoint(
            model, path, exp.arch, seq_len=seq_len, keep_puzzle_emb=exp.model == "trm",
            allow_cycle_mismatch=exp.allow_decoder_mismatch,
        )
    return replace(report, source=str(path), sha256=sha)


def _check_same_start(exp: Experiment, runs_dir: Path, path: Path, sha: str) -> None:
    """Runs of one runs directory compare only if they started from one decoder. A decoder trained again (after
    its run was lost with a machine, say) is another one: it differs from the first in more than its last bits,
    so runs from it are refused beside runs from the first."""
    starts = rundir.decoder_starts(runs_dir, exp.decoder)
    if starts and sha not in starts:
        other, runs = next(iter(starts.items()))
        named = ", ".join(str(run.relative_to(runs_dir)) for run in runs[:3]) + (" ..." if len(runs) > 3 else "")
        raise CheckpointError(
            f"{exp.id}: decoder = {exp.decoder!r}: {path} (sha256 {sha}) is not the decoder the runs in {runs_dir} "
            f"started from ({named}: sha256 {other}); runs from two decoders do not compare. Start from the "
            f"decoder they used, or train in another --runs-dir"
        )


def _check_same_tasks(exp: Experiment, run: Path, train_tasks: Sequence[str]) -> None:
    """A pretrained decoder learned its puzzles' embeddings and grids: it must have trained on ours."""
    meta = rundir.read_json(run / rundir.META) if (run / rundir.META).is_file() else {}
    theirs = meta.get("train_tasks")
    if isinstance(theirs, list) and sorted(theirs) != sorted(train_tasks):
        missing, extra = len(set(train_tasks) - set(theirs)), len(set(theirs) - set(train_tasks))
        raise CheckpointError(
            f"{exp.id}: decoder {run} was trained on other tasks ({len(theirs)} against this experiment's "
            f"{len(train_tasks)}: {missing} of ours not among them, {extra} of its not ours): train it with this "
            "experiment's data settings (data.train_groups, data.subset_seed, data.max_grid_size, sources)")


def _load_our_decoder(model: ACTModel, exp: Experiment, path: Path) -> ImportReport:
    saved = rundir.read_sidecar(path)
    arch = saved["arch"]
    keys = _SHAPE_KEYS if exp.allow_decoder_mismatch else _SHAPE_KEYS + _CYCLE_KEYS
    wrong = [f"{k} {arch[k]} (this experiment: {getattr(exp.arch, k)})" for k in keys
             if arch.get(k) != getattr(exp.arch, k)]
    if saved["data"]["max_grid_size"] != exp.data.max_grid_size:
        wrong.append(f"canvas {saved['data']['max_grid_size']} (this experiment: {exp.data.max_grid_size})")
    if wrong:
        hint = " (set allow_decoder_mismatch = true to load different cycles on purpose)" if any(
            k in w for k in _CYCLE_KEYS for w in wrong) else ""
        raise CheckpointError(f"{exp.id}: decoder {path} was trained with " + "; ".join(wrong) + hint)
    weights = {k: v for k, v in rundir.load_weights(path).items() if k.startswith("decoder.")}
    target = model.state_dict()
    for key, value in weights.items():
        if key in target and value.shape != target[key].shape:
            raise CheckpointError(
                f"{path}: {key}: checkpoint shape {tuple(value.shape)} != model shape {tuple(target[key].shape)}"
            )
    model.load_state_dict(weights, strict=False)
    loaded = tuple(k for k in weights if k in target)
    return ImportReport(
        loaded=loaded,
        missing=tuple(k for k in target if k not in weights),
        unexpected=tuple(k for k in weights if k not in target),
    )
