"""The comparison matrix: one row of figures per run, read from its metrics.jsonl; and config differences.

Definitions (the numbers a reader sees):
- final value of a metric: the mean over the last 10% of the steps at which it was logged;
- metrics of the halted slots (train/accuracy, exact, steps, encoder convergence steps) are averaged
  over steps weighted by train/count, the number of slots that halted at that step;
- steps to X%: the first step at which the mean of train/accuracy over the trailing SMOOTH_EXAMPLES
  halted examples (all of them when the run has fewer) reaches X;
- stability: the coefficient of variation (std / mean) of train/loss over the last 20% of logged steps,
  and "diverging" when the mean loss of the last 10% is above that of the first 10%;
- carry RMS: the final encoder_carry_norm (mean L2 norm per token) divided by sqrt(hidden_size), i.e. the
  root-mean-square of one carry element: 1 by construction for the in-tree (post-norm) carries, so carry
  health is judged on the update ratio (train/encoder_update_ratio), which can explode or vanish.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from etrmtrm_cli.analysis.stats import auc
from etrmtrm_cli.errors import ConfigError
from etrmtrm_cli.rundir import SEED_PREFIX, Row, RunFiles, config_hash

# --- how the numbers are read from metrics.jsonl -----------------------------------------------------------
FINAL_FRACTION = 0.10  # "final" = mean over the last 10% of logged steps
STABILITY_FRACTION = 0.20  # stability = CV of train/loss over the last 20% of logged steps
SMOOTH_EXAMPLES = 256  # trailing window of train/accuracy for "steps to X%": this many halted examples
# Metrics of the slots that halted at a step: averaged over steps they are weighted by train/count, the
# number of those slots (1 halted slot must not weigh as much as 32).
HALTED_METRICS = frozenset({"train/accuracy", "train/exact_accuracy", "train/q_halt_accuracy", "train/steps",
                            "train/encoder_convergence_steps", "train/encoder_converged_fraction"})
CONVERGENCE_LEVELS = (0.80, 0.90)  # plan, "Analysis Questions / Convergence": "Steps to reach 80%? 90%?"
NOT_RECORDED = "not recorded"  # a run older than the meta.json field
FROM_SCRATCH = "from scratch"
LEVEL_TOL = 1e-9  # a run that sits at exactly 90% reaches 90%, whatever the float sum says


@dataclass(frozen=True)
class RunRow:
    """One run's line of the comparison matrix. None = not logged / not applicable ("—")."""

    exp_id: str
    seed: int
    config_hash: str  # rundir.config_hash: runs with one hash are seeds of one configuration
    parent: str | None  # the experiment the plan judges this one against (config.json "parent")
    model: str  # "ETRM" | "ETRMTRM" | "TRM"
    encoder: str
    recurrent: bool
    status: str  # finished | running | interrupted | failed
    status_text: str
    last_step: int
    train_acc: float | None
    train_em: float | None
    act_steps: float | None
    steps_to: dict[float, int | None]
    auc: float | None  # area under the train-accuracy curve over the run's steps, / its steps (stats.auc)
    encoder_var: float | None  # across puzzles at one ACT step (var_same_step); the plain figure in old runs
    grad_share: float | None
    grad_share_sq: float | None  # the plan's share: ||g_enc||² / ||g||² (the squared norm ratio in old runs)
    update_ratio: float | None  # a recurrent update's size before the normalisation, / the carry's
    grad_norm: float | None
    carry_norm: float | None
    carry_rms: float | None
    carry_change: float | None
    convergence_steps: float | None
    converged_fraction: float | None  # of the halted slots, those whose carry converged before halting
    eval_step: int | None
    eval_acc: float | None
    eval_exact: float | None
    eval_pass2: float | None
    loss_cv: float | None
    diverged: bool
    wall_time_s: float | None

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def label(self) -> str:
        """The run as the matrix names it: its experiment and, for one of several seeds, the seed."""
        return f"{self.exp_id} s{self.seed}" if self.seed_axis else self.exp_id

    seed_axis: bool = False  # one of several seeds (runs/<ID>/seed-<N>/)
    decoder: str = NOT_RECORDED  # what the decoder started from: the sha256 of its weights, or FROM_SCRATCH
    cpu: str = NOT_RECORDED  # meta.json's CPU ("AMD EPYC (avx2)"): one seed differs in its last bits across CPUs


def series(rows: Sequence[Row], key: str) -> list[tuple[int, float, float]]:
    """(step, value, weight) for every logged, finite value of `key`; the weight is train/count for a
    metric of the halted slots, else 1."""
    out = []
    for row in rows:
        value = row.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            count = row.get("train/count")
            halted = key in HALTED_METRICS and isinstance(count, int | float) and count > 0
            out.append((int(row["step"]), float(value), float(count) if halted else 1.0))
    return out


