"""Process layout: one process, or a torchrun launch (the CLI passes torchrun's environment in).

Gradients are summed over ranks by hand after backward (each rank's loss is divided by the global batch),
as TRM does; NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from etrmtrm_cli.errors import ConfigError, PeerFailed

T = TypeVar("T")
# How gloo reports a collective whose other side has gone ("... This is typically caused by a remote worker crashing")
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "remote worker crashing")


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: torch.device
    local_world_size: int = 1  # processes on this machine (torchrun's LOCAL_WORLD_SIZE), which share its memory

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when `flag` is True on any: a decision all ranks must take together."""
        if self.world_size == 1:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def together(self, step: Callable[[], T]) -> T:
        """`step()` on every rank, which go on only where it succeeded on all. Rank 0, where it failed, reports its
        error; else each rank that failed does; every other rank raises PeerFailed (which says nothing): one cause
        is printed once, not once per rank (a checkpoint of 1 process resumed by 2: rank 0 says so, and rank 1's
        missing state file follows from it). Otherwise a rank that fails alone leaves the others to fail at their
        next collective with a lost connection, which hides the cause, or to act on a run the failed rank could not
        read. `step` must hold no collective: a rank that fails before one would pair its neighbours' collective
        with this one's."""
        try:
            result = step()
        except Exception as err:
            try:
                _, main_failed = self._agree(True)
            except PeerFailed:  # another rank has gone too: this one's own error is the cause to report
                raise err from None
            if main_failed and not self.is_main:
                raise PeerFailed("process 0 failed too, and reports why") from None
            raise
        if self._agree(False)[0]:
            raise PeerFailed("another process of the run failed; it reports why")
        return result

    def _agree(self, failed: bool) -> tuple[bool, bool]:
        """(whether any rank failed, whether rank 0 did), where a rank that has gone (killed, as by the OOM killer)
        counts as failed."""
        if self.world_size == 1:
            return failed, failed
        value = torch.tensor([int(failed), int(failed and self.is_main)], device=self.device)
        try:
            dist.all_reduce(value, op=dist.ReduceOp.MAX)
        except RuntimeError as err:
            if self.peer_gone(err):
                raise PeerFailed("another process of the run ended; its output may say why") from None
            raise
        return bool(value[0]), bool(value[1])

    def peer_gone(self, err: BaseException) -> bool:
        """Whether `err` is a collective of this rank failing because another process ended (gloo's words for it):
        that process reports the cause."""
        return self.world_size > 1 and isinstance(err, RuntimeError) and any(w in str(err) for w in PEER_GONE)

    def total(self, local: Tensor) -> Tensor:
        """The sum of `local` over the ranks (a copy; `local` itself in one process)."""
        if self.world_size == 1:
            return local
        value = local.detach().clone()
        dist.all_reduce(value)
        return value

    def gather_rows(self, local: Tensor) -> Tensor:
        """A per-slot tensor (B_local, ...) -> (B_global, ...): every rank's rows in rank order, which is
        the global batch's order (each rank holds a contiguous slice of it)."""
        if self.world_size == 1:
            return local
        if local.dtype == torch.bool:  # not every backend gathers bool
            return self.gather_rows(local.to(torch.uint8)).bool()
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts)


DEVICES = ("auto", "cpu", "cuda")


def check_device_name(name: str) -> None:
    """A --device value is one of DEVICES (whether this machine has it is pick_device's question)."""
    if name not in DEVICES:
        raise ConfigError(f"--device {name!r}: expected {', '.join(DEVICES[:-1])} or {DEVICES[-1]}")


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """auto | cpu | cuda -> a torch.device; asking for CUDA where there is none is an error."""
    check_device_name(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available (use --device cpu or auto)")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(env: Mapping[str, str], device_name: str) -> DistContext:
    """A single process, or join the torchrun group described by env (RANK, WORLD_SIZE, LOCAL_RANK)."""
    world_size = int(env.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistContext(0, 1, pick_device(device_name))
    rank, local_rank = int(env["RANK"]), int(env.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return DistContext(rank, world_size, device, int(env.get("LOCAL_WORLD_SIZE", world_size)))


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
