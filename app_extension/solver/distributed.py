"""Several processes on torch.distributed: the scan positions split across ranks, gradients all-reduced.

Launch any front end with ``torchrun`` (gloo on CPUs, NCCL on GPUs)::

    torchrun --nproc-per-node 2 -m app_extension reconstruct scan.zspy ...     # CLI
    torchrun --nproc-per-node 4 my_script.py        # a script calling s.ptycho_app(...)

:func:`.engine.reconstruct` sees torchrun's environment (``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``) and joins the process group itself;
a process group the caller initialised already is used as it is. With a CUDA
device each rank takes ``cuda:LOCAL_RANK``.

How a run is shared
-------------------
* Every rank holds the whole state (object, probe, tilt, dz) and the same
  optimisers; each rank holds and reads only its own positions
  (:class:`.data.MeasuredData` deals the read units out, unit ``u`` to rank
  ``u % world_size``).
* Every rank draws the same global batches (the order is seeded per
  iteration) and computes the loss of its share of each batch.
* :meth:`Communicator.all_reduce_gradients` sums the object, probe and tilt
  gradients and the loss over the ranks after each backward, before the
  Adam step; the slice thickness's gradient, summed over the pass for its one
  Rprop step, is summed over the ranks just before that step
  (:meth:`Communicator.reduce_thickness_gradient`). So all ranks take
  identical steps, equal to one process's over the same batches up to the
  order of float summation.
* Rank 0 writes the checkpoints, shows the progress bar and calls the
  callback; every rank returns the same final state. A front end run under
  torchrun should write its result files on rank 0 only
  (:func:`is_writer`). Resuming works as for one process: every rank reads
  the checkpoint.

``APP_EXTENSION_DISTRIBUTED=0`` makes a process ignore torchrun's environment.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["Communicator", "from_environment", "is_writer", "rank_and_size"]


class Communicator:
    """The collective operations the solver needs, on the default process group.

    Parameters
    ----------
    rank, world_size
        This process and the number of processes.
    device
        The solver's device; NCCL reduces tensors there, gloo on the CPU.
    """

    def __init__(self, rank: int, world_size: int, device):
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.device = torch.device(device)
        self._reduce_device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    @property
    def is_writer(self) -> bool:
        """True on rank 0 (checkpoints, progress, callbacks)."""
        return self.rank == 0

    def sum_numbers(self, values) -> list[float]:
        """Sum a few numbers over the ranks (float64)."""
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._reduce_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def min_numbers(self, values) -> list[float]:
        """Minimum of a few numbers over the ranks (float64; inf stays inf)."""
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._reduce_device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return t.tolist()

    def _reduce_(self, tensor: torch.Tensor) -> None:
        t = torch.view_as_real(tensor) if tensor.is_complex() else tensor
        if t.device == self._reduce_device:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        else:
            buf = t.to(self._reduce_device)
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            t.copy_(buf)

    def all_reduce_gradients(self, params, loss: float) -> float:
        """Sum the gradients of ``params`` and the loss over the ranks; returns the summed loss.

        A parameter that needs a gradient but got none here (a rank whose
        share of the batch was empty) contributes zeros, so every rank makes
        the same calls in the same order.
        """
        for p in params:
            if not p.requires_grad:
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            self._reduce_(p.grad)
        (total,) = self.sum_numbers([loss])
        return total

    def reduce_thickness_gradient(self, slice_thickness: torch.Tensor) -> None:
        """Sum the pass's slice-thickness gradient over the ranks (before its Rprop step)."""
        if not slice_thickness.requires_grad:
            return
        if slice_thickness.grad is None:
            slice_thickness.grad = torch.zeros_like(slice_thickness)
        self._reduce_(slice_thickness.grad)

    def barrier(self) -> None:
        dist.barrier()


def rank_and_size() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_writer() -> bool:
    """True unless this is a rank other than 0 of a process group (front ends: write files only then)."""
    return rank_and_size()[0] == 0


def from_environment(device) -> tuple[Communicator | None, torch.device]:
    """Join torchrun's process group (or use the caller's); returns (communicator or None, device).

    None means one process: no group is initialised and torchrun's
    variables say one process (or ``APP_EXTENSION_DISTRIBUTED=0``).
    """
    device = torch.device(device)
    if os.environ.get("APP_EXTENSION_DISTRIBUTED", "1") == "0" or not dist.is_available():
        return None, device
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "MASTER_ADDR" not in os.environ:
            return None, device
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if world <= 1:
        return None, device
    if device.type == "cuda" and device.index is None:
        local = int(os.environ.get("LOCAL_RANK", rank % max(1, torch.cuda.device_count())))
        device = torch.device("cuda", local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return Communicator(rank, world, device), device
