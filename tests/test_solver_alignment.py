"""Sub-pixel registration, FPP post-alignment and the APP drift step (slice drift -> tilt)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app_extension.physics.multislice import forward
from app_extension.physics.optics import fourier_grid
from app_extension.physics.propagator import propagator
from app_extension.solver.alignment import fit_drift, fourier_shift, post_align, register_shift, slice_shifts
from app_extension.solver.config import Geometry, SolverConfig
from app_extension.solver.engine import initial_state
from app_extension.solver.steps import move_drift_into_tilt


def smooth_random_image(shape=(64, 64), width_px=2.5, seed=0) -> np.ndarray:
    """Periodic, band-limited random image (white noise times a Gaussian spectrum)."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    spectrum = np.fft.fft2(rng.normal(size=shape)) * np.exp(-2 * (np.pi * width_px) ** 2 * (fy**2 + fx**2))
    image = np.real(np.fft.ifft2(spectrum))
    return image / image.std()


@pytest.mark.parametrize("shift", [(0.0, 0.0), (2.3, -1.7), (-0.42, 0.61), (5.05, 3.5)])
def test_register_shift_recovers_subpixel_shift(shift):
    image = smooth_random_image(seed=1)
    moved = fourier_shift(image[None], np.array([shift]))[0]
    got = register_shift(image, moved)
    assert np.all(np.abs(got - np.array(shift)) < 0.05), got


@pytest.mark.parametrize("shift", [(2.3, -1.7), (-5.05, 3.5)])
def test_register_shift_non_periodic_crop(shift):
    """Two crops of a larger image (edges that do not wrap), as for real slices."""
    big = smooth_random_image((128, 128), seed=3)
    moved = fourier_shift(big[None], np.array([shift]))[0]
    got = register_shift(big[32:96, 32:96], moved[32:96, 32:96])
    assert np.all(np.abs(got - np.array(shift)) < 0.05), got


def test_fourier_shift_direction():
    image = np.zeros((1, 16, 16))
    image[0, 4, 5] = 1.0
    out = fourier_shift(image, np.array([[3.0, -2.0]]))
    assert np.unravel_index(np.argmax(out[0]), (16, 16)) == (7, 3)


def test_fit_drift_slope():
    depths = np.arange(5) * 10.0
    shifts = np.stack([0.03 * depths + 1.0, -0.05 * depths], axis=1)
    np.testing.assert_allclose(fit_drift(shifts, depths), [0.03, -0.05], atol=1e-12)


def sheared_slices(drift_px_per_slice, num_slices=5, seed=2) -> np.ndarray:
    """The same smooth image in every slice, slice s moved by s * drift (y, x) pixels."""
    image = smooth_random_image((64, 64), seed=seed)
    shifts = np.arange(num_slices)[:, None] * np.asarray(drift_px_per_slice, dtype=float)[None]
    return fourier_shift(np.repeat(image[None], num_slices, axis=0), shifts)


@pytest.mark.parametrize("drift", [(0.0, 0.6), (0.0, -0.6), (-0.35, 0.0), (0.4, -0.25)])
def test_post_align_returns_implied_tilt(drift):
    dz, sampling = 20.0, 0.4
    slices = sheared_slices(drift)
    result = post_align(slices, dz, sampling, amplitude=np.ones_like(slices))
    # columns moving by d px per slice: tan(theta) = d * sampling / dz; theta_x from the x drift
    want = np.arctan(np.array(drift[::-1]) * sampling / dz) * 1e3
    # registration precision 1/50 px per slice pair: up to 0.01 px/slice = 0.2 mrad here
    np.testing.assert_allclose(result["tilt_mrad"], want, atol=0.25)
    # sign: drift towards +x with depth is theta_x > 0
    if drift[1] != 0:
        assert np.sign(result["tilt_mrad"][0]) == np.sign(drift[1])
    np.testing.assert_allclose(
        result["shifts"], np.arange(5)[:, None] * np.array(drift)[None] * sampling, atol=0.05 * sampling
    )
    # aligned slices all match the first
    aligned = result["aligned_phase"]
    assert np.abs(aligned - aligned[0]).max() < 0.05 * np.abs(aligned[0]).max()
    np.testing.assert_allclose(result["mean_phase"], aligned.mean(axis=0))
    np.testing.assert_allclose(result["aligned_amplitude"], 1.0, atol=1e-10)


def test_slice_shifts_with_roi():
    slices = sheared_slices((0.5, -0.3), num_slices=3)
    shifts = slice_shifts(slices, roi=(slice(8, 56), slice(10, 54)))
    np.testing.assert_allclose(shifts, [[0, 0], [0.5, -0.3], [1.0, -0.6]], atol=0.05)


# ---------------------------------------------------------------------------
# The APP drift step: the slices' drift with depth is moved into the tilt, a
# change of variables that leaves the modelled patterns unchanged.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("tilt_map", [False, True], ids=["global", "tilt-map"])
@pytest.mark.parametrize("drift", [(-0.3, 0.5), (0.25, -0.6)])
def test_drift_to_tilt_moves_slice_drift_into_tilt(drift, tilt_map):
    n, dz, tilt0 = 32, 30.0, np.array([1.0, 2.0])
    geometry = Geometry(
        energy=300e3,
        semiangle=18.0,
        reciprocal_sampling=1 / (n * 0.4),
        scan_positions=Geometry.raster((12, 12), 0.8),
    )
    config = SolverConfig(num_slices=3, slice_thickness=dz, tilt=tuple(tilt0), tilt_map=tilt_map)
    state = initial_state(geometry, config, n, 1.0, "cpu")
    num_slices, height, width = state.phase.shape
    # a compact probe, so that no wave reaches the window's edges (where the
    # periodic window would break the identity)
    y, x = np.mgrid[:n, :n] - n // 2
    image = 0.5 * smooth_random_image((height, width), width_px=2.0, seed=4)
    drifted = fourier_shift(
        np.repeat(image[None], num_slices, axis=0), np.arange(num_slices)[:, None] * drift
    )
    with torch.no_grad():
        state.probe.copy_(torch.as_tensor(np.exp(-(x**2 + y**2) / (2 * 2.5**2)))[None])
        state.phase.copy_(torch.as_tensor(drifted))
    ky, kx = fourier_grid((n, n), state.sampling)

    def patterns():
        tilt = state.tilt[0] if state.tilt.shape[0] == 1 else state.tilt
        prop = propagator(ky, kx, state.wavelength, state.slice_thickness, tilt)
        return forward(state.probe, state.phase, state.amplitude, state.window_corners, prop).numpy()

    before = patterns()
    change = move_drift_into_tilt(state, n)
    after = patterns()
    # drift towards +x with depth is a tilt towards +theta_x
    want = np.arctan(np.tan(tilt0 * 1e-3) + np.array(drift[::-1]) * state.sampling / dz) * 1e3
    np.testing.assert_allclose(
        state.tilt_mrad.reshape(-1, 2), np.broadcast_to(want, (state.tilt.shape[0], 2)), atol=0.4
    )
    np.testing.assert_allclose(change, state.tilt_mrad.reshape(-1, 2).mean(axis=0) - tilt0, atol=1e-4)
    aligned = state.phase.numpy()
    assert np.abs(aligned - aligned[0]).max() < 0.1 * np.abs(aligned[0]).max()
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-2 * before.max())
