"""`etrmtrm compare` on hand-written run directories whose right answers are known."""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import CPU, EXPERIMENTS, tiny
from scipy import stats as scipy_stats
from typer.testing import CliRunner

from etrmtrm_cli import rundir
from etrmtrm_cli.analysis import baselines, compare, matrix, verdict
from etrmtrm_cli.analysis.baselines import pair_baselines
from etrmtrm_cli.analysis.matrix import steps_to
from etrmtrm_cli.analysis.per_task import TaskScore, per_task_table, pool_seeds
from etrmtrm_cli.analysis.stats import estimate
from etrmtrm_cli.analysis.text import pct_interval, with_interval
from etrmtrm_cli.cli import app
from etrmtrm_cli.experiments_file import load_experiments
from etrmtrm_cli.training.distributed import DistContext
from etrmtrm_cli.training.loop import TrainOptions, train

runner = CliRunner()
ENV = {"COLUMNS": "250"}


def write_run(runs_dir: Path, exp_id: str, acc: Sequence[float | None], *, status: str = "finished",
              loss: Sequence[float] | None = None, var: float = 0.5, share: float = 0.4, carry_norm: float = 4.0,
              update_ratio: float = 0.6, act: float = 4.0,
              em: float | None = None, total: int | None = None, overrides: Sequence[str] = (),
              seed: int | None = None, meta: dict[str, Any] | None = None) -> Path:
    """A run directory as train.py writes it: config.json of the real tiny experiment, one metrics line per
    step with train/accuracy = acc[i], an eval every 10 steps. E0a-like IDs get no carry metrics. With a
    seed: runs/<ID>/seed-<N>/, as `train --seeds` writes it."""
    exp = tiny(exp_id, [*overrides, *([f"seed={seed}"] if seed is not None else [])])
    recurrent = exp.arch.recurrent_encoder_type != "static"
    run = rundir.run_path(runs_dir, exp_id, seed)
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(exp.model_dump(mode="json")))
    steps = len(acc)
    (run / "meta.json").write_text(json.dumps({"experiment": exp_id, "seed": exp.seed, "total_steps": total or steps,
                                               **(meta or {})}))
    lines = []
    for i, a in enumerate(acc, 1):
        row: dict[str, Any] = {
            "step": i, "train/count": 32, "train/accuracy": a,
            "train/exact_accuracy": em if em is not None else (a or 0.0) / 2,
            "train/loss": loss[i - 1] if loss is not None else 1.0 / i, "train/steps": act,
            "train/encoder_cross_sample_var": var, "grad/encoder_share": share, "time/step_s": 0.1,
        }
        if recurrent:
            row.update({"train/encoder_carry_norm": carry_norm, "train/encoder_carry_change": 0.05,
                        "train/encoder_update_ratio": update_ratio,
                        "train/encoder_convergence_steps": 3.0, f"act/encoder_carry_change_{i % 4 + 1:02d}": 0.1})
        if i % 10 == 0:
            row.update({"eval/accuracy": 0.5, "eval/exact_accuracy": 0.25, "eval/pass@1": 0.1, "eval/pass@2": 0.2})
        lines.append(json.dumps(row))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    summary: dict[str, Any] = {"status": status, "step": steps, "total_steps": total or steps}
    if status != "running":
        summary["wall_time_s"] = 90.0
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def flat(value: float, n: int = 20) -> list[float | None]:
    return [value] * n


def invoke(*args: str) -> Any:
    return runner.invoke(app, ["compare", *args], env=ENV)


# --- the numbers ------------------------------------------------------------------------------------------------


def test_steps_to_uses_a_trailing_window_of_halted_examples() -> None:
    rows = [{"step": i, "train/count": 32, "train/accuracy": 0.0 if i <= 100 else 1.0} for i in range(1, 201)]
    # window 256 examples = 8 steps of 32: 7 of 8 at 1.0 (87.5 %) at step 107, 8 of 8 at step 108
    assert steps_to(rows, 0.8) == 107 and steps_to(rows, 0.9) == 108
    assert steps_to(rows[:107], 0.9) is None
    short = [{"step": i, "train/count": 1, "train/accuracy": v} for i, v in enumerate([0.5, None, 0.9, 1.0, 1.0], 1)]
    assert steps_to(short, 0.85) == 5  # 4 halted examples in all: (0.5 + 0.9 + 1 + 1) / 4 = 0.85


def test_the_trailing_window_holds_exactly_its_examples() -> None:
    # Steps of 3 slots: the window of 4 holds the 3 of the last step and 1 of the step before, not all 6.
    assert matrix.trailing_means([(1, 1.0, 3.0), (2, 0.0, 3.0)], 4) == [(2, 0.25)]
    assert matrix.trailing_means([(1, 1.0, 3.0), (2, 0.0, 3.0), (3, 1.0, 3.0)], 4) == [(2, 0.25), (3, 0.75)]


def test_steps_to_weights_each_step_by_its_halted_slots() -> None:
    # Each pair of steps: 31 slots halt at 100 %, then 1 slot at 0 %. Per example that is 31/32 = 96.9 %;
    # an unweighted mean over steps would say 50 %.
    rows = [{"step": i, "train/count": 31 if i % 2 else 1, "train/accuracy": 1.0 if i % 2 else 0.0}
            for i in range(1, 41)]
    assert steps_to(rows, 0.9) is not None and steps_to(rows, 0.99) is None


def test_final_value_is_the_weighted_mean_of_the_last_tenth() -> None:
    rows = [{"step": i, "train/accuracy": 0.5 if i <= 90 else 0.9 + (i - 91) * 0.01} for i in range(1, 101)]
    assert matrix.final_value(rows, "train/accuracy") == pytest.approx(0.945)  # no train/count: weight 1
    sparse = [{"step": i, "train/accuracy": None if i % 4 else 0.8} for i in range(1, 41)]
    assert matrix.final_value(sparse, "train/accuracy") == pytest.approx(0.8)  # NaN (no halt) steps skipped
    weighted = [{"step": i, "train/count": 3 if i % 2 else 1, "train/accuracy": 1.0 if i % 2 else 0.0,
                 "train/encoder_convergence_steps": 4.0 if i % 2 else 16.0,
                 "train/loss": 1.0 if i % 2 else 0.0} for i in range(1, 21)]
    assert matrix.final_value(weighted, "train/accuracy") == pytest.approx(0.75)  # (3 x 1 + 1 x 0) / 4
    assert matrix.final_value(weighted, "train/encoder_convergence_steps") == pytest.approx(7.0)  # (3x4 + 16)/4
    assert matrix.final_value(weighted, "train/loss") == pytest.approx(0.5)  # not a halted-slot metric


def test_matrix_row_from_a_hand_written_run(tmp_path: Path) -> None:
    acc = [0.0] * 100 + [1.0] * 100
    write_run(tmp_path, "E0b", acc, loss=[0.5, 1.5] * 100, carry_norm=4.0)
    row = matrix.run_row(rundir.load_run(tmp_path / "E0b"))
    assert (row.model, row.encoder, row.recurrent, row.status_text) == ("ETRMTRM", "recurrent_standard", True,
                                                                         "finished")
    assert row.train_acc == 1.0 and row.train_em == 0.5 and row.act_steps == 4.0
    assert row.steps_to == {0.8: 107, 0.9: 108}
    assert row.loss_cv == pytest.approx(0.5)  # std 0.5 / mean 1.0 over the last 40 steps
    assert row.carry_rms == pytest.approx(1.0)  # 4 / sqrt(hidden 16)
    assert (row.eval_step, row.eval_acc, row.eval_pass2, row.wall_time_s) == (200, 0.5, 0.2, 90.0)


def test_the_auc_counts_each_step_by_the_slots_that_halted_in_it(tmp_path: Path) -> None:
    run = write_run(tmp_path, "E0a", [1.0, 0.0] * 100)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:  # 1 slot halts (right) at every other step, 31 (wrong) at the others: 1 right in 32
        row["train/count"] = 1 if row["train/accuracy"] == 1.0 else 31
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert matrix.run_row(rundir.load_run(run)).auc == pytest.approx(1 / 32)  # not 0.5, the mean over steps
    # Chunks of at least `window` weight, each at its weighted mean step; the last takes what is left.
    assert matrix.chunk_means([(1, 1.0, 1.0), (2, 0.0, 3.0), (3, 0.5, 4.0), (4, 1.0, 1.0)], 4) == [
        (2, 0.25), (3, 0.5), (4, 1.0)]


def test_the_report_names_each_runs_decoder_and_warns_when_arms_started_from_different_ones(tmp_path: Path) -> None:
    write_run(tmp_path, "P0", flat(0.8), meta={"decoder": None, "cpu": "EPYC (avx2)"})
    write_run(tmp_path, "E0a", flat(0.9), seed=0, meta={"decoder": {"sha256": "aaaa"}, "cpu": "EPYC (avx2)"})
    write_run(tmp_path, "E0b", flat(0.9), seed=0, meta={"decoder": {"sha256": "aaaa"}, "cpu": "EPYC (avx2)"})
    one = compare.compare_runs(tmp_path, ["P0", "E0a", "E0b"], with_baselines=False)
    assert [(o.decoder, o.cpu, o.runs) for o in one.origins] == [
        ("from scratch", "EPYC (avx2)", ("P0",)), ("aaaa", "EPYC (avx2)", ("E0a s0", "E0b s0"))]
    assert invoke("P0", "E0a", "E0b", "--runs-dir", str(tmp_path), "--markdown", str(tmp_path / "one.md")
                  ).exit_code == 0
    assert "The runs that load a decoder started from one: aaaa." in (tmp_path / "one.md").read_text()

    write_run(tmp_path, "E0b", flat(0.9), seed=1, meta={"decoder": {"sha256": "bbbb"}, "cpu": "Xeon (avx512f)"})
    write_run(tmp_path, "E0a", flat(0.9), seed=1, overrides=["decoder=P0"])  # older than the record: no decoder, CPU
    assert invoke("P0", "E0a", "E0b", "--runs-dir", str(tmp_path), "--markdown", str(tmp_path / "two.md")
                  ).exit_code == 0
    report = (tmp_path / "two.md").read_text()
    assert "| bbbb | Xeon (avx512f) | E0b s1 |" in report and "| not recorded | not recorded | E0a s1 |" in report
    assert "Warning: the runs started from 2 different decoders (aaaa, bbbb)" in report
    assert "may have started from any decoder" in report and "3 kinds of CPU" in report


