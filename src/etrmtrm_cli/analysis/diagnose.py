"""`etrmtrm diagnose`: check a model for the failure modes the research plan names (its "If E0b fails"
list: carry reset logic, gradient flow to the encoder, encoder output variance) and for determinism.

Each check builds what it needs (a fresh model at the experiment's profile, or a run's latest checkpoint),
drives it on real batches of the experiment's data and returns a `CheckResult`; nothing here prints.
The CLI exits 0 when every check passes, 1 when one fails, 3 when there are only warnings.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from etrmtrm_cli import rundir
from etrmtrm_cli.analysis.matrix import final_value
from etrmtrm_cli.analysis.thresholds import COLLAPSED_VAR, EXPECTED_GRAD_SHARE, HEALTHY_VAR, STARVED_GRAD_SHARE
from etrmtrm_cli.config import Experiment
from etrmtrm_cli.data.dataset import ArcData, build_arc_data
from etrmtrm_cli.encoders.base import Carry
from etrmtrm_cli.errors import CheckpointError, ConfigError, RunError
from etrmtrm_cli.models.act import ACTCarry, ACTModel
from etrmtrm_cli.models.build import build_model, encoder_parameters
from etrmtrm_cli.models.decoder import DecoderCarry
from etrmtrm_cli.training.evaluate import rollout
from etrmtrm_cli.training.metrics import cross_sample_var, grad_norms
from etrmtrm_cli.training.step import forward_backward

Status = Literal["pass", "warn", "fail"]
CHECKS = ("carry-reset", "gradient-flow", "encoder-variance", "determinism")

# Below half of the expected share: worth a look, not a bug by itself.
LOW_GRAD_SHARE = 0.2
# Plan, "Key Metrics / Encoder Health": "grad/encoder_norm: Should be >0.2" (before clipping).
MIN_ENCODER_GRAD_NORM = 0.2

WARMUP_STEPS = 3  # ACT steps that move every carry away from its init before the halting pattern is imposed
GRAD_STEPS = 2  # step 1 starts from the init carry, step 2 from a carried (detached) encoder state
MIN_SLOTS = 4  # carry-reset needs halted and running slots side by side
MIN_MEASURE_BATCH = 16  # gradient share and variance on a tiny profile's 4-row batch are mostly noise
DETERMINISM_STEPS = 4
EXACT_TOL = 1e-5  # carries computed two ways from identical inputs: equal up to float reassociation
IGNORED_METRICS = ("time/step_s",)  # wall-clock, differs between any two runs


@dataclass(frozen=True)
class Measurement:
    """One row of a check's table: what was measured, its value, what it should be, and the verdict."""

    what: str
    value: str
    threshold: str
    verdict: Status


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    rows: list[Measurement]
    message: str


@dataclass(frozen=True)
class Subject:
    """What is diagnosed: an experiment, its data, and the weights of a run (None = a fresh model)."""

    exp: Experiment
    data: ArcData
    device: torch.device
    weights: dict[str, Tensor] | None = None
    source: str = "fresh model"
    run_dir: Path | None = None
    logged: list[dict[str, Any]] = field(default_factory=list)  # the run's metrics.jsonl rows


def parse_checks(name: str) -> tuple[str, ...]:
    if name == "all":
        return CHECKS
    if name not in CHECKS:
        raise ConfigError(f"--check {name!r}: unknown check; valid: {', '.join(CHECKS)}, all")
    return (name,)


def fresh_subject(exp: Experiment, device: torch.device) -> Subject:
    _require_encoder(exp)
    return Subject(exp, build_arc_data(exp.data, exp.seed), device,
                   source=f"fresh {exp.id} model ({exp.profile} profile, no decoder weights)")


def run_subject(run_dir: Path, device: torch.device) -> Subject:
    """A run's config.json and the weights it is judged by (rundir.judged_weights: final, else latest EMA)."""
    config_path = run_dir / rundir.CONFIG
    if not config_path.is_file():
        raise RunError(f"{run_dir}: no {rundir.CONFIG}; produce the run with `etrmtrm train {run_dir.name}`")
    exp = Experiment.model_validate(rundir.read_json(config_path))
    _require_encoder(exp)
    weights_path = rundir.judged_weights(run_dir)
    if weights_path is None:
        raise CheckpointError(f"{run_dir}: no weights yet (no checkpoint); train it further first")
    return Subject(exp, build_arc_data(exp.data, exp.seed), device, rundir.load_weights(weights_path),
                   f"{weights_path}", run_dir, rundir.read_metrics(run_dir / rundir.METRICS))


