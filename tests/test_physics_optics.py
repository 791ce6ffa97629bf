"""Electron wavelength, the probe and mixed-state mode orthogonalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app_extension.physics.optics import (
    aberration_phase,
    electron_wavelength,
    fourier_grid,
    make_probe,
    orthogonalize_modes,
    probe_modes,
)


@pytest.mark.parametrize(
    ("energy", "expected"),
    [(300e3, 0.0196875), (200e3, 0.0250793), (80e3, 0.0417572)],
)
def test_electron_wavelength(energy, expected):
    # tabulated relativistic wavelengths, to the digits given
    np.testing.assert_allclose(electron_wavelength(energy), expected, rtol=0, atol=5e-8)


@pytest.mark.parametrize("bad", [0.0, -300e3, float("nan"), float("inf")])
def test_electron_wavelength_rejects_bad_energy(bad):
    with pytest.raises(ValueError, match="energy"):
        electron_wavelength(bad)


def numpy_probe(n, sampling, energy, semiangle_mrad, defocus, intensity):
    """Aperture times exp(+i pi lambda k^2 defocus) (C10 = -defocus), inverse FFT, centred."""
    wavelength = electron_wavelength(energy)
    k = np.fft.fftfreq(n, d=sampling)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    aperture = wavelength * np.sqrt(k2) <= semiangle_mrad * 1e-3
    chi = np.pi * wavelength * k2 * (-defocus)
    probe = np.fft.fftshift(np.fft.ifft2(aperture * np.exp(-1j * chi)))
    return probe * np.sqrt(intensity / np.sum(np.abs(probe) ** 2))


def fresnel(wave, sampling, wavelength, dz):
    """Free-space propagation by dz Å (Eq. 2), numpy."""
    k = np.fft.fftfreq(wave.shape[-1], d=sampling)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    return np.fft.ifft2(np.fft.fft2(wave) * np.exp(-1j * np.pi * wavelength * dz * k2))


@pytest.mark.parametrize("defocus", [0.0, 150.0, -80.0])
def test_make_probe_matches_numpy(defocus):
    n, sampling = 48, 0.25
    got = make_probe((n, n), sampling, 300e3, 22.0, defocus=defocus, intensity=3.5)
    assert got.dtype == torch.complex64
    assert got.shape == (n, n)
    want = numpy_probe(n, sampling, 300e3, 22.0, defocus, 3.5)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose((got.abs() ** 2).sum().item(), 3.5, rtol=1e-5)


def test_make_probe_aperture_and_centre():
    n, sampling, semiangle = 64, 0.2, 20.0
    probe = make_probe((n, n), sampling, 300e3, semiangle).numpy()
    # in focus the probe is real-symmetric, peaked at pixel n // 2
    assert np.unravel_index(np.argmax(np.abs(probe)), probe.shape) == (n // 2, n // 2)
    spectrum = np.abs(np.fft.fft2(np.fft.ifftshift(probe)))
    k = np.fft.fftfreq(n, d=sampling)
    alpha = electron_wavelength(300e3) * np.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    inside = alpha <= semiangle * 1e-3
    assert spectrum[~inside].max() < 1e-5 * spectrum.max()
    np.testing.assert_allclose(spectrum[inside], spectrum[inside].mean(), rtol=1e-4)


def test_defocus_sign_positive_defocus_focuses_below():
    """defocus = +d (underfocus): propagating by +d Å brings the probe to focus."""
    n, sampling, d = 64, 0.2, 150.0
    wavelength = electron_wavelength(300e3)
    probe = make_probe((n, n), sampling, 300e3, 22.0, defocus=d).numpy().astype(np.complex128)
    focus = make_probe((n, n), sampling, 300e3, 22.0, defocus=0.0).numpy()
    down = fresnel(probe, sampling, wavelength, d)
    up = fresnel(probe, sampling, wavelength, -d)
    assert np.abs(down).max() > 2 * np.abs(probe).max()
    assert np.abs(up).max() < np.abs(probe).max()
    np.testing.assert_allclose(np.abs(down), np.abs(focus), atol=1e-5 * np.abs(focus).max())


def test_make_probe_aberrations_add_to_defocus():
    """A C10 given in ``aberrations`` acts as -defocus."""
    a = make_probe((32, 32), 0.3, 300e3, 20.0, defocus=50.0)
    b = make_probe((32, 32), 0.3, 300e3, 20.0, aberrations={"C10": -50.0})
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


def test_aberration_phase_defocus_and_unknown_name():
    ky, kx = fourier_grid((8, 8), 0.3, dtype=torch.float64)
    wavelength = electron_wavelength(300e3)
    chi = aberration_phase(ky, kx, wavelength, {"C10": 40.0}).numpy()
    np.testing.assert_allclose(chi, np.pi * wavelength * 40.0 * (kx**2 + ky**2).numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="C99"):
        aberration_phase(ky, kx, wavelength, {"C99": 1.0})


def test_make_probe_rejects_bad_angle():
    with pytest.raises(ValueError, match="semi-angle"):
        make_probe((16, 16), 0.3, 300e3, -5.0)


@pytest.mark.parametrize("num_modes", [2, 3, 5])
def test_orthogonalize_modes(num_modes):
    rng = np.random.default_rng(num_modes)
    modes = torch.as_tensor(rng.normal(size=(num_modes, 12, 12)) + 1j * rng.normal(size=(num_modes, 12, 12)))
    out = orthogonalize_modes(modes)
    assert out.shape == modes.shape
    total_in = (modes.abs() ** 2).sum().item()
    total_out = (out.abs() ** 2).sum().item()
    np.testing.assert_allclose(total_out, total_in, rtol=1e-10)
    flat = out.reshape(num_modes, -1).numpy()
    gram = flat.conj() @ flat.T
    off = gram - np.diag(np.diag(gram))
    assert np.abs(off).max() < 1e-10 * np.abs(np.diag(gram)).max()
    power = np.real(np.diag(gram))
    assert np.all(np.diff(power) <= 1e-9 * power[0])  # strongest first
    # the incoherent sum |P_m|^2 over modes (the mixed-state density's diagonal) is kept
    np.testing.assert_allclose(
        (out.abs() ** 2).sum(0).numpy(), (modes.abs() ** 2).sum(0).numpy(), rtol=1e-9, atol=1e-12
    )


def test_probe_modes_keeps_power_and_main_mode():
    probe = make_probe((32, 32), 0.3, 300e3, 20.0, defocus=50.0)
    modes = probe_modes(probe, 3, seed=1)
    assert modes.shape == (3, 32, 32)
    np.testing.assert_allclose((modes.abs() ** 2).sum().item(), (probe.abs() ** 2).sum().item(), rtol=1e-5)
    power = (modes.abs() ** 2).sum(dim=(1, 2)).numpy()
    assert power[0] > 0.7 * power.sum()
    single = probe_modes(probe, 1)
    assert single.shape == (1, 32, 32)
    with pytest.raises(ValueError, match="probe_modes"):
        probe_modes(probe, 0)
