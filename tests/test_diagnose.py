"""`etrmtrm diagnose`: every check passes on the real encoders and catches the bug it exists for.

The broken encoders below are registered for this module only (the registry is restored afterwards, so
tests that enumerate the registry never see them)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from unittest import mock

import pytest
import torch
from conftest import CPU, EXPERIMENTS, registered, tiny
from torch import Tensor
from typer.testing import CliRunner

from etrmtrm_cli.analysis import diagnose, thresholds
from etrmtrm_cli.analysis.diagnose import (
    CheckResult,
    Measurement,
    Subject,
    context_use,
    determinism,
    encoder_variance,
    gradient_flow,
)
from etrmtrm_cli.analysis.diagnose.subject import Status
from etrmtrm_cli.cli import app
from etrmtrm_cli.data.dataset import ArcData, build_arc_data
from etrmtrm_cli.encoders import list_encoders
from etrmtrm_cli.encoders.base import Carry
from etrmtrm_cli.encoders.recurrent_standard import RecurrentStandardConfig, RecurrentStandardEncoder
from etrmtrm_cli.encoders.static import StaticConfig, StaticEncoder
from etrmtrm_cli.models.act import ACTCarry, ACTModel
from etrmtrm_cli.training.distributed import DistContext
from etrmtrm_cli.training.loop import TrainOptions, train

runner = CliRunner()
REAL_ENCODERS = [spec.name for spec in list_encoders()]  # every registered encoder (the planted ones come later)
SHORT = ["arch.halt_max_steps=4"]  # encoder-variance runs halt_max_steps ACT steps
SMALL_EVAL = ["data.eval_groups=1", "data.eval_num_aug=0"]


class DetachedContext(RecurrentStandardEncoder):
    """The public ETRMTRM bug: the (detached) carry is returned as the context."""

    def read(self, carry: Carry, demos: Tensor, demo_mask: Tensor) -> tuple[Tensor, Carry]:
        z = self.update(carry["z_e"].to(demos.dtype), demos, demo_mask)
        return z.detach(), {"z_e": z}


class NeverResets(RecurrentStandardEncoder):
    """A new puzzle inherits the previous puzzle's encoder state."""

    def reset_carry(self, reset: Tensor, carry: Carry) -> Carry:
        return carry


class IgnoresItsCarry(RecurrentStandardEncoder):
    """Reads from its init state at every step, whatever carry it is handed: a static encoder in effect."""

    def read(self, carry: Carry, demos: Tensor, demo_mask: Tensor) -> tuple[Tensor, Carry]:
        return super().read(self.initial_carry(demos.shape[0], demos.device), demos, demo_mask)


class ConstantContext(StaticEncoder):
    """The same context whatever the demos: encoder collapse."""

    def read(self, carry: Carry, demos: Tensor, demo_mask: Tensor) -> tuple[Tensor, Carry]:
        return self.queries.to(demos.dtype).expand(demos.shape[0], -1, -1), carry


class ReadsTheQuery(StaticEncoder):
    """Reads its query grid where the demos belong: contexts differ across puzzles, yet ignore the demos."""

    def forward(self, carry: Carry, batch: dict[str, Tensor]) -> tuple[Tensor, Carry]:
        query = batch["inputs"].unsqueeze(1).expand(-1, batch["demo_inputs"].shape[1], -1)  # (B, K, S²)
        everywhere = torch.ones_like(batch["demo_mask"])
        return self.read(carry, self.grid(query, query, everywhere), everywhere)


class ReadsTheFirstSlot(StaticEncoder):
    """Every slot reads slot 0's demos (a batch-indexing bug): one context for every puzzle, which the demos change."""

    def read(self, carry: Carry, demos: Tensor, demo_mask: Tensor) -> tuple[Tensor, Carry]:
        return super().read(carry, demos[:1].expand_as(demos), demo_mask[:1].expand_as(demo_mask))


class NanGradient(StaticEncoder):
    """A context whose value is right but whose gradient is NaN (sqrt at 0)."""

    def read(self, carry: Carry, demos: Tensor, demo_mask: Tensor) -> tuple[Tensor, Carry]:
        z, carry = super().read(carry, demos, demo_mask)
        return z + torch.sqrt(z * 0), carry


