"""Data-parallel final training under ``torchrun``: process group, shards, rank 0 writes.

``torchrun --nproc-per-node N -m search.train ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and a rendezvous in the environment. :func:`setup` joins
the process group (``nccl`` on CUDA, ``gloo`` on the CPU) and returns a :class:`Dist`;
without ``torchrun`` it returns a single-process :class:`Dist` and nothing changes.

The model is wrapped in ``DistributedDataParallel`` (gradients averaged every step);
each epoch every rank trains on its own share of one permutation of the training set,
drawn from the epoch's seed and padded to a multiple of N, as ``DistributedSampler``
does (:func:`search.training.loop.iterate_batches` with ``shard``). ``--batch`` is per
process: the global batch is N times larger. Only rank 0 writes the checkpoint, the log
and the console lines; every rank evaluates the same synchronised weights.
Imports: torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from search.core.errors import NasdeployError


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (``world == 1``: not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int] | None:
        """``(rank, world)`` for the training loop, or ``None`` when not distributed."""
        return (self.rank, self.world) if self.enabled else None


def from_env() -> Dist:
    """The ``torchrun`` environment, without joining anything (a plain run: world 1)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise NasdeployError("WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers (torchrun sets "
                             "them)") from None
    if world < 1 or not 0 <= rank < world:
        raise NasdeployError(f"RANK {rank} does not fit WORLD_SIZE {world}")
    return Dist(rank, world, local)


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group when started by ``torchrun``; the device this rank trains on."""
    dist = from_env()
    if not dist.enabled:
        return dist, device
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch_dist.init_process_group(backend=backend)
    return dist, device


def wrap(model: torch.nn.Module, dist: Dist, device: torch.device) -> torch.nn.Module:
    """``model`` in ``DistributedDataParallel`` when distributed, else ``model`` itself."""
    if not dist.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)


def sum_over_ranks(values: list[float], dist: Dist, device: torch.device) -> list[float]:
    """``values`` summed over every rank (unchanged when not distributed)."""
    if not dist.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
    torch_dist.all_reduce(tensor)
    return tensor.tolist()


def barrier(dist: Dist) -> None:
    """Wait for every rank (no-op when not distributed)."""
    if dist.enabled:
        torch_dist.barrier()


def teardown(dist: Dist) -> None:
    """Leave the process group."""
    if dist.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
