"""The adaptive propagator (Eq. 3 of Sha, Cui & Yu 2022) and its tilt sign convention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app_extension.physics.multislice import forward
from app_extension.physics.optics import fourier_grid
from app_extension.physics.propagator import propagator

WAVELENGTH = 0.0196875  # Å, 300 keV
SAMPLING = 0.4  # Å per pixel


def eq3(shape, sampling, wavelength, dz, tilt_mrad=None):
    """Eq. 3 written out in numpy: exp[-i pi dz (lambda k^2 - 2 kx tan tx - 2 ky tan ty)].

    ``tilt_mrad`` is None (Eq. 2), (2,) or (T, 2); the result is (ny, nx) or (T, ny, nx).
    """
    ky = np.fft.fftfreq(shape[0], d=sampling)[:, None]
    kx = np.fft.fftfreq(shape[1], d=sampling)[None, :]
    if tilt_mrad is None:
        return np.exp(-1j * np.pi * dz * wavelength * (kx**2 + ky**2))
    tilts = np.atleast_2d(np.asarray(tilt_mrad, dtype=np.float64))
    out = np.empty((tilts.shape[0], *shape), dtype=np.complex128)
    for i, (tx, ty) in enumerate(tilts):
        arg = wavelength * (kx**2 + ky**2) - 2 * kx * np.tan(tx * 1e-3) - 2 * ky * np.tan(ty * 1e-3)
        out[i] = np.exp(-1j * np.pi * dz * arg)
    return out[0] if np.ndim(tilt_mrad) == 1 else out


@pytest.mark.parametrize(
    "tilt",
    [None, (0.0, 0.0), (6.0, -4.0), [[6.0, -4.0], [-15.0, 2.5], [0.0, 30.0]]],
    ids=["fixed", "zero", "global", "per-position"],
)
@pytest.mark.parametrize("shape", [(16, 16), (12, 20)])
def test_propagator_matches_eq3(tilt, shape):
    dz = 17.5
    ky, kx = fourier_grid(shape, SAMPLING, dtype=torch.float64)
    tilt_t = None if tilt is None else torch.tensor(tilt, dtype=torch.float64)
    got = propagator(ky, kx, WAVELENGTH, torch.tensor(dz, dtype=torch.float64), tilt_t).numpy()
    want = eq3(shape, SAMPLING, WAVELENGTH, dz, tilt)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_propagator_float32_and_zero_tilt_is_fixed():
    ky, kx = fourier_grid((16, 16), SAMPLING)
    fixed = propagator(ky, kx, WAVELENGTH, 20.0)
    zero = propagator(ky, kx, WAVELENGTH, 20.0, torch.zeros(2))
    assert fixed.dtype == torch.complex64
    np.testing.assert_allclose(zero.numpy(), fixed.numpy(), atol=1e-6)
    np.testing.assert_allclose(fixed.numpy(), eq3((16, 16), SAMPLING, WAVELENGTH, 20.0), atol=1e-5)


# ---------------------------------------------------------------------------
# Tilt sign, physically. The "lab" model is the straight (fixed-propagator)
# multislice of a sheared specimen: the feature of slice s sits at
# x0 + z_s tan(theta), z_s = s dz (columns lean towards +theta). The APP model
# sees the same crystal in its own frame (identical, unsheared slices) with the
# tilt in the propagator. The shear per slice is chosen a whole number of
# pixels and the object periodic with the window, so the two models agree to
# rounding error.
# ---------------------------------------------------------------------------

N = 16
DZ = 20.0
SHEAR_PX = (1, -1)  # (y, x) pixels per slice in the lab frame
# theta such that dz tan(theta) = shear * sampling: (theta_x, theta_y) in mrad
THETA = tuple(np.arctan(np.array(SHEAR_PX[::-1]) * SAMPLING / DZ) * 1e3)


def _probe(n: int, rng: np.random.Generator) -> torch.Tensor:
    """Two compact, smooth random probe modes centred in the window (complex128)."""
    y, x = np.mgrid[:n, :n] - n // 2
    env = np.exp(-(x**2 + y**2) / (2 * 2.0**2))
    modes = [env * np.exp(1j * rng.uniform(0, 2 * np.pi, (n, n)) * 0.3) for _ in range(2)]
    modes[1] *= 0.4
    return torch.as_tensor(np.array(modes))


def _periodic_object(num_slices: int, rng: np.random.Generator, identical: bool):
    """(S, 2N, 2N) phase and amplitude that are periodic with period N."""
    shape = (1 if identical else num_slices, N, N)
    phase = rng.uniform(-0.5, 0.5, shape)
    amp = rng.uniform(0.7, 1.0, shape)
    if identical:
        phase = np.repeat(phase, num_slices, axis=0)
        amp = np.repeat(amp, num_slices, axis=0)
    return np.tile(phase, (1, 2, 2)), np.tile(amp, (1, 2, 2))


def _shear(field: np.ndarray, px_per_slice) -> np.ndarray:
    """Slice s moved by s * px_per_slice (content towards +y/+x for positive values)."""
    return np.stack(
        [np.roll(f, (s * px_per_slice[0], s * px_per_slice[1]), axis=(0, 1)) for s, f in enumerate(field)]
    )


def _intensities(probe, phase, amp, positions, tilt):
    ky, kx = fourier_grid((N, N), SAMPLING, dtype=torch.float64)
    tilt_t = None if tilt is None else torch.tensor(tilt, dtype=torch.float64)
    prop = propagator(ky, kx, WAVELENGTH, torch.tensor(DZ, dtype=torch.float64), tilt_t)
    return forward(
        probe,
        torch.as_tensor(phase),
        torch.as_tensor(amp),
        torch.as_tensor(positions, dtype=torch.float64),
        prop,
    ).numpy()


@pytest.mark.parametrize("identical", [True, False], ids=["crystal", "random-slices"])
def test_tilt_sign_matches_sheared_straight_propagation(identical):
    rng = np.random.default_rng(1)
    probe = _probe(N, rng)
    phase, amp = _periodic_object(4, rng, identical)
    positions = np.array([[0.0, 0.0], [3.25, 5.5], [7.0, 1.75], [10.5, 9.0]])
    lab = _intensities(probe, _shear(phase, SHEAR_PX), _shear(amp, SHEAR_PX), positions, None)
    app_plus = _intensities(probe, phase, amp, positions, THETA)
    app_minus = _intensities(probe, phase, amp, positions, tuple(-t for t in THETA))
    scale = lab.max()
    np.testing.assert_allclose(app_plus, lab, atol=1e-10 * scale)
    assert np.abs(app_minus - lab).max() > 1e-2 * scale
    # sanity: the shear matters at all (the straight model of the unsheared object differs)
    straight = _intensities(probe, phase, amp, positions, None)
    assert np.abs(straight - lab).max() > 1e-2 * scale


def test_tilt_sign_per_position_tilt():
    """A (T, 2) tilt applies each position's own tilt."""
    rng = np.random.default_rng(2)
    probe = _probe(N, rng)
    phase, amp = _periodic_object(3, rng, identical=True)
    positions = np.array([[1.0, 2.0], [4.5, 3.25]])
    lab = _intensities(probe, _shear(phase, SHEAR_PX), _shear(amp, SHEAR_PX), positions, None)
    per_position = np.array([THETA, [-THETA[0], -THETA[1]]])
    got = _intensities(probe, phase, amp, positions, per_position)
    np.testing.assert_allclose(got[0], lab[0], atol=1e-10 * lab.max())
    assert np.abs(got[1] - lab[1]).max() > 1e-2 * lab.max()