class NanContext(StaticEncoder):
    def read(self, carry: Carry, demos: Tensor, demo_mask: Tensor) -> tuple[Tensor, Carry]:
        z, carry = super().read(carry, demos, demo_mask)
        return z * float("nan"), carry


class OsSeededNoise(StaticEncoder):
    """Noise from a generator seeded by the OS: no experiment seed reproduces it."""

    def read(self, carry: Carry, demos: Tensor, demo_mask: Tensor) -> tuple[Tensor, Carry]:
        z, carry = super().read(carry, demos, demo_mask)
        gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
        return z + 0.01 * torch.randn(z.shape, generator=gen).to(z.dtype), carry


BROKEN = {
    "test_diag_detached": (DetachedContext, RecurrentStandardConfig, True),
    "test_diag_no_reset": (NeverResets, RecurrentStandardConfig, True),
    "test_diag_no_carry": (IgnoresItsCarry, RecurrentStandardConfig, True),
    "test_diag_constant": (ConstantContext, StaticConfig, False),
    "test_diag_os_noise": (OsSeededNoise, StaticConfig, False),
    "test_diag_query": (ReadsTheQuery, StaticConfig, False),
    "test_diag_first_slot": (ReadsTheFirstSlot, StaticConfig, False),
    "test_diag_nan_grad": (NanGradient, StaticConfig, False),
    "test_diag_nan_context": (NanContext, StaticConfig, False),
}


@pytest.fixture(scope="module", autouse=True)
def broken_encoders() -> Iterator[None]:
    with registered(BROKEN):
        yield




@pytest.fixture(scope="module")
def data() -> ArcData:
    exp = tiny("E0b")
    return build_arc_data(exp.data, exp.seed)


def subject(data: ArcData, encoder: str, overrides: list[str] | None = None) -> Subject:
    exp = tiny("E0b", [f"arch.recurrent_encoder_type={encoder}", *(overrides or [])])
    if exp.data != data.cfg:
        data = build_arc_data(exp.data, exp.seed)
    return Subject(exp, data, CPU)


def row(result: CheckResult, starts: str) -> Measurement:
    return next(r for r in result.rows if r.what.startswith(starts))


@pytest.mark.parametrize("encoder", REAL_ENCODERS)
def test_real_encoders_pass_carry_reset_and_gradient_flow(data: ArcData, encoder: str) -> None:
    carry = diagnose.check_carry_reset(subject(data, encoder))
    assert carry.status == "pass", carry
    flow = diagnose.check_gradient_flow(subject(data, encoder))
    # The share is a measurement, not a bug test: a fresh tiny recurrent_standard gets about 0.18 (warn).
    assert all(r.verdict == "pass" for r in flow.rows if not r.what.startswith("grad/encoder_share")), flow
    assert flow.status != "fail" and row(flow, "grad/encoder_share").verdict != "fail"
    got, total = row(flow, "step 2: encoder parameters").value.split("/")
    assert got == total and int(total) > 0
    assert len(row(flow, "grad/encoder_norm before clipping, step 1 / 2").value.split(" / ")) == 2
    size = max(subject(data, encoder).exp.train.batch_size, diagnose.subject.MIN_MEASURE_BATCH)
    # no slot of a fresh model halts after one step (TRM's q_head starts at -5): all of them carried their state
    assert row(flow, "step 2 (").what.startswith(f"step 2 (carried state in {size}/{size} slots)"), flow.rows
    if flow.status == "pass":  # the message gives the plan's share (squared norms), as its row does
        share_sq = row(flow, "grad/encoder_share_sq").value
        assert flow.message.endswith(f"the encoder's share of the gradient (||g_enc||² / ||g||²) {share_sq}"), flow


def test_gradient_flow_says_when_no_slot_carried_its_state(data: ArcData) -> None:
    flow = diagnose.check_gradient_flow(subject(data, "recurrent_standard", ["arch.halt_max_steps=1"]))
    assert row(flow, "step 2 (").what.startswith("step 2 (carried state in 0/"), flow.rows
    assert row(flow, "step 2: slots that carried their state").verdict == "warn"
    assert flow.status == "warn", flow


