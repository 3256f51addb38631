"""How a run executes: the dtype it computes in on this CPU, whether it is compiled, and that a compiled
model does not recompile for every new batch (the demo packing's shapes change with every batch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import CPU, tiny
from torch._dynamo.utils import counters
from torch._functorch import config as functorch_config
from typer.testing import CliRunner

from etrmtrm_cli.analysis.diagnose.subject import build as build_subject_model
from etrmtrm_cli.analysis.diagnose.subject import fresh_subject
from etrmtrm_cli.cli import app
from etrmtrm_cli.data.dataset import build_arc_data
from etrmtrm_cli.encoders import grid
from etrmtrm_cli.models.build import build_model
from etrmtrm_cli.models.decoder import compute_dtype
from etrmtrm_cli.models.layers import Block, SwiGLU
from etrmtrm_cli.training import runtime
from etrmtrm_cli.training.distributed import DistContext
from etrmtrm_cli.training.optim import build_optimizers
from etrmtrm_cli.training.runtime import (
    COMPILE_MIN_STEPS,
    DtypeChoice,
    choose_compile,
    choose_dtype,
    compile_model,
    cpu_has_native_bfloat16,
    native_on_every_rank,
)
from etrmtrm_cli.training.step import Trainable, fresh_state, train_step

REAL = str(Path(__file__).resolve().parents[1] / "experiments.toml")
# torch's default for what compile_model changes, set for a block of a test and restored after it
TORCH_DEFAULT_CACHE_SETTING = functorch_config.patch(autograd_cache_allow_custom_autograd_functions=False)


@pytest.mark.parametrize(("flags", "native"), [
    ("fpu sse avx2 fma", False),
    ("fpu avx2 avx512f avx512bw avx512_vnni", False),  # AVX512 without its bfloat16 extension
    ("fpu avx2 avx512f avx512_bf16", True),
    ("fpu avx2 amx_tile amx_bf16", True),
])
def test_native_bfloat16_is_read_from_the_cpu_flags(tmp_path: Path, flags: str, native: bool) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert cpu_has_native_bfloat16(cpuinfo) is native
    assert cpu_has_native_bfloat16(tmp_path / "missing") is False  # an unknown CPU counts as emulated


def test_meta_names_the_cpu_with_the_extensions_that_decide_its_float_speed(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx2 fma avx512f avx512_bf16\n")
    assert runtime.cpu_description(cpuinfo) == "AMD EPYC (avx2, avx512f, avx512_bf16)"


def test_bfloat16_on_a_cpu_without_it_runs_in_float32_and_says_why() -> None:
    exp = tiny("E0b", ["arch.forward_dtype=bfloat16"])
    ran = choose_dtype(exp, CPU, native_bf16=False)
    assert ran.exp.arch.forward_dtype == "float32" and "emulated" in ran.warning and "float32" in ran.warning
    assert ran.exp.model_dump() == {**exp.model_dump(), "arch": {**exp.arch.model_dump(), "forward_dtype": "float32"}}
    assert choose_dtype(exp, CPU, native_bf16=True) == DtypeChoice(exp, None, None)  # native: kept
    assert choose_dtype(exp, torch.device("cuda"), native_bf16=False) == DtypeChoice(exp, None, None)  # CUDA: kept
    as_float = tiny("E0b")
    assert choose_dtype(as_float, CPU, native_bf16=False) == DtypeChoice(as_float, None, None)


def test_auto_is_bfloat16_where_it_is_native_and_a_resumed_run_keeps_the_dtype_it_started_in() -> None:
    exp = tiny("E0b", ["arch.forward_dtype=auto"])
    native = choose_dtype(exp, CPU, native_bf16=True)
    assert native.exp.arch.forward_dtype == "bfloat16" and "native bfloat16" in native.why and native.warning is None
    emulated = choose_dtype(exp, CPU, native_bf16=False)
    assert emulated.exp.arch.forward_dtype == "float32" and "emulated" in emulated.why and emulated.warning is None
    assert choose_dtype(exp, torch.device("cuda"), native_bf16=False).exp.arch.forward_dtype == "bfloat16"
    kept = choose_dtype(exp, CPU, native_bf16=True, recorded="float32")
    assert kept.exp.arch.forward_dtype == "float32" and kept.why == "auto: as the run started"
    # A bfloat16 run resumed on a CPU without it: float32 with the warning (and the resume check refuses it).
    moved = choose_dtype(exp, CPU, native_bf16=False, recorded="bfloat16")
    assert moved.exp.arch.forward_dtype == "float32" and "emulated" in moved.warning
    assert tiny("E0b").arch.forward_dtype == "float32"  # the tiny profile (tests) is float32 on every machine


def test_ranks_compute_in_one_dtype_the_one_every_rank_runs_fast() -> None:
    """Under torchrun `native_bf16` is whether every rank's CPU has bfloat16 (`native_on_every_rank`): one rank
    without it puts all of them in float32, and the messages name the ranks rather than this CPU."""
    auto, asked = tiny("E0b", ["arch.forward_dtype=auto"]), tiny("E0b", ["arch.forward_dtype=bfloat16"])
    everywhere = choose_dtype(auto, CPU, native_bf16=True, ranks=4)
    assert everywhere.exp.arch.forward_dtype == "bfloat16" and "every one of 4 ranks" in everywhere.why
    somewhere = choose_dtype(auto, CPU, native_bf16=False, ranks=4)
    assert somewhere.exp.arch.forward_dtype == "float32" and "one of 4 ranks has no" in somewhere.why
    refused = choose_dtype(asked, CPU, native_bf16=False, ranks=4)
    assert refused.exp.arch.forward_dtype == "float32" and "one of 4 ranks has no" in refused.warning
    assert native_on_every_rank(DistContext(0, 1, CPU)) is None  # one process: choose_dtype reads this CPU


def test_an_auto_run_records_its_dtype_and_resumes_in_it_on_a_cpu_that_would_choose_another(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def train(runs: str, native: bool, *extra: str) -> Any:
        monkeypatch.setattr(runtime, "cpu_has_native_bfloat16", lambda: native)
        return CliRunner().invoke(app, [
            "train", "E0b", "--experiments", REAL, "--profile", "tiny", "--runs-dir", str(tmp_path / runs), "--set",
            "decoder=none", "--set", "arch.forward_dtype=auto", *extra], env={"COLUMNS": "400"})

    def second_line(result: Any) -> str:
        assert result.exit_code == 0, result.output
        return next(line for line in result.output.splitlines() if line.startswith(("float32", "bfloat16")))

    def recorded(runs: str, file: str) -> Any:
        return json.loads((tmp_path / runs / "E0b" / file).read_text())

    first = second_line(train("a", False, "--max-steps", "2"))
    assert first.startswith("float32 (auto: this CPU has no AVX512-BF16/AMX instructions, so bfloat16 would be "
                            "emulated)")
    assert recorded("a", "config.json")["arch"]["forward_dtype"] == "float32"
    resumed = second_line(train("a", True, "--max-steps", "4", "--resume"))
    assert resumed.startswith("float32 (auto: as the run started)")
    assert recorded("a", "summary.json")["step"] == 4
    # A bfloat16 run cannot go on where bfloat16 would be emulated: refused like any change of model, run kept.
    assert second_line(train("b", True, "--max-steps", "2")).startswith("bfloat16 (auto: this CPU has native")
    refused = train("b", False, "--max-steps", "4", "--resume")
    assert refused.exit_code == 1 and "arch.forward_dtype: 'bfloat16' in the run, 'float32' now" in refused.output
    assert recorded("b", "summary.json")["step"] == 2 and "Traceback" not in refused.output


def test_a_model_is_built_only_in_a_resolved_dtype_and_a_fresh_diagnose_subject_resolves_auto(
        monkeypatch: pytest.MonkeyPatch) -> None:
    auto = tiny("E0b", ["arch.forward_dtype=auto"])
    with pytest.raises(ValueError, match="'auto' is chosen per machine by training.runtime.choose_dtype"):
        build_model(auto, 36, 8)
    monkeypatch.setattr(runtime, "cpu_has_native_bfloat16", lambda: False)
    subject = fresh_subject(auto, CPU)
    assert subject.exp.arch.forward_dtype == "float32"
    assert build_subject_model(subject).decoder.forward_dtype == torch.float32


def test_a_float32_run_on_a_cpu_with_native_bfloat16_is_told_the_faster_choice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exp = tiny("E0b")  # float32
    assert "--set arch.forward_dtype=bfloat16" in choose_dtype(exp, CPU, native_bf16=True).why
    assert choose_dtype(exp, CPU, native_bf16=False).why is None  # emulated: float32 is the fast one
    assert choose_dtype(exp, torch.device("cuda"), native_bf16=True).why is None
    monkeypatch.setattr(runtime, "cpu_has_native_bfloat16", lambda: True)
    result = CliRunner().invoke(app, [
        "train", "E0b", "--experiments", REAL, "--profile", "tiny", "--runs-dir", str(tmp_path), "--max-steps", "2",
        "--set", "decoder=none"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    start_line = next(line for line in result.output.splitlines() if line.startswith("float32"))
    assert "native bfloat16" in start_line and "eager" in start_line
    meta = json.loads((tmp_path / "E0b" / "meta.json").read_text())
    assert meta["runtime"]["forward_dtype"] == "float32" and "native bfloat16" in meta["runtime"]["dtype_hint"]


def test_compile_auto_needs_enough_steps_and_a_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    assert choose_compile(CPU, COMPILE_MIN_STEPS - 1, None)[0] is False
    assert choose_compile(CPU, 10, True) == (True, "--compile")  # the user's choice is kept
    assert choose_compile(CPU, 10**6, False) == (False, "--no-compile")
    monkeypatch.setattr(runtime.shutil, "which", lambda name: "/usr/bin/" + name)
    assert choose_compile(CPU, COMPILE_MIN_STEPS, None)[0] is True
    monkeypatch.setattr(runtime.shutil, "which", lambda name: None)
    compiled, why = choose_compile(CPU, COMPILE_MIN_STEPS, None)
    assert compiled is False and "C++ compiler" in why


def test_a_bfloat16_run_on_this_cpu_warns_even_when_quiet_and_records_it(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "cpu_has_native_bfloat16", lambda: False)
    result = CliRunner().invoke(app, [
        "train", "E0b", "--experiments", REAL, "--profile", "tiny", "--runs-dir", str(tmp_path), "--max-steps", "2",
        "--set", "decoder=none", "--set", "arch.forward_dtype=bfloat16", "-q"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert "bfloat16 asked" in result.output and "running in float32" in result.output
    meta = json.loads((tmp_path / "E0b" / "meta.json").read_text())
    assert meta["runtime"]["forward_dtype"] == "float32" and "emulated" in meta["runtime"]["dtype_note"]
    assert meta["runtime"]["compile"] is False and "2 steps" in meta["runtime"]["compile_note"]
    assert json.loads((tmp_path / "E0b" / "config.json").read_text())["arch"]["forward_dtype"] == "float32"


def graphs_compiled_over(batches: list[dict[str, Any]], exp: Any, seq_len: int, num_puzzle_ids: int,
                         after_step: int = 0) -> int:
    """Train a fresh compiled model (dynamo with the eager backend: the guards without inductor) on `batches`, one
    step each; -> how many graphs dynamo compiled after step `after_step`."""
    torch.manual_seed(0)
    model = build_model(exp, seq_len, num_puzzle_ids).train()
    torch._dynamo.reset()
    parts = Trainable(model, torch.compile(model, backend="eager"), build_optimizers(model, exp))
    state = fresh_state(model, batches[0], exp.seed)
    ctx = DistContext(0, 1, CPU)
    for batch in batches[:after_step]:
        train_step(parts, batch, state, exp, ctx, 100)
    compiled_before = counters["stats"]["unique_graphs"]
    for batch in batches[after_step:]:
        train_step(parts, batch, state, exp, ctx, 100)
    compiled = counters["stats"]["unique_graphs"] - compiled_before
    torch._dynamo.reset()
    return compiled


def packed_cells(batch: dict[str, Any]) -> int:
    """The demo cells a batch packs (its non-PAD demo tokens)."""
    return int((batch["demo_inputs"] != 0).sum() + (batch["demo_labels"] != 0).sum())


def test_a_compiled_model_stops_recompiling_once_the_packing_sizes_vary() -> None:
    """Every batch packs a different number of demo cells into different attention buckets. The bucketed
    attention stays eager (outside the graphs), so the graphs see one varying size, which dynamo makes
    dynamic at its first change: later batches compile nothing new. With the buckets inside the graphs,
    every new bucket length compiled again, until dynamo's cache limit sent the encoder back to eager."""
    exp = tiny("E0b", ["train.global_batch_size=512", "arch.halt_max_steps=2"])
    data = build_arc_data(exp.data, exp.seed)
    batches = [data.train_batch(step, exp.train.batch_size).as_dict() for step in range(8)]
    assert len({packed_cells(batch) for batch in batches}) >= 4  # the batches do vary in packed size
    assert graphs_compiled_over(batches, exp, data.seq_len, data.num_puzzle_ids, after_step=4) == 0


