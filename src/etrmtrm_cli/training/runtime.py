"""How a run executes on this machine, as opposed to what it computes: the compute dtype and torch.compile.

Both are chosen once per run, from measurements on the 2-core CPU this tool was tuned on
(docs/performance.md), and both are visible: the run's second line says what was chosen and why, and meta.json
records it (`runtime`).

- **dtype.** bfloat16 is fast only where the hardware has it: CUDA, or a CPU with AVX512-BF16 or AMX
  instructions. A CPU without them emulates every bfloat16 matmul (on a 2-core AVX2 EPYC: 1.0 GFLOP/s against
  float32's 179, `benchmarks/bench_decoder.py`; a training step about ten times slower,
  `benchmarks/bench_step.py --dtype bfloat16`). With native bfloat16 it is the faster dtype: on a 2-core EPYC
  with AVX512-BF16 a decoder step at the paper's width (hidden 512) is 1.99x faster than float32 and 1.35x at
  hidden 128 (torch's attention kernel), and a whole cpu-profile E0b run 1.57x (617 against 394 s;
  docs/performance.md; one run each, no interval). Hence:
  - `forward_dtype = "auto"` (the cpu and headroom profiles) is bfloat16 on CUDA and on a CPU with native
    bfloat16, float32 on any other CPU;
  - an explicit bfloat16 on a CPU without it runs in float32 and warns, also under -q (`dtype_note`);
  - an explicit float32 on a CPU with native bfloat16 is told the faster choice (`dtype_hint`);
  - under torchrun on the CPU, "native" means on every rank's CPU (`native_on_every_rank`).
  config.json records the dtype that ran, so seeds of one experiment run on CPUs that chose differently are two
  configurations to `compare` (their config differences name forward_dtype), never silently pooled; a resumed
  `auto` run keeps the dtype it started in.
- **compile.** `torch.compile` costs a one-off compile (about 1.5 min cold, 27 s from inductor's cache, on
  the 2-core CPU at the cpu profile; 10-13 s on an AVX512-BF16 one, with AOTAutograd's cache, `compile_model`)
  and then makes each step 1.28x faster there
  (`benchmarks/bench_compile.py E0b`), so `auto` compiles a run at least COMPILE_MIN_STEPS steps long (by its
  whole length: a resumed run computes as it started), and only where its backend can build (a C++ compiler on
  the CPU; CUDA is taken to have Triton).
"""

from __future__ import annotations

import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch._functorch import config as functorch_config

from etrmtrm_cli.config import Experiment
from etrmtrm_cli.training.distributed import DistContext

CPUINFO = Path("/proc/cpuinfo")
COMPILE_MIN_STEPS = 1000  # break-even measured at ~200 steps (warm cache); the margin covers a cold one


