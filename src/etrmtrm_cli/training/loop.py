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
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from etrmtrm_cli import __version__, rundir
from etrmtrm_cli.config import Experiment
from etrmtrm_cli.data.dataset import ArcData, build_arc_data
from etrmtrm_cli.errors import ConfigError, RunError
from etrmtrm_cli.models.act import ACTCarry, ACTModel
from etrmtrm_cli.models.build import build_model, encoder_parameters, load_decoder
from etrmtrm_cli.models.decoder import DecoderCarry
from etrmtrm_cli.models.losses import act_loss
from etrmtrm_cli.models.puzzle_embedding import PuzzleEmbedding, SignSGD
from etrmtrm_cli.training.distributed import DistContext
from etrmtrm_cli.training.evaluate import as_dict, evaluate
from etrmtrm_cli.training.metrics import (
    carry_change,
    carry_norm,
    convergence_steps,
    cross_sample_var,
    grad_norms,
    update_convergence,
)
from etrmtrm_cli.training.run_log import MetricsLog, require_loggers

EventFn = Callable[[str, dict[str, Any]], None]
_LOSS_SUMS = ("lm_loss", "q_halt_loss", "q_continue_loss")
_COUNT_SUMS = ("accuracy", "exact_accuracy", "q_halt_accuracy", "steps")


@dataclass(frozen=True)
class TrainOptions:
    runs_dir: Path = Path("runs")
    max_steps: int | None = None  # overrides the epochs' step count (and train.max_steps)
    resume: bool = False
    force: bool = False
    compile: bool = False
    tensorboard: bool = False
    wandb: bool = False


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


@dataclass
class LoopState:
    """Everything beyond the weights that a checkpoint must restore for an exact resume."""

    step: int
    carry: ACTCarry
    converged_at: Tensor  # (B,) int: ACT step where each slot's encoder carry converged (0 = not yet)
    halt_rng: torch.Generator