def test_batches_on_both_sides_of_the_encoders_mlp_keep_limit_compile_once_more_not_per_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A compiled demo-encoder MLP keeps or recomputes by its packed size (grid.MLP_KEEP_MAX_BYTES), a guard in
    the graph. With the limit among the batches' sizes, batches fall on both sides of it in turn: that compiles
    each encoder layer's graph once more at most, against the same batches all below it, not once per batch."""
    exp = tiny("E0b", ["train.global_batch_size=512", "arch.halt_max_steps=2"])
    data = build_arc_data(exp.data, exp.seed)
    batches = [data.train_batch(step, exp.train.batch_size).as_dict() for step in range(12)]
    mlp, dtype = SwiGLU(exp.arch.hidden_size, exp.arch.expansion), compute_dtype(exp.arch.forward_dtype)
    kept = sorted(mlp.kept_bytes(torch.empty(packed_cells(batch), exp.arch.hidden_size, dtype=dtype, device="meta"))
                  for batch in batches)  # what each batch's encoder MLP call keeps
    limit = kept[len(kept) // 2]
    assert kept[0] <= limit < kept[-1]
    monkeypatch.setattr(grid, "MLP_KEEP_MAX_BYTES", (0, 2**40))
    all_below = graphs_compiled_over(batches, exp, data.seq_len, data.num_puzzle_ids)
    monkeypatch.setattr(grid, "MLP_KEEP_MAX_BYTES", (0, limit))
    both_sides = graphs_compiled_over(batches, exp, data.seq_len, data.num_puzzle_ids)
    assert 0 < both_sides - all_below <= exp.arch.encoder_num_layers


def test_a_compiled_block_with_the_hand_written_rms_norm_is_kept_in_aotautograds_cache() -> None:
    """layers._RMSNorm is a custom autograd.Function, and torch skips AOTAutograd's on-disk cache for any graph
    holding one unless told otherwise: every run then traced the decoder's joint graph anew (about 6 s of a
    cpu-profile compile). compile_model tells it; the graph is saved (a first compile) or loaded (a later one)."""
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16, requires_grad=True)
    with TORCH_DEFAULT_CACHE_SETTING:  # compile_model sets it for the process; restored after
        compile_model(Block(16, 2, 4.0))(x).square().sum().backward()
    aot = counters["aot_autograd"]
    assert aot["autograd_cache_bypass"] == 0
    assert aot["autograd_cache_saved"] + aot["autograd_cache_hit"] == 1
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())
    torch._dynamo.reset()


def _scaled_double(scale: float) -> type[torch.autograd.Function]:
    """y = 2x, with a backward that returns `scale` times the true gradient: a Function whose backward code
    differs from another's by one constant."""

    class ScaledDouble(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
            return x * 2

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
            return grad * 2 * scale

    return ScaledDouble


def test_aotautograds_cache_never_hands_a_function_another_functions_backward() -> None:
    """What makes compile_model's cache setting safe: the key covers the Function's traced backward, so two
    Functions that differ only there never share a cached graph (a stale one would train on a wrong gradient)."""
    grads = []
    for scale in (1.0, 10.0):
        torch._dynamo.reset()
        function = _scaled_double(scale)
        x = torch.ones(3, requires_grad=True)
        with TORCH_DEFAULT_CACHE_SETTING:
            compile_model(lambda t, f=function: f.apply(torch.sin(t)).sum())(x).backward()
        grads.append(x.grad)
    torch._dynamo.reset()
    expected = 2 * torch.cos(torch.ones(3))
    torch.testing.assert_close(grads[0], expected)
    torch.testing.assert_close(grads[1], 10 * expected)