@pytest.mark.parametrize("c_px", [(1, 0), (0, -1), (-1, 1)])
def test_gauge_identity(c_px):
    """(tilt t, slices o_s) and (t + c, o_s(x + z_s c)) give the same patterns."""
    rng = np.random.default_rng(3)
    probe = _probe(N, rng)
    phase, amp = _periodic_object(4, rng, identical=False)
    positions = np.array([[0.5, 0.25], [6.0, 8.75], [11.0, 3.5]])
    t = np.array([2.0, -3.0])  # any tilt
    # c chosen so that dz * (tan(t + c) - tan(t)) is one pixel per slice
    tan_new = np.tan(t * 1e-3) + np.array(c_px[::-1]) * SAMPLING / DZ
    t_new = np.arctan(tan_new) * 1e3
    # o_s(x + z_s c): slice s moved by -s * c pixels
    minus_c = (-c_px[0], -c_px[1])
    ref = _intensities(probe, phase, amp, positions, t)
    got = _intensities(probe, _shear(phase, minus_c), _shear(amp, minus_c), positions, t_new)
    np.testing.assert_allclose(got, ref, atol=1e-10 * ref.max())
    wrong = _intensities(probe, _shear(phase, c_px), _shear(amp, c_px), positions, t_new)
    assert np.abs(wrong - ref).max() > 1e-2 * ref.max()