def total_steps(exp: Experiment, data: ArcData, options: TrainOptions) -> int:
    """TRM's count: epochs x examples per epoch / global batch; or max_steps when given."""
    if options.max_steps is not None:
        return options.max_steps
    if exp.train.max_steps is not None:
        return exp.train.max_steps
    return max(1, exp.train.epochs * data.examples_per_epoch // exp.train.batch_size)


def lr_at(step: int, exp: Experiment, total: int) -> float:
    """Linear warmup, then cosine down to lr_min_ratio x lr (constant when lr_min_ratio = 1)."""
    t, lr = exp.train, exp.train.scaled_lr
    if step <= t.lr_warmup_steps:
        return lr * step / max(1, t.lr_warmup_steps)
    progress = (step - t.lr_warmup_steps) / max(1, total - t.lr_warmup_steps)
    return lr * (t.lr_min_ratio + (1 - t.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def build_optimizers(model: ACTModel, exp: Experiment) -> list[torch.optim.Optimizer]:
    """The dense optimizer (encoder in its own group when encoder_lr_scale > 0) and P0's SignSGD."""
    t = exp.train
    encoder = {id(p) for p in encoder_parameters(model)}
    decoder_params = [p for p in model.parameters() if id(p) not in encoder]
    if t.encoder_lr_scale > 0 and encoder:
        groups = [
            {"params": decoder_params, "lr_scale": 1.0, "name": "decoder"},
            {"params": encoder_parameters(model), "lr_scale": t.encoder_lr_scale, "name": "encoder"},
        ]
    else:
        groups = [{"params": list(model.parameters()), "lr_scale": 1.0, "name": "all"}]
    dense: torch.optim.Optimizer
    if t.optimizer == "adam_atan2":
        try:
            from adam_atan2_pytorch import AdamAtan2
        except ImportError:
            raise ConfigError(
                "train.optimizer = 'adam_atan2' needs the adam-atan2-pytorch package: "
                "pip install 'etrmtrm[atan2]'"
            ) from None
        dense = AdamAtan2(groups, lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay)
    else:
        dense = torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay)
    optimizers = [dense]
    if isinstance(model.provider, PuzzleEmbedding):
        sparse = SignSGD(model.provider, lr=t.puzzle_emb_lr, weight_decay=t.puzzle_emb_weight_decay)
        sparse.param_groups[0]["lr_scale"] = t.puzzle_emb_lr / t.lr  # follows the same schedule (and lr_scale)
        optimizers.append(sparse)
    return optimizers


def set_lr(optimizers: list[torch.optim.Optimizer], lr: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)


@torch.no_grad()
def update_ema(ema: ACTModel, model: ACTModel, rate: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1.0 - rate)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


def all_reduce_grads(model: ACTModel, world_size: int) -> None:
    """Sum the gradients over ranks; each rank's loss is already divided by the *global* batch."""
    if world_size == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def train(exp: Experiment, options: TrainOptions, ctx: DistContext, on_event: EventFn | None = None,
          stop: StopFlag | None = None) -> RunSummary:
    emit = on_event if (on_event is not None and ctx.is_main) else (lambda kind, payload: None)
    stop = stop or StopFlag()
    run_dir = options.runs_dir / exp.id
    # Loggers, data, model and decoder first: a bad input must fail before any run directory is touched.
    require_loggers(options.tensorboard, options.wandb)
    torch.manual_seed(exp.seed)  # parameter init: identical on every rank
    data = build_arc_data(exp.data, exp.seed)
    model = build_model(exp, data.seq_len, data.num_puzzle_ids)
    report = None if options.resume else load_decoder(model, exp, data.seq_len, options.runs_dir)
    if ctx.is_main:
        rundir.prepare_run_dir(run_dir, resume=options.resume, force=options.force)
    ctx.barrier()
    model.to(ctx.device)
    ema = copy.deepcopy(model) if exp.train.ema else None
    optimizers = build_optimizers(model, exp)
    total = total_steps(exp, data, options)
    local_batch = exp.train.batch_size // ctx.world_size
    if options.resume:
        state = _restore(run_dir, model, ema, optimizers, ctx)
    else:
        state = _fresh_state(model, data, exp, ctx, local_batch)
    step_fn = torch.compile(model) if options.compile else model
    log = MetricsLog(run_dir, resume_from=state.step, tensorboard=options.tensorboard, wandb=options.wandb,
                     exp=exp) if ctx.is_main else None
    if ctx.is_main and not options.resume:
        _write_run_files(run_dir, exp, ctx, data, total)
    emit("start", {"exp": exp, "total_steps": total, "start_step": state.step, "decoder_report": report,
                   "run_dir": run_dir, "device": str(ctx.device), "world_size": ctx.world_size})

    started, status, error, last = time.perf_counter(), "finished", None, {}
    try:
        while state.step < total:
            if stop.requested:
                status = "interrupted"
                break
            metrics = _train_step(step_fn, model, ema, optimizers, data, exp, ctx, state, total)
            if state.step % exp.train.eval_interval == 0 or state.step == total:
                eval_batch = exp.train.eval_batch_size or exp.train.batch_size
                metrics.update(evaluate(ema or model, data, eval_batch, ctx.device, ctx.rank, ctx.world_size))
                emit("eval", {"step": state.step, "metrics": metrics})
            if log is not None:
                log.write(state.step, metrics)
            last = metrics
            emit("step", {"step": state.step, "total_steps": total, "metrics": metrics})
            if state.step % exp.train.checkpoint_interval == 0 and state.step < total:
                _save_checkpoint(run_dir, exp, model, ema, optimizers, state, ctx)
                emit("checkpoint", {"step": state.step})
        _save_checkpoint(run_dir, exp, model, ema, optimizers, state, ctx)
        if status == "finished" and ctx.is_main:
            rundir.save_weights(run_dir / rundir.FINAL_WEIGHTS, (ema or model).state_dict())
    except Exception as err:
        status, error = "failed", f"step {state.step + 1}: {err}"
        raise
    finally:
        if log is not None:
            log.close()
        summary = RunSummary(exp.id, status, state.step, total, time.perf_counter() - started, run_dir,
                             _finite(last))
        if ctx.is_main:
            _write_summary(run_dir, summary, options.resume, error)
    return summary


def _write_summary(run_dir: Path, summary: RunSummary, resumed: bool, error: str | None) -> None:
    """summary.json: status (finished | interrupted | failed, with the error) and the wall time of all sessions."""
    previous = rundir.read_json(run_dir / rundir.SUMMARY) if resumed else {}
    rundir.write_json(run_dir / rundir.SUMMARY, {
        "status": summary.status, "step": summary.step, "total_steps": summary.total_steps,
        "wall_time_s": summary.wall_time_s + float(previous.get("wall_time_s", 0.0)), "last": summary.last,
        **({"error": error} if error else {}),
    })


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)}


