"""The training loop: one optimizer step = one ACT step for every batch slot (TRM's deep supervision).

`train(exp, options, dist_ctx, on_event)` runs one experiment into runs/<ID>/ and returns its summary.
It never prints: progress reaches the caller through `on_event(kind, payload)` (kind: "start", "step",
"eval", "checkpoint"). Everything random comes from seeded generators whose states are checkpointed, and
batch i is a pure function of i, so a resumed run logs exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import copy
import math
import platform
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from etrmtrm_cli import __version__, rundir
from etrmtrm_cli.allocator import loaded_allocator
from etrmtrm_cli.config import Experiment
from etrmtrm_cli.data.dataset import ArcData, build_arc_data
from etrmtrm_cli.encoders.registry import provenance
from etrmtrm_cli.errors import CheckpointError, PeerFailed, RunError, first_line
from etrmtrm_cli.models.act import ACTCarry, ACTModel
from etrmtrm_cli.models.build import build_model, load_decoder
from etrmtrm_cli.models.decoder import DecoderCarry
from etrmtrm_cli.models.trm_import import ImportReport
from etrmtrm_cli.training.distributed import DistContext
from etrmtrm_cli.training.evaluate import evaluate
from etrmtrm_cli.training.optim import build_optimizers
from etrmtrm_cli.training.preflight import check_memory
from etrmtrm_cli.training.run_log import MetricsLog, require_loggers
from etrmtrm_cli.training.runtime import (
    DtypeChoice,
    choose_compile,
    choose_dtype,
    compile_model,
    cpu_description,
    native_on_every_rank,
)
from etrmtrm_cli.training.step import NonFiniteError, StepState, Trainable, fresh_state, train_step

EventFn = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class TrainOptions:
    runs_dir: Path = Path("runs")
    max_steps: int | None = None  # overrides the epochs' step count (and train.max_steps)
    resume: bool = False
    force: bool = False
    compile: bool | None = None  # None: auto (runtime.choose_compile)
    tensorboard: bool = False
    wandb: bool = False
    command: str = ""  # the command that started the run, as advice reuses it (default: etrmtrm train <ID>)
    per_seed: bool = False  # runs/<ID>/seed-<N>/ (one of several seeds) instead of runs/<ID>/


@dataclass
class StopFlag:
    """Set by a signal handler (or a test) to finish the current step, checkpoint and return."""

    requested: bool = False


@dataclass
class RunSummary:
    exp_id: str
    status: str  # finished | interrupted
    step: int
    total_steps: int
    wall_time_s: float
    run_dir: Path
    last: dict[str, float] = field(default_factory=dict)


def total_steps(exp: Experiment, data: ArcData, options: TrainOptions) -> int:
    """TRM's count: epochs x examples per epoch / global batch; or max_steps when given."""
    if options.max_steps is not None:
        return options.max_steps
    if exp.train.max_steps is not None:
        return exp.train.max_steps
    return max(1, exp.train.epochs * data.examples_per_epoch // exp.train.batch_size)


def train(exp: Experiment, options: TrainOptions, ctx: DistContext, on_event: EventFn | None = None,
          stop: StopFlag | None = None) -> RunSummary:
    emit = on_event if (on_event is not None and ctx.is_main) else (lambda kind, payload: None)
    stop = stop or StopFlag()
    run_dir = rundir.run_path(options.runs_dir, exp.id, exp.seed if options.per_seed else None)
    native = native_on_every_rank(ctx)  # a collective: before the steps that may fail on one rank alone

    def prepare() -> tuple[DtypeChoice, dict[str, tuple[Any, Any]], ArcData, ACTModel, ImportReport | None]:
        # Loggers, resume checks, data, model and decoder first: a bad input fails before a run is touched.
        rundir.check_run_layout(run_dir, options.per_seed)
        require_loggers(options.tensorboard, options.wandb)
        recorded = _recorded_dtype(run_dir) if options.resume else None
        # Before the resume check: config.json holds what ran
        dtype = choose_dtype(exp, ctx.device, native, recorded, ctx.world_size)
        changed = _check_resume(run_dir, dtype.exp, options.runs_dir) if options.resume else {}
        torch.manual_seed(exp.seed)  # parameter init: identical on every rank
        data = build_arc_data(exp.data, exp.seed)
        if options.resume:
            _check_length(run_dir, dtype.exp, data, options)
        check_memory(dtype.exp, data.seq_len, data.num_puzzle_ids, ctx.device, ctx.world_size, ctx.local_world_size)
        model = build_model(dtype.exp, data.seq_len, data.num_puzzle_ids, (ctx.rank, ctx.world_size))
        train_tasks = [g.task.id for g in data.groups[: data.num_train_groups]]
        report = None if options.resume else load_decoder(model, dtype.exp, data.seq_len, options.runs_dir,
                                                          train_tasks)
        return dtype, changed, data, model, report

    dtype, changed, data, model, report = ctx.together(prepare)
    lock = ctx.together(lambda: rundir.prepare_run_dir(run_dir, resume=options.resume, force=options.force)
                        if ctx.is_main else None)
    try:
        return _train(dtype.exp, options, ctx, emit, stop, run_dir, data, model, report, changed, dtype)
    finally:
        if lock is not None:
            lock.release()


def _train(exp: Experiment, options: TrainOptions, ctx: DistContext, emit: EventFn, stop: StopFlag, run_dir: Path,
           data: ArcData, model: ACTModel, report: ImportReport | None, changed: dict[str, tuple[Any, Any]],
           dtype: DtypeChoice) -> RunSummary:
    model.to(ctx.device)
    ema = copy.deepcopy(model) if exp.train.ema else None
    parts = Trainable(model, model, build_optimizers(model, exp), ema)
    total = total_steps(exp, data, options)
    previous = rundir.read_summary(run_dir) if options.resume else {}  # the summary of the sessions before
    if options.resume:  # every rank reads its own state: the others must not go on where one cannot
        state, pending, earlier_s = ctx.together(lambda: _restore(run_dir, parts, ctx))
        if earlier_s is None:  # a checkpoint from before checkpoints recorded it: the summary's (a kill writes none)
            earlier_s = float(previous.get("wall_time_s", 0.0))
        if total < state.step:  # it would be recorded as a run of `total` steps that trained more
            raise RunError(f"{run_dir}: its checkpoint is at step {state.step}, past the {total} steps asked "
                           "(--max-steps): a resumed run can keep its length or extend it, not shorten it")
    else:
        state, pending, earlier_s = fresh_state(model, _batch(data, 0, exp, ctx), exp.seed), None, 0.0
    # By the run's whole length, not the steps left: a resumed run computes as it started (compiled and eager
    # steps differ in their last bits).
    compiled, compile_note = choose_compile(ctx.device, total, options.compile)
    if compiled:
        parts = replace(parts, forward=compile_model(model))
    runtime = {"forward_dtype": exp.arch.forward_dtype, "dtype_note": dtype.warning, "dtype_hint": dtype.why,
               "compile": compiled, "compile_note": compile_note,
               "allocator": loaded_allocator()}
    log = MetricsLog(run_dir, resume_from=state.step, tensorboard=options.tensorboard, wandb=options.wandb,
                     exp=exp) if ctx.is_main else None
    if ctx.is_main and not options.resume:
        meta = _meta(exp, ctx, data, total, options.command) | {"runtime": runtime, "decoder": _decoder_meta(report)}
        rundir.write_run_files(run_dir, exp.model_dump(mode="json"), meta, total)
    if ctx.is_main and options.resume:
        # A changed length (--max-steps) changes the learning-rate schedule from here on: recorded as any change.
        before = previous.get("total_steps", total)
        changed |= ({"total_steps": (before, total)} if before != total else {}) | _encoder_change(run_dir, exp)
    if ctx.is_main and changed:
        rundir.record_resume_changes(run_dir, exp.model_dump(mode="json"), changed, state.step)
    if ctx.is_main and options.resume:
        # Not "finished" while it runs again (a finished run extended): a kill must not leave that status
        # beside the shorter run's final weights. Last, once nothing that reads the run's files can fail.
        rundir.mark_running(run_dir, total)
    emit("start", {"exp": exp, "total_steps": total, "start_step": state.step, "decoder_report": report,
                   "run_dir": run_dir, "device": str(ctx.device), "world_size": ctx.world_size, "runtime": runtime})

    # The status is written from what happened: "finished" only once the final weights are saved; any
    # exception is "failed"; a stop request, or a signal that interrupts anything, is "interrupted".
    started, status, error = time.perf_counter(), "interrupted", None
    # The last logged metrics: a resumed run that has no step left to train keeps its earlier ones
    last = previous.get("last", {}) if ctx.is_main else {}
    # The run's wall time so far: its earlier sessions' (as its checkpoint recorded them) and this one's
    wall_s = lambda: earlier_s + time.perf_counter() - started  # noqa: E731
    eval_batch = exp.train.eval_batch_size or exp.train.batch_size
    doing = f"step {state.step + 1}"  # what a failure interrupted, for the summary
    try:
        # Every rank stops at the same step: a signal that reaches one rank first would otherwise send it to
        # the checkpoint's barrier while the others wait in the next step's gradient all-reduce.
        while (state.step < total or pending is not None) and not ctx.any_rank(stop.requested):
            if pending is not None:  # stopped during this step's eval: its train metrics were checkpointed
                metrics, pending = pending, None
            else:
                doing = f"step {state.step + 1}"
                try:
                    metrics = train_step(parts, _batch(data, state.step, exp, ctx), state, exp, ctx, total)
                except NonFiniteError as err:
                    raise _non_finite(err, exp, state.step + 1, options.command) from None
            if state.step % exp.train.eval_interval == 0 or state.step == total:
                doing = f"the eval of step {state.step}"
                eval_started = time.perf_counter()
                results = evaluate(ema or model, data, eval_batch, ctx.device, ctx.rank, ctx.world_size,
                                   should_stop=lambda: ctx.any_rank(stop.requested))
                if results is None:  # a signal during the eval: checkpoint the step with its eval still to do
                    pending = metrics
                    break
                metrics.update(results)
                metrics["time/eval_s"] = time.perf_counter() - eval_started
                emit("eval", {"step": state.step, "metrics": metrics})
            doing = f"saving step {state.step}"
            if log is not None:
                log.write(state.step, metrics)
            last = metrics
            emit("step", {"step": state.step, "total_steps": total, "metrics": metrics})
            if state.step % exp.train.checkpoint_interval == 0 and state.step < total:
                _save_checkpoint(run_dir, exp, parts, state, ctx, wall_s())
                emit("checkpoint", {"step": state.step})
        doing = f"saving step {state.step}"
        _save_checkpoint(run_dir, exp, parts, state, ctx, wall_s(), pending)
        if state.step >= total and pending is None:
            if ctx.is_main:
                rundir.save_weights(run_dir / rundir.FINAL_WEIGHTS, (ema or model).state_dict())
            status = "finished"
    except Exception as err:
        status, error = "failed", f"{doing}: {err}"
        if ctx.peer_gone(err):  # that process says why; the summary says where to look
            error = f"{doing}: another process of the run ended (its output, if any, says why)"
            raise PeerFailed(error) from None
        raise
    finally:
        if log is not None:
            log.close()
        summary = RunSummary(exp.id, status, state.step, total, time.perf_counter() - started, run_dir,
                             _finite(last))
        if ctx.is_main:
            rundir.write_summary(run_dir, status=status, step=state.step, total_steps=total, wall_time_s=wall_s(),
                                 last=summary.last, error=error, resumed=options.resume)
    return summary


def _batch(data: ArcData, step: int, exp: Experiment, ctx: DistContext) -> dict[str, Tensor]:
    """This rank's rows of training batch `step` (a pure function of the step: resume replays it exactly)."""
    return data.train_batch(step, exp.train.batch_size, ctx.rank, ctx.world_size).to(ctx.device).as_dict()


def _non_finite(err: NonFiniteError, exp: Experiment, step: int, command: str) -> RunError:
    """The message for a NaN/inf: a resumed run replays the same steps, so the advice is to start over."""
    words = shlex.split(command or f"etrmtrm train {exp.id} --profile {exp.profile}")
    lr_set = {i for i, w in enumerate(words[1:], 1) if words[i - 1] == "--set" and w.startswith("train.lr=")}
    again = shlex.join(w for i, w in enumerate(words) if i not in lr_set and i + 1 not in lr_set)  # the new lr wins
    return RunError(
        f"{exp.id}: {err.what} is {err.value} at step {step}; stopped before the update. The run replays "
        f"exactly, so resuming it would meet the same value: start over with a lower learning rate, e.g. "
        f"`{again} --force --set train.lr={exp.train.lr / 10:g}`"
    )


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)}


