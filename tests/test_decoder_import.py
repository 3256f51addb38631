"""trm_import: TRM `step_N` files in TRM's own key layout, written with torch.save into tmp_path."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from etrmtrm_cli.config import ArchConfig
from etrmtrm_cli.errors import CheckpointError
from etrmtrm_cli.models.act import ACTModel
from etrmtrm_cli.models.decoder import TRMDecoder
from etrmtrm_cli.models.puzzle_embedding import PuzzleEmbedding
from etrmtrm_cli.models.trm_import import load_trm_checkpoint

SEQ = 9
INNER = "_orig_mod.model.inner."


def arch(**kw: object) -> ArchConfig:
    base: dict[str, object] = {"hidden_size": 16, "num_heads": 2, "L_layers": 2, "H_cycles": 2, "L_cycles": 2,
                                   "puzzle_emb_len": 2, "context_tokens": 1}
    return ArchConfig(**{**base, **kw})


class OneParamEncoder(nn.Module):
    """Stands for a demo encoder: a provider with its own parameter and no puzzle table."""

    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 16))

    def initial_carry(self, batch_size: int, device: object = None) -> dict[str, Tensor]:
        return {}

    def reset_carry(self, reset: Tensor, carry: dict[str, Tensor]) -> dict[str, Tensor]:
        return carry

    def forward(self, carry: dict[str, Tensor], batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return self.query.expand(batch["inputs"].shape[0], 1, 16), carry


def p0_model(seed: int, a: ArchConfig | None = None, num_ids: int = 5) -> ACTModel:
    torch.manual_seed(seed)
    a = a or arch()
    model = ACTModel(TRMDecoder(a, SEQ), PuzzleEmbedding(num_ids, a.hidden_size), a)
    with torch.no_grad():
        model.provider.weights.normal_()  # type: ignore[operator]
    return model


def trm_layout(model: ACTModel) -> dict[str, Tensor]:
    """Our weights under the names TRM's pretrain.py saves them with (written out by hand)."""
    dec = model.decoder
    state = {
        INNER + "embed_tokens.embedding_weight": dec.embed_tokens.weight,
        INNER + "lm_head.weight": dec.lm_head.weight,
        INNER + "q_head.weight": dec.q_head.weight,
        INNER + "q_head.bias": dec.q_head.bias,
        INNER + "H_init": dec.H_init.bfloat16(),  # TRM keeps these in the forward dtype
        INNER + "L_init": dec.L_init.bfloat16(),
        INNER + "puzzle_emb.weights": model.provider.weights,
    }
    for i, layer in enumerate(dec.net.layers):
        state[INNER + f"L_level.layers.{i}.self_attn.qkv_proj.weight"] = layer.attn.qkv.weight
        state[INNER + f"L_level.layers.{i}.self_attn.o_proj.weight"] = layer.attn.out.weight
        state[INNER + f"L_level.layers.{i}.mlp.gate_up_proj.weight"] = layer.mlp.gate_up.weight
        state[INNER + f"L_level.layers.{i}.mlp.down_proj.weight"] = layer.mlp.down.weight
    return {k: v.detach().clone() for k, v in state.items()}


def save(state: dict, tmp_path: Path, name: str = "step_100") -> Path:
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_round_trip_p0(tmp_path: Path) -> None:
    source, target = p0_model(0), p0_model(1)
    state = trm_layout(source)
    state[INNER + "rotary_emb.extra"] = torch.zeros(1)
    report = load_trm_checkpoint(target, save(state, tmp_path), arch(), seq_len=SEQ, keep_puzzle_emb=True)
    assert report.missing == () and report.dropped == ()
    assert report.unexpected == (INNER + "rotary_emb.extra",)
    assert len(report.loaded) == 7 + 4 * 2 and "provider.weights" in report.loaded
    assert report.shapes is not None and (report.shapes.hidden_size, report.shapes.L_layers) == (16, 2)
    for key, value in source.state_dict().items():
        expected = value.bfloat16().float() if key.endswith("_init") else value
        torch.testing.assert_close(target.state_dict()[key], expected, rtol=0, atol=0)


def test_puzzle_embedding_dropped_for_an_encoder_model(tmp_path: Path) -> None:
    a = arch()
    encoder_model = ACTModel(TRMDecoder(a, SEQ), OneParamEncoder(), a)
    path = save(trm_layout(p0_model(0)), tmp_path)
    report = load_trm_checkpoint(encoder_model, path, a, seq_len=SEQ, keep_puzzle_emb=False)
    assert report.dropped == (INNER + "puzzle_emb.weights",)
    assert report.missing == ("provider.query",) and report.unexpected == ()
    # Kept but with nowhere to go: reported as unexpected rather than silently lost.
    report = load_trm_checkpoint(encoder_model, path, a, seq_len=SEQ, keep_puzzle_emb=True)
    assert report.unexpected == (INNER + "puzzle_emb.weights",)
    # A P0 model that drops it misses its table.
    report = load_trm_checkpoint(p0_model(2), path, a, seq_len=SEQ, keep_puzzle_emb=False)
    assert report.missing == ("provider.weights",)