def _fresh_state(model: ACTModel, data: ArcData, exp: Experiment, ctx: DistContext, local_batch: int) -> LoopState:
    first = as_dict(data.train_batch(0, exp.train.batch_size, ctx.rank, ctx.world_size).to(ctx.device))
    halt_rng = torch.Generator(device=ctx.device).manual_seed(exp.seed * 1000 + ctx.rank)
    return LoopState(0, model.initial_carry(first), torch.zeros(local_batch, dtype=torch.int32, device=ctx.device),
                     halt_rng)


def _train_step(step_fn: Any, model: ACTModel, ema: ACTModel | None, optimizers: list[torch.optim.Optimizer],
                data: ArcData, exp: Experiment, ctx: DistContext, state: LoopState, total: int) -> dict[str, float]:
    t0 = time.perf_counter()
    model.train()
    step = state.step + 1
    batch = as_dict(data.train_batch(state.step, exp.train.batch_size, ctx.rank, ctx.world_size).to(ctx.device))
    before = state.carry
    carry, outputs = step_fn(before, batch, state.halt_rng)
    loss, sums = act_loss(outputs, carry.current_data["labels"], carry.halted, carry.steps, exp.arch.loss_type)
    if not torch.isfinite(loss):
        raise RunError(
            f"{exp.id}: train/loss is {float(loss.detach())} at step {step}; stopped before the update. The last good "
            f"checkpoint is kept: lower train.lr or check the data, then `etrmtrm train {exp.id} --resume`"
        )
    (loss / exp.train.batch_size).backward()
    all_reduce_grads(model, ctx.world_size)
    metrics = grad_norms(model, encoder_parameters(model))
    if not math.isfinite(metrics["grad/total_norm"]):
        raise RunError(
            f"{exp.id}: grad/total_norm is {metrics['grad/total_norm']} at step {step}; stopped before the update. "
            f"The last good checkpoint is kept: lower train.lr, then `etrmtrm train {exp.id} --resume`"
        )
    if exp.train.grad_clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), exp.train.grad_clip_norm)
    lr = lr_at(step, exp, total)
    set_lr(optimizers, lr)
    for opt in optimizers:
        opt.step()
        opt.zero_grad(set_to_none=True)
    if ema is not None:
        update_ema(ema, model, exp.train.ema_rate)
    metrics.update(_reduce_train_sums(sums, exp, ctx))
    metrics.update(_encoder_metrics(model, exp, before, carry, outputs, state, ctx))
    state.step, state.carry = step, carry
    metrics["train/lr"] = lr
    metrics["time/step_s"] = time.perf_counter() - t0
    return metrics


def _reduce_train_sums(sums: dict[str, Tensor], exp: Experiment, ctx: DistContext) -> dict[str, float]:
    """TRM's normalisation: losses by the global batch, the other sums by the count of halted slots."""
    keys = ["count", *_COUNT_SUMS, *[k for k in _LOSS_SUMS if k in sums]]
    flat = torch.stack([sums[k].double() for k in keys])
    if ctx.world_size > 1:
        dist.all_reduce(flat)
    values = dict(zip(keys, flat.tolist(), strict=True))
    count = values.pop("count")
    out = {"train/count": count}
    for key in _COUNT_SUMS:
        out[f"train/{key}"] = values[key] / count if count else math.nan
    for key in _LOSS_SUMS:
        if key in values:
            out[f"train/{key}"] = values[key] / exp.train.batch_size
    out["train/loss"] = out["train/lm_loss"] + 0.5 * sum(out.get(f"train/{k}", 0.0) for k in _LOSS_SUMS[1:])
    return out