# --- the verdict --------------------------------------------------------------------------------------------------


def seeded(runs_dir: Path, exp_id: str, finals: Sequence[float], **kwargs: Any) -> None:
    """One run per seed 0, 1, ...: seed i's train accuracy is flat at finals[i]."""
    for seed, value in enumerate(finals):
        write_run(runs_dir, exp_id, flat(value), seed=seed, **kwargs)


BASE = [0.900, 0.905, 0.895, 0.902, 0.898]  # E0a over 5 seeds: 90 % with a 0.4-point spread
JITTER = (0.0004, -0.0003, 0.0002, -0.0001, -0.0002)  # mean 0: a difference with some spread (sd 0.03 points)


def shifted(delta: float, jitter: Sequence[float] = JITTER) -> list[float]:
    """BASE moved by `delta` (a fraction), seed by seed give or take `jitter`: a paired difference of mean `delta`
    with a spread. The same shift in every seed has none, and no interval (stats.paired_difference)."""
    return [b + delta + j for b, j in zip(BASE, jitter, strict=True)]


@pytest.mark.parametrize(("delta", "letter"), [
    (3.0, "A"), (1.2, "B"), (0.0, "C"), (-2.0, "C/D"), (-8.0, "D"),
])
def test_a_scenario_is_named_when_the_interval_lies_in_its_band(tmp_path: Path, delta: float, letter: str) -> None:
    noise = [0.001, -0.001, 0.0005, -0.0005, 0.0]  # per-seed differences within +-0.1 point of delta
    seeded(tmp_path, "E0a", BASE)
    seeded(tmp_path, "E0b", [b + delta / 100 + e for b, e in zip(BASE, noise, strict=True)])
    verdict = compare.compare_runs(tmp_path, ["E0a", "E0b"], with_baselines=False).verdict
    (scenario,) = verdict.scenarios
    assert (scenario.run, scenario.baseline, scenario.letter) == ("E0b", "E0a", letter)
    diffs = [100 * e + delta for e in noise]
    lo, hi = scipy_stats.t.interval(0.95, len(diffs) - 1, loc=np.mean(diffs), scale=scipy_stats.sem(diffs))
    assert scenario.difference is not None and scenario.difference.n == 5
    assert scenario.difference.interval == pytest.approx((lo, hi))  # an independent computation
    assert scenario.delta_pts == pytest.approx(delta)


def test_a_headline_says_whether_its_finding_holds_for_every_comparison_at_once(tmp_path: Path) -> None:
    """E3b's bold 'C/D' in the stage-b report held for itself alone: its caveat withdrew it for all 13 at once."""
    noise = [0.001, -0.001, 0.0005, -0.0005, 0.0]  # a paired sd of 0.079 points
    seeded(tmp_path, "E0a", BASE)
    seeded(tmp_path, "E0b", [b + 0.006 + e for b, e in zip(BASE, noise, strict=True)])  # +0.6: B, near its edge
    seeded(tmp_path, "E0c", [b + 0.03 + e for b, e in zip(BASE, noise, strict=True)])  # +3.0: A, far from it
    result = invoke("E0a", "E0b", "E0c", "--runs-dir", str(tmp_path))
    said = " ".join(result.output.split())
    # scipy.stats.ttest_rel: 95% [+0.502, +0.698]; for 2 at once (97.5%) [+0.476, +0.724], across B's edge at +0.5
    assert ("Scenario B for E0b vs E0a: recurrence helps slightly (n = 5, +0.60, 95% CI [+0.50, +0.70]; at 95% for "
            "this comparison alone, not for all 2 at once)") in said, result.output
    assert ("Scenario A for E0c vs E0a: recurrence helps significantly (n = 5, +3.00, 95% CI [+2.90, +3.10]; it "
            "holds for all 2 at once)") in said, result.output


def test_a_small_gap_with_a_large_spread_is_inconclusive(tmp_path: Path) -> None:
    seeded(tmp_path, "E0a", [0.90, 0.92, 0.88, 0.91, 0.89])
    seeded(tmp_path, "E0b", [0.92, 0.90, 0.90, 0.93, 0.895])  # mean +0.9 points, spread ~2 points
    (scenario,) = compare.compare_runs(tmp_path, ["E0a", "E0b"], with_baselines=False).verdict.scenarios
    assert scenario.letter == "inconclusive" and scenario.delta_pts == pytest.approx(0.9)
    result = scipy_stats.ttest_rel([92, 90, 90, 93, 89.5], [90, 92, 88, 91, 89]).confidence_interval(0.95)
    assert scenario.difference.interval == pytest.approx((result.low, result.high))
    assert any("would be detected" in e for e in scenario.evidence)


def test_one_seed_cannot_name_a_scenario(tmp_path: Path) -> None:
    write_run(tmp_path, "E0a", flat(0.90))
    write_run(tmp_path, "E0b", flat(0.95))
    (scenario,) = compare.compare_runs(tmp_path, ["E0a", "E0b"], with_baselines=False).verdict.scenarios
    assert (scenario.letter, scenario.title) == ("?", verdict.ONE_SEED)
    assert scenario.difference.n == 1 and scenario.difference.interval is None


def test_the_same_difference_in_every_seed_names_no_scenario_and_no_finding(tmp_path: Path) -> None:
    """E0b 1 point above E0a in each of 5 seeds: the t interval would be [+1, +1], a band named with certainty
    from a sample sd of 0. Neither the scenario, the parent comparison nor the decision points take it."""
    seeded(tmp_path, "E0a", BASE)
    seeded(tmp_path, "E0b", [b + 0.01 for b in BASE])
    seeded(tmp_path, "E3b", [b + 0.01 for b in BASE])  # parent E0b: the same in every seed, no difference
    found = compare.compare_runs(tmp_path, ["E0a", "E0b", "E3b"], with_baselines=False).verdict
    scenarios = {s.run: s for s in found.scenarios}
    assert (scenarios["E0b"].letter, scenarios["E0b"].title) == ("?", verdict.NO_SPREAD)
    assert scenarios["E0b"].difference.interval is None and scenarios["E0b"].difference.n == 5
    assert ("paired difference over seeds [0, 1, 2, 3, 4]: +1.00 points, n = 5, the same in every seed, no interval"
            in scenarios["E0b"].evidence[1]), scenarios["E0b"].evidence
    parents = {p.run: p for p in found.parents}
    assert parents["E3b"].finding == "no difference shown"  # [0, 0]: the runs agree
    assert parents["E0b"].finding == verdict.NO_SPREAD  # E0b's parent is E0a
    week1 = {d.point: d for d in found.decisions}["After Week 1"]
    assert not week1.decided and week1.decision == (f"not decided: {verdict.NO_SPREAD} (E0b - E0a: +1.00 points, "
                                                    "n = 5, the same in every seed, no interval)"), week1


def test_identical_configurations_are_pooled_and_a_repeated_seed_counts_once(tmp_path: Path) -> None:
    seeded(tmp_path, "E0b", [0.90, 0.91])
    seeded(tmp_path, "E2b", [0.90, 0.91, 0.92])  # E2b is E0b's configuration: seeds 0, 1 repeat E0b's
    result = compare.compare_runs(tmp_path, ["E0b", "E2b"], with_baselines=False)
    (config,) = result.configs
    assert (config.label, config.n, config.repeats) == ("E0b = E2b", 3, ("E2b s0", "E2b s1"))
    assert config.estimate("train_acc").mean == pytest.approx(0.91)
    assert result.config_diff == {}


def test_seeds_that_ran_in_different_dtypes_are_two_configurations_never_pooled(tmp_path: Path) -> None:
    """forward_dtype = auto picks per CPU; config.json records what ran, so seeds of two CPUs stay apart."""
    for seed, dtype in enumerate(["float32", "float32", "bfloat16", "bfloat16"]):
        write_run(tmp_path, "E0b", flat(0.9), seed=seed, overrides=[f"arch.forward_dtype={dtype}"])
    result = compare.compare_runs(tmp_path, ["E0b"], with_baselines=False)
    assert [(c.label, c.n, tuple(c.seeds)) for c in result.configs] == [("E0b #1", 2, (0, 1)), ("E0b #2", 2, (2, 3))]
    assert result.config_diff == {"arch.forward_dtype": ["float32", "bfloat16"]}


def test_a_parent_of_two_configurations_is_the_one_nearest_its_child(tmp_path: Path) -> None:
    """E0a's seeds 0-1 with another halt_max_steps (named first: "E0a #1"), seeds 2-3 as E0a is ("E0a #2"); E0b's
    seeds 2-3. E0b's parent comparison takes "E0a #2", the nearest; which of the two is the baseline of the scenarios
    and decision points the runs cannot tell, so those are not drawn (before: "E0a #1", scenario A from 51 %)."""
    for seed in (0, 1):
        write_run(tmp_path, "E0a", flat(0.51), seed=seed, overrides=["arch.halt_max_steps=8"])
    for seed, value in ((2, 0.90), (3, 0.91)):
        write_run(tmp_path, "E0a", flat(value), seed=seed)
        write_run(tmp_path, "E0b", flat(value + 0.02), seed=seed)
    result = compare.compare_runs(tmp_path, ["E0a", "E0b"], with_baselines=False)
    assert [c.label for c in result.configs] == ["E0a #1", "E0a #2", "E0b"]
    (parent,) = result.verdict.parents
    assert (parent.run, parent.parent, parent.difference.seeds) == ("E0b", "E0a #2", (2, 3)), parent
    assert [s.split(":")[0] for s in parent.settings] == ["arch.recurrent_encoder_type"], parent.settings
    found = result.verdict
    assert found.baseline is None and found.scenarios == [], found
    assert found.baseline_why.startswith("no baseline: E0a's runs are of 2 configurations (E0a #1, E0a #2)")
    assert [d.point for d in found.decisions] == ["After E0b"]  # E0b's own level; After Week 1 needs the baseline


