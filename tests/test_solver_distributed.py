"""Two processes on torch.distributed (gloo, CPU) agree with one process over the same batches."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist

from app_extension.solver import data as data_module
from app_extension.solver.config import SolverConfig
from app_extension.solver.data import MeasuredData
from app_extension.solver.distributed import Communicator
from app_extension.solver.engine import reconstruct
from app_extension.solver.state import ReconstructionState

da = pytest.importorskip("dask.array")
pytestmark = pytest.mark.skipif(not dist.is_gloo_available(), reason="torch without gloo")

CONFIG = SolverConfig(num_slices=3, iterations=3, batch_size=16, slice_thickness=8.0)
CHUNKS = (2, 4, 32, 32)


def _small_units(n: int) -> None:
    """Units of one chunk (8 patterns of n x n uint16), groups of 2 units: 8 units to deal out."""
    data_module.UNIT_BYTES = 8 * n * n * 2
    data_module.GROUP_BATCHES = 1


def _worker(rank: int, world: int, init_file: str, counts: np.ndarray, geometry, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        # in memory: 2 iterations with a checkpoint (written by rank 0), then resumed for 1
        checkpoint = os.path.join(out, "checkpoint.h5")
        reconstruct(counts, geometry, CONFIG, iterations=2, checkpoint=checkpoint, show_progressbar=False)
        dist.barrier()
        state = ReconstructionState.load(checkpoint)
        result = reconstruct(counts, geometry, CONFIG, state=state, iterations=1, show_progressbar=False)
        result.save(os.path.join(out, f"memory{rank}.h5"))
        # lazy, chunked, streamed: each rank reads only its own units
        _small_units(counts.shape[-1])
        lazy = da.from_array(counts, chunks=CHUNKS)
        data = MeasuredData(lazy, geometry, CONFIG, "cpu", stream=True, comm=Communicator(rank, world, "cpu"))
        np.save(os.path.join(out, f"positions{rank}.npy"), data.positions)
        data.close()
        result = reconstruct(lazy, geometry, CONFIG, stream=True, show_progressbar=False)
        result.save(os.path.join(out, f"lazy{rank}.h5"))
    finally:
        dist.destroy_process_group()


def _close(a: ReconstructionState, b: ReconstructionState) -> None:
    for name in ("phase", "amplitude", "probe", "tilt", "slice_thickness"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-4, atol=1e-5, msg=name)
    np.testing.assert_allclose(a.history["loss"], b.history["loss"], rtol=1e-5)
    assert a.iteration == b.iteration


def test_two_processes_agree_with_one(small_dataset, tmp_path, monkeypatch):
    import torch.multiprocessing as mp

    counts = np.round(small_dataset.data * 2e4).astype(np.uint16)
    geometry = small_dataset.geometry
    mp.spawn(
        _worker,
        args=(2, str(tmp_path / "init"), counts, geometry, str(tmp_path)),
        nprocs=2,
        join=True,
    )
    # the ranks held disjoint halves of the positions, whole units each
    p0, p1 = (np.load(tmp_path / f"positions{r}.npy") for r in (0, 1))
    assert np.intersect1d(p0, p1).size == 0 and np.union1d(p0, p1).size == 64 and p0.size == p1.size == 32

    single = reconstruct(counts, geometry, CONFIG, show_progressbar=False)
    ranks = [ReconstructionState.load(tmp_path / f"memory{r}.h5") for r in (0, 1)]
    assert single.iteration == 3 and all(s.iteration == 3 for s in ranks)
    for state in ranks:
        _close(state, single)
    # every rank took exactly the same steps
    assert torch.equal(ranks[0].phase, ranks[1].phase) and torch.equal(ranks[0].probe, ranks[1].probe)
    assert single.dz != CONFIG.slice_thickness  # dz was learned (its reduction is exercised)

    monkeypatch.setattr(data_module, "UNIT_BYTES", 8 * 32 * 32 * 2)
    monkeypatch.setattr(data_module, "GROUP_BATCHES", 1)
    lazy_single = reconstruct(
        da.from_array(counts, chunks=CHUNKS), geometry, CONFIG, stream=True, show_progressbar=False
    )
    for r in (0, 1):
        _close(ReconstructionState.load(tmp_path / f"lazy{r}.h5"), lazy_single)
