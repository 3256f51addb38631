"""determinism: two trainings with one seed log identical metrics and end with identical weights."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from etrmtrm_cli import rundir
from etrmtrm_cli.analysis.diagnose.subject import CheckResult, Measurement, Subject, number, worst

DETERMINISM_STEPS = 4
WALL_CLOCK = "time/"  # metrics under time/ (time/step_s, time/eval_s) are wall clock: no two runs agree


def check_determinism(subject: Subject, steps: int = DETERMINISM_STEPS) -> CheckResult:
    """Two trainings of `steps` steps with one seed, from scratch (decoder 'none'), each evaluating and
    checkpointing at its last step, must log identical metrics.jsonl (ignoring WALL_CLOCK metrics) and end with
    identical weights. train() reseeds torch's global RNG, so draws from it repeat; randomness seeded
    elsewhere (the clock, the OS, Python's `random`) does not, and is what this check catches. Both trainings run in
    this process, so what is fixed for a whole process, such as the order of a set of strings (Python's hash seed,
    PYTHONHASHSEED), is the same in both and not caught: the test suite checks the tool's own code across
    processes (a run killed and resumed in new processes logs what an uninterrupted one does)."""
    from etrmtrm_cli.training.distributed import DistContext
    from etrmtrm_cli.training.loop import TrainOptions, train

    exp = subject.exp.model_copy(update={
        "decoder": "none",
        "train": subject.exp.train.model_copy(update={"eval_interval": steps, "checkpoint_interval": steps}),
    })
    ctx = DistContext(0, 1, subject.device)
    logs, weights = [], []
    with tempfile.TemporaryDirectory(prefix="etrmtrm-determinism-") as tmp:
        for name in ("a", "b"):
            train(exp, TrainOptions(runs_dir=Path(tmp) / name, max_steps=steps), ctx)
            run = Path(tmp) / name / exp.id
            logs.append(_read_metrics(run / rundir.METRICS))
            weights.append(rundir.load_weights(run / rundir.FINAL_WEIGHTS))
    rows = []
    difference = first_difference(logs[0], logs[1])
    rows.append(Measurement(f"metrics.jsonl of two {steps}-step trainings, seed {exp.seed}",
                            "identical" if difference is None else difference,
                            f"identical (ignoring {WALL_CLOCK}*)",
                            "pass" if difference is None else "fail"))
    weight_diff = max((float((weights[0][k].float() - weights[1][k].float()).abs().max()) for k in weights[0]),
                      default=0.0)
    rows.append(Measurement("final weights, max |Δ|", number(weight_diff), "0", "pass" if weight_diff == 0 else "fail"))
    status = worst([r.verdict for r in rows])
    message = (f"two trainings with seed {exp.seed} are identical" if status == "pass" else
               "two trainings with one seed differ: something draws randomness outside the seeded generators "
               f"({difference or 'weights differ'})")
    return CheckResult("determinism", status, rows, message)


def without_wall_clock(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics row without its WALL_CLOCK metrics: what two runs with one seed must agree on."""
    return {k: v for k, v in row.items() if not k.startswith(WALL_CLOCK)}


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    return [without_wall_clock(row) for row in rundir.read_metrics(path)]


def first_difference(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]]) -> str | None:
    """'step S: KEY x != y' for the first differing value, or None when the logs are identical."""
    if len(a) != len(b):
        return f"{len(a)} vs {len(b)} logged steps"
    for row_a, row_b in zip(a, b, strict=True):
        for key in sorted(set(row_a) | set(row_b)):
            if row_a.get(key) != row_b.get(key):
                return f"step {row_a.get('step')}: {key} {row_a.get(key)} != {row_b.get(key)}"
    return None
