"""What the SwiGLU's recompute costs: a real experiment's train steps with every SwiGLU call recomputing its
activations in backward against the same model with every call keeping them (plain autograd; same initial
weights, same batches), alternating, so that a change in machine load hits both alike.

    python benchmarks/bench_recompute.py E0b --profile cpu --steps 30 --threads 2 [--compile]

The recompute (`models/layers.SwiGLU`) keeps no activation but the MLP's input for backward and computes
gate_up(x) again there; the model does it in the encoders' calls and in the decoder's whose activations exceed
`decoder.MLP_KEEP_MAX_BYTES`, eager or compiled (the last column says how many of this experiment's eager training
calls do). The last line is one JSON object.
"""

from __future__ import annotations

import copy
import json
import statistics
import types
from collections.abc import Callable

import torch
from experiment_steps import alternate, experiment_model, experiment_parser
from torch import Tensor

from etrmtrm_cli.models import layers

WARM = 5  # untimed steps of each (a compiled model compiles in its first two)


def keep_forward(self: layers.SwiGLU, x: Tensor) -> Tensor:
    """SwiGLU.forward keeping its activations whatever their size, compiled too: plain autograd."""
    return layers._swiglu(x, self.gate_up.weight.to(x.dtype), self.down.weight.to(x.dtype))


def with_every_swiglu(model: torch.nn.Module, change: Callable[[layers.SwiGLU], None]) -> torch.nn.Module:
    """A copy of the model with `change` applied to each of its SwiGLUs."""
    copied = copy.deepcopy(model)
    for module in copied.modules():
        if isinstance(module, layers.SwiGLU):
            change(module)
    return copied


def recompute_always(module: layers.SwiGLU) -> None:
    module.keep_max_bytes = module.compiled_keep_max_bytes = 0  # a limit of 0 bytes: every call recomputes


def keep_always(module: layers.SwiGLU) -> None:
    module.forward = types.MethodType(keep_forward, module)  # type: ignore[method-assign]


def recomputing_calls(model: torch.nn.Module, exp: object, data: object) -> tuple[int, int]:
    """(calls that recompute by default, training calls) in one eager train step of `model` on the first batch."""
    counts = [0, 0]

    def count(module: layers.SwiGLU, args: tuple[Tensor, ...]) -> None:
        if torch.is_grad_enabled():
            counts[0] += module.recomputes(args[0])
            counts[1] += 1

    hooks = [m.register_forward_pre_hook(count) for m in model.modules() if isinstance(m, layers.SwiGLU)]
    alternate({"count": (model, model)}, exp, data, 1)  # type: ignore[arg-type]
    for hook in hooks:
        hook.remove()
    return counts[0], counts[1]


def main() -> None:
    parser = experiment_parser(__doc__, steps=30)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    exp, data, model = experiment_model(args)
    arms = {"recompute": with_every_swiglu(model, recompute_always), "keep": with_every_swiglu(model, keep_always)}
    forward = torch.compile if args.compile else (lambda model: model)
    times = alternate({name: (arm, forward(arm)) for name, arm in arms.items()}, exp, data, WARM + args.steps)
    median = {name: 1000 * statistics.median(t[WARM:]) for name, t in times.items()}
    by_default, calls = recomputing_calls(model, exp, data)
    result = {"experiment": exp.id, "profile": args.profile, "dtype": exp.arch.forward_dtype, "threads": args.threads,
              "compile": args.compile, "steps_timed": args.steps,
              **{f"{name}_ms": round(ms, 1) for name, ms in median.items()},
              "cost": round(median["recompute"] / median["keep"], 3),
              "default_recomputing_calls": by_default, "training_calls": calls}
    print(f"{exp.id} ({args.profile}, {exp.arch.forward_dtype}{', compiled' if args.compile else ''}): recompute "
          f"{result['recompute_ms']} ms/step, keep {result['keep_ms']} ms/step: the recompute costs "
          f"{result['cost']}x; by default {by_default} of an eager step's {calls} training calls recompute")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