def test_the_encoder_gradient_norm_is_each_steps_own() -> None:
    """The plan's per-step "grad/encoder_norm > 0.2", read from gradients accumulated over the check's steps."""
    weight = torch.nn.Parameter(torch.zeros(2))
    weight.grad = torch.tensor([3.0, 4.0])
    assert gradient_flow._added_norm([("w", weight)], {"w": None}) == 5.0
    assert gradient_flow._added_norm([("w", weight)], {"w": torch.tensor([3.0, 0.0])}) == 4.0


def test_detached_context_fails_gradient_flow(data: ArcData) -> None:
    result = diagnose.check_gradient_flow(subject(data, "test_diag_detached"))
    assert result.status == "fail"
    assert "encoder 'test_diag_detached' gets no gradient" in result.message
    assert "detached" in result.message
    assert row(result, "step 1 (init carry): context fed to the decoder is in the graph").value == "False"
    assert row(result, "step 1: encoder parameters").value.startswith("0/")


def test_carry_never_reset_fails_carry_reset_naming_the_encoder_carry(data: ArcData) -> None:
    result = diagnose.check_carry_reset(subject(data, "test_diag_no_reset"))
    assert result.status == "fail"
    assert result.message == ("the encoder 'test_diag_no_reset': reset_carry does not put the encoder carry (z_e) of "
                              "halted slots at its init state, so a new puzzle starts from the previous puzzle's "
                              "encoder state (the rows after one step follow from it)"), result.message
    assert row(result, "provider.reset_carry puts the encoder carry (z_e) of halted slots").verdict == "fail"
    assert row(result, "after one step: encoder carry (z_e) of halted slots").verdict == "fail"
    # only the encoder is broken: the decoder's reset and the slots that did not halt are fine
    assert row(result, "decoder.reset_carry puts halted slots").verdict == "pass"
    assert row(result, "after one step: encoder carry (z_e) of the other slots").verdict == "pass"
    assert "decoder carry (z_H, z_L) is not reset" not in result.message


def test_an_encoder_that_ignores_its_carry_fails_carry_reset(data: ArcData) -> None:
    """Its resets are right and every slot continues as it should, so no other row could tell."""
    result = diagnose.check_carry_reset(subject(data, "test_diag_no_carry"))
    assert result.status == "fail"
    assert row(result, "one step of the encoder carry (z_e) of the other slots").verdict == "fail"
    assert [r.what for r in result.rows if r.verdict == "fail"] == [
        "one step of the encoder carry (z_e) of the other slots, from their carry against from init"], result.rows
    assert result.message.startswith("the encoder 'test_diag_no_carry' ignores its carry"), result.message


def test_an_act_step_that_resets_every_slot_fails_carry_reset(data: ArcData) -> None:
    """The reference step was the model's own, which reset every slot as well, so the two agreed."""
    step = ACTModel.forward

    def resets_every_slot(self: ACTModel, carry: ACTCarry, batch: dict, generator: object = None) -> tuple:
        every = torch.ones_like(carry.halted)
        carry = replace(carry, decoder=self.decoder.reset_carry(every, carry.decoder),
                        provider=self.provider.reset_carry(every, carry.provider))
        return step(self, carry, batch, generator)

    with mock.patch.object(ACTModel, "forward", resets_every_slot):
        result = diagnose.check_carry_reset(subject(data, "recurrent_standard"))
    assert result.status == "fail"
    assert row(result, "after one step: decoder carry of the other slots").verdict == "fail"
    assert row(result, "after one step: encoder carry (z_e) of the other slots").verdict == "fail"
    assert row(result, "after one step: decoder carry (z_H, z_L) of halted slots").verdict == "pass"
    assert result.message == ("the reset functions are right, but the ACT step changes slots that did not halt (as "
                              "if it reset them): the decoder carry (z_H, z_L) and the encoder carry (z_e) of "
                              "'recurrent_standard' after one step are not what a reset by hand gives"), result.message


