"""Training on several processes or machines (DDP): who a process is, how processes start, and what they share.

A run is distributed when its process carries torchrun's variables (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``) with a world of more than one process. ``run_recbole --nproc=N`` starts its N
processes with :func:`spawn`, which sets the same variables in each, so a spawned process and a torchrun one take
the same path. The process group is gloo on the CPU and nccl on CUDA (:func:`process_group`).

This module is a ground floor: it imports nothing of the package.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

# The variables torchrun sets in each process, and :func:`spawn` sets alike.
_RANK, _LOCAL_RANK, _WORLD_SIZE, _LOCAL_WORLD_SIZE = "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"
_MASTER_ADDR, _MASTER_PORT = "MASTER_ADDR", "MASTER_PORT"
_OUTCOME_FILE = "outcome.pkl"


@dataclass(frozen=True)
class Place:
    """Where a process sits in a distributed run.

    Attributes:
        rank: among all processes of all machines (0 writes checkpoints and logs).
        local_rank: among this machine's processes (its GPU index on CUDA).
        world_size: all processes of all machines.
        local_world_size: this machine's processes.
    """

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int


def place_from_environment() -> Place | None:
    """This process's :class:`Place` from torchrun's variables, or None outside a distributed run (no variables,
    or a world of one process)."""
    if _WORLD_SIZE not in os.environ or int(os.environ[_WORLD_SIZE]) < 2:
        return None
    local_rank = int(os.environ.get(_LOCAL_RANK, "0"))
    return Place(
        rank=int(os.environ.get(_RANK, local_rank)),
        local_rank=local_rank,
        world_size=int(os.environ[_WORLD_SIZE]),
        local_world_size=int(os.environ.get(_LOCAL_WORLD_SIZE, os.environ[_WORLD_SIZE])),
    )


def is_distributed() -> bool:
    """Whether this process belongs to an initialised group of several processes."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank among all processes (0 outside a distributed run)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The processes of the distributed run (1 outside one)."""
    return dist.get_world_size() if is_distributed() else 1


def is_first() -> bool:
    """Whether this process is rank 0, the one that writes checkpoints, snapshots and logs."""
    return rank() == 0


@contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Join the distributed run this process belongs to (:func:`place_from_environment`) for the block, on
    gloo for a CPU ``device`` and nccl for a CUDA one; nothing outside a distributed run or when the group is
    already up (the caller's to close)."""
    if place_from_environment() is None or dist.is_initialized():
        yield
        return
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://")
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process of a distributed run (no-op outside one)."""
    if is_distributed():
        dist.barrier()


def from_first(value: Any) -> Any:
    """Rank 0's ``value`` in every process (``value`` itself outside a distributed run)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gathered(value: Any) -> list[Any]:
    """Every process's ``value``, in rank order (``[value]`` outside a distributed run)."""
    if not is_distributed():
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every process rank 0's buffers of ``module`` (e.g. centroids a model recomputed by itself)."""
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def state_digest(module: torch.nn.Module) -> str:
    """A sha256 of ``module``'s parameters and buffers, names and bytes: equal digests mean equal states."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def is_first_here() -> bool:
    """Whether this process is the first of its machine (or not in a distributed run): the one that reports."""
    place = place_from_environment()
    return place is None or place.local_rank == 0


def free_port() -> int:
    """A TCP port of this machine that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class Launch:
    """How :func:`spawn` starts this machine's processes of a run.

    Attributes:
        nproc: processes on this machine.
        world_size: processes on all machines.
        offset: the rank of this machine's first process.
        ip, port: where rank 0's machine listens for the others.
    """

    nproc: int
    world_size: int
    offset: int
    ip: str
    port: int


def spawn(launch: Launch, function: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """Run ``function(*args)`` in ``launch.nproc`` new processes, each one a rank of the distributed run; returns
    what it returned in this machine's first process (every rank's result is the same run's).

    An exception raised in that process is raised here again, as it is (a ``ConfigError`` stays one, for the CLI's
    one-line message), chained to torch's report of the failed process.
    """
    with tempfile.TemporaryDirectory(prefix="recbole-ddp-") as folder:
        outcome_file = Path(folder) / _OUTCOME_FILE
        try:
            mp.spawn(_process, args=(launch, function, args, outcome_file), nprocs=launch.nproc, join=True)
        except ProcessException as failure:
            error = _read(outcome_file) if outcome_file.exists() else None
            if isinstance(error, Exception):
                raise error from failure
            raise
        return _read(outcome_file)


def _read(outcome_file: Path) -> Any:
    with open(outcome_file, "rb") as file:
        return pickle.load(file)  # written by a child process of this call, in a folder only it knows


def _process(local_rank: int, launch: Launch, function: Callable[..., Any], args: tuple[Any, ...], outcome_file):
    """One spawned process: torchrun's variables for its rank, then ``function``; the machine's first process
    writes what it returned, or what it raised, to ``outcome_file``."""
    os.environ.update(
        {
            _RANK: str(launch.offset + local_rank),
            _LOCAL_RANK: str(local_rank),
            _WORLD_SIZE: str(launch.world_size),
            _LOCAL_WORLD_SIZE: str(launch.nproc),
            _MASTER_ADDR: launch.ip,
            _MASTER_PORT: str(launch.port),
        }
    )
    try:
        outcome = function(*args)
    except Exception as error:
        if local_rank == 0:
            _write(error, outcome_file)
        raise
    if local_rank == 0:
        _write(outcome, outcome_file)


def _write(outcome: Any, outcome_file: Path) -> None:
    try:
        payload = pickle.dumps(outcome)
    except (pickle.PicklingError, TypeError, AttributeError):  # an exception that cannot be pickled: torch reports it
        return
    outcome_file.write_bytes(payload)
