"""What a sweep would cost, for `sweep --dry-run`: optimizer steps, FLOPs, and time where it was measured here.

FLOPs per optimizer step are counted, not guessed: torch's FlopCounterMode over one real training step
(`forward_backward`: one ACT step through every H/L cycle and the encoder, and its backward) of the resolved
model on one real example, times the global batch. It counts matrix multiplications and attention (torch's
formulas; attention dense, masks ignored), not elementwise work or the optimizer. The step is the first of a
run, where every slot starts a new example (a static encoder reads its demos then, and on later steps only for
the slots that halted). The multiplications themselves are not computed (their results are zeros of the right
shape), so a paper-size model is counted in a second or two on a laptop.

Time is estimated only from runs measured on this machine (the runs directory): a run of the same configuration
gives its seconds per step (evals and checkpoints included); otherwise runs of the same profile and device give
a FLOP rate. Without either the time is unknown, and says so.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etrmtrm_cli.config import Experiment
from etrmtrm_cli.rundir import config_hash, read_json

_FLOPS_CACHE: dict[str, float | None] = {}
_DATA_CACHE: dict[str, Any] = {}


def flops_per_step(exp: Experiment) -> float | None:
    """Matmul + attention FLOPs of one optimizer step of `exp` at its global batch (None: not countable). Counted in
    float32: the count is the same in any dtype, so runs of two dtypes share one count, and
    it does not depend on the machine."""
    from etrmtrm_cli.training.runtime import with_dtype

    exp = with_dtype(exp, "float32")
    key = json.dumps(exp.model_dump(mode="json", include={"model", "arch", "data"}), sort_keys=True)
    key += f"|{exp.train.batch_size}"
    if key not in _FLOPS_CACHE:
        _FLOPS_CACHE[key] = _count(exp)
    return _FLOPS_CACHE[key]


def flop_counter() -> Any:
    """torch's FlopCounterMode, which counts CUDA's fused attention, with the same formulas for the CPU's."""
    import torch
    from torch.utils import flop_counter as fc

    def fwd(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return int(fc.sdpa_flop_count(q, k, v))

    def bwd(grad: Any, q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return int(fc.sdpa_backward_flop_count(grad, q, k, v))

    aten = torch.ops.aten
    return fc.FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: fwd,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: bwd})


def _count(exp: Experiment) -> float | None:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_map_only

    from etrmtrm_cli.models.build import build_model
    from etrmtrm_cli.training.step import forward_backward

    counter = flop_counter()
    counted = set(counter.flop_registry)

    class ZerosForCounted(TorchDispatchMode):
        """Counted ops return zeros of their output's shape (from their meta kernel) instead of computing."""

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            if func.overloadpacket not in counted:
                return func(*args, **kwargs)
            meta = func(*tree_map_only(torch.Tensor, lambda t: t.to("meta"), args),
                        **tree_map_only(torch.Tensor, lambda t: t.to("meta"), kwargs))
            return tree_map_only(torch.Tensor, lambda t: torch.zeros(t.shape, dtype=t.dtype), meta)

    data = _data(exp)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(exp, data.seq_len, data.num_puzzle_ids)
        batch = data.train_batch(0, 1).as_dict()
        try:
            with ZerosForCounted(), counter:
                forward_backward(model, model.initial_carry(batch), batch, torch.Generator().manual_seed(0),
                                 exp.arch.loss_type, 1)
        except Exception:  # e.g. a plugin encoder with an op that has no meta kernel: no figure, not a crash
            return None
    return float(counter.get_total_flops()) * exp.train.batch_size


def steps_of(exp: Experiment, max_steps: int | None) -> int:
    """The optimizer steps `etrmtrm train` would take: its own count (max_steps, or epochs x examples / batch)."""
    from etrmtrm_cli.training.loop import TrainOptions, total_steps

    return total_steps(exp, _data(exp), TrainOptions(max_steps=max_steps))