def test_constant_context_fails_encoder_variance(data: ArcData) -> None:
    result = diagnose.check_encoder_variance(subject(data, "test_diag_constant", SHORT))
    assert result.status == "fail"
    assert result.message.startswith("every puzzle gets the same context from the fresh model (variance 0 across "
                                     ) and "'test_diag_constant' gives a constant context" in result.message, result
    assert float(row(result, "fresh model: mean").value) == 0.0
    assert row(result, "fresh model: mean").verdict == "fail"  # alike contexts may warn, the same one fails
    assert row(result, "fresh model: context change with another task's demos").value == "0"
    with mock.patch.object(encoder_variance, "other_task_rows", return_value=None):  # one task fills the batch
        unswapped = diagnose.check_encoder_variance(subject(data, "test_diag_constant", SHORT))
    assert unswapped.status == "fail" and unswapped.message.endswith(
        "'test_diag_constant' gives a constant context or reads one slot's demos for every slot (whether the demos "
        "change it is not measurable: one task fills more than half the batch)"), unswapped.message


def test_every_slot_reading_the_first_slots_demos_fails_encoder_variance(data: ArcData) -> None:
    """Another task's demos change its context (those of slot 0 do), so only the variance, 0, shows it; a fresh
    model's low variance only warned."""
    result = diagnose.check_encoder_variance(subject(data, "test_diag_first_slot", SHORT))
    assert row(result, "fresh model: context change with another task's demos").verdict == "pass", result
    assert row(result, "fresh model: mean").verdict == "fail", result
    assert result.status == "fail" and "the demos change it, so 'test_diag_first_slot' reads the same demos for " \
                                      "every slot" in result.message, result.message


def test_an_encoder_that_reads_the_query_instead_of_the_demos_fails_encoder_variance(data: ArcData) -> None:
    """Its contexts differ across puzzles (through their queries), which the variance alone took for health."""
    result = diagnose.check_encoder_variance(subject(data, "test_diag_query", SHORT))
    assert row(result, "fresh model: mean").verdict == "pass", result
    assert row(result, "fresh model: context change with another task's demos").verdict == "fail", result
    assert result.status == "fail" and "does not depend on the demos" in result.message, result


def test_non_finite_gradients_and_contexts_are_named_as_such(data: ArcData) -> None:
    nan_grad = diagnose.check_gradient_flow(subject(data, "test_diag_nan_grad"))
    assert nan_grad.status == "fail" and nan_grad.message.startswith("non-finite gradient in "), nan_grad.message
    nan_context = diagnose.run_checks(subject(data, "test_diag_nan_context", SHORT), ["gradient-flow", "carry-reset"])
    assert [r.name for r in nan_context] == ["gradient-flow", "carry-reset"]  # the other checks still run
    assert nan_context[0].status == "fail" and row(nan_context[0], "step 1: train/loss").value == "nan"
    assert nan_context[0].message.startswith("train/loss is nan at step 1"), nan_context[0].message
    assert nan_context[1].status == "fail" and nan_context[1].message.startswith("the carries are not finite ("), \
        nan_context[1].message  # not a reset function blamed
    variance = diagnose.check_encoder_variance(subject(data, "test_diag_nan_context", SHORT))
    assert variance.message == "the fresh model's context is not finite (variance nan): 'test_diag_nan_context' " \
                               "computes NaN or inf", variance.message


def test_a_starved_encoder_is_named_by_the_rows_that_failed() -> None:
    rows = [Measurement("grad/encoder_share_sq", "7.81e-16", "< 0.0025 = starved", "fail"),
            Measurement("grad/encoder_norm", "8.26e-08", "> 0.2 (plan), each", "warn")]
    said = gradient_flow._flow_message("recurrent_standard", rows, False, False, [], [], 15, 7.81e-16)
    assert said == ("the encoder 'recurrent_standard' is starved: the gradient reaches every encoder parameter, but "
                    "grad/encoder_share_sq = 7.81e-16 (fail: < 0.0025 = starved); grad/encoder_norm = 8.26e-08 "
                    "(warn: > 0.2 (plan), each)")


def test_static_encoder_variance_is_healthy(data: ArcData) -> None:
    result = diagnose.check_encoder_variance(subject(data, "static", SHORT))
    assert result.status == "pass", result
    assert float(row(result, "fresh model: mean").value) > thresholds.HEALTHY_VAR


