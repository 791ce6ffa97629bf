"""Memory preflight (solver/memory.py): refuse what cannot run, before allocating anything large."""

from __future__ import annotations

import resource

import numpy as np
import pytest

from app_extension.solver import engine
from app_extension.solver.config import Geometry, SolverConfig
from app_extension.solver.memory import (
    MAX_OBJECT_PIXELS,
    MemoryPreflightError,
    ObjectTooLargeError,
    estimate_memory,
    object_shape,
    preflight,
)
from app_extension.solver.state import ReconstructionState
from app_extension.units import to_magnitude

CONFIG = SolverConfig(num_slices=3, iterations=1, batch_size=16, slice_thickness=8.0)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture
def no_allocation(monkeypatch):
    """Fail the test if the data or the state are made (the preflight must come first)."""

    def boom(*args, **kwargs):
        raise AssertionError("allocated before the preflight refused")

    monkeypatch.setattr(engine, "MeasuredData", boom)
    monkeypatch.setattr(engine, "initial_state", boom)


def test_scan_step_in_micrometres_is_refused(small_dataset, no_allocation):
    step = to_magnitude("1 um", "Å", "scan_step")  # the CLI's --scan-step "1 um"
    assert step == pytest.approx(1e4)
    geometry = Geometry(
        energy=small_dataset.geometry.energy,
        semiangle=small_dataset.geometry.semiangle,
        reciprocal_sampling=small_dataset.geometry.reciprocal_sampling,
        scan_positions=Geometry.raster((8, 8), step),
    )
    before = _peak_mb()
    with pytest.raises(ObjectTooLargeError) as info:
        engine.reconstruct(small_dataset.data, geometry, CONFIG, show_progressbar=False)
    message = str(info.value)
    assert "pixels per slice" in message and f"limit {MAX_OBJECT_PIXELS}" in message
    assert "TB" in message and "scan step about 1e+04 Å" in message and "1 µm = 10,000 Å" in message
    assert info.value.estimate.host_bytes > 1e12
    assert isinstance(info.value, MemoryError) and isinstance(info.value, ValueError)
    assert _peak_mb() - before < 50  # nothing large was allocated


def test_padded_size_8192_is_refused(small_dataset, no_allocation):
    config = CONFIG.replace(padded_size=8192)
    before = _peak_mb()
    with pytest.raises(MemoryPreflightError) as info:
        engine.reconstruct(small_dataset.data, small_dataset.geometry, config, show_progressbar=False)
    message = str(info.value)
    est = info.value.estimate
    assert est.host_bytes > 1e11  # 16 waves of 16 x 8192^2 complex alone are 137 GB
    assert "does not fit in memory" in message and f"needs {est.host_bytes / 1e9:.2f} GB" in message
    assert "padded_size=None" in message
    assert not isinstance(info.value, ObjectTooLargeError)
    assert _peak_mb() - before < 50


def test_many_modes_refused_with_what_would_fit(small_dataset):
    # the 64-mode run on the shared 1024 x 128^2 scan, against 4 GB free
    geometry = Geometry(300e3, 22.0, 0.0507937, Geometry.raster((32, 32), 0.3905), defocus=200)
    config = SolverConfig(num_slices=5, batch_size=64, probe_modes=64)
    # the preflight reads nothing: a broadcast view stands in for the 67 MB scan
    shape_only = np.broadcast_to(np.ones((1, 1, 128, 128), np.float32), (32, 32, 128, 128))
    est = preflight(shape_only, geometry, config, host_available=10**12)
    assert 4e9 < est.host_bytes < 12e9  # the issue measured 5.7 GB on the 1024-position run
    with pytest.raises(MemoryPreflightError) as info:
        preflight(shape_only, geometry, config, host_available=4 * 10**9)
    message = str(info.value)
    assert "batch_size=" in message and "probe_modes=" in message and "4.00 GB free" in message
    # the suggestions are real: each alone fits
    for hint in ("batch_size", "probe_modes"):
        value = int(message.split(f"{hint}=")[1].split(" ")[0])
        fits = preflight(shape_only, geometry, config.replace(**{hint: value}), host_available=4 * 10**9)
        assert fits.host_bytes <= 4 * 10**9


def test_a_run_that_fits_is_never_refused(small_dataset):
    state = engine.reconstruct(small_dataset.data, small_dataset.geometry, CONFIG, show_progressbar=False)
    est = state.memory_estimate
    assert state.status == "ok" and est["host_bytes"] > 0 and not est["streaming"]
    need = est["host_bytes"]
    # the limit is the estimate itself, with no hidden margin
    preflight(small_dataset.data, small_dataset.geometry, CONFIG, stream=False, host_available=need)
    with pytest.raises(MemoryPreflightError):
        preflight(small_dataset.data, small_dataset.geometry, CONFIG, stream=False, host_available=need - 1)


def test_escape_hatch(small_dataset, monkeypatch):
    monkeypatch.setenv("APP_EXTENSION_MEMORY_CHECK", "0")
    est = preflight(small_dataset.data, small_dataset.geometry, CONFIG, host_available=1)
    assert est.host_bytes > 1


def test_object_shape_matches_initial_state(small_dataset):
    for window in (32, 48):
        state = engine.initial_state(
            small_dataset.geometry, CONFIG.replace(padded_size=window), window, 1.0, "cpu"
        )
        assert isinstance(state, ReconstructionState)
        assert object_shape(small_dataset.geometry, window, CONFIG.num_slices) == tuple(state.phase.shape)


def test_estimate_grows_with_batch_modes_and_slices(small_dataset):
    g = small_dataset.geometry

    def need(**changes):
        return estimate_memory(64, 32, np.float32, g, CONFIG.replace(**changes)).host_bytes

    base = need()
    assert need(batch_size=32) > base and need(probe_modes=4) > base and need(num_slices=6) > base
    streamed = estimate_memory(64, 32, np.float32, g, CONFIG, streaming=True, in_memory=False)
    assert streamed.held == 0 and "streaming: cached units" in streamed.host