def test_keys_without_the_compile_prefix_load_too(tmp_path: Path) -> None:
    state = {k.removeprefix("_orig_mod."): v for k, v in trm_layout(p0_model(0)).items()}
    report = load_trm_checkpoint(p0_model(1), save(state, tmp_path), arch(), seq_len=SEQ)
    assert report.missing == () and report.unexpected == ()


def test_non_tensor_pickle_is_refused(tmp_path: Path) -> None:
    path = save({"config": argparse.Namespace(lr=1.0), "w": torch.zeros(2)}, tmp_path)
    with pytest.raises(CheckpointError, match="Python objects other than tensors.*argparse.Namespace"):
        load_trm_checkpoint(p0_model(0), path, arch(), seq_len=SEQ)


# "hello\n" and "abc" fail inside the legacy unpickler (KeyError, IndexError), not as a format error
@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"hello\n", b"abc"])
def test_corrupt_or_missing_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "step_1"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_trm_checkpoint(p0_model(0), path, arch(), seq_len=SEQ)
    with pytest.raises(CheckpointError, match="no such TRM checkpoint"):
        load_trm_checkpoint(p0_model(0), tmp_path / "step_2", arch(), seq_len=SEQ)
    save({"step": 3}, tmp_path, "step_3")
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_trm_checkpoint(p0_model(0), tmp_path / "step_3", arch(), seq_len=SEQ)


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path: Path) -> None:
    path = save(trm_layout(p0_model(0, num_ids=7)), tmp_path)
    with pytest.raises(CheckpointError, match=r"provider\.weights.*\(7, 16\).*\(5, 16\)"):
        load_trm_checkpoint(p0_model(1, num_ids=5), path, arch(), seq_len=SEQ)


@pytest.mark.parametrize(("ours", "message"), [
    ({"hidden_size": 32}, "hidden_size 16 \\(ours 32\\)"),
    ({"L_layers": 3}, "L_layers 2 \\(ours 3\\)"),
    ({"expansion": 25.0}, "MLP width 256 \\(ours 512"),
    ({"pos_encodings": "learned"}, "pos_encodings rope/none \\(ours learned\\)"),
])
def test_architecture_check_from_shapes(tmp_path: Path, ours: dict, message: str) -> None:
    path = save(trm_layout(p0_model(0)), tmp_path)
    a = arch(**ours)
    with pytest.raises(CheckpointError, match=message):
        load_trm_checkpoint(p0_model(1, a), path, a, seq_len=SEQ)
    with pytest.raises(CheckpointError, match="vocab_size 12 \\(ours 10\\)"):
        load_trm_checkpoint(p0_model(1), path, arch(), seq_len=SEQ, vocab_size=10)


def test_heads_and_cycles_from_trm_config_beside_the_file(tmp_path: Path) -> None:
    path = save(trm_layout(p0_model(0)), tmp_path)
    report = load_trm_checkpoint(p0_model(1), path, arch(), seq_len=SEQ)
    assert any("not checked" in note for note in report.notes)
    config = "arch:\n  H_cycles: 3\n  L_cycles: 2\n  num_heads: 2\nlr: 0.0001\n"
    (tmp_path / "all_config.yaml").write_text(config)
    with pytest.raises(CheckpointError, match="H_cycles 3 \\(ours 2\\)"):
        load_trm_checkpoint(p0_model(1), path, arch(), seq_len=SEQ)
    report = load_trm_checkpoint(p0_model(1), path, arch(), seq_len=SEQ, allow_cycle_mismatch=True)
    assert report.notes == ()
    with pytest.raises(CheckpointError, match="num_heads 2 \\(ours 4\\)"):
        load_trm_checkpoint(p0_model(1, arch(num_heads=4)), path, arch(num_heads=4), seq_len=SEQ,
                            allow_cycle_mismatch=True)
    # puzzle_emb_len 0 means "as many tokens as the embedding needs": 16 dims / hidden 16 = 1, not our 2.
    config = "arch:\n  hidden_size: 16\n  puzzle_emb_len: 0\n  puzzle_emb_ndim: 16\n"
    (tmp_path / "all_config.yaml").write_text(config)
    with pytest.raises(CheckpointError, match="puzzle_emb_len 1 \\(ours 2\\)"):
        load_trm_checkpoint(p0_model(1), path, arch(), seq_len=SEQ)