def test_without_a_known_baseline_e0b_above_90_is_not_called_a_success(tmp_path: Path) -> None:
    """With E0a's finished runs of two configurations, whether E0b converges slower than ETRM cannot be judged: the
    decision between "succeeds" and "works but slower" is not taken (before: "succeeds", convergence unchecked)."""
    from etrmtrm_cli.report_render import verdict_lines

    seeded(tmp_path, "E0a", [0.95, 0.95, 0.96])
    write_run(tmp_path, "E0a", flat(0.95), seed=7, overrides=["arch.halt_max_steps=8"])
    seeded(tmp_path, "E0b", [0.95, 0.95, 0.96])
    found = compare.compare_runs(tmp_path, ["E0a", "E0b"], with_baselines=False).verdict
    (after,) = found.decisions
    assert not after.decided and after.decision.startswith('not decided between "E0b succeeds" and "E0b works but '
                                                           'converges slower than ETRM"'), after
    shown = [text for _, _, text in verdict_lines(found)]
    assert "Scenario: none drawn without a baseline (see Baseline)" in shown, shown
    assert {f.number: f for f in found.red_flags}[3].evidence == ["no baseline (see Baseline)"]


def test_an_unfinished_seed_of_another_configuration_leaves_the_verdict_as_it_was(tmp_path: Path) -> None:
    """Seed 3 of E0a and of E0b stopped in another dtype (another machine): left out of every decision until it
    finishes, it must not make the baseline or E0b ambiguous (before the fix of that: no baseline, no scenario)."""
    seeded(tmp_path, "E0a", [0.90, 0.91, 0.92])
    seeded(tmp_path, "E0b", [0.95, 0.96, 0.955])
    for exp_id in ("E0a", "E0b"):
        write_run(tmp_path, exp_id, flat(0.5, 5), seed=3, status="interrupted", total=20,
                  overrides=["arch.forward_dtype=bfloat16"])
    found = compare.compare_runs(tmp_path, ["E0a", "E0b"], with_baselines=False).verdict
    assert found.baseline == "E0a #1" and [s.run for s in found.scenarios] == ["E0b #1"], found
    decided = {d.point: d for d in found.decisions}
    assert decided["After E0b"].decided and decided["After E0b"].decision.startswith("E0b succeeds"), decided

def test_decisions_on_e0b_are_not_drawn_from_one_of_its_configurations(tmp_path: Path) -> None:
    """Three seeds of E0b at 95 % and two stray seeds of it in another configuration: After E0b was decided from
    whichever configuration came last ("E0b fails (<80%)" from the two strays)."""
    seeded(tmp_path, "E0a", [0.90, 0.91, 0.92])
    seeded(tmp_path, "E0b", [0.95, 0.95, 0.96])
    for seed in (3, 4):
        write_run(tmp_path, "E0b", flat(0.5), seed=seed, overrides=["arch.halt_max_steps=8"])
    found = compare.compare_runs(tmp_path, ["E0a", "E0b"], with_baselines=False).verdict
    decided = {d.point: d for d in found.decisions}
    assert list(decided) == ["After E0b"], decided
    assert decided["After E0b"].decision == ("not decided: E0b's runs are of 2 configurations (E0b #1, E0b #2), and "
                                             "the runs cannot tell which is E0b")


def test_each_run_is_judged_against_its_parent_naming_the_settings_that_differ(tmp_path: Path) -> None:
    seeded(tmp_path, "E0b", BASE)
    seeded(tmp_path, "E3b", shifted(-0.03))  # parent E0b; differs in train.lr
    seeded(tmp_path, "E2d", [b + 0.001 * (-1) ** i for i, b in enumerate(BASE)])  # parent E0b
    seeded(tmp_path, "E2c", BASE)  # parent E0b; the same train accuracy at every seed
    result = compare.compare_runs(tmp_path, ["E0b", "E3b", "E2d", "E2c"], with_baselines=False)
    found = {p.run: p for p in result.verdict.parents}
    assert found["E2c"].finding == "no difference shown"
    identical = "every paired seed's difference is exactly 0: the runs' train accuracies are identical"
    assert identical in found["E2c"].evidence
    assert any("would be detected (80% power)" in e for e in found["E2d"].evidence)
    assert (found["E3b"].parent, found["E3b"].finding) == ("E0b", "worse")
    assert [s for s in found["E3b"].settings if s.startswith("train.lr:")] == ["train.lr: 0.0001 -> 5e-05"]
    assert found["E2d"].finding == "no difference shown"
    assert any(s.startswith("arch.halt_exploration_prob:") for s in found["E2d"].settings)


def test_a_parent_finding_gives_the_interval_that_holds_for_all_parent_comparisons_at_once(tmp_path: Path) -> None:
    seeded(tmp_path, "E0b", BASE)
    seeded(tmp_path, "E3b", shifted(-0.03))  # about 3 points below E0b on every seed: worse at any level
    seeded(tmp_path, "E4c", [b + d for b, d in zip(BASE, (0.004, 0.012, 0.002, 0.010, 0.007), strict=True)])
    seeded(tmp_path, "E2c", [b + d for b, d in zip(BASE, (0.004, -0.003, 0.002, 0.001, -0.002), strict=True)])
    found = {p.run: p for p in compare.compare_runs(tmp_path, ["E0b", "E3b", "E4c", "E2c"],
                                                    with_baselines=False).verdict.parents}
    # 3 comparisons with a parent: each finding at 95 %, the family's at 1 - 0.05 / 3 each
    assert found["E3b"].finding == "worse"
    assert any(e.startswith("one of 3 comparisons with a parent") and e.endswith("it is [-3.05, -2.95]: still worse")
               for e in found["E3b"].evidence), found["E3b"].evidence
    # E4c: +0.70 points, sd 0.41: its 95 % interval [+0.19, +1.21] excludes 0; at 98.33 % ([-0.03, +1.43]) not
    assert found["E4c"].finding == "better"
    assert any(e.endswith("98.3333% each) it is [-0.03, +1.43]: no difference shown") for e in found["E4c"].evidence), (
        found["E4c"].evidence)
    assert not any(e.startswith("one of 3") for e in found["E2c"].evidence)  # nothing shown, nothing to correct


def test_a_scenario_names_the_settings_besides_the_encoder_in_which_the_run_differs(tmp_path: Path) -> None:
    seeded(tmp_path, "E0a", BASE)
    seeded(tmp_path, "E0b", shifted(-0.02))  # static -> recurrent_standard, nothing else
    seeded(tmp_path, "E3b", shifted(-0.02))  # recurrent_standard and half the learning rate
    found = {s.run: s for s in compare.compare_runs(tmp_path, ["E0a", "E0b", "E3b"],
                                                    with_baselines=False).verdict.scenarios}
    assert found["E3b"].letter == found["E0b"].letter == "C/D"
    assert found["E0b"].title == "recurrence slightly worse (between the plan's C and D)"
    assert found["E3b"].title == ("slightly worse (between the plan's C and D), with recurrence and train.lr "
                                  "changed together")  # the gap is not laid to recurrence alone
    assert ("E3b differs from E0a in more than its encoder type (train.lr: 0.0001 -> 5e-05): the difference is "
            "theirs together, not recurrence's alone") in found["E3b"].caveats, found["E3b"].caveats
    assert not any("more than its encoder type" in c for c in found["E0b"].caveats)


def test_a_pooled_configuration_is_judged_against_the_parent_of_its_first_named_experiment(tmp_path: Path) -> None:
    seeded(tmp_path, "E0a", BASE)
    write_run(tmp_path, "E2b", flat(0.95), seed=0)  # E0b's configuration; E2b's own parent is E0b
    write_run(tmp_path, "E0b", flat(0.95), seed=1)
    for order, label in ((["E0a", "E0b", "E2b"], "E0b = E2b"), (["E0a", "E2b", "E0b"], "E2b = E0b")):
        parents = compare.compare_runs(tmp_path, order, with_baselines=False).verdict.parents
        assert [(p.run, p.parent, p.settings) for p in parents] == [
            (label, "E0a", ["arch.recurrent_encoder_type: static -> recurrent_standard"])], parents


def test_a_scenario_gives_the_plans_comparison_with_etrm(tmp_path: Path) -> None:
    """Convergence, ACT steps and encoder variance as paired differences, beside train accuracy."""
    for seed, (a, b) in enumerate(((0.50, 0.30), (0.52, 0.31), (0.48, 0.30))):
        write_run(tmp_path, "E0a", flat(0.90), var=a, seed=seed)
        write_run(tmp_path, "E0b", [0.5] * (seed + 2) + flat(0.90), var=b, act=6.0 + 0.1 * seed, seed=seed)
    (found,) = compare.compare_runs(tmp_path, ["E0a", "E0b"], with_baselines=False).verdict.scenarios
    lines = {e.split(":")[0]: e for e in found.evidence}
    assert lines["encoder variance"] == "encoder variance: -0.20, 95% CI [-0.23, -0.16], n = 3", lines
    assert lines["ACT steps"] == "ACT steps: +2.10 steps, 95% CI [+1.85, +2.35], n = 3"  # E0b - E0a: 2.0, 2.1, 2.2
    assert lines["steps to 90%"].startswith("steps to 90%: +3.00 steps, 95% CI"), lines


def test_a_ceiling_is_named_and_judged_on_figures_with_room(tmp_path: Path) -> None:
    seeded(tmp_path, "E0a", [0.985, 0.99, 0.98])
    seeded(tmp_path, "E0b", [0.985, 0.99, 0.98], em=0.3)
    (scenario,) = compare.compare_runs(tmp_path, ["E0a", "E0b"], with_baselines=False).verdict.scenarios
    assert any(c.startswith("ceiling: E0a is at 98.5%") for c in scenario.caveats)
    figures = [e.split(":")[0] for e in scenario.evidence if ":" in e]
    for figure in ("train exact accuracy", "area under train accuracy", "steps to 90%", "ACT steps"):
        assert figures.count(figure) == 1, scenario.evidence  # each once, at a ceiling too