def test_determinism_passes_on_the_real_model(data: ArcData) -> None:
    result = diagnose.check_determinism(subject(data, "recurrent_standard", SMALL_EVAL), steps=2)
    assert result.status == "pass", result
    assert row(result, "metrics.jsonl").value == "identical"


def test_os_seeded_noise_fails_determinism(data: ArcData) -> None:
    result = diagnose.check_determinism(subject(data, "test_diag_os_noise", SMALL_EVAL), steps=2)
    assert result.status == "fail"
    assert row(result, "metrics.jsonl").value.startswith("step 1:")
    assert "differ" in result.message


def test_a_model_that_ignores_its_demos_warns_context_use(data: ArcData) -> None:
    ignoring = subject(data, "test_diag_constant", SHORT)
    weights = diagnose.subject.build(ignoring, trained=False).state_dict()
    result = diagnose.check_context_use(replace(ignoring, weights=weights))
    assert result.status == "warn" and "barely depend on the demos" in result.message
    assert row(result, "drop with the wrong demos").value == "0.0 points"
    assert float(row(result, "predicted tokens that change").value) == 0.0


def test_a_model_that_reads_its_demos_answers_otherwise_with_another_tasks(data: ArcData) -> None:
    reading = subject(data, "static", SHORT)
    weights = diagnose.subject.build(reading, trained=False).state_dict()
    result = diagnose.check_context_use(replace(reading, weights=weights))
    assert float(row(result, "predicted tokens that change").value) > 0  # a fresh model's answers follow its demos
    context, logits = map(float, row(result, "their context change / logit change").value.split(" / "))
    assert context >= thresholds.MIN_DEMO_DEPENDENCE and logits > thresholds.UNMOVED_LOGITS, (context, logits)
    assert result.status != "fail", result
    drop = float(row(result, "drop with the wrong demos").value.split()[0])
    assert row(result, "drop with the wrong demos").verdict == ("pass" if drop >= thresholds.DEMO_USE_DROP_PTS
                                                                else "warn")


def test_a_decoder_that_does_not_read_its_context_fails_context_use(data: ArcData) -> None:
    """The context changes with the demos and no logit follows: a fault between the encoder and the decoder,
    which only warned, as a model answering from its query grids does."""
    reading = subject(data, "static", SHORT)
    weights = diagnose.subject.build(reading, trained=False).state_dict()
    with mock.patch.object(ACTModel, "pad_context", lambda self, context: torch.zeros(
            context.shape[0], self.decoder.prefix_len, context.shape[2], dtype=context.dtype)):
        result = diagnose.check_context_use(replace(reading, weights=weights))
    assert result.status == "fail" and result.message.startswith("the decoder does not read its context"), result
    context, logits = map(float, row(result, "their context change / logit change").value.split(" / "))
    assert context >= thresholds.MIN_DEMO_DEPENDENCE and logits == 0.0


@pytest.mark.parametrize("groups", [[0, 0, 1, 1, 2, 3], [3, 1, 0, 1, 2, 2, 0, 1], [5, 5, 5, 4, 4, 4]])
def test_every_query_gets_another_tasks_demos(groups: list[int]) -> None:
    ids = torch.tensor(groups)
    donors = context_use.other_task_rows(ids)
    assert donors is not None and sorted(donors.tolist()) == list(range(len(groups)))  # each row gives once
    assert bool((ids[donors] != ids).all())
    assert context_use.other_task_rows(torch.tensor([1, 1, 1, 2])) is None  # one task holds more than half


def test_thresholds_and_exit_codes() -> None:
    assert [gradient_flow.share_verdict(s) for s in (0.0, 0.049, 0.05, 0.19, 0.2, 0.4, float("nan"))] == \
        ["fail", "fail", "warn", "warn", "pass", "pass", "fail"]
    assert [encoder_variance.variance_verdict(v) for v in (0.05, 0.1, 0.3, 0.31)] == ["fail", "warn", "warn", "pass"]

    def result(status: Status) -> CheckResult:
        return CheckResult("x", status, [], "")

    assert diagnose.exit_code([result("pass")]) == 0
    assert diagnose.exit_code([result("pass"), result("warn")]) == 3
    assert diagnose.exit_code([result("warn"), result("fail")]) == 1
    assert determinism.first_difference([{"step": 1, "a": 1.0}], [{"step": 1, "a": 1.5}]) == "step 1: a 1.0 != 1.5"


