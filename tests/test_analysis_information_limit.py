"""Information limit from the diffractogram, and split-data FRC, on band-limited images."""

import numpy as np
import pytest

from app_extension.analysis import fourier_ring_correlation, information_limit

STEP = 0.1
A = 2.0


def lattice_image(n=240, width=0.15):
    """Square lattice (a = 2 Å) of Gaussians, periodic in the 24 Å box (spots on FFT bins)."""
    x = np.arange(n) * STEP
    xx, yy = np.meshgrid(x, x)
    img = np.zeros((n, n))
    for cx in np.arange(-1, n * STEP / A + 2) * A + 0.3:
        for cy in np.arange(-1, n * STEP / A + 2) * A + 0.5:
            img += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * width**2))
    return img


def band_limit(img, kc):
    f = np.fft.fft2(img)
    ky = np.fft.fftfreq(img.shape[0], STEP)
    kx = np.fft.fftfreq(img.shape[1], STEP)
    f[np.hypot(ky[:, None], kx[None, :]) > kc] = 0
    return np.fft.ifft2(f).real


@pytest.mark.parametrize(
    "kc, expected",
    [(1.2, A / np.sqrt(5)), (0.8, A / np.sqrt(2)), (1.45, A / np.sqrt(8))],  # spots (2,1), (1,1), (2,2)
)
def test_diffractogram_limit_is_the_finest_spot_below_the_band_limit(kc, expected):
    rng = np.random.default_rng(0)
    img = band_limit(lattice_image(), kc) + rng.normal(0, 0.01, (240, 240))
    out = information_limit(img, STEP)
    assert out["limit"] == pytest.approx(expected, rel=0.02)
    assert out["frequency"] <= kc + 0.02
    assert out["snr"] >= 20


def test_noise_only_has_no_spot():
    from app_extension.analysis import Lattice

    rng = np.random.default_rng(1)
    out = information_limit(rng.normal(size=(128, 128)), STEP, lattice=Lattice((A, 0), (0, A)))
    assert np.isnan(out["limit"])
    assert len(out["spots"]) > 10


def test_frc_resolution_at_the_band_limit():
    rng = np.random.default_rng(2)
    n = 256
    # A random object band-limited at kc, seen twice with independent white noise.
    obj = band_limit(rng.normal(size=(n, n)), 1.0)
    noise = 0.3 * obj.std()
    a = obj + rng.normal(0, noise, (n, n))
    b = obj + rng.normal(0, noise, (n, n))
    # The images are periodic (made by FFT): no edge taper needed, none applied.
    out = fourier_ring_correlation(a, b, STEP, taper=0)
    assert out["threshold_name"] == "half-bit"
    # Within one ring (1 / 25.6 Å) of the band limit.
    assert out["resolution"] == pytest.approx(1.0, rel=0.06)
    seventh = fourier_ring_correlation(a, b, STEP, threshold="1/7", taper=0)
    assert seventh["resolution"] == pytest.approx(1.0, rel=0.06)
    # Independent images: no correlation, the resolution is coarse (first ring or two).
    out = fourier_ring_correlation(rng.normal(size=(n, n)), rng.normal(size=(n, n)), STEP)
    assert out["resolution"] > 5