def test_several_scenarios_each_give_the_interval_that_holds_for_all_of_them(tmp_path: Path) -> None:
    seeded(tmp_path, "E0a", BASE)
    seeded(tmp_path, "E0b", [b + 0.03 + 0.001 * (-1) ** i for i, b in enumerate(BASE)])  # +3 points, tight
    (alone,) = compare.compare_runs(tmp_path, ["E0a", "E0b"], with_baselines=False).verdict.scenarios
    assert alone.letter == "A" and not any(c.startswith("one of") for c in alone.caveats)
    seeded(tmp_path, "E3c", [b + 0.01 for b in BASE])
    seeded(tmp_path, "E2d", BASE)
    found = {s.run: s for s in compare.compare_runs(tmp_path, ["E0a", "E0b", "E3c", "E2d"],
                                                    with_baselines=False).verdict.scenarios}
    assert found["E0b"].letter == "A"  # each scenario's own interval stays at 95%
    (family,) = [c for c in found["E0b"].caveats if c.startswith("one of 3 configurations judged against E0a")]
    wide = re.search(r"\(Bonferroni, 98.3333% each\) it is \[([-+.\d]+), ([-+.\d]+)\], still scenario A$", family)
    lo, hi = found["E0b"].difference.interval
    assert wide and float(wide[1]) < lo and float(wide[2]) > hi, family  # wider than the 95% one, still in A


def decisions(tmp_path: Path, ids: Sequence[str]) -> dict[str, verdict.Decision]:
    return {d.point: d for d in compare.compare_runs(tmp_path, ids, with_baselines=False).verdict.decisions}


@pytest.mark.parametrize(("e0b", "decided", "starts"), [
    ([0.95, 0.96, 0.94], True, "E0b succeeds"),
    ([0.70, 0.72, 0.71], True, "E0b fails"),
    ([0.85, 0.86, 0.84], True, "neither branch"),
    ([0.88, 0.93, 0.90], False, "not decided: the 95% interval [84.1%, 96.6%] reaches 90.0%"),
    ([0.70, 0.99, 0.85], False,
     "not decided: the 95% interval [48.6%, 100.0%] (cut from a t interval past 0-100%) reaches 80.0% and 90.0%"),
    ([0.95], False, f"not decided: {verdict.ONE_SEED}"),
])
def test_after_e0b_takes_the_plans_branch_only_by_the_whole_interval(
        tmp_path: Path, e0b: list[float], decided: bool, starts: str) -> None:
    seeded(tmp_path, "E0b", e0b)
    (decision,) = decisions(tmp_path, ["E0b"]).values()
    assert decision.point == "After E0b" and decision.decided == decided
    assert decision.decision.startswith(starts), decision.decision


@pytest.mark.parametrize(("delta", "decided", "starts"), [
    (3.0, True, "recurrence shows improvement"),
    (0.0, True, "recurrence shows no improvement"),
    (-8.0, True, "recurrence shows no improvement"),
])
def test_after_week_1_is_the_paired_gain_of_e0b_over_the_static_baseline(
        tmp_path: Path, delta: float, decided: bool, starts: str) -> None:
    seeded(tmp_path, "E0a", BASE)
    seeded(tmp_path, "E0b", [b + delta / 100 + 0.001 * (-1) ** i for i, b in enumerate(BASE)])
    found = decisions(tmp_path, ["E0a", "E0b"])
    assert list(found) == ["After E0b", "After Week 1"]
    assert found["After Week 1"].decided == decided
    assert found["After Week 1"].decision.startswith(starts), found["After Week 1"].decision
    assert found["After Week 1"].decision.endswith(f"; {found['After Week 1'].evidence[0]})")  # its n and interval
    assert found["After Week 1"].evidence[0].startswith("E0b - E0a: ") and found["After Week 1"].evidence[0].endswith(
        "n = 5")


def test_after_week_1_is_not_decided_when_the_interval_reaches_across_the_gain_line(tmp_path: Path) -> None:
    seeded(tmp_path, "E0a", [0.90, 0.92, 0.88, 0.91, 0.89])
    seeded(tmp_path, "E0b", [0.92, 0.90, 0.90, 0.93, 0.895])  # +0.9 points, interval about [-1.6, +3.4]
    week1 = decisions(tmp_path, ["E0a", "E0b"])["After Week 1"]
    assert not week1.decided
    assert week1.decision == ("not decided: an interval reaches across +0.5 points (E0b - E0a: +0.90 points, 95% CI "
                              "[-1.27, +3.07], n = 5)")  # scipy.stats.ttest_rel: [-1.268, +3.068]
    assert week1.evidence[0].startswith("E0b - E0a: +0.90 points, 95% CI [")


def test_after_week_2_names_a_week_2_variant_better_than_etrm_and_ignores_e0b_repeats(tmp_path: Path) -> None:
    seeded(tmp_path, "E0a", BASE)
    seeded(tmp_path, "E0b", BASE)
    seeded(tmp_path, "E2b", BASE)  # E0b's configuration: pooled with it, no week-2 variant
    seeded(tmp_path, "E3b", shifted(0.03))  # parent E0b, about 3 points above E0a on every seed
    seeded(tmp_path, "E2d", BASE)
    seeded(tmp_path, "E3c", [b + 0.05 for b in BASE])  # week 3: after the decision point, not in its family
    week2 = decisions(tmp_path, ["E0a", "E0b", "E2b", "E3b", "E2d", "E3c"])["After Week 2"]
    assert week2.decided and week2.decision.startswith("a configuration significantly better than ETRM")
    assert "(E3b: at least +2 points, the plan's scenario A)" in week2.decision
    assert [e.split(":")[0] for e in week2.evidence] == ["E3b - E0a", "E2d - E0a", "2 comparisons"]
    assert "97.5% CI" in week2.evidence[0]  # Bonferroni: 95% for the pair


def tight(delta_pts: float) -> list[float]:
    """BASE moved by delta_pts points, give or take 0.1: a paired interval of about +-0.15 around delta_pts."""
    return [b + delta_pts / 100 + 0.001 * (-1) ** i for i, b in enumerate(BASE)]


@pytest.mark.parametrize(("e3b", "e2d", "decided", "decision"), [
    (3.0, 0.0, True, "a configuration significantly better than ETRM"),
    (0.1, -0.1, True, "every ETRMTRM configuration similar to ETRM: recurrence may not matter here; document the "
                      "null result (every interval inside ±0.5 points, the plan's scenario C)"),
    (1.2, 0.0, True, "neither branch: no configuration significantly better than ETRM (every interval below +2 "
                     "points) and not all similar to it (E3b: outside ±0.5 points), where the plan names no action"),
    (-8.0, -8.0, True, "neither branch: no configuration significantly better than ETRM (every interval below +2 "
                       "points) and not all similar to it (E3b, E2d: outside ±0.5 points), where the plan names no "
                       "action"),
    (2.0, 0.0, False, "not decided: an interval reaches across +2 points"),
    (0.45, 0.0, False, "not decided: an interval reaches across +0.5 points"),
])
def test_after_week_2_takes_the_plans_scenario_lines(tmp_path: Path, e3b: float, e2d: float, decided: bool,
                                                      decision: str) -> None:
    """"Significantly better" is scenario A (at least +2 points), "all similar" is scenario C (inside +-0.5); a
    slight gain or a clear loss is neither branch, not a null result."""
    seeded(tmp_path, "E0a", BASE)
    seeded(tmp_path, "E3b", tight(e3b))
    seeded(tmp_path, "E2d", tight(e2d))
    week2 = decisions(tmp_path, ["E0a", "E3b", "E2d"])["After Week 2"]
    assert week2.decided == decided and week2.decision.startswith(decision), week2.decision


def test_after_week_2_does_not_call_the_variants_similar_while_one_has_no_finished_run(tmp_path: Path) -> None:
    seeded(tmp_path, "E0a", BASE)
    seeded(tmp_path, "E3b", tight(0.1))  # similar to E0a
    write_run(tmp_path, "E2d", flat(0.99)[:5], status="running", seed=0)
    week2 = decisions(tmp_path, ["E0a", "E3b", "E2d"])["After Week 2"]
    assert not week2.decided and week2.decision == "not decided: no finished run yet of E2d", week2.decision


def test_after_e0b_names_a_success_that_converges_slower_than_etrm(tmp_path: Path) -> None:
    """The plan's "If E0b works but slower than ETRM": above 90%, but more steps to 90% on every paired seed."""
    for seed, (fast, slow) in enumerate(((5, 20), (6, 22), (4, 21))):
        write_run(tmp_path, "E0a", [0.5] * fast + [0.95] * (40 - fast), seed=seed)
        write_run(tmp_path, "E0b", [0.5] * slow + [0.95] * (40 - slow), seed=seed)
    after = decisions(tmp_path, ["E0a", "E0b"])["After E0b"]
    assert after.decided and after.decision.startswith("E0b works but converges slower than ETRM"), after.decision
    assert any(e.startswith("steps to 90%, E0b - E0a: +16.00 steps, 95% CI") for e in after.evidence), after.evidence
    for seed, fast in enumerate((5, 6, 4)):  # E0b as fast as E0a: it succeeds
        shutil.rmtree(rundir.run_path(tmp_path, "E0b", seed))
        write_run(tmp_path, "E0b", [0.5] * fast + [0.95] * (40 - fast), seed=seed)
    after = decisions(tmp_path, ["E0a", "E0b"])["After E0b"]
    assert after.decision.startswith("E0b succeeds (>90% train acc; converging slower than ETRM is not shown)"), \
        after.decision  # not shown slower is not shown as fast: the plan's "validated" is quoted, not endorsed
    assert "steps to 90%, E0b - E0a: +0.00 steps, 95% CI [+0.00, +0.00], n = 3" in after.evidence, after.evidence