def final_value(rows: Sequence[Row], key: str, fraction: float = FINAL_FRACTION) -> float | None:
    """Weighted mean of `key` over the last `fraction` of the steps at which it was logged (at least one).

    Counted over the metric's own logged values: train/accuracy is NaN (null) at a step where no slot
    halted, which is most steps early in a run with many ACT steps."""
    points = series(rows, key)
    if not points:
        return None
    tail = points[-max(1, math.ceil(fraction * len(points))):]
    return sum(v * w for _, v, w in tail) / sum(w for _, _, w in tail)


def trailing_means(points: Sequence[tuple[int, float, float]], window: float) -> list[tuple[int, float]]:
    """(step, weighted mean over exactly the trailing `window` of weight) for every point from the first at
    which the window is full; the oldest step in the window counts with the part of its weight that fits (its
    value is a mean over its halted slots). A series lighter than `window` in all gets one window of all of it."""
    needed = min(window, sum(w for _, _, w in points))
    trail: deque[tuple[float, float]] = deque()
    total = weight = 0.0
    out = []
    for step, value, w in points:
        trail.append((value, w))
        total, weight = total + value * w, weight + w
        while weight - trail[0][1] >= needed:  # drop the oldest while the rest still fills the window
            old_value, old_weight = trail.popleft()
            total, weight = total - old_value * old_weight, weight - old_weight
        if weight >= needed > 0:
            outside = weight - needed  # the part of the oldest step's weight beyond the window
            out.append((step, (total - trail[0][0] * outside) / needed))
    return out


def steps_to(rows: Sequence[Row], level: float, key: str = "train/accuracy") -> int | None:
    """First step where the mean of `key` over the trailing SMOOTH_EXAMPLES halted examples reaches `level`."""
    return next((step for step, mean in trailing_means(series(rows, key), SMOOTH_EXAMPLES)
                 if mean >= level - LEVEL_TOL), None)


def loss_stability(rows: Sequence[Row]) -> tuple[float | None, bool]:
    """(CV of train/loss over the last 20% of logged steps, whether the final loss is above the first)."""
    losses = [v for _, v, _ in series(rows, "train/loss")]
    if len(losses) < 2:
        return None, False
    tail = losses[-max(2, math.ceil(STABILITY_FRACTION * len(losses))):]
    mean = sum(tail) / len(tail)
    std = math.sqrt(sum((v - mean) ** 2 for v in tail) / len(tail))
    cv = std / abs(mean) if mean else None
    width = max(1, math.ceil(FINAL_FRACTION * len(losses)))
    head, last = losses[:width], losses[-width:]
    return cv, sum(last) / width > sum(head) / width


def run_row(run: RunFiles) -> RunRow:
    rows, cfg = run.rows, run.config
    arch = cfg.get("arch", {})
    encoder = str(arch.get("recurrent_encoder_type", "?"))
    recurrent = is_recurrent(run)
    model = "TRM" if is_trm(run) else "ETRMTRM" if recurrent else "ETRM"
    has_encoder = model != "TRM"  # TRM (P0) reads no demos: no encoder gradient to report
    last_step = int(rows[-1]["step"]) if rows else 0
    evals = [r for r in rows if r.get("eval/accuracy") is not None]
    last_eval = evals[-1] if evals else {}
    carry_norm = final_value(rows, "train/encoder_carry_norm") if recurrent else None
    hidden = arch.get("hidden_size")
    cv, diverged = loss_stability(rows)
    share = final_value(rows, "grad/encoder_share")
    status = str(run.summary.get("status", "running"))
    wall = run.summary.get("wall_time_s")
    return RunRow(
        exp_id=run.exp_id, seed=int(cfg.get("seed", 0)), config_hash=config_hash(cfg), parent=cfg.get("parent"),
        model=model, encoder=encoder if has_encoder else "puzzle embedding",
        recurrent=recurrent, status=status, status_text=status_text(run, last_step), last_step=last_step,
        train_acc=final_value(rows, "train/accuracy"), train_em=final_value(rows, "train/exact_accuracy"),
        act_steps=final_value(rows, "train/steps"),
        steps_to={level: steps_to(rows, level) for level in CONVERGENCE_LEVELS},
        auc=train_auc(run),
        encoder_var=_first(final_value(rows, "train/encoder_var_same_step"),
                           final_value(rows, "train/encoder_cross_sample_var")),
        grad_share=share if has_encoder else None,
        grad_share_sq=_first(final_value(rows, "grad/encoder_share_sq"), None if share is None else share**2)
        if has_encoder else None,
        update_ratio=final_value(rows, "train/encoder_update_ratio") if recurrent else None,
        grad_norm=final_value(rows, "grad/encoder_norm") if has_encoder else None,
        carry_norm=carry_norm,
        carry_rms=carry_norm / math.sqrt(hidden) if carry_norm is not None and hidden else None,
        carry_change=final_value(rows, "train/encoder_carry_change") if recurrent else None,
        convergence_steps=final_value(rows, "train/encoder_convergence_steps") if recurrent else None,
        converged_fraction=final_value(rows, "train/encoder_converged_fraction") if recurrent else None,
        eval_step=int(last_eval["step"]) if last_eval else None,
        eval_acc=last_eval.get("eval/accuracy"), eval_exact=last_eval.get("eval/exact_accuracy"),
        eval_pass2=last_eval.get("eval/pass@2"), loss_cv=cv, diverged=diverged,
        wall_time_s=float(wall) if isinstance(wall, int | float) else None,
        seed_axis=run.run_dir.name.startswith(SEED_PREFIX),
        decoder=decoder_origin(run), cpu=str(run.meta.get("cpu", NOT_RECORDED)),
    )