def _data(exp: Experiment) -> Any:
    """The experiment's ArcData, built once per data settings (its tasks and examples do not depend on the seed;
    augmentations, which do, are drawn lazily and are not used here)."""
    from etrmtrm_cli.data.dataset import build_arc_data

    key = json.dumps(exp.data.model_dump(mode="json"), sort_keys=True)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = build_arc_data(exp.data, exp.seed)
    return _DATA_CACHE[key]


@dataclass(frozen=True)
class Measured:
    """One run measured here: its configuration, profile, device, seconds per step and FLOP rate."""

    run_dir: Path
    config_hash: str
    profile: str
    device: str  # "cpu" or "cuda"
    dtype: str  # the forward_dtype it ran in
    s_per_step: float
    flop_rate: float | None  # FLOP/s (counted FLOPs per step / seconds per step)


def measured_runs(run_dirs: Iterable[Path]) -> list[Measured]:
    """Every run with steps taken and a wall time in its summary (finished or stopped), as measured here."""
    out = []
    for run_dir in run_dirs:
        try:
            summary, config = read_json(run_dir / "summary.json"), read_json(run_dir / "config.json")
            meta = read_json(run_dir / "meta.json") if (run_dir / "meta.json").is_file() else {}
            exp = Experiment.model_validate(config)
        except Exception:  # an unreadable or older run: not a measurement
            continue
        step, wall = summary.get("step"), summary.get("wall_time_s")
        if not isinstance(step, int) or step <= 0 or not isinstance(wall, int | float) or wall <= 0:
            continue
        s_per_step = float(wall) / step
        flops = flops_per_step(exp)
        out.append(Measured(run_dir, config_hash(config), exp.profile, str(meta.get("device", "cpu")).split(":")[0],
                            exp.arch.forward_dtype, s_per_step, flops / s_per_step if flops else None))
    return out


@dataclass(frozen=True)
class Estimate:
    steps: int
    flops_per_step: float | None
    seconds: float | None  # None: no measurement here to go by
    basis: str  # how the time was estimated, in words

    @property
    def flops(self) -> float | None:
        return None if self.flops_per_step is None else self.flops_per_step * self.steps


def estimate(exp: Experiment, steps: int, device: str, measured: Sequence[Measured]) -> Estimate:
    """The cost of `steps` steps of `exp` on `device` (cpu | cuda), timed by the closest measurement here: runs of
    its configuration in the dtype it would run in here (`forward_dtype = "auto"` resolved), else runs of its
    profile in that dtype."""
    import torch

    from etrmtrm_cli.training.runtime import choose_dtype

    exp = choose_dtype(exp, torch.device(device)).exp  # the config.json a run of it here would record
    flops = flops_per_step(exp)
    same = [m for m in measured if m.config_hash == config_hash(exp.model_dump(mode="json")) and m.device == device]
    if same:
        rate = statistics.median(m.s_per_step for m in same)
        return Estimate(steps, flops, rate * steps, f"{rate:.3g} s/step, {len(same)} run(s) of this config here")
    dtype = exp.arch.forward_dtype
    rates = [m.flop_rate for m in measured
             if (m.profile, m.device, m.dtype) == (exp.profile, device, dtype) and m.flop_rate]
    if flops and rates:
        rate = statistics.median(rates)
        return Estimate(steps, flops, flops * steps / rate,
                        f"{rate / 1e9:.3g} GFLOP/s, {len(rates)} {exp.profile} {dtype} run(s) here")
    return Estimate(steps, flops, None, f"unknown: no {exp.profile} {dtype} run on {device} measured here")


def total_seconds(estimates: Sequence[Estimate]) -> float | None:
    """The jobs' time one after another; None if any is unknown."""
    if any(e.seconds is None for e in estimates):
        return None
    return math.fsum(e.seconds for e in estimates if e.seconds is not None)