def test_slower_is_not_shown_where_the_baseline_never_reached_90_in_a_seed_where_e0b_did(tmp_path: Path) -> None:
    """Seeds 0-2 as in the test above; in seed 3 E0a never reaches 90% in 40 steps and E0b does at step 11. Left out
    of the paired difference, that seed would leave "slower" standing on the seeds where E0b was slower alone."""
    for seed, (fast, slow) in enumerate(((5, 20), (6, 22), (4, 21), (40, 10))):
        write_run(tmp_path, "E0a", [0.5] * fast + [0.95] * (40 - fast), seed=seed)
        write_run(tmp_path, "E0b", [0.5] * slow + [0.95] * (40 - slow), seed=seed)
    after = decisions(tmp_path, ["E0a", "E0b"])["After E0b"]
    assert after.decision.startswith("E0b succeeds"), after.decision
    assert any(e.startswith("steps to 90%, E0b - E0a: +16.00 steps, 95% CI") and "never: 1 of 4 E0a" in e
               for e in after.evidence), after.evidence
    assert ("not shown slower: E0a never reached 90% in seed(s) [3], where E0b did, faster there than the difference "
            "above can count") in after.evidence, after.evidence


def test_a_seed_that_logged_no_train_accuracy_is_not_called_one_that_never_got_there(tmp_path: Path) -> None:
    seeded(tmp_path, "E0a", [0.95, 0.95])
    write_run(tmp_path, "E0a", [None] * 20, seed=2)  # no slot halted: nothing logged, not slow
    seeded(tmp_path, "E0b", [0.95, 0.85, 0.95])  # seed 1 never reaches 90%
    (parent,) = compare.compare_runs(tmp_path, ["E0a", "E0b"], with_baselines=False).verdict.parents
    (line,) = [e for e in parent.evidence if e.startswith("steps to 90%")]
    assert line.endswith("over the seeds that got there; never: 1 of 3 E0b (the slowest seeds, left out: this "
                         "understates how slow E0b is); not logged: 1 of 3 E0a"), line

def test_no_gain_is_not_said_while_a_configuration_has_no_finished_run(tmp_path: Path) -> None:
    seeded(tmp_path, "E0a", BASE)
    seeded(tmp_path, "E0b", BASE)
    seeded(tmp_path, "E1a", shifted(-0.02))  # finished, below E0a on every seed
    write_run(tmp_path, "E2c", flat(0.99)[:5], status="running", seed=0)  # week 2, nothing finished yet
    result = compare.compare_runs(tmp_path, ["E0a", "E0b", "E1a", "E2c"], with_baselines=False).verdict
    week2 = {d.point: d for d in result.decisions}["After Week 2"]
    assert not week2.decided and week2.decision == "not decided: no finished run yet of E2c", week2
    assert "E2c s0 is in progress at step 5 of 5: left out until it finishes" in week2.evidence, week2.evidence
    flag = {f.number: f for f in result.red_flags}[3]
    assert not flag.assessed and "no finished run yet of E2c" in flag.evidence[-1], flag


def test_the_bonferroni_family_counts_the_configurations_still_running(tmp_path: Path) -> None:
    """A gain shown among 1 of 4 planned comparisons must hold at the level of all 4, not at 95%."""
    seeded(tmp_path, "E0a", BASE)
    seeded(tmp_path, "E1a", [b + 0.008 + 0.001 * (-1) ** i for i, b in enumerate(BASE)])  # about +0.8, tight
    for exp_id in ("E2c", "E2d", "E3b"):
        write_run(tmp_path, exp_id, flat(0.99)[:5], status="running", seed=0)
    week2 = decisions(tmp_path, ["E0a", "E1a", "E2c", "E2d", "E3b"])["After Week 2"]
    assert week2.evidence[0].startswith("E1a - E0a: +0.82 points, 98.75% CI"), week2.evidence
    assert "4 comparisons: each interval at 98.75% (Bonferroni), 95% for all" in week2.evidence


def test_after_week_2_is_the_plans_week_2_queue() -> None:
    assert verdict.WEEK_2 == set(load_experiments(EXPERIMENTS).queues["week2"])


def flags(tmp_path: Path, ids: Sequence[str]) -> dict[int, verdict.RedFlag]:
    return {f.number: f for f in compare.compare_runs(tmp_path, ids, with_baselines=False).verdict.red_flags}


def test_healthy_runs_raise_no_red_flag(tmp_path: Path) -> None:
    seeded(tmp_path, "E0a", BASE)
    seeded(tmp_path, "E0b", shifted(0.03))
    assert [(f.number, f.assessed, f.holds) for f in flags(tmp_path, ["E0a", "E0b"]).values()] == \
        [(1, True, False), (2, True, False), (3, True, False)]
    write_run(tmp_path, "E1a", flat(0.90))  # one seed: red flag 3 cannot be assessed
    assert not flags(tmp_path, ["E0a", "E1a"])[3].assessed
    write_run(tmp_path, "E2c", [None] * 5)  # no slot halted: no train accuracy to weigh, though the baseline is there
    assert flags(tmp_path, ["E0a", "E2c"])[3].evidence == [
        "needs train accuracy logged by a static-encoder baseline and by at least one recurrent run"]


@pytest.mark.parametrize(("kwargs", "evidence"), [
    ({"acc": flat(0.40)}, "train acc 40.0% < 50.0%"),
    ({"var": 0.05}, "encoder var 0.05 < 0.1 (collapse)"),
    ({"share": 0.01}, "grad encoder share² 1.00e-04 < 0.0025 (starved)"),
])
def test_red_flag_1_implementation_bug(tmp_path: Path, kwargs: dict[str, Any], evidence: str) -> None:
    write_run(tmp_path, "E0a", flat(0.90))
    write_run(tmp_path, "E0b", **{"acc": flat(0.91), **kwargs})
    flag = flags(tmp_path, ["E0a", "E0b"])[1]
    assert flag.holds and flag.evidence == [f"E0b: {evidence}"]


def test_red_flag_1_reads_below_50_percent_as_a_bug_in_e0b_only(tmp_path: Path) -> None:
    """The plan's "E0b fails completely (<50% train acc)": a variant that merely trains worse is not a bug."""
    write_run(tmp_path, "E0a", flat(0.90))
    write_run(tmp_path, "E0b", flat(0.91))
    write_run(tmp_path, "E3b", flat(0.40))  # E0b at a lower learning rate
    assert not flags(tmp_path, ["E0a", "E0b", "E3b"])[1].holds
    write_run(tmp_path, "E2b", flat(0.40), seed=1)  # E0b's own configuration under another name
    flag = flags(tmp_path, ["E0a", "E0b", "E2b"])[1]
    assert flag.holds and flag.evidence == ["E2b s1: train acc 40.0% < 50.0%"], flag.evidence
    shutil.rmtree(rundir.run_path(tmp_path, "E0b", None))
    write_run(tmp_path, "E0b", flat(0.91)[:5], status="running", total=20)  # E0b still running: E2b is still it
    assert "E2b s1: train acc 40.0% < 50.0%" in flags(tmp_path, ["E0a", "E0b", "E2b"])[1].evidence


@pytest.mark.parametrize(("kwargs", "evidence"), [
    ({"loss": [0.2, 1.0] * 10}, "train/loss CV 0.667 > 0.5"),
    ({"loss": [0.5 + 0.1 * i for i in range(20)]}, "diverging"),
    ({"update_ratio": 60.0}, "carry update ratio 60 > 10 (exploding)"),
    ({"update_ratio": 0.001}, "carry update ratio 0.001 < 0.01 (vanishing)"),
    ({"carry_norm": 400.0}, None),  # the carry's RMS is 1 by construction: not what flags instability
])
def test_red_flag_2_instability(tmp_path: Path, kwargs: dict[str, Any], evidence: str | None) -> None:
    write_run(tmp_path, "E0a", flat(0.90))
    write_run(tmp_path, "E0b", flat(0.91), **kwargs)
    flag = flags(tmp_path, ["E0a", "E0b"])[2]
    if evidence is None:
        assert not flag.holds, flag.evidence
        return
    assert flag.holds and len(flag.evidence) == 1 and flag.evidence[0].startswith("E0b:")
    assert evidence in flag.evidence[0]


def test_red_flag_3_no_improvement_and_the_best_configuration(tmp_path: Path) -> None:
    seeded(tmp_path, "E0a", BASE)
    seeded(tmp_path, "E0b", shifted(0.002))
    seeded(tmp_path, "E1a", shifted(-0.02, JITTER[::-1]))
    flag = flags(tmp_path, ["E0a", "E0b", "E1a"])[3]
    assert flag.assessed and flag.holds
    assert flag.evidence[0].startswith("E0b - E0a: +0.20 points, 97.5% CI [+0.15, +0.25], n = 5")
    separated = compare.compare_runs(tmp_path, ["E0a", "E0b", "E1a"], with_baselines=False).verdict.best
    assert separated is not None and (separated.run, separated.not_separated) == ("E0b", ())  # above both everywhere
    assert separated.evidence[1:] == ["its 2 leads are each at 97.5%, so that all hold at once at 95% (Bonferroni)",
                                      "train acc over the runner-up E0a: +0.20 points, 97.5% CI [+0.15, +0.25], n = 5"]
    rotated = JITTER[1:] + JITTER[:1]
    seeded(tmp_path, "E2c", shifted(0.05, rotated), em=0.6)
    seeded(tmp_path, "E2d", shifted(0.05, rotated), em=0.7)  # the same as E2c's: +0.00, [0, 0]
    result = compare.compare_runs(tmp_path, ["E0a", "E0b", "E1a", "E2c", "E2d"], with_baselines=False)
    assert not {f.number: f for f in result.verdict.red_flags}[3].holds
    best = result.verdict.best
    assert best is not None and best.run == "E2d" and best.not_separated == ("E2c",)  # ties E2c, wins on EM
    assert best.evidence[1:3] == ["its 4 leads are each at 98.75%, so that all hold at once at 95% (Bonferroni)",
                                  "train acc over the runner-up E2c: +0.00 points, 98.75% CI [+0.00, +0.00], n = 5; "
                                  "not separated, either may be the best"]
    assert best.evidence[3].startswith("train acc over E0a: +5.00 points")
    assert [s.letter for s in result.verdict.scenarios] == ["C", "C/D", "A", "A"]


