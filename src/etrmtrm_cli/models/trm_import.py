"""Import a TRM checkpoint (`step_N`: a pickled state dict) as our decoder (+ P0's puzzle embedding).

TRM saves `torch.compile`d `ACTLossHead(ACTV1(...))` state dicts, so its keys look like
`_orig_mod.model.inner.L_level.layers.0.self_attn.qkv_proj.weight`. The files are read with
`weights_only=True`: a file that needs anything but tensors and plain containers is refused.

Target keys are those of an `ACTModel` (`decoder.*`, and `provider.weights` for a PuzzleEmbedding).
Shapes give the hidden size, layer count, vocabulary, MLP width and (learned) position count; heads
and cycles leave no trace in the weights and are checked only when TRM's `all_config.yaml` lies beside
the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from torch import Tensor, nn

from etrmtrm_cli.config import ArchConfig
from etrmtrm_cli.errors import CheckpointError
from etrmtrm_cli.models.layers import swiglu_width
from etrmtrm_cli.rundir import safe_torch_load

_PREFIXES = ("_orig_mod.", "model.", "inner.")
_PUZZLE_KEY = "puzzle_emb.weights"

# TRM name (after the prefixes) -> our name relative to the decoder; {i} is a layer index.
_DECODER_NAMES = {
    "embed_tokens.embedding_weight": "embed_tokens.weight",
    "embed_pos.embedding_weight": "embed_pos.weight",
    "lm_head.weight": "lm_head.weight",
    "q_head.weight": "q_head.weight",
    "q_head.bias": "q_head.bias",
    "H_init": "H_init",
    "L_init": "L_init",
}
_LAYER_NAMES = {
    "self_attn.qkv_proj.weight": "attn.qkv.weight",
    "self_attn.o_proj.weight": "attn.out.weight",
    "mlp.gate_up_proj.weight": "mlp.gate_up.weight",
    "mlp.down_proj.weight": "mlp.down.weight",
}
_LAYER_RE = re.compile(r"L_level\.layers\.(\d+)\.(.+)")


@dataclass(frozen=True)
class TRMShapes:
    """What a TRM state dict's shapes tell about its architecture (None: not in the file)."""

    hidden_size: int
    vocab_size: int
    L_layers: int
    mlp_width: int | None
    learned_positions: int | None
    puzzle_table: tuple[int, int] | None


@dataclass(frozen=True)
class ImportReport:
    loaded: tuple[str, ...]  # our keys that received a value
    missing: tuple[str, ...]  # our keys the checkpoint did not provide (e.g. a fresh encoder's)
    unexpected: tuple[str, ...]  # checkpoint keys (TRM names) with no place in our model
    dropped: tuple[str, ...] = ()  # checkpoint keys left out on purpose (the puzzle embedding)
    shapes: TRMShapes | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)  # what could not be checked
    source: str | None = None  # the file the decoder came from, and its sha256 (prefix): runs that compare
    sha256: str | None = None  # as one setting must have started from the same decoder