def _require_encoder(exp: Experiment) -> None:
    if exp.model != "etrm":
        raise ConfigError(f"{exp.id} is a TRM model with a learned puzzle embedding: diagnose checks demo "
                          "encoders; pick an ETRM experiment such as E0a or E0b")


def build(subject: Subject, trained: bool = True) -> ACTModel:
    """The subject's model, seeded as train() seeds it; with the run's weights when `trained`."""
    torch.manual_seed(subject.exp.seed)
    model = build_model(subject.exp, subject.data.seq_len, subject.data.num_puzzle_ids)
    if trained and subject.weights is not None:
        try:
            model.load_state_dict(subject.weights)
        except RuntimeError as err:
            first = str(err).splitlines()[0]
            raise CheckpointError(f"{subject.source}: does not match the model of its config.json ({first})") from None
    return model.to(subject.device)


def run_checks(subject: Subject, checks: Sequence[str]) -> list[CheckResult]:
    table: dict[str, Callable[[Subject], CheckResult]] = {
        "carry-reset": check_carry_reset, "gradient-flow": check_gradient_flow,
        "encoder-variance": check_encoder_variance, "determinism": check_determinism,
    }
    return [table[name](subject) for name in checks]


def exit_code(results: Sequence[CheckResult]) -> int:
    statuses = {r.status for r in results}
    return 1 if "fail" in statuses else 3 if "warn" in statuses else 0


def worst(verdicts: Sequence[Status]) -> Status:
    return "fail" if "fail" in verdicts else "warn" if "warn" in verdicts else "pass"


def _batch(subject: Subject, step: int, size: int) -> dict[str, Tensor]:
    return subject.data.train_batch(step, size).to(subject.device).as_dict()


def _generator(subject: Subject) -> torch.Generator:
    return torch.Generator(device=subject.device).manual_seed(subject.exp.seed)


# --- carry-reset ---------------------------------------------------------------------------------------