def _cpuinfo(field: str, cpuinfo: Path) -> str | None:
    """The first value of `field` in /proc/cpuinfo (Linux); None elsewhere."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == field), None)


def cpu_has_native_bfloat16(cpuinfo: Path = CPUINFO) -> bool:
    """True when the CPU has bfloat16 dot-product instructions (x86 AVX512-BF16 or AMX-BF16).

    Read from the kernel's CPU flags: torch reports only its vector capability (AVX2, AVX512), which does not
    tell whether bfloat16 is native. Elsewhere (no /proc/cpuinfo) it answers False: bfloat16 on an unknown CPU
    is treated as emulated, and the run says so."""
    flags = (_cpuinfo("flags", cpuinfo) or "").split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_description(cpuinfo: Path = CPUINFO) -> str:
    """The CPU for meta.json: model name and the vector/matrix extensions that decide its float speed, e.g.
    'AMD EPYC (avx2, avx512f, avx512_bf16)'. Runs of one seed differ in their last bits across these."""
    name = _cpuinfo("model name", cpuinfo) or platform.processor() or platform.machine()
    flags = set((_cpuinfo("flags", cpuinfo) or "").split())
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({', '.join(wanted)})" if wanted else name


@dataclass(frozen=True)
class DtypeChoice:
    """The dtype a run computes in on this machine."""

    exp: Experiment  # as it will compute: forward_dtype float32 or bfloat16, never auto
    why: str | None  # for the run's second line and meta.json `runtime.dtype_hint`
    warning: str | None  # a bfloat16 request this CPU would emulate: shown even under -q, `runtime.dtype_note`


def choose_dtype(exp: Experiment, device: torch.device, native_bf16: bool | None = None,
                 recorded: str | None = None, ranks: int = 1) -> DtypeChoice:
    """`exp` as it will compute on `device`. `auto` is bfloat16 on CUDA and on a CPU with native bfloat16, float32
    on any other CPU; `recorded` (a resumed run's dtype) keeps a run in the dtype it started in. An explicit
    bfloat16 on a CPU without it runs in float32 with a warning. With `ranks` > 1 processes, `native_bf16` says
    whether every rank's CPU has it (`native_on_every_rank`): all compute in one dtype."""
    asked = exp.arch.forward_dtype
    native = device.type != "cpu" or (cpu_has_native_bfloat16() if native_bf16 is None else native_bf16)
    where = "CUDA" if device.type != "cpu" else "this CPU" if ranks == 1 else f"the CPU of every one of {ranks} ranks"
    lacking = "this CPU" if ranks == 1 else f"the CPU of one of {ranks} ranks"
    if asked == "auto":
        dtype = recorded or ("bfloat16" if native else "float32")
        why = ("auto: as the run started" if recorded else
               f"auto: {where} has native bfloat16" if native else
               f"auto: {lacking} has no AVX512-BF16/AMX instructions, so bfloat16 would be emulated")
        exp = with_dtype(exp, dtype)
        if dtype == "float32" or native:
            return DtypeChoice(exp, why, None)
    elif asked == "float32":
        hint = ("as configured; this CPU has native bfloat16, faster here: --set arch.forward_dtype=bfloat16"
                if native and device.type == "cpu" else None)
        return DtypeChoice(exp, hint, None)
    elif native:
        return DtypeChoice(exp, None, None)
    if ranks == 1:
        lacking += f" ({_cpuinfo('model name', CPUINFO) or platform.processor() or platform.machine()})"
    warning = (f"bfloat16 asked, but {lacking} has no AVX512-BF16/AMX instructions, so bfloat16 would be "
               "emulated, ~10x slower than float32: running in float32")
    return DtypeChoice(with_dtype(exp, "float32"), None, warning)


def native_on_every_rank(ctx: DistContext) -> bool | None:
    """Whether every rank's CPU has native bfloat16 (None: one process, or CUDA). Under torchrun each rank reads
    its own CPU; ranks must compute in one dtype, and one that emulated bfloat16 would hold up every step of all."""
    if ctx.world_size == 1 or ctx.device.type != "cpu":
        return None
    return not ctx.any_rank(not cpu_has_native_bfloat16())


def with_dtype(exp: Experiment, dtype: str) -> Experiment:
    """`exp` computing in `dtype`."""
    return exp.model_copy(update={"arch": exp.arch.model_copy(update={"forward_dtype": dtype})})


def compile_model(model: nn.Module, mode: str = "default") -> Callable[..., Any]:
    """torch.compile(model), with AOTAutograd's on-disk cache allowed to keep graphs that hold a custom
    autograd.Function (layers._RMSNorm, in every block). torch skips that cache for such graphs by default, so
    every run traced the decoder's joint graph again: a cpu-profile E0b compiled in 16.6-18.3 s from a warm
    cache, and in 10.4-11.8 s with this, 1.59x [1.51, 1.66] less (n = 3 alternating processes of
    benchmarks/bench_compile.py; docs/performance.md). It is safe for ours: dynamo traces the Function's forward
    and backward into the graph, so the cache key changes with their code (tests/test_runtime.py checks that two
    Functions differing only in their backward get their own). The setting is torch's and process-wide."""
    functorch_config.autograd_cache_allow_custom_autograd_functions = True
    return torch.compile(model, mode=mode)


def choose_compile(device: torch.device, run_steps: int, compile: bool | None) -> tuple[bool, str]:
    """Whether to torch.compile a run of `run_steps` steps, and why. `compile` None is auto; True or False is the
    user's choice and is kept (a forced compile without a C++ compiler fails as torch reports it)."""
    if compile is not None:
        return compile, "--compile" if compile else "--no-compile"
    if run_steps < COMPILE_MIN_STEPS:
        return False, f"auto: {run_steps} steps do not earn back the compile time"
    if device.type == "cpu" and shutil.which("c++") is None and shutil.which("g++") is None:
        return False, "auto: no C++ compiler for torch.compile on the CPU"
    return True, f"auto: {run_steps} steps"