def _decoder_meta(report: ImportReport | None) -> dict[str, str | None] | None:
    """Which weights the decoder started from (None: from scratch)."""
    return None if report is None else {"source": report.source, "sha256": report.sha256}


def _meta(exp: Experiment, ctx: DistContext, data: ArcData, total: int, command: str) -> dict[str, Any]:
    """meta.json: what produced the run (code, versions, machine) and which tasks it trains and evaluates on."""
    return {
        "experiment": exp.id, "command": command or None, "seed": exp.seed, "profile": exp.profile,
        "config_hash": rundir.config_hash(exp.model_dump(mode="json")),
        "encoder": _encoder_meta(exp),
        "etrmtrm": __version__,
        "git_sha": _git_sha(), "torch": torch.__version__, "python": platform.python_version(),
        "device": str(ctx.device), "world_size": ctx.world_size, "cpu": cpu_description(),
        "total_steps": total, "examples_per_epoch": data.examples_per_epoch,
        "train_tasks": [g.task.id for g in data.groups[: data.num_train_groups]],
        "eval_tasks": [g.task.id for g in data.groups[data.num_train_groups :]],
    }


def _encoder_meta(exp: Experiment) -> dict[str, str | None] | None:
    """The encoder that runs, with the package it came from (None for P0's puzzle embedding)."""
    return None if exp.model == "trm" else provenance(exp.arch.recurrent_encoder_type)