def check_carry_reset(subject: Subject) -> CheckResult:
    """Impose halted = [T, F, T, F, ...] on a carry that has run a few steps, take one step, and compare it
    with the same step from a carry whose halted slots were put at their init state by hand."""
    model = build(subject).train()
    size = max(subject.exp.train.batch_size, MIN_SLOTS)
    first, new = _batch(subject, 0, size), _batch(subject, 1, size)
    gen = _generator(subject)
    with torch.no_grad():
        carry = model.initial_carry(first)
        for _ in range(WARMUP_STEPS):
            carry, _ = model(carry, first, gen)
            carry.halted = torch.zeros_like(carry.halted)  # hold every slot, so its state keeps moving
        halted = torch.arange(size, device=subject.device) % 2 == 0
        before = replace(carry, halted=halted)
        by_hand = _reset_by_hand(model, before, new, halted)
        state = gen.get_state()
        after, _ = model(before, new, gen)
        gen.set_state(state)
        expected, _ = model(by_hand, new, gen)
        dec_direct = model.decoder.reset_carry(halted, before.decoder)
        enc_direct = model.provider.reset_carry(halted, before.provider)

    slots = ", ".join(str(i) for i in halted.nonzero().flatten().tolist())
    keys = sorted(before.provider)
    enc_name = f"encoder carry ({', '.join(keys)})" if keys else "encoder carry"

    def dec_diff(a: DecoderCarry, b: DecoderCarry, rows: Tensor) -> float:
        return max(_max_diff(a.z_H, b.z_H, rows), _max_diff(a.z_L, b.z_L, rows))

    def enc_diff(a: Carry, b: Carry, rows: Tensor) -> float:
        return max((_max_diff(a[k], b[k], rows) for k in keys), default=0.0)

    moved = min(dec_diff(before.decoder, by_hand.decoder, halted),
                enc_diff(before.provider, by_hand.provider, halted) if keys else math.inf)
    rows = [Measurement(f"warm-up ({WARMUP_STEPS} steps) moved the carries away from init", _num(moved),
                        f"> {EXACT_TOL:g} (else this check proves nothing)", "pass" if moved > EXACT_TOL else "warn")]
    # The reset functions alone: which carry is at fault.
    rows.append(_equal_row(f"decoder.reset_carry puts halted slots [{slots}] at init",
                           dec_diff(dec_direct, by_hand.decoder, halted)))
    rows.append(_equal_row("decoder.reset_carry leaves the other slots untouched",
                           dec_diff(dec_direct, before.decoder, ~halted)))
    if keys:
        rows.append(_equal_row(f"provider.reset_carry puts the {enc_name} of halted slots at init",
                               enc_diff(enc_direct, by_hand.provider, halted)))
        rows.append(_equal_row("provider.reset_carry leaves the other slots untouched",
                               enc_diff(enc_direct, before.provider, ~halted)))
    else:
        rows.append(Measurement("encoder carry", "none", "stateless encoder", "pass"))
    # One whole ACT step against the same step from a carry reset by hand.
    rows.append(_equal_row(f"after one step: decoder carry (z_H, z_L) of halted slots [{slots}] as if from init",
                           dec_diff(after.decoder, expected.decoder, halted)))
    if keys:
        rows.append(_equal_row(f"after one step: {enc_name} of halted slots as if from init",
                               enc_diff(after.provider, expected.provider, halted)))
    rows.append(_equal_row("after one step: decoder carry of the other slots continued from their previous state",
                           dec_diff(after.decoder, expected.decoder, ~halted)))
    if keys:
        rows.append(_equal_row(f"after one step: {enc_name} of the other slots continued from their previous state",
                               enc_diff(after.provider, expected.provider, ~halted)))
    rows.append(_data_row(before, after, new, halted))
    steps_ok = torch.equal(after.steps, expected.steps)
    rows.append(Measurement("step count: halted slots restart at 1, the others count on",
                            "as expected" if steps_ok else f"{after.steps.tolist()}",
                            f"{expected.steps.tolist()}", "pass" if steps_ok else "fail"))
    return CheckResult("carry-reset", worst([r.verdict for r in rows]), rows,
                       _carry_message(rows, enc_name, subject.exp.arch.recurrent_encoder_type))


def _reset_by_hand(model: ACTModel, carry: ACTCarry, new: dict[str, Tensor], halted: Tensor) -> ACTCarry:
    """`carry` with the halted slots at init and holding the new example, marked as not halted: stepping it
    must give what the ACT step computes when it does the reset itself."""
    size, device = halted.shape[0], halted.device
    dec_init = model.decoder.initial_carry(size, device)
    enc_init = model.provider.initial_carry(size, device)
    pick = lambda a, b: _rows_where(halted, a, b)  # noqa: E731
    return ACTCarry(
        decoder=DecoderCarry(z_H=pick(dec_init.z_H, carry.decoder.z_H), z_L=pick(dec_init.z_L, carry.decoder.z_L)),
        provider={k: pick(enc_init[k].to(v.dtype), v) for k, v in carry.provider.items()},
        steps=pick(torch.zeros_like(carry.steps), carry.steps),
        halted=torch.zeros_like(halted),
        current_data={k: pick(new[k], v) for k, v in carry.current_data.items()},
    )