def test_the_best_configuration_is_separated_from_every_other_not_only_the_runner_up(tmp_path: Path) -> None:
    seeded(tmp_path, "E0a", shifted(0.05))
    seeded(tmp_path, "E0b", shifted(0.048, JITTER[::-1]))  # the runner-up, about 0.2 points below on every seed
    seeded(tmp_path, "E1a", [0.96, 0.90])  # third by its mean, but two seeds that disagree
    best = compare.compare_runs(tmp_path, ["E0a", "E0b", "E1a"], with_baselines=False).verdict.best
    assert best is not None and best.run == "E0a" and best.not_separated == ("E1a",), best
    assert best.evidence[1:4] == ["the baseline E0a has the highest mean",  # scipy.stats.ttest_rel at 97.5%
                                  "its 2 leads are each at 97.5%, so that all hold at once at 95% (Bonferroni)",
                                  "train acc over the runner-up E0b: +0.20 points, 97.5% CI [+0.13, +0.27], n = 5"]
    assert best.evidence[4].startswith("train acc over E1a: ") and best.evidence[4].endswith("either may be the best")


def test_a_best_mean_behind_on_the_shared_seeds_says_so(tmp_path: Path) -> None:
    seeded(tmp_path, "E2c", [0.90, 0.90, 0.99, 0.99, 0.99])  # the highest mean, from seeds 2-4
    seeded(tmp_path, "E2d", [0.93, 0.931])  # above E2c on both seeds they share
    best = compare.compare_runs(tmp_path, ["E2c", "E2d"], with_baselines=False).verdict.best
    assert best is not None and best.run == "E2c" and best.not_separated == ("E2d",)
    assert best.evidence[2].endswith("; E2d is ahead on the seeds both have"), best.evidence


def test_the_decoder_pretraining_is_no_candidate_and_has_no_encoder_gradient(tmp_path: Path) -> None:
    write_run(tmp_path, "P0", flat(0.99))
    write_run(tmp_path, "E0a", flat(0.90))
    write_run(tmp_path, "E0b", flat(0.91))
    result = compare.compare_runs(tmp_path, ["P0", "E0a", "E0b"], with_baselines=False)
    assert result.verdict.best is not None and result.verdict.best.run == "E0b"  # not P0's 99 %
    p0 = result.rows[0]
    assert p0.model == "TRM" and p0.grad_share is None and p0.grad_norm is None
    assert result.rows[1].grad_share == pytest.approx(0.4)