def _encoder_change(run_dir: Path, exp: Experiment) -> dict[str, tuple[Any, Any]]:
    """{"encoder": (before, now)} where a resume runs another version of the encoder's package than the run's
    meta.json names (a run older than that field names none: nothing to compare)."""
    ran = rundir.read_json(run_dir / rundir.META).get("encoder") if (run_dir / rundir.META).is_file() else None
    now = _encoder_meta(exp)
    return {"encoder": (ran, now)} if ran is not None and ran != now else {}


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _carry_state(carry: ACTCarry) -> dict[str, Tensor]:
    flat = {"decoder.z_H": carry.decoder.z_H, "decoder.z_L": carry.decoder.z_L, "steps": carry.steps,
            "halted": carry.halted}
    flat.update({f"provider.{k}": v for k, v in carry.provider.items()})
    flat.update({f"data.{k}": v for k, v in carry.current_data.items()})
    return {k: v.detach().cpu() for k, v in flat.items()}


def _carry_from_state(flat: dict[str, Tensor], device: torch.device) -> ACTCarry:
    pick = lambda prefix: {k[len(prefix):]: v.to(device) for k, v in flat.items() if k.startswith(prefix)}  # noqa: E731
    return ACTCarry(DecoderCarry(z_H=flat["decoder.z_H"].to(device), z_L=flat["decoder.z_L"].to(device)),
                    pick("provider."), flat["steps"].to(device), flat["halted"].to(device), pick("data."))