def invoke(*args: str) -> object:
    return runner.invoke(app, ["diagnose", *args, "--profile", "tiny", "--experiments", str(EXPERIMENTS)],
                         env={"COLUMNS": "200"})


def test_cli_exit_0_when_every_check_passes() -> None:
    result = invoke("E0a", "--check", "carry-reset")
    assert result.exit_code == 0, result.output
    assert "PASS carry-reset" in result.output


def test_cli_exit_1_on_a_failed_check() -> None:
    result = invoke("E0b", "--check", "carry-reset", "--set", "arch.recurrent_encoder_type=test_diag_no_reset")
    assert result.exit_code == 1, result.output
    assert "FAIL carry-reset" in result.output and "reset_carry does not put" in result.output


def test_cli_exit_3_on_warnings_only(monkeypatch: pytest.MonkeyPatch) -> None:
    warned = [CheckResult("gradient-flow", "warn", [Measurement("grad/encoder_share", "0.1", "≥ 0.2", "warn")],
                          "low share"), CheckResult("carry-reset", "pass", [], "ok")]
    monkeypatch.setattr(diagnose, "run_checks", lambda subject, checks: warned)
    result = invoke("E0b", "--check", "all")
    assert result.exit_code == 3, result.output
    assert "WARN gradient-flow" in result.output


def test_cli_unknown_check_names_the_valid_ones() -> None:
    result = invoke("E0b", "--check", "carry")
    assert result.exit_code == 1
    assert "carry-reset, gradient-flow, encoder-variance, determinism, context-use, all" in result.output