def test_unfinished_runs_are_marked_and_left_out_of_every_figure_over_seeds(tmp_path: Path) -> None:
    seeded(tmp_path, "E0a", [0.90, 0.91])
    write_run(tmp_path, "E0b", flat(0.93), seed=0)
    write_run(tmp_path, "E0b", flat(0.50, 40), seed=1, status="running", total=100)
    write_run(tmp_path, "E0b", flat(0.40, 30), seed=2, status="interrupted", total=100)
    result = invoke("E0a", "E0b", "--runs-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "in progress at step 40 of 100" in result.output and "interrupted at step 30 of 100" in result.output
    cmp = compare.compare_runs(tmp_path, ["E0a", "E0b"], with_baselines=False)
    e0b = cmp.configs[1]
    assert (e0b.n, [r.label for r in e0b.pending]) == (1, ["E0b s1", "E0b s2"])
    assert e0b.estimate("train_acc").mean == pytest.approx(0.93)  # the unfinished seeds' 50% and 40% are not in it
    (scenario,) = cmp.verdict.scenarios
    assert scenario.difference.seeds == (0,)
    assert "seeds left out of the paired difference (a value missing in one arm): E0a s1" in scenario.caveats
    assert "E0b s1 is in progress at step 40 of 100: left out until it finishes" in scenario.caveats
    flag1 = {f.number: f for f in cmp.verdict.red_flags}[1]
    assert not flag1.holds  # 40% < 50% would be a red flag, but the run has not finished
    assert "not judged until it finishes: E0b s2 (interrupted at step 30 of 100)" in flag1.evidence
    assert "Red flag 1 (implementation bug): does not hold in the finished runs" in result.output  # not at all yet


def test_red_flag_3_that_does_not_hold_while_a_seed_trains_says_so(tmp_path: Path) -> None:
    seeded(tmp_path, "E0a", BASE)
    seeded(tmp_path, "E0b", shifted(0.03))  # a gain of 3 points: no "no improvement"
    write_run(tmp_path, "E0b", flat(0.5, 10), seed=5, status="running", total=100)
    result = invoke("E0a", "E0b", "--runs-dir", str(tmp_path))
    assert "Red flag 3 (no improvement): does not hold in the finished runs" in result.output, result.output


def test_every_paired_comparison_names_the_seeds_it_left_out(tmp_path: Path) -> None:
    seeded(tmp_path, "E0a", BASE)
    seeded(tmp_path, "E0b", BASE)
    seeded(tmp_path, "E1a", BASE[:3])  # seeds 0-2 only: seeds 3 and 4 of E0a and E0b have no partner
    result = compare.compare_runs(tmp_path, ["E0a", "E0b", "E1a"], with_baselines=False).verdict
    left_out = "seeds left out of the paired difference (a value missing in one arm): "
    (e1a,) = [p for p in result.parents if p.run == "E1a"]
    assert left_out + "E0b s3, E0b s4" in e1a.evidence, e1a.evidence
    (week_2,) = [d for d in result.decisions if d.point == "After Week 2"]
    assert left_out + "E0a s3, E0a s4" in week_2.evidence, week_2.evidence
    assert result.best is not None and left_out + "E0a s3, E0a s4" in result.best.evidence, result.best.evidence


def test_a_run_without_a_finished_seed_is_not_yet_compared_with_its_parent(tmp_path: Path) -> None:
    write_run(tmp_path, "E0a", flat(0.90), seed=0)
    write_run(tmp_path, "E0b", flat(0.50, 40), seed=0, status="running", total=100)
    (parent,) = compare.compare_runs(tmp_path, ["E0a", "E0b"], with_baselines=False).verdict.parents
    assert (parent.finding, parent.evidence) == (
        "no finished run yet", ["E0b s0 is in progress at step 40 of 100: left out until it finishes"])


def test_steps_to_90_names_the_seeds_that_never_got_there(tmp_path: Path) -> None:
    seeded(tmp_path, "E0a", [0.95, 0.95, 0.95])
    seeded(tmp_path, "E0b", [0.95, 0.85, 0.85])  # seeds 1 and 2 never reach 90%
    (parent,) = compare.compare_runs(tmp_path, ["E0a", "E0b"], with_baselines=False).verdict.parents
    (line,) = [e for e in parent.evidence if e.startswith("steps to 90%")]
    assert "n = 1" in line and line.endswith("over the seeds that got there; never: 2 of 3 E0b (the slowest seeds, "
                                             "left out: this understates how slow E0b is)")


def test_steps_to_90_says_so_when_no_seed_of_both_arms_got_there(tmp_path: Path) -> None:
    seeded(tmp_path, "E0a", [0.95, 0.85])
    seeded(tmp_path, "E0b", [0.85, 0.95])  # each arm reaches 90% in the seed where the other does not
    (parent,) = compare.compare_runs(tmp_path, ["E0a", "E0b"], with_baselines=False).verdict.parents
    assert "steps to 90%: no seed of both arms got there (never: 1 of 2 E0a, 1 of 2 E0b)" in parent.evidence


def test_a_figure_that_fewer_seeds_have_states_its_own_n(tmp_path: Path) -> None:
    write_run(tmp_path, "E0a", flat(0.90, 20), seed=0)  # evals at steps 10 and 20
    write_run(tmp_path, "E0a", flat(0.92, 5), seed=1)  # no eval logged
    write_run(tmp_path, "E0a", flat(0.50, 5), seed=2, status="running", total=100)
    result = invoke("E0a", "--runs-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.output.splitlines() if line.startswith("│ E0a ") and "unfinished" in line]
    cells = [c.strip() for c in row.strip("│").split("│")]
    assert cells[1] == "2 (0, 1); 1 unfinished, left out"
    assert cells[2] == "91.0% ± 12.7†"  # seeds 0 and 1 only: t_.975,1 * sd / sqrt(2) = 12.706 * 0.01; past 100 %
    assert cells[-3] == "50.0% (n = 1)"  # eval acc: seed 0 alone


def test_a_finished_run_of_a_seed_counts_before_an_unfinished_repeat(tmp_path: Path) -> None:
    write_run(tmp_path, "E2b", flat(0.50, 40), seed=0, status="running", total=100)  # E0b's configuration
    write_run(tmp_path, "E0b", flat(0.93), seed=0)
    (config,) = compare.compare_runs(tmp_path, ["E2b", "E0b"], with_baselines=False).configs
    assert (config.seeds[0].label, config.repeats) == ("E0b s0", ("E2b s0",))


def test_missing_run_names_the_command_that_makes_it(tmp_path: Path) -> None:
    write_run(tmp_path, "E0a", flat(0.90))
    result = invoke("E0a", "E2c", "--runs-dir", str(tmp_path))
    assert result.exit_code == 1
    assert "no such run" in result.output and "etrmtrm train E2c" in result.output
    assert "Traceback" not in result.output
    typo = invoke("E0a", "E0x", "--runs-dir", str(tmp_path), "--experiments", str(EXPERIMENTS))
    said = " ".join(typo.output.split())
    assert typo.exit_code == 1, typo.output  # not "produce it with `etrmtrm train E0x`", which would fail too
    assert (f"{tmp_path / 'E0x'}: no such run, and {EXPERIMENTS}: unknown experiment or queue 'E0x'; did you mean"
            in said), said


def test_a_queue_name_stands_for_its_experiments(tmp_path: Path) -> None:
    for exp_id in ("E0a", "E1a", "E2c", "E2d", "E3b"):  # E0a and the queue week2 of the real experiments file
        write_run(tmp_path, exp_id, flat(0.90))
    result = invoke("E0a", "week2", "--runs-dir", str(tmp_path), "--experiments", str(EXPERIMENTS))
    assert result.exit_code == 0, result.output
    assert all(f"│ {exp_id} " in result.output for exp_id in ("E0a", "E1a", "E2c", "E2d", "E3b"))
    missing = invoke("week3", "--runs-dir", str(tmp_path), "--experiments", str(EXPERIMENTS))
    assert missing.exit_code == 1 and "E2a: no such run" in missing.output  # week3's first experiment
    no_file = invoke("week2", "--runs-dir", str(tmp_path), "--experiments", str(tmp_path / "none.toml"))
    assert no_file.exit_code == 1 and "week2: no such run" in no_file.output  # without the file, a name is a run's


def test_config_differences(tmp_path: Path) -> None:
    write_run(tmp_path, "E0a", flat(0.90))
    write_run(tmp_path, "E2c", flat(0.90))
    diff = compare.compare_runs(tmp_path, ["E0a", "E2c"], with_baselines=False).config_diff
    assert diff == {"arch.halt_max_steps": [16, 32], "arch.recurrent_encoder_type": ["static", "recurrent_standard"]}


def test_config_differences_leave_out_the_encoder_of_a_trm_run(tmp_path: Path) -> None:
    write_run(tmp_path, "P0", flat(0.90))
    write_run(tmp_path, "E0a", flat(0.90))
    diff = compare.compare_runs(tmp_path, ["P0", "E0a"], with_baselines=False).config_diff
    assert diff["model"] == ["trm", "etrm"]
    assert "arch.recurrent_encoder_type" not in diff  # P0 has no encoder: its default type is no difference
    assert not any(key.startswith("arch.encoder_") for key in diff)
    write_run(tmp_path, "E1a", flat(0.90))
    diff = compare.compare_runs(tmp_path, ["P0", "E0a", "E1a"], with_baselines=False).config_diff
    assert diff["arch.encoder_num_layers"] == [None, 2, 4]  # shown, as "—" for P0


# --- output: terminal, markdown, plot ---------------------------------------------------------------------------


@pytest.mark.parametrize(("option", "where", "said"), [
    ("--markdown", "runs/E0a/summary.json", "inside the run directory"),  # it replaced the run's summary
    ("--markdown", "runs/E0a/notes/report.md", "inside the run directory"),
    ("--plot", "runs/E0a/model.safetensors", "give a name ending in .png"),  # it replaced the final weights
    ("--plot", "runs/E0a/curves.png", "inside the run directory"),
    ("--plot", "curves.txt", "the file is written as PNG; give a name ending in .png"),
])
def test_a_report_is_never_written_into_a_run(tmp_path: Path, option: str, where: str, said: str) -> None:
    runs = tmp_path / "runs"
    write_run(runs, "E0a", flat(0.9))
    write_run(runs, "E0b", flat(0.9))
    before = {p: p.read_bytes() for p in runs.rglob("*") if p.is_file()}
    result = invoke("E0a", "E0b", "--runs-dir", str(runs), option, str(tmp_path / where))
    assert result.exit_code == 1 and said in " ".join(result.output.split()), result.output
    assert {p: p.read_bytes() for p in runs.rglob("*") if p.is_file()} == before  # nothing written or replaced


@pytest.mark.parametrize(("damage", "said"), [
    ("empty", "metrics.jsonl: holds no metrics row, in a finished run"),
    ("cut", "metrics.jsonl: ends at step 12, where the finished run trained 20 steps (cut short?)"),
    ("folder", "metrics.jsonl: not a file, in a finished run"),
    ("garbage", "metrics.jsonl: line 3 is not a metrics row (a JSON object with an integer step)"),
])
def test_a_finished_run_whose_metrics_are_damaged_is_named(tmp_path: Path, damage: str, said: str) -> None:
    """An empty, cut or missing metrics file of a finished run showed as figures missing ("—"), never named."""
    write_run(tmp_path, "E0a", flat(0.9))
    metrics = write_run(tmp_path, "E0b", flat(0.9)) / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    if damage == "folder":
        metrics.unlink()
        metrics.mkdir()
    else:
        metrics.write_text({"empty": "", "cut": "".join(lines[:12]),
                            "garbage": "".join([*lines[:2], "not json\n", *lines[2:]])}[damage])
    result = invoke("E0a", "E0b", "--runs-dir", str(tmp_path))
    assert result.exit_code == 1 and f"{tmp_path / 'E0b'}/{said}" in " ".join(result.output.split()), result.output

def test_a_report_replaces_an_earlier_report_and_no_other_file(tmp_path: Path) -> None:
    """`--markdown experiments.toml` replaced the experiments file with the report."""
    runs = tmp_path / "runs"
    write_run(runs, "E0a", flat(0.9))
    write_run(runs, "E0b", flat(0.9))
    kept = tmp_path / "experiments.toml"
    kept.write_text("[base]\n")
    refused = invoke("E0a", "E0b", "--runs-dir", str(runs), "--markdown", str(kept))
    assert refused.exit_code == 1, refused.output
    assert (f"--markdown {kept}: exists and is not a Markdown report of `compare`, which is all a report replaces"
            in " ".join(refused.output.split())), refused.output
    assert kept.read_text() == "[base]\n"
    report = tmp_path / "report.md"
    report.touch()  # empty, as `mktemp` makes it: nothing to lose
    for _ in range(2):  # written, then written again over itself
        assert invoke("E0a", "E0b", "--runs-dir", str(runs), "--markdown", str(report)).exit_code == 0
    assert report.read_text().startswith("# Comparison: E0a vs E0b")

def test_terminal_markdown_and_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    runs = tmp_path / "runs"
    for seed in (0, 1, 2):
        write_run(runs, "E0a", [0.0] * 50 + [0.9] * 50, seed=seed)
        write_run(runs, "E0b", [0.0] * 40 + [0.95 + 0.005 * seed] * 60, seed=seed)
    md, png = tmp_path / "results" / "overfit.md", tmp_path / "results" / "plots" / "curves.png"
    result = invoke("E0a", "E0b", "--runs-dir", str(runs), "--markdown", str(md), "--plot", str(png))
    assert result.exit_code == 0, result.output
    for text in ("Over seeds", "Comparison matrix", "Steps to 90%", "Scenario A for E0b vs E0a", "Trivial baselines",
                 "arch.recurrent_encoder_type", "Red flag 3 (no improvement): does not hold"):
        assert text in result.output, text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = md.read_text()
    assert "| Experiment | Model | Train Acc | Train EM | Avg Steps | Steps to 80% | Steps to 90% |" in report
    # steps to 80 % / 90 %: 7 and 8 of the 8 steps in the window at 95 %
    assert "| E0b s0 | ETRMTRM (recurrent_standard) | 95.0% | 47.5% | 4 | 47 | 48 |" in report
    assert "| E0b | 3 (0, 1, 2) | 95.5% ± 1.2 |" in report  # 95, 95.5, 96: t(0.975, 2) * 0.5 / sqrt(3) = 1.24
    assert ("**Scenario A for E0b vs E0a: recurrence helps significantly (n = 3, +5.50, 95% CI [+4.26, +6.74])**"
            in report)
    assert "![training curves](plots/curves.png)" in report
    assert "## Trivial baselines" in report and "## Config differences" in report
    assert f"Generated by `etrmtrm compare E0a E0b --runs-dir {runs.as_posix()}`." in report
    assert "**Decision point After Week 1: recurrence shows improvement" in report
    assert "**Best configuration: E0b**" in report  # above E0a in every seed: separated


def test_the_plot_draws_one_colour_per_configuration_with_its_seeds_and_their_mean(tmp_path: Path) -> None:
    from etrmtrm_cli import report_plot

    for seed in (0, 1, 2):
        write_run(tmp_path, "E0a", [0.5 + 0.1 * seed] * 60, loss=[1.0 + seed] * 60, seed=seed)
    write_run(tmp_path, "E0b", [0.9] * 60, seed=0)
    cmp = compare.compare_runs(tmp_path, ["E0a", "E0b"], with_baselines=False)
    loss = report_plot.configuration_curves(cmp, lambda rows: report_plot.smoothed(rows, "train/loss"))
    assert [(c.label, c.colour, len(c.runs)) for c in loss] == [("E0a (3 seeds)", "C0", 3), ("E0b (s0)", "C1", 1)]
    # a per-step metric: trailing mean over 50 steps, from the 50th step on; E0a's mean is that of 1, 2 and 3
    assert [x for x, _ in loss[0].mean] == [float(step) for step in range(50, 61)]
    assert all(y == pytest.approx(2.0) for _, y in loss[0].mean)
    assert loss[1].mean == loss[1].runs[0]  # one run: its own curve
    carry = report_plot.configuration_curves(cmp, report_plot.by_act_step, lambda row: row.recurrent)
    assert [c.label for c in carry] == ["E0b (s0)"]  # the static runs have no carry
    assert [x for x, _ in carry[0].mean] == [1.0, 2.0, 3.0, 4.0]
    # past matplotlib's ten default colours (week 2, week 3 and the rest in one figure), still one colour each
    assert report_plot.palette(3) == ["C0", "C1", "C2"]
    assert len(set(report_plot.palette(15))) == 15
    assert report_plot.mean_curve([[(1.0, 2.0), (2.0, 4.0)], [(2.0, 6.0), (3.0, 1.0)]]) == [(2.0, 5.0)]
    # a step one seed did not log (no slot halted there) is read from its neighbours, not dropped
    assert report_plot.mean_curve([[(1.0, 0.0), (3.0, 2.0)], [(1.0, 2.0), (2.0, 2.0), (3.0, 2.0)]]) == [
        (1.0, 1.0), (2.0, 1.5), (3.0, 2.0)]


def test_plot_without_matplotlib_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    write_run(tmp_path, "E0a", flat(0.90))
    result = invoke("E0a", "--runs-dir", str(tmp_path), "--plot", str(tmp_path / "c.png"))
    assert result.exit_code == 1 and "pip install 'etrmtrm[plot]'" in result.output


# --- trivial baselines ------------------------------------------------------------------------------------------

# On a 3x3 canvas. Pair 1: output [[1,1],[1,2]] -> 4 cells, EOS column (2) and EOS row (2): 8 label positions.
# Mode colour 1 gets 3 cells + 4 EOS = 7/8; copying the input [[1,1],[1,1]] (same shape) also gets 7/8.
# Pair 2: output 3x3 fills the canvas (its EOS falls off): 9 labels, mode colour 5 gets 8/9; the input [[2]]
# puts colour and EOS tokens where the labels hold 5s and PAD elsewhere: 0/9.
PAIR_1 = (np.array([[1, 1], [1, 1]]), np.array([[1, 1], [1, 2]]))
PAIR_2 = (np.array([[2]]), np.array([[5, 5, 5], [5, 0, 5], [5, 5, 5]]))


def test_pair_baselines_by_hand() -> None:
    assert pair_baselines([PAIR_1], 3) == (pytest.approx(7 / 8), pytest.approx(7 / 8))
    assert pair_baselines([PAIR_2], 3) == (pytest.approx(8 / 9), 0.0)
    mode, copy = pair_baselines([PAIR_1, PAIR_2], 3)
    assert mode == pytest.approx((7 / 8 + 8 / 9) / 2) and copy == pytest.approx(7 / 16)


def test_baselines_of_a_run_rebuild_its_data(tmp_path: Path) -> None:
    def task(folder: Path, name: str, query: tuple[np.ndarray, np.ndarray]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        demo = {"input": [[3]], "output": [[4]]}
        body = {"train": [demo], "test": [{"input": query[0].tolist(), "output": query[1].tolist()}]}
        (folder / f"{name}.json").write_text(json.dumps(body))

    task(tmp_path / "train", "t1", PAIR_1)
    task(tmp_path / "eval", "e1", PAIR_2)
    write_run(tmp_path / "runs", "E0a", flat(0.5), overrides=[
        f"data.train_sources=['{tmp_path / 'train'}']", f"data.eval_sources=['{tmp_path / 'eval'}']",
        "data.train_groups=1", "data.eval_groups=1", "data.max_grid_size=3"])
    (found,) = baselines.trivial_baselines(rundir.load_runs(tmp_path / "runs", ["E0a"]))
    assert (found.runs, found.train_examples, found.eval_examples) == (("E0a",), 1, 1)
    assert found.train_mode_colour == pytest.approx(7 / 8) and found.train_copy_input == pytest.approx(7 / 8)
    assert found.eval_mode_colour == pytest.approx(8 / 9) and found.eval_copy_input == 0.0
    assert math.isclose(found.train_mode_colour, 0.875)


# --- per puzzle (the one part that runs the models) -------------------------------------------------------------


def test_per_task_table_pools_seeds_and_is_sorted_by_the_difference() -> None:
    # (accuracy, exact rate, pass@2) per seed: "solved" counts the seeds whose pass@2 is 1, exact or not
    t1, t2, e1 = ("train", "t1"), ("train", "t2"), ("eval", "e1")
    a = pool_seeds([{t1: (0.5, 0.0, 0.0), t2: (0.9, 1.0, 1.0), e1: (0.2, 0.0, 0.5)},
                    {t1: (0.5, 0.0, 0.0), t2: (0.9, 0.5, 0.5), e1: (0.2, 0.0, 1.0)}])
    b = pool_seeds([{t1: (0.7, 0.0, 0.0), t2: (0.6, 0.0, 0.0), e1: (0.2, 0.0, 1.0)}])
    table = per_task_table(a, b)
    assert [t.task_id for t in table] == ["t2", "e1", "t1"]
    assert table[0] == TaskScore("t2", "train", (0.9, 0.6), (0.75, 0.0), ("1/2", "0/1"))
    assert table[1] == TaskScore("e1", "eval", (0.2, 0.2), (0.0, 0.0), ("1/2", "1/1"))
    assert table[0].difference == pytest.approx(-0.3)


def test_per_puzzle_evaluates_both_final_models(tmp_path: Path) -> None:
    for exp_id in ("E0a", "E0b"):
        exp = tiny(exp_id, ["train.eval_interval=100", "train.checkpoint_interval=100", "arch.halt_max_steps=2"])
        train(exp, TrainOptions(runs_dir=tmp_path, max_steps=2), DistContext(0, 1, CPU))
    result = invoke("E0a", "E0b", "--runs-dir", str(tmp_path), "--per-puzzle")
    assert result.exit_code == 0, result.output
    assert "Per task: E0a vs E0b" in result.output
    meta = json.loads((tmp_path / "E0a" / "meta.json").read_text())
    for task in meta["train_tasks"] + meta["eval_tasks"]:
        assert task in result.output
    three = invoke("E0a", "E0b", "E0a", "--runs-dir", str(tmp_path), "--per-puzzle")
    assert three.exit_code == 1 and "--per-puzzle shows two experiments side by side; got 3" in three.output
    # An unfinished run counts in no mean, so --per-puzzle does not evaluate it either.
    summary = tmp_path / "E0b" / rundir.SUMMARY
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "status": "interrupted"}))
    unfinished = invoke("E0a", "E0b", "--runs-dir", str(tmp_path), "--per-puzzle")
    assert unfinished.exit_code == 1, unfinished.output
    assert "--per-puzzle evaluates finished runs only; E0b has none yet" in unfinished.output
    # E2b is E0b's configuration: its runs count as E0b's seeds in the means, and are E2b's own here
    exp = tiny("E2b", ["train.eval_interval=100", "train.checkpoint_interval=100", "arch.halt_max_steps=2"])
    train(exp, TrainOptions(runs_dir=tmp_path, max_steps=2), DistContext(0, 1, CPU))
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "status": "finished"}))
    same = invoke("E0b", "E2b", "--runs-dir", str(tmp_path), "--per-puzzle")
    assert same.exit_code == 0 and "Per task: E0b vs E2b" in same.output, same.output
    (tmp_path / "E2b" / "model.safetensors").unlink()  # as a record exported without --weights: no checkpoints
    shutil.rmtree(tmp_path / "E2b" / "checkpoints")
    bare = invoke("E0b", "E2b", "--runs-dir", str(tmp_path), "--per-puzzle")
    assert bare.exit_code == 1 and "finished, but its model.safetensors is missing" in bare.output, bare.output