def decoder_origin(run: RunFiles) -> str:
    """The sha256 of the weights the run's decoder started from (meta.json "decoder"; null: from scratch)."""
    if "decoder" in run.meta:
        loaded = run.meta["decoder"]
        return FROM_SCRATCH if loaded is None else str(loaded.get("sha256") or NOT_RECORDED)
    return FROM_SCRATCH if run.config.get("decoder") == "none" else NOT_RECORDED  # a run older than the field


def _first(*values: float | None) -> float | None:
    """The first logged of several figures (a newer metric, then what older runs logged instead)."""
    return next((v for v in values if v is not None), None)


def chunk_means(points: Sequence[tuple[int, float, float]], window: float) -> list[tuple[int, float]]:
    """(weighted mean step, weighted mean value) of consecutive chunks of at least `window` weight each, the
    last chunk whatever is left: a curve in which a step where 1 slot halted weighs 1/32 of one where 32 did."""
    out = []
    steps = values = weight = 0.0
    for i, (step, value, w) in enumerate(points):
        steps, values, weight = steps + step * w, values + value * w, weight + w
        if weight >= window or i == len(points) - 1:
            out.append((round(steps / weight), values / weight))
            steps = values = weight = 0.0
    return out


def train_auc(run: RunFiles) -> float | None:
    """Mean train accuracy over the run's steps (the area under its curve, divided by the steps): it still
    separates runs whose final accuracy sits at a ceiling, by how fast they got there. The curve runs through
    the means of consecutive chunks of at least SMOOTH_EXAMPLES halted examples, so within a chunk each step
    counts by the slots that halted in it (a step where 1 slot halted, most early steps, must not weigh as much
    as one where 32 did); between chunks the area weighs each by the steps it spans."""
    points = chunk_means(series(run.rows, "train/accuracy"), SMOOTH_EXAMPLES)
    total = run.summary.get("total_steps") or run.meta.get("total_steps") or (points[-1][0] if points else 0)
    return auc(points, int(total)) if points and isinstance(total, int | float) and total > 0 else None


def is_trm(run: RunFiles) -> bool:
    """TRM itself (model = "trm", P0): a learned puzzle embedding, no encoder."""
    return run.config.get("model") == "trm"


def is_recurrent(run: RunFiles) -> bool:
    """training/step.py logs the carry metrics exactly for encoders with a carry; before any step is logged the
    encoder registry decides."""
    if is_trm(run):
        return False
    if run.rows:
        return any("train/encoder_carry_norm" in r for r in run.rows)
    from etrmtrm_cli.encoders.registry import get_encoder

    try:
        return get_encoder(str(run.config.get("arch", {}).get("recurrent_encoder_type"))).recurrent
    except ConfigError:
        return False


def status_text(run: RunFiles, last_step: int) -> str:
    status = run.summary.get("status", "running")
    total = run.summary.get("total_steps") or run.meta.get("total_steps")
    of = f" of {total}" if total else ""
    if status == "finished":
        return "finished"
    if status == "running":
        return f"in progress at step {last_step}{of}" if last_step else "in progress, no step logged yet"
    return f"{status} at step {last_step}{of}"


# Encoder settings a TRM run (model = "trm": puzzle embedding, no encoder) carries but never reads.
UNREAD_BY_TRM = ("arch.recurrent_encoder_type", "arch.encoder_", "arch.context_tokens", "train.encoder_lr_scale")


def config_differences(runs: Sequence[RunFiles]) -> dict[str, list[Any]]:
    """Dotted key -> each run's value, for the keys where the runs' config.json files disagree, apart from what
    names a run (id, description, parent) and its seed (the axis its configuration pools over).
    A TRM run's encoder settings are left out (None) and compared with nothing: it has no encoder."""
    flat = [flatten({k: v for k, v in r.config.items() if k not in ("id", "description", "parent", "seed")})
            for r in runs]
    keys = sorted(set().union(*flat)) if flat else []
    trm = [is_trm(r) for r in runs]
    missing, unread = object(), object()
    out = {}
    for key in keys:
        values = [unread if is_trm and key.startswith(UNREAD_BY_TRM) else f.get(key, missing)
                  for is_trm, f in zip(trm, flat, strict=True)]
        read = [v for v in values if v is not unread]
        if any(v != read[0] for v in read[1:]):
            out[key] = [None if v is missing or v is unread else v for v in values]
    return out


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value and key != "encoder_params":
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