def test_cli_diagnoses_a_trained_run(tmp_path: Path) -> None:
    exp = tiny("E0b", ["train.eval_interval=100", "train.checkpoint_interval=2"])
    train(exp, TrainOptions(runs_dir=tmp_path, max_steps=3), DistContext(0, 1, CPU))
    result = runner.invoke(app, ["diagnose", "--run", str(tmp_path / "E0b"), "--check", "carry-reset"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "E0b/model.safetensors" in result.output  # a finished run is judged by its final weights
    variance = diagnose.check_encoder_variance(diagnose.run_subject(tmp_path / "E0b", CPU))
    whats = [r.what for r in variance.rows]
    assert any(w.startswith("fresh model") for w in whats) and any(w.startswith("trained run") for w in whats)
    # the logged figure compare's red flag 1 reads (across puzzles at one ACT step), so the two agree
    assert "run's metrics.jsonl: train/encoder_var_same_step, last 10% of steps" in whats
    refused = runner.invoke(app, ["diagnose", "--run", str(tmp_path / "E0b"), "--set", "seed=1"])
    assert refused.exit_code == 1 and "--set cannot be combined with --run" in refused.output
    for args, said in ((["--profile", "cpu"], "--profile cannot be combined with --run"),
                       (["E0a"], "is a run of E0b, not E0a: leave the experiment out with --run")):
        refused = runner.invoke(app, ["diagnose", *args, "--run", str(tmp_path / "E0b")], env={"COLUMNS": "250"})
        assert refused.exit_code == 1 and said in " ".join(refused.output.split()), refused.output
    used = runner.invoke(app, ["diagnose", "--run", str(tmp_path / "E0b"), "--check", "context-use"],
                         env={"COLUMNS": "200"})
    assert used.exit_code in (0, 3) and "context-use" in used.output and "another task's demos" in used.output
    # A run whose own log shows collapse fails, whatever one batch's rollout of its final weights gives.
    metrics = tmp_path / "E0b" / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    metrics.write_text("".join(json.dumps({**r, "train/encoder_var_same_step": 0.01}) + "\n" for r in rows))
    collapsed = diagnose.check_encoder_variance(diagnose.run_subject(tmp_path / "E0b", CPU))
    assert collapsed.status == "fail", collapsed
    assert collapsed.message.startswith("encoder collapse in the run's log: train/encoder_var_same_step 0.01 over "
                                        "its last 10% of steps (< 0.1), where one batch's eval rollout"), collapsed


def test_cli_context_use_needs_a_run_and_all_leaves_it_out_without_one() -> None:
    result = invoke("E0b", "--check", "context-use")
    assert result.exit_code == 1 and "give the run, --run runs/<ID>" in result.output
    assert diagnose.parse_checks("all", with_run=False) == ("carry-reset", "gradient-flow", "encoder-variance",
                                                            "determinism")
    assert "context-use" in diagnose.parse_checks("all", with_run=True)


def test_a_run_diagnose_cannot_read_is_one_line_naming_it(tmp_path: Path) -> None:
    exp = tiny("E0b", ["train.eval_interval=100", "train.checkpoint_interval=100"])
    train(exp, TrainOptions(runs_dir=tmp_path, max_steps=1, per_seed=True), DistContext(0, 1, CPU))
    run = tmp_path / "E0b" / "seed-0"

    def diagnosed(path: Path) -> str:
        out = runner.invoke(app, ["diagnose", "--run", str(path), "--check", "carry-reset"], env={"COLUMNS": "250"})
        assert out.exit_code == 1 and "Traceback" not in out.output, out.output
        return " ".join(out.output.split())

    assert f"{run.parent}: not a run (no config.json); it holds the seed runs seed-0: pass one" in diagnosed(run.parent)
    assert f"{tmp_path / 'E0c'}: no such run folder" in diagnosed(tmp_path / "E0c")
    config = (run / "config.json").read_text()
    (run / "config.json").write_text(config.replace('"hidden_size": 16', '"hidden_size": 32'))
    assert "the weights do not fit the run's model: " in diagnosed(run)  # names the tensors
    assert " is (" in diagnosed(run) and "in the file, (" in diagnosed(run)
    (run / "config.json").write_text("{}")
    assert f"{run / 'config.json'}: not a run's config (no id, profile, arch, data, train)" in diagnosed(run)
    (run / "config.json").write_text(config.replace('"hidden_size": 16', '"hidden_size": "wide"'))
    assert f"{run / 'config.json'}: not a config this version can read" in diagnosed(run)


def test_a_queue_given_for_one_experiment_says_so() -> None:
    result = invoke("week1")
    assert result.exit_code == 1, result.output
    assert "'week1' is a queue (E0a, E0b, E2b), and this command takes one experiment" in " ".join(
        result.output.split()), result.output


@pytest.mark.parametrize(("drop", "changed", "said"), [
    (41.9, 0.667, "the answers depend on the demos: another task's demos cost 41.9 points"),
    (-10.1, 0.731, "another task's demos do not cost train accuracy (-10.1 points), though they change 73% of the "
                   "predicted tokens: the context is read"),
    (0.0, 0.0, "the answers barely depend on the demos (+0.0 points with another task's, 0.0% of the predicted "
               "tokens changed)"),
])
def test_context_use_says_what_the_drop_and_the_changed_tokens_show(drop: float, changed: float, said: str) -> None:
    """A negative drop with most tokens changed is no sign of an unused context (before, it said unused)."""
    assert context_use.use_message(drop, changed).startswith(said)


def test_a_damaged_log_stops_only_the_check_that_reads_it(tmp_path: Path) -> None:
    """Before, a bad line in metrics.jsonl stopped every check, carry-reset included, which never reads it."""
    exp = tiny("E0b", ["train.eval_interval=100", "train.checkpoint_interval=100"])
    train(exp, TrainOptions(runs_dir=tmp_path, max_steps=1), DistContext(0, 1, CPU))
    with (tmp_path / "E0b" / "metrics.jsonl").open("a") as log:
        log.write("not a metrics row\n{}\n")
    carry = runner.invoke(app, ["diagnose", "--run", str(tmp_path / "E0b"), "--check", "carry-reset"],
                          env={"COLUMNS": "200"})
    assert carry.exit_code == 0 and "PASS carry-reset" in carry.output, carry.output
    variance = diagnose.check_encoder_variance(diagnose.run_subject(tmp_path / "E0b", CPU))
    assert row(variance, "run's metrics.jsonl").verdict == "warn" and variance.status != "pass", variance
    assert "the run's metrics.jsonl could not be read (" in variance.message, variance.message