def test_train_with_seeds_then_compare_shows_intervals_and_pools_identical_configs(tmp_path: Path) -> None:
    common = ["--profile", "tiny", "--experiments", str(EXPERIMENTS), "--runs-dir", str(tmp_path), "--quiet",
              "--max-steps", "4", "--set", "decoder=none", "--set", "arch.halt_max_steps=2"]
    for exp_id, seeds in (("E0a", "2"), ("E0b", "2"), ("E2b", "1,")):
        trained = runner.invoke(app, ["train", exp_id, "--seeds", seeds, *common], env=ENV)
        assert trained.exit_code == 0, trained.output
    assert sorted(p.name for p in (tmp_path / "E0b").iterdir()) == ["seed-0", "seed-1"]
    shown = invoke("E0a", "E0b", "--runs-dir", str(tmp_path))
    assert shown.exit_code == 0, shown.output
    assert "2 (0, 1)" in shown.output and "n = 2" in shown.output and "E0b vs E0a" in shown.output
    pooled = invoke("E0b", "E2b", "--runs-dir", str(tmp_path))
    assert pooled.exit_code == 0 and "E0b = E2b" in pooled.output, pooled.output


def test_an_interval_of_a_fraction_past_0_to_100_percent_says_so() -> None:
    # Two seeds at 10 % and 60 %: mean 35 %, sd 0.3536, half-width 12.706 * 0.3536 / √2 = 3.177, so the
    # interval [-282.7 %, 352.7 %] reaches far past what an accuracy can be.
    assert with_interval(estimate([0.1, 0.6])) == "35.0% ± 317.7†"
    assert with_interval(estimate([0.90, 0.92, 0.94])) == "92.0% ± 5.0"
    assert pct_interval(-2.827, 3.527) == "[0.0%, 100.0%] (cut from a t interval past 0-100%)"
    assert pct_interval(0.81, 0.93) == "[81.0%, 93.0%]"


def test_a_configuration_whose_parent_is_not_compared_is_named(tmp_path: Path) -> None:
    write_run(tmp_path, "E0a", flat(0.90))
    write_run(tmp_path, "E2c", flat(0.93))  # parent E0b, not compared
    result = invoke("E0a", "E2c", "--runs-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert ("Not compared with their parent, which is not among the runs: E2c (parent E0b) (name the parent too to "
            "compare them)") in " ".join(result.output.split()), result.output
    assert "E2c vs its parent" not in result.output


def test_a_wall_time_reads_at_every_scale() -> None:
    from etrmtrm_cli.analysis.text import duration

    assert [duration(s) for s in (None, 0.42, 9.96, 95, 1_800, 11_160, 216_000)] == [
        "—", "0.4 s", "10.0 s", "95 s", "30 min", "3.1 h", "2.5 days"]  # a short run is not "0 s"
    assert duration(None, "unknown") == "unknown"


@pytest.mark.parametrize(("file", "key", "value"), [("config.json", "seed", "x"), ("config.json", "arch", 5),
                                                   ("meta.json", "decoder", "abc")])
def test_a_run_file_with_a_value_of_the_wrong_kind_is_named(tmp_path: Path, file: str, key: str, value: Any) -> None:
    write_run(tmp_path, "E0a", flat(0.9))
    write_run(tmp_path, "E0b", flat(0.9))
    path = tmp_path / "E0a" / file
    path.write_text(json.dumps({**(json.loads(path.read_text()) if path.is_file() else {}), key: value}))
    result = invoke("E0a", "E0b", "--runs-dir", str(tmp_path))
    assert result.exit_code == 1, result.output
    assert f"{tmp_path / 'E0a'}: its config.json or meta.json holds a value of the wrong kind" in " ".join(
        result.output.split()), result.output
