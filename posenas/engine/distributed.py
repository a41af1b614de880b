"""Devices and multi-process runs (`torchrun`): gloo on CPU, NCCL on CUDA.

A single process is the world of size 1, so the training loop has one code path.
"""

from __future__ import annotations

import atexit
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

from posenas.errors import PosenasError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → CUDA when present (this process's GPU under torchrun), else CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PosenasError(f"--device: unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PosenasError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def any_true(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any (e.g. a NaN loss on one rank)."""
        if self.size == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return bool(t.item() > 0)


def average_gradients(params, world: World) -> None:
    """All-reduce and average ``.grad`` of ``params`` over the ranks, for objectives that do not
    use DistributedDataParallel. A parameter with no gradient on this rank contributes zeros,
    so every rank ends with the same gradients for every parameter."""
    if world.size == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= world.size


def check_identical(tensors: list[torch.Tensor], world: World, what: str) -> None:
    """Raise if ``tensors`` differ between the ranks (sums and absolute sums gathered from every
    rank): state that every rank must hold alike (architecture parameters, a controller, its draw)."""
    if world.size == 1:
        return
    own = torch.stack([v for t in tensors for v in (t.detach().double().sum(), t.detach().double().abs().sum())])
    own = own.to(world.device)
    seen = [torch.zeros_like(own) for _ in range(world.size)]
    dist.all_gather(seen, own)
    for rank, other in enumerate(seen[1:], start=1):
        if not torch.equal(other, seen[0]):
            raise PosenasError(f"{what}: rank {rank} differs from rank 0 (a search must keep them identical)")


def init_world(device_name: str) -> World:
    """Join the process group when started by torchrun (WORLD_SIZE > 1), once per process: a
    later call (the search phase after the supernet's training) reuses the group, after a
    barrier, so each call stays a point where all ranks meet (as joining is). Why not leave
    and re-join: a re-join after ``destroy_process_group`` hung now and then (rank 1 inside
    its second ``init_process_group``, rank 0 already past its own), in CI and here."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_leave_group)
    elif size > 1:
        dist.barrier()
    return World(rank, size, device)


def _leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def env_rank() -> tuple[int, int]:
    """(rank, world size) as torchrun sets them, without joining a process group."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


@contextmanager
def single_process() -> Iterator[None]:
    """Inside: this process is a world of its own (``RANK=0``, ``WORLD_SIZE=1``), so a
    :func:`posenas.engine.train.train` call is the plain 1-process run, whatever torchrun
    started it; ``LOCAL_RANK`` stays, so each rank keeps its own GPU. Why: a search that gives
    each rank whole trainings of its own (EfficientPose's random baseline) must get runs
    identical to a 1-process search's, not one DDP run over all ranks."""
    saved = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE")}
    os.environ.update(RANK="0", WORLD_SIZE="1")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def gather(world: World, value: Any) -> list[Any]:
    """Every rank's ``value`` (plain JSON-able data), in rank order, on every rank."""
    if world.size == 1:
        return [value]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, value)
    return out


_T = TypeVar("_T")


def on_main(world: World, fn: Callable[[], _T]) -> _T:
    """``fn()`` run on rank 0 alone and its result (plain data) handed to every rank; a
    :class:`PosenasError` it raises is raised on every rank, so all stop with the same
    one-line message instead of the others waiting for rank 0. Why: a decision that
    involves a measurement (a latency budget) must be taken once, not once per rank."""
    if world.size == 1:
        return fn()
    box: list[Any] = [None]
    if world.is_main:
        try:
            box[0] = ("ok", fn())
        except PosenasError as error:
            box[0] = ("error", str(error))
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise PosenasError(value)
    return value


def share_note(rank: int, size: int, text: str) -> None:
    """One line per rank on how a search's work was shared out (printed only when there are several).

    The ranks share one stdout: the line goes out in one write (text and newline together), so
    two ranks' lines cannot interleave even when stdout is unbuffered (``PYTHONUNBUFFERED``),
    where ``print`` writes the text and its newline separately."""
    if size > 1:
        sys.stdout.write(f"rank {rank} of {size}: {text}\n")
        sys.stdout.flush()