@torch.no_grad()
def _encoder_metrics(model: ACTModel, exp: Experiment, before: ACTCarry, after: ACTCarry,
                     outputs: dict[str, Tensor], state: LoopState, ctx: DistContext) -> dict[str, float]:
    """Context variance across distinct puzzles; for recurrent encoders, the carry's norm and change.
    Over the global batch: each rank's rows are gathered first."""
    rows = ctx.gather_rows
    out = {"train/encoder_cross_sample_var": cross_sample_var(rows(outputs["context"]),
                                                              rows(after.current_data["puzzle_ids"]))}
    key = getattr(model.provider, "state_key", None)
    if key is None:
        return out
    previous = model.provider.reset_carry(before.halted, before.provider)[key]  # what this step started from
    change = carry_change(after.provider[key], previous)  # (B,)
    converged = torch.where(before.halted, torch.zeros_like(state.converged_at), state.converged_at)
    state.converged_at = update_convergence(converged, change, after.steps, exp.arch.encoder_convergence_tol)
    change, steps, halted = rows(change), rows(after.steps), rows(after.halted)
    out["train/encoder_carry_norm"] = carry_norm(rows(after.provider[key]))
    out["train/encoder_carry_change"] = float(change.mean())
    # The carry's evolution across ACT steps (the plan's "carry should evolve early, stabilize later"):
    # the mean change of the slots that just took their k-th step.
    for k in torch.unique(steps).tolist():
        out[f"act/encoder_carry_change_{k:02d}"] = float(change[steps == k].mean())
    out["train/encoder_convergence_steps"] = convergence_steps(rows(state.converged_at), steps, halted)
    return out


def _write_run_files(run_dir: Path, exp: Experiment, ctx: DistContext, data: ArcData, total: int) -> None:
    rundir.write_json(run_dir / rundir.CONFIG, exp.model_dump(mode="json"))
    rundir.write_json(run_dir / rundir.META, {
        "experiment": exp.id, "seed": exp.seed, "profile": exp.profile, "etrmtrm": __version__,
        "git_sha": _git_sha(), "torch": torch.__version__, "python": platform.python_version(),
        "device": str(ctx.device), "world_size": ctx.world_size, "cpu": platform.processor() or platform.machine(),
        "total_steps": total, "examples_per_epoch": data.examples_per_epoch,
        "train_tasks": [g.task.id for g in data.groups[: data.num_train_groups]],
        "eval_tasks": [g.task.id for g in data.groups[data.num_train_groups :]],
    })
    rundir.write_json(run_dir / rundir.SUMMARY, {"status": "running", "step": 0, "total_steps": total})


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


def _save_checkpoint(run_dir: Path, exp: Experiment, model: ACTModel, ema: ACTModel | None,
                     optimizers: list[torch.optim.Optimizer], state: LoopState, ctx: DistContext) -> None:
    tmp = rundir.temp_checkpoint_dir(run_dir, state.step)
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
        "converged_at": state.converged_at.cpu(),
    })
    ctx.barrier()
    if ctx.is_main:
        rundir.commit_checkpoint(tmp, exp.train.keep_checkpoints)
    ctx.barrier()


def _restore(run_dir: Path, model: ACTModel, ema: ACTModel | None, optimizers: list[torch.optim.Optimizer],
             ctx: DistContext) -> LoopState:
    path = rundir.latest_checkpoint(run_dir)
    assert path is not None  # prepare_run_dir checked it
    model.load_state_dict(rundir.load_weights(path / "model.safetensors"))
    if ema is not None:
        ema.load_state_dict(rundir.load_weights(path / "ema.safetensors"))
    saved = rundir.load_state(path / f"state.rank{ctx.rank}.pt")
    if saved["world_size"] != ctx.world_size:
        raise RunError(f"{path} was written by {saved['world_size']} processes; resume it with as many")
    for opt, opt_state in zip(optimizers, saved["optimizers"], strict=True):
        opt.load_state_dict(opt_state)
    halt_rng = torch.Generator(device=ctx.device)
    halt_rng.set_state(saved["halt_rng"])
    return LoopState(saved["step"], _carry_from_state(saved["carry"], ctx.device),
                     saved["converged_at"].to(ctx.device), halt_rng)