def _save_checkpoint(run_dir: Path, exp: Experiment, parts: Trainable, state: StepState, ctx: DistContext,
                     wall_time_s: float, pending: dict[str, float] | None = None) -> None:
    model, ema, optimizers = parts.model, parts.ema, parts.optimizers
    tmp = rundir.temp_checkpoint_dir(run_dir, state.step)
    try:
        if ctx.is_main:
            rundir.begin_checkpoint(run_dir, state.step)
            rundir.save_weights(tmp / "model.safetensors", model.state_dict())
            if ema is not None:
                rundir.save_weights(tmp / "ema.safetensors", ema.state_dict())
        ctx.barrier()
        rundir.save_state(tmp / f"state.rank{ctx.rank}.pt", {
            "step": state.step, "world_size": ctx.world_size,
            "optimizers": [opt.state_dict() for opt in optimizers],
            "halt_rng": state.halt_rng.get_state(), "carry": _carry_state(state.carry),
            "converged_at": state.converged_at.cpu(), "pending_metrics": pending,
            "wall_time_s": wall_time_s,  # so a run killed without a summary still counts the time it took
        })
    except RunError:  # a full disk: drop the half-written one, so the summary can still say "failed"
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    ctx.barrier()
    if ctx.is_main:
        rundir.commit_checkpoint(tmp, exp.train.keep_checkpoints)
    ctx.barrier()


