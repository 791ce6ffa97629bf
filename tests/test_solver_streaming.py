"""Streaming data (solver/data.py): patterns read where they are, per batch, never all at once."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch

from app_extension.solver import data as data_module
from app_extension.solver.config import SolverConfig
from app_extension.solver.data import MeasuredData, Patterns
from app_extension.solver.engine import reconstruct
from app_extension.solver.state import ReconstructionState

da = pytest.importorskip("dask.array")

CONFIG = SolverConfig(num_slices=3, iterations=2, batch_size=16, slice_thickness=8.0)


@pytest.fixture(scope="module")
def counts(small_dataset):
    """The small simulated scan as uint16 counts (8 x 8 x 32 x 32)."""
    return np.round(small_dataset.data * 2e4).astype(np.uint16)


@pytest.fixture
def small_units(monkeypatch, counts):
    """Read units of one native chunk (8 patterns) and groups of 2 units, so the small scan has 8 units."""
    per_position = counts.shape[-1] ** 2 * counts.dtype.itemsize
    monkeypatch.setattr(data_module, "UNIT_BYTES", 8 * per_position)
    monkeypatch.setattr(data_module, "GROUP_BATCHES", 1)


class GuardedArray:
    """An array-like that refuses to have more than ``limit`` of its bytes alive at once.

    Every block it hands out is tracked until it is garbage collected; a
    request that would take the blocks alive over the limit raises
    MemoryError. Computing the whole dask array made from it (which holds all
    chunks to concatenate them) therefore raises.
    """

    def __init__(self, array: np.ndarray, limit: int):
        self.array, self.limit = array, limit
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self.alive = 0
        self.peak = 0
        self.reads = 0

    def _release(self, nbytes: int) -> None:
        self.alive -= nbytes

    def __getitem__(self, index):
        block = np.array(self.array[index], copy=True)
        if block.nbytes == 0:
            return block
        if self.alive + block.nbytes > self.limit:
            raise MemoryError(f"{self.alive + block.nbytes} bytes alive, limit {self.limit}")
        self.alive += block.nbytes
        self.peak = max(self.peak, self.alive)
        self.reads += 1
        weakref.finalize(block, self._release, block.nbytes)
        return block


def guarded(counts, chunks=(2, 4, 32, 32)):
    guard = GuardedArray(counts, limit=counts.nbytes - 1)
    return guard, da.from_array(
        guard, chunks=chunks, asarray=False, meta=np.empty((0, 0, 0, 0), counts.dtype)
    )


def same_state(a: ReconstructionState, b: ReconstructionState) -> None:
    for name in ("phase", "amplitude", "probe", "tilt", "slice_thickness"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0, msg=name)
    assert a.history["loss"] == b.history["loss"]


def test_uint16_is_kept_and_not_copied(counts, small_dataset):
    patterns = Patterns(counts)
    assert patterns.dtype == np.uint16 and patterns.array is counts and patterns.in_memory
    data = MeasuredData(counts, small_dataset.geometry, CONFIG, "cpu", stream=True)
    assert data.patterns.array is counts and data.streaming
    assert data._target is None  # nothing of the size of the scan was made


@pytest.mark.parametrize(
    "changes", [{}, {"padded_size": 48}, {"loss": "poisson"}], ids=["plain", "padded", "poisson"]
)
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_streamed_targets_equal_eager(counts, small_dataset, changes, masked):
    config = CONFIG.replace(**changes)
    mask = None
    if masked:
        mask = np.ones((32, 32), dtype=bool)
        mask[3, 5] = mask[20, 7] = False
    eager = MeasuredData(counts, small_dataset.geometry, config, "cpu", detector_mask=mask, stream=False)
    streamed = MeasuredData(counts, small_dataset.geometry, config, "cpu", detector_mask=mask, stream=True)
    lazy = MeasuredData(
        da.from_array(counts, chunks=(2, 4, 32, 32)),
        small_dataset.geometry,
        config,
        "cpu",
        detector_mask=mask,
    )
    assert not eager.streaming and streamed.streaming
    batch = torch.tensor([5, 0, 63, 17, 9])
    ref = eager.targets(batch)
    assert ref.shape == (5, config.padded_size or 32, config.padded_size or 32)
    for other in (streamed, lazy):
        assert other.intensity_scale == pytest.approx(eager.intensity_scale, rel=1e-12)
        assert other.norm == pytest.approx(eager.norm, rel=1e-12)
        torch.testing.assert_close(other.targets(batch), ref, rtol=0, atol=0)
    # and the values are today's: measured (masked) * scale, shifted, square-rooted
    raw = counts.reshape(64, 32, 32)[batch.numpy()].astype(np.float32)
    if mask is not None:
        raw = raw * mask
    scale = np.float32(eager.intensity_scale)
    expected = np.fft.ifftshift(
        np.pad(raw, [(0, 0)] + [((config.padded_size or 32) // 2 - 16,) * 2] * 2) * scale, axes=(-2, -1)
    )
    if config.loss == "amplitude":
        expected = np.sqrt(expected)
    np.testing.assert_allclose(ref.numpy(), expected, rtol=1e-6)


def test_streaming_run_equals_eager_run(counts, small_dataset):
    eager = reconstruct(counts, small_dataset.geometry, CONFIG, show_progressbar=False, stream=False)
    streamed = reconstruct(counts, small_dataset.geometry, CONFIG, show_progressbar=False, stream=True)
    assert streamed.memory_estimate["streaming"] and not eager.memory_estimate["streaming"]
    same_state(eager, streamed)


def test_full_array_never_materialised(counts, small_dataset, small_units):
    with pytest.raises(MemoryError):
        guarded(counts)[1].compute(scheduler="synchronous")  # what the old front end did
    guard, lazy = guarded(counts)  # a fresh one (the traceback above may keep blocks alive)
    state = reconstruct(lazy, small_dataset.geometry, CONFIG, show_progressbar=False, stream=True)
    assert state.status == "ok" and state.iteration == 2
    # at most two groups of 2 units and one more unit resident: 5 of the 8 chunks
    assert 0 < guard.peak <= 5 * counts.nbytes // 8
    # one checking pass plus one read per unit per iteration: each chunk read once per pass
    assert guard.reads == 8 * (1 + CONFIG.iterations)
    # the eager path on lazy data reads unit by unit as well
    guard.reads = guard.peak = 0
    eager = reconstruct(lazy, small_dataset.geometry, CONFIG, show_progressbar=False, stream=False)
    assert guard.reads == 8 and guard.peak <= counts.nbytes // 8
    assert np.isfinite(eager.history["loss"]).all()


def test_chunk_aware_order(counts, small_dataset, small_units):
    lazy = da.from_array(counts, chunks=(2, 4, 32, 32))
    data = MeasuredData(lazy, small_dataset.geometry, CONFIG, "cpu")
    patterns = data.patterns
    assert patterns.num_units == 8 and data_module.group_size(patterns, CONFIG.batch_size) == 2
    order = data.permutation(torch.Generator().manual_seed(3), CONFIG.batch_size)
    assert sorted(order.tolist()) == list(range(64))
    # groups of 2 units (16 positions): every batch of 16 comes from exactly 2 units of 8
    units = patterns.unit_of[order.numpy()].reshape(4, 16)
    assert all(len(set(row)) == 2 for row in units.tolist())
    # seeded: the same generator seed gives the same order, another one another
    again = data.permutation(torch.Generator().manual_seed(3), CONFIG.batch_size)
    other = data.permutation(torch.Generator().manual_seed(4), CONFIG.batch_size)
    assert torch.equal(order, again) and not torch.equal(order, other)
    # in-memory data keep the plain permutation
    plain = MeasuredData(counts, small_dataset.geometry, CONFIG, "cpu")
    torch.testing.assert_close(
        plain.permutation(torch.Generator().manual_seed(3)),
        torch.randperm(64, generator=torch.Generator().manual_seed(3)),
    )


def test_streamed_resume_draws_the_same_batches(counts, small_dataset, small_units, tmp_path):
    lazy = da.from_array(counts, chunks=(2, 4, 32, 32))
    config = CONFIG.replace(iterations=3)
    straight = reconstruct(lazy, small_dataset.geometry, config, show_progressbar=False, stream=True)
    path = tmp_path / "ck.h5"
    reconstruct(
        lazy,
        small_dataset.geometry,
        config,
        iterations=2,
        show_progressbar=False,
        stream=True,
        checkpoint=path,
    )
    resumed = reconstruct(
        lazy,
        small_dataset.geometry,
        config,
        state=ReconstructionState.load(path),
        iterations=1,
        show_progressbar=False,
        stream=True,
    )
    same_state(straight, resumed)


def test_small_lazy_data_in_one_group_match_in_memory(counts, small_dataset):
    # with the default unit size the small scan is one group: the same order as in memory
    lazy = da.from_array(counts, chunks=(2, 4, 32, 32))
    same_state(
        reconstruct(counts, small_dataset.geometry, CONFIG, show_progressbar=False),
        reconstruct(lazy, small_dataset.geometry, CONFIG, show_progressbar=False, stream=True),
    )


def test_memmap_and_3d_input(counts, small_dataset, tmp_path, small_units):
    path = tmp_path / "scan.u16"
    counts.tofile(path)
    mm = np.memmap(path, dtype=np.uint16, mode="r", shape=(64, 32, 32))
    patterns = Patterns(mm)
    assert patterns.lazy and patterns.chunked and patterns.num_units == 8
    a = MeasuredData(mm, small_dataset.geometry, CONFIG, "cpu", stream=True)
    b = MeasuredData(counts, small_dataset.geometry, CONFIG, "cpu", stream=False)
    batch = torch.tensor([1, 40, 2])
    torch.testing.assert_close(a.targets(batch), b.targets(batch), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("index", "value", "match"),
    [((37, 3, 3), np.nan, "first at pattern 37"), ((12, 0, 0), -1.0, "negative")],
    ids=["nan", "negative"],
)
def test_checks_run_chunk_wise_on_lazy_data(counts, small_dataset, small_units, index, value, match):
    bad = counts.astype(np.float32).reshape(64, 32, 32)
    bad[index] = value
    guard = GuardedArray(bad.reshape(8, 8, 32, 32), limit=bad.nbytes // 2)
    lazy = da.from_array(guard, chunks=(2, 4, 32, 32), asarray=False, meta=np.empty((0, 0, 0, 0), bad.dtype))
    with pytest.raises(ValueError, match=match):
        MeasuredData(lazy, small_dataset.geometry, CONFIG, "cpu", stream=True)


def test_decide_streaming(counts):
    patterns = Patterns(counts)
    eager_bytes = 64 * 32 * 32 * 4
    assert not data_module.decide_streaming(patterns, 32, "cpu", available=100 * eager_bytes)
    assert data_module.decide_streaming(patterns, 32, "cpu", available=2 * eager_bytes)
    lazy = Patterns(da.from_array(counts, chunks=(2, 4, 32, 32)))
    assert not data_module.decide_streaming(lazy, 32, "cpu", available=100 * eager_bytes)
    assert data_module.decide_streaming(lazy, 4096, "cpu", available=10**15)  # > LAZY_EAGER_BYTES


def test_scheduled_batches_are_prefetched(counts, small_dataset):
    data = MeasuredData(counts, small_dataset.geometry, CONFIG, "cpu", stream=True)
    batches = list(torch.split(torch.randperm(64, generator=torch.Generator().manual_seed(0)), 16))
    data.schedule(batches)
    first = data.targets(batches[0])
    assert 1 in data._loader._pending  # the next batch is already being read
    ref = MeasuredData(counts, small_dataset.geometry, CONFIG, "cpu", stream=False)
    torch.testing.assert_close(first, ref.targets(batches[0]), rtol=0, atol=0)
    # out of order: still right, read synchronously
    torch.testing.assert_close(data.targets(batches[3]), ref.targets(batches[3]), rtol=0, atol=0)
    data.close()