def _rows_where(flag: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.where(flag.view(-1, *([1] * (a.ndim - 1))), a, b)


def _max_diff(a: Tensor, b: Tensor, rows: Tensor) -> float:
    if not bool(rows.any()):
        return 0.0
    return float((a[rows].float() - b[rows].float()).abs().max())


def _equal_row(what: str, diff: float) -> Measurement:
    return Measurement(what, f"max |Δ| {_num(diff)}", f"≤ {EXACT_TOL:g}", "pass" if diff <= EXACT_TOL else "fail")


def _data_row(before: ACTCarry, after: ACTCarry, new: dict[str, Tensor], halted: Tensor) -> Measurement:
    keys = sorted(before.current_data)
    took_new = all(torch.equal(after.current_data[k][halted], new[k][halted]) for k in keys)
    kept_old = all(torch.equal(after.current_data[k][~halted], before.current_data[k][~halted]) for k in keys)
    differs = int((new["inputs"][halted] != before.current_data["inputs"][halted]).any(-1).sum())
    what = "current_data: halted slots took the new batch's example, the others kept theirs"
    if not (took_new and kept_old):
        wrong = "halted slots kept their old example" if not took_new else "running slots were given a new example"
        return Measurement(what, wrong, "new only where halted", "fail")
    verdict: Status = "pass" if differs else "warn"  # the same example twice would hide a missed swap
    return Measurement(what, f"yes ({differs}/{int(halted.sum())} new examples differ)", "new only where halted",
                       verdict)


def _carry_message(rows: Sequence[Measurement], enc_name: str, encoder: str) -> str:
    failed = [r.what for r in rows if r.verdict == "fail"]
    if not failed:
        warned = [r.what for r in rows if r.verdict == "warn"]
        return "inconclusive: " + "; ".join(warned) if warned else \
            "halted slots restart from init (decoder and encoder), the others continue"
    found = []
    if any(enc_name in w and "halted" in w for w in failed):
        found.append(f"the {enc_name} of {encoder!r} is not reset when a slot halts: a new puzzle starts from the "
                     "previous puzzle's encoder state (check reset_carry / needs_reset handling)")
    if any(w.startswith("provider.reset_carry leaves") or (enc_name in w and "other slots" in w) for w in failed):
        found.append(f"the {enc_name} of slots that did not halt is changed by the reset")
    if any(w.startswith("decoder.reset_carry") for w in failed):
        found.append("the decoder carry (z_H, z_L) is not reset exactly where a slot halted")
    return "; ".join(found) or "carry reset is wrong: " + "; ".join(failed)


# --- gradient-flow -------------------------------------------------------------------------------------


def check_gradient_flow(subject: Subject) -> CheckResult:
    """Training steps (forward, act_loss, backward) on a real batch: the context must be in the graph and
    every encoder parameter must get a finite non-zero gradient, at the first step (init carry) and the
    next (carried state). The encoder's share of the gradient is measured on the two steps' sum."""
    model = build(subject).train()
    size = max(subject.exp.train.batch_size, MIN_MEASURE_BATCH)
    batch = _batch(subject, 0, size)
    gen = _generator(subject)
    named = [(f"provider.{n}", p) for n, p in model.provider.named_parameters() if p.requires_grad]
    rows: list[Measurement] = []
    missing: set[str] = set()
    detached = no_context_grad = False
    carry = model.initial_carry(batch)
    model.zero_grad(set_to_none=True)
    def forward(carry: ACTCarry, batch: Mapping[str, Tensor], generator: torch.Generator | None
                ) -> tuple[ACTCarry, dict[str, Tensor]]:
        carry, outputs = model(carry, batch, generator)
        if outputs["context"].requires_grad:
            outputs["context"].retain_grad()  # to measure the gradient that reaches it
        return carry, outputs

    for step in range(1, GRAD_STEPS + 1):
        previous = {n: p.grad.clone() if p.grad is not None else None for n, p in named}
        carry, outputs, _ = forward_backward(forward, carry, batch, gen, subject.exp.arch.loss_type, size)
        context = outputs["context"]
        in_graph = context.requires_grad
        where = "init carry" if step == 1 else "carried state"
        rows.append(Measurement(f"step {step} ({where}): context fed to the decoder is in the graph",
                                str(in_graph), "True", "pass" if in_graph else "fail"))
        ctx_grad = float(context.grad.norm()) if in_graph and context.grad is not None else 0.0
        ok = math.isfinite(ctx_grad) and ctx_grad > 0
        rows.append(Measurement(f"step {step}: gradient reaching the context (norm)", _num(ctx_grad),
                                "finite, > 0", "pass" if ok else "fail"))
        detached |= not in_graph
        no_context_grad |= in_graph and not ok
        lacking = [n for n, p in named if not _got_gradient(p.grad, previous[n])]
        missing.update(lacking)
        rows.append(Measurement(f"step {step}: encoder parameters with a finite non-zero gradient",
                                f"{len(named) - len(lacking)}/{len(named)}", f"{len(named)}/{len(named)}",
                                "pass" if named and not lacking else "fail"))
    norms = grad_norms(model, encoder_parameters(model))
    share, enc_norm = norms["grad/encoder_share"], norms["grad/encoder_norm"]
    rows.append(Measurement("grad/decoder_norm (sum of both steps)", _num(norms["grad/decoder_norm"]), "> 0",
                            "pass" if norms["grad/decoder_norm"] > 0 else "fail"))
    rows.append(Measurement("grad/encoder_norm before clipping (sum of both steps)", _num(enc_norm),
                            f"> {MIN_ENCODER_GRAD_NORM:g} (plan)",
                            "pass" if enc_norm > MIN_ENCODER_GRAD_NORM else "fail" if not enc_norm > 0 else "warn"))
    rows.append(Measurement(
        "grad/encoder_share before clipping (sum of both steps)", _num(share),
        f"≥ {LOW_GRAD_SHARE:g} (plan: ≈ {EXPECTED_GRAD_SHARE:g}); < {STARVED_GRAD_SHARE:g} = starved",
        share_verdict(share)))
    status = worst([r.verdict for r in rows])
    message = _flow_message(subject.exp.arch.recurrent_encoder_type, rows, detached, no_context_grad,
                            sorted(missing), len(named), share)
    return CheckResult("gradient-flow", status, rows, message)


def _flow_message(encoder: str, rows: Sequence[Measurement], detached: bool, no_context_grad: bool,
                  missing: Sequence[str], total: int, share: float) -> str:
    if detached:
        return (f"the encoder {encoder!r} gets no gradient: the context fed to the decoder is detached from the "
                "graph, so the task loss never reaches the encoder's parameters (the public ETRMTRM bug: a "
                "detached carry returned as the context)")
    if no_context_grad:
        return f"the encoder {encoder!r} gets no gradient: the loss does not depend on the context it returns"
    if missing and len(missing) == total:
        return f"the encoder {encoder!r} gets no gradient: its context does not depend on its parameters"
    if missing:
        more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
        return f"encoder parameters without gradient: {', '.join(missing[:6])}{more}"
    warned = [f"{r.what} = {r.value}" for r in rows if r.verdict == "warn"]
    if warned:
        return (f"the gradient reaches every encoder parameter, but {'; '.join(warned)} "
                f"(plan expects a share of ≈ {EXPECTED_GRAD_SHARE:g}; starvation below {STARVED_GRAD_SHARE:g})")
    return f"the task loss reaches every encoder parameter through the context; encoder share {share:.2f}"


def _got_gradient(grad: Tensor | None, previous: Tensor | None) -> bool:
    """This step added a finite, non-zero gradient (gradients accumulate over the steps)."""
    if grad is None:
        return False
    added = grad if previous is None else grad - previous
    return bool(torch.isfinite(added).all()) and bool(added.abs().sum() > 0)


def share_verdict(share: float) -> Status:
    if not math.isfinite(share) or share < STARVED_GRAD_SHARE:
        return "fail"
    return "warn" if share < LOW_GRAD_SHARE else "pass"


# --- encoder-variance ----------------------------------------------------------------------------------


def check_encoder_variance(subject: Subject) -> CheckResult:
    """Variance of the context across distinct puzzles (metrics.cross_sample_var), at every ACT step of an
    eval-mode pass of halt_max_steps steps; the verdict is on its mean over those steps, which is what a
    training log averages over (a recurrent encoder starts every slot from one shared init, so its first
    contexts are alike by design). With a run: the run's weights are judged, the fresh model is shown."""
    size = max(subject.exp.train.batch_size, MIN_MEASURE_BATCH)
    batch = _batch(subject, 0, size)
    distinct = int(batch["puzzle_ids"].unique().numel())
    rows: list[Measurement] = []
    if distinct < 2:
        rows.append(Measurement("distinct puzzles in the batch", str(distinct), "≥ 2", "warn"))
        return CheckResult("encoder-variance", "warn", rows, "not measurable: the batch holds a single puzzle")
    models = [("fresh model", build(subject, trained=False))]
    if subject.weights is not None:
        models.append(("trained run", build(subject)))
    judged = math.nan
    for label, model in models:
        per_step = context_variance(model, batch, subject.exp.arch.halt_max_steps)
        mean = sum(per_step) / len(per_step)
        rows.append(Measurement(f"{label}: cross-sample variance at ACT step 1 / {len(per_step)}",
                                f"{_num(per_step[0])} / {_num(per_step[-1])}", "(for reference)", "pass"))
        rows.append(Measurement(f"{label}: mean over the {len(per_step)} ACT steps ({distinct} distinct puzzles)",
                                _num(mean), f"> {HEALTHY_VAR:g} healthy; < {COLLAPSED_VAR:g} collapse",
                                variance_verdict(mean)))
        judged = mean
    logged = final_value(subject.logged, "train/encoder_cross_sample_var")
    if logged is not None:
        rows.append(Measurement("run's metrics.jsonl: train/encoder_cross_sample_var, last 10% of steps",
                                _num(logged), f"> {HEALTHY_VAR:g}", variance_verdict(logged)))
    status = variance_verdict(judged)
    encoder = subject.exp.arch.recurrent_encoder_type
    who = "trained run" if subject.weights is not None else "fresh model"
    if status == "fail":
        message = (f"encoder collapse: the {who}'s context varies {judged:.3g} across puzzles (< {COLLAPSED_VAR:g}); "
                   f"{encoder!r} gives (nearly) the same context whatever the demos")
    elif status == "warn":
        message = f"low context variance across puzzles: {judged:.3g} (healthy > {HEALTHY_VAR:g})"
    else:
        message = f"the context tells puzzles apart: variance {judged:.3g} across puzzles"
    return CheckResult("encoder-variance", status, rows, message)


@torch.no_grad()
def context_variance(model: ACTModel, batch: dict[str, Tensor], steps: int) -> list[float]:
    """cross_sample_var of the context at each of `steps` eval-mode ACT steps from a fresh carry."""
    model.eval()
    return [cross_sample_var(outputs["context"], carry.current_data["puzzle_ids"])
            for carry, outputs in rollout(model, batch, steps)]


def variance_verdict(var: float) -> Status:
    if not math.isfinite(var) or var < COLLAPSED_VAR:
        return "fail"
    return "pass" if var > HEALTHY_VAR else "warn"


# --- determinism ---------------------------------------------------------------------------------------


def check_determinism(subject: Subject, steps: int = DETERMINISM_STEPS) -> CheckResult:
    """Two trainings of `steps` steps with one seed, from scratch (decoder 'none'), each evaluating and
    checkpointing at its last step, must log identical metrics.jsonl (ignoring time/step_s) and end with
    identical weights. train() reseeds torch's global RNG, so draws from it repeat; randomness seeded
    elsewhere (the clock, the OS, Python's `random`) does not, and is what this check catches."""
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
                            f"identical (ignoring {', '.join(IGNORED_METRICS)})",
                            "pass" if difference is None else "fail"))
    weight_diff = max((float((weights[0][k].float() - weights[1][k].float()).abs().max()) for k in weights[0]),
                      default=0.0)
    rows.append(Measurement("final weights, max |Δ|", _num(weight_diff), "0", "pass" if weight_diff == 0 else "fail"))
    status = worst([r.verdict for r in rows])
    message = (f"two trainings with seed {exp.seed} are identical" if status == "pass" else
               "two trainings with one seed differ: something draws randomness outside the seeded generators "
               f"({difference or 'weights differ'})")
    return CheckResult("determinism", status, rows, message)


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in IGNORED_METRICS} for row in rundir.read_metrics(path)]


def first_difference(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]]) -> str | None:
    """'step S: KEY x != y' for the first differing value, or None when the logs are identical."""
    if len(a) != len(b):
        return f"{len(a)} vs {len(b)} logged steps"
    for row_a, row_b in zip(a, b, strict=True):
        for key in sorted(set(row_a) | set(row_b)):
            if row_a.get(key) != row_b.get(key):
                return f"step {row_a.get('step')}: {key} {row_a.get(key)} != {row_b.get(key)}"
    return None


def _num(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.3g}" if value == 0 or 1e-3 <= abs(value) < 1e4 else f"{value:.2e}"