def _restore(run_dir: Path, parts: Trainable, ctx: DistContext
             ) -> tuple[StepState, dict[str, float] | None, float | None]:
    """The latest checkpoint into `parts` -> (its step state, the train metrics of a step whose eval is due, the
    run's wall time up to it; None from a checkpoint written before checkpoints recorded it)."""
    model, ema, optimizers = parts.model, parts.ema, parts.optimizers
    path = rundir.latest_checkpoint(run_dir)
    assert path is not None  # prepare_run_dir checked it
    _load_weights(model, path / "model.safetensors")
    if ema is not None:
        _load_weights(ema, path / "ema.safetensors")
    saved = rundir.load_state(path / f"state.rank{ctx.rank}.pt")
    if saved["world_size"] != ctx.world_size:
        raise RunError(f"{path} was written by {saved['world_size']} processes; resume it with as many")
    try:
        for opt, opt_state in zip(optimizers, saved["optimizers"], strict=True):
            opt.load_state_dict(opt_state)
        halt_rng = torch.Generator(device=ctx.device)
        halt_rng.set_state(saved["halt_rng"])
        carry = _carry_from_state(saved["carry"], ctx.device)
    except (KeyError, ValueError, RuntimeError, TypeError) as err:
        raise CheckpointError(f"{path}: the training state does not fit this model ({first_line(err)})") from None
    state = StepState(saved["step"], carry, saved["converged_at"].to(ctx.device), halt_rng)
    return state, saved.get("pending_metrics"), saved.get("wall_time_s")


def _load_weights(model: ACTModel, path: Path) -> None:
    rundir.load_fitting(model, rundir.load_weights(path), path)


def _recorded_dtype(run_dir: Path) -> str | None:
    """The dtype a run to resume computed in (config.json), which `forward_dtype = "auto"` keeps; None where
    the file cannot tell (`_check_resume` then says what is wrong with it)."""
    try:
        dtype = rundir.read_json(run_dir / rundir.CONFIG)["arch"]["forward_dtype"]
    except (RunError, KeyError, TypeError):
        return None
    return dtype if dtype in ("float32", "bfloat16") else None


def _check_length(run_dir: Path, exp: Experiment, data: ArcData, options: TrainOptions) -> None:
    """A run whose length --max-steps set, resumed without it, would take the length of its config (changing its
    learning-rate schedule from here on and, finished, replacing its final weights): refused, naming both. A run
    whose length is its config's takes the config's new length (train.epochs changed), and so does any run whose
    config now names a length (train.max_steps)."""
    previous = rundir.read_summary(run_dir)
    before, total = previous.get("total_steps"), total_steps(exp, data, options)
    if options.max_steps is not None or not isinstance(before, int) or before == total:
        return
    ran = rundir.read_config(run_dir)
    if before == total_steps(ran, data, options) or exp.train.max_steps not in (None, ran.train.max_steps):
        return  # its length was its config's (epochs), or the config now names one (train.max_steps)
    finished = previous.get("status") == "finished"
    raise RunError(f"{run_dir}: a run of {before} steps{' (finished)' if finished else ''}, which this command "
                   f"without --max-steps would make {total} steps long, changing its learning-rate schedule from "
                   f"its step {previous.get('step', '?')} on{' and replacing its final weights' if finished else ''}. "
                   f"Resume it as it is with --max-steps {before}, or extend it with --max-steps {total}")


def _in_runs_dir(command: str, runs_dir: Path) -> str:
    """`command` (an `etrmtrm train ...` line) with its --runs-dir, given or default, set to `runs_dir`."""
    words = shlex.split(command)
    if "--runs-dir" in words[:-1]:
        words[words.index("--runs-dir") + 1] = str(runs_dir)
    elif runs_dir != Path("runs"):
        words += ["--runs-dir", str(runs_dir)]
    return shlex.join(words)


def _check_resume(run_dir: Path, exp: Experiment, runs_dir: Path) -> dict[str, tuple[Any, Any]]:
    """Before anything is built: the run's files are readable and its config differs from `exp` only in
    rundir.RESUMABLE_KEYS -> those differences (old, new). The advice is the command that started the run, in the
    runs directory it is in now (a copy or a move of it resumes there, not where it started)."""
    if not (run_dir / rundir.CONFIG).is_file():
        raise RunError(f"{run_dir}: no such run to resume ({rundir.CONFIG} missing); start it without --resume")
    saved = rundir.saved_config(run_dir)
    if (run_dir / rundir.SUMMARY).is_file():
        rundir.read_json(run_dir / rundir.SUMMARY)
    changed, lines = rundir.config_changes(saved, exp)
    if lines:
        meta = rundir.read_json(run_dir / rundir.META) if (run_dir / rundir.META).is_file() else {}
        started = meta.get("command") or f"etrmtrm train {exp.id} --profile {saved.get('profile', exp.profile)}"
        raise RunError(f"{run_dir}: cannot resume with a different model or data ({lines}). Resume it as it was "
                       f"started (`{_in_runs_dir(started, runs_dir)} --resume`), or start over with --force")
    return changed