def read_trm_state_dict(path: Path | str) -> dict[str, Tensor]:
    """torch.load(weights_only=True) with errors for people; the keys as stored."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such TRM checkpoint file")
    state = safe_torch_load(path, "torch checkpoint")
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    return dict(state)


def _first_sentence(err: BaseException) -> str:
    text = str(err).strip()
    if not text:
        return f"{type(err).__name__} (the file is empty or cut short)"
    return text.splitlines()[0].split(". ")[0]


def strip_prefixes(key: str) -> str:
    for prefix in _PREFIXES:
        key = key.removeprefix(prefix)
    return key


def map_trm_key(trm_key: str) -> str | None:
    """A TRM key (prefixes stripped) -> our ACTModel key, or None when it has no counterpart."""
    if trm_key == _PUZZLE_KEY:
        return "provider.weights"
    if trm_key in _DECODER_NAMES:
        return "decoder." + _DECODER_NAMES[trm_key]
    match = _LAYER_RE.fullmatch(trm_key)
    if match and match.group(2) in _LAYER_NAMES:
        return f"decoder.net.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"
    return None


def convert_trm_state_dict(state: Mapping[str, Tensor], keep_puzzle_emb: bool = True
                           ) -> tuple[dict[str, Tensor], tuple[str, ...], tuple[str, ...]]:
    """-> (our state dict, unexpected TRM keys, dropped TRM keys)."""
    ours: dict[str, Tensor] = {}
    unexpected: list[str] = []
    dropped: list[str] = []
    for key, value in state.items():
        stripped = strip_prefixes(key)
        if stripped == _PUZZLE_KEY and not keep_puzzle_emb:
            dropped.append(key)
            continue
        target = map_trm_key(stripped)
        if target is None:
            unexpected.append(key)
        else:
            ours[target] = value
    return ours, tuple(unexpected), tuple(dropped)


def infer_trm_shapes(state: Mapping[str, Tensor]) -> TRMShapes:
    """Architecture facts from the shapes of a TRM state dict (any key prefix)."""
    by_name = {strip_prefixes(k): v for k, v in state.items()}
    embed = by_name.get("embed_tokens.embedding_weight")
    if embed is None or embed.ndim != 2:
        raise CheckpointError("not a TRM checkpoint: no 2-D embed_tokens.embedding_weight")
    layers = {int(m.group(1)) for k in by_name if (m := _LAYER_RE.fullmatch(k))}
    gate_up = by_name.get("L_level.layers.0.mlp.gate_up_proj.weight")
    pos = by_name.get("embed_pos.embedding_weight")
    table = by_name.get(_PUZZLE_KEY)
    return TRMShapes(
        hidden_size=embed.shape[1],
        vocab_size=embed.shape[0],
        L_layers=max(layers) + 1 if layers else 0,
        mlp_width=gate_up.shape[0] // 2 if gate_up is not None else None,
        learned_positions=pos.shape[0] if pos is not None else None,
        puzzle_table=(table.shape[0], table.shape[1]) if table is not None and table.ndim == 2 else None,
    )


def check_trm_arch(shapes: TRMShapes, arch: ArchConfig, vocab_size: int, seq_len: int) -> None:
    """Raise CheckpointError naming every inferable setting that differs from ours."""
    wrong = []
    if shapes.hidden_size != arch.hidden_size:
        wrong.append(f"hidden_size {shapes.hidden_size} (ours {arch.hidden_size})")
    if shapes.vocab_size != vocab_size:
        wrong.append(f"vocab_size {shapes.vocab_size} (ours {vocab_size})")
    if shapes.L_layers != arch.L_layers:
        wrong.append(f"L_layers {shapes.L_layers} (ours {arch.L_layers})")
    ours_width = swiglu_width(arch.hidden_size, arch.expansion)
    if shapes.mlp_width is not None and shapes.mlp_width != ours_width:
        wrong.append(f"MLP width {shapes.mlp_width} (ours {ours_width}, from expansion {arch.expansion})")
    if (shapes.learned_positions is not None) != (arch.pos_encodings == "learned"):
        theirs = "learned" if shapes.learned_positions is not None else "rope/none"
        wrong.append(f"pos_encodings {theirs} (ours {arch.pos_encodings})")
    elif shapes.learned_positions is not None and shapes.learned_positions != arch.puzzle_emb_len + seq_len:
        wrong.append(f"positions {shapes.learned_positions} (ours {arch.puzzle_emb_len + seq_len})")
    if wrong:
        raise CheckpointError("TRM checkpoint does not match the architecture: " + "; ".join(wrong))


def check_trm_config(config: Mapping[str, Any], arch: ArchConfig, allow_cycle_mismatch: bool) -> None:
    """Compare TRM's saved arch settings (all_config.yaml's `arch`) that shapes cannot show."""
    theirs = dict(config)
    if theirs.get("puzzle_emb_len") == 0:
        # TRM's fallback: as many prefix tokens as the puzzle embedding needs (HRM's layout).
        hidden = int(theirs.get("hidden_size", arch.hidden_size))
        theirs["puzzle_emb_len"] = -(int(theirs.get("puzzle_emb_ndim", 0)) // -hidden)
    keys = ["num_heads", "puzzle_emb_len", "pos_encodings"]
    if not allow_cycle_mismatch:
        keys += ["H_cycles", "L_cycles"]
    wrong = [f"{k} {theirs[k]} (ours {getattr(arch, k)})"
             for k in keys if k in theirs and theirs[k] != getattr(arch, k)]
    if wrong:
        raise CheckpointError("TRM checkpoint config does not match the architecture: " + "; ".join(wrong))


def _read_sidecar_config(path: Path) -> tuple[Mapping[str, Any] | None, str | None]:
    sidecar = path.parent / "all_config.yaml"
    if not sidecar.is_file():
        return None, "heads and cycles not checked (no all_config.yaml beside the checkpoint)"
    try:
        raw = yaml.safe_load(sidecar.read_text(encoding="utf-8"))
    except (yaml.YAMLError, OSError) as err:
        raise CheckpointError(f"{sidecar}: unreadable TRM config: {err}") from None
    arch = raw.get("arch") if isinstance(raw, Mapping) else None
    if not isinstance(arch, Mapping):
        return None, f"heads and cycles not checked ({sidecar} has no arch table)"
    return arch, None


def load_trm_checkpoint(model: nn.Module, path: Path | str, arch: ArchConfig, *, seq_len: int,
                        vocab_size: int = 12, keep_puzzle_emb: bool = True,
                        allow_cycle_mismatch: bool = False) -> ImportReport:
    """Load a TRM `step_N` file into an ACTModel-like module (keys `decoder.*` / `provider.*`).

    keep_puzzle_emb: True for P0 (the table goes to `provider.weights`), False for encoder models.
    Raises CheckpointError for an unreadable file, an architecture mismatch, or a shape mismatch.
    """
    path = Path(path)
    state = read_trm_state_dict(path)
    config, note = _read_sidecar_config(path)
    try:
        shapes = infer_trm_shapes(state)
        check_trm_arch(shapes, arch, vocab_size, seq_len)
        if config is not None:
            check_trm_config(config, arch, allow_cycle_mismatch)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    notes = (note,) if note else ()

    converted, unexpected, dropped = convert_trm_state_dict(state, keep_puzzle_emb)
    target = model.state_dict()
    # A mapped key our model lacks (say the puzzle table kept for a model without one) is unexpected too.
    source = {map_trm_key(strip_prefixes(k)): k for k in state}
    unexpected += tuple(source[k] for k in converted if k not in target)
    converted = {k: v for k, v in converted.items() if k in target}
    for key, value in converted.items():
        if value.shape != target[key].shape:
            raise CheckpointError(f"{path}: {key}: checkpoint shape {tuple(value.shape)} != "
                                  f"model shape {tuple(target[key].shape)}")
    model.load_state_dict(converted, strict=False)
    missing = tuple(k for k in target if k not in converted)
    return ImportReport(loaded=tuple(converted), missing=missing, unexpected=unexpected, dropped=dropped,
                        shapes=shapes, notes=notes)
