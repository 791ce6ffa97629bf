"""Defocus, astigmatism, rotation and transpose from the bright-field parallax."""

import numpy as np
import pytest
from measurements_data import (
    AXIS,
    C12,
    DEFOCUS,
    DESCAN,
    PHI12,
    ROTATION,
    SAMPLING,
    SCAN,
    THICKNESS,
    ideal,
    recorded_data,
    scan_positions,
)

from app_extension.measurements.aberrations import (
    decompose_parallax,
    parallax_map,
    sample_virtual_bf,
    virtual_bf_offsets,
)
from app_extension.measurements.bad_pixels import fill_bad_pixels, find_bad_pixels
from app_extension.measurements.orientation import scan_to_detector
from app_extension.physics.optics import electron_wavelength

LAMBDA = electron_wavelength(300e3)


def _forward_map(rotation, transposed, defocus, c12, phi12_scan, step=0.5, dk=SAMPLING):
    """The parallax map (scan px per detector px) the module docstring predicts."""
    q = np.array(
        [[-np.cos(2 * phi12_scan), np.sin(2 * phi12_scan)], [np.sin(2 * phi12_scan), np.cos(2 * phi12_scan)]]
    )
    h_scan = -defocus * np.eye(2) + c12 * q  # C10 = -defocus
    j = scan_to_detector(rotation)
    p = np.array([[0, 1], [1, 0]]) if transposed else np.eye(2)
    w = h_scan @ j.T @ p
    return -LAMBDA * w * dk / step


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("rotation", [-170.0, -9.0, 0.0, 35.0, 120.0])
def test_decompose_inverts_the_forward_map(rotation, transposed):
    m = _forward_map(rotation, transposed, 170.0, 15.0, -0.7)
    fit = decompose_parallax(m, (0.5, 0.5), SAMPLING, LAMBDA, defocus_sign=1.0)
    assert fit.transposed == transposed
    assert (fit.rotation_deg - rotation + 180) % 360 - 180 == pytest.approx(0, abs=1e-6)
    assert fit.defocus == pytest.approx(170.0)
    assert fit.C12 == pytest.approx(15.0)
    assert (fit.phi12 + 0.7 + np.pi / 2) % np.pi - np.pi / 2 == pytest.approx(0, abs=1e-9)
    # the 180° choice follows the sign of the nominal defocus
    flipped = decompose_parallax(m, (0.5, 0.5), SAMPLING, LAMBDA, defocus_sign=-1.0)
    assert (flipped.rotation_deg - rotation) % 360 == pytest.approx(180, abs=1e-6)
    assert flipped.defocus == pytest.approx(-170.0)


def _virtual_images(data):
    flat = data.reshape(-1, 48, 48)
    bad, _ = find_bad_pixels(flat.sum(axis=0, dtype=np.float64))
    flat = fill_bad_pixels(flat, bad)
    centres = np.asarray(AXIS) + (scan_positions() - scan_positions().mean(axis=0)) @ DESCAN.T
    offsets = virtual_bf_offsets(18.6, 2.0)
    images = sample_virtual_bf(flat, centres, offsets, 2.0).T.reshape(-1, *SCAN)
    return images, offsets


@pytest.mark.parametrize("transpose", [False, True])
def test_parallax_on_the_forward_model(transpose):
    images, offsets = _virtual_images(recorded_data(transpose=transpose))
    step = ideal().scan_step
    expected = LAMBDA * DEFOCUS * SAMPLING / step
    result = parallax_map(images, offsets, 2.0, expected)
    fit = decompose_parallax(result["M"], (step, step), SAMPLING, LAMBDA, 1.0)
    assert fit.transposed == transpose
    assert abs(fit.rotation_deg - ROTATION) < 1.0, fit.rotation_deg
    # the parallax sees the defocus at the specimen's middle
    assert fit.defocus == pytest.approx(DEFOCUS - THICKNESS / 2, rel=0.12)
    assert fit.C12 == pytest.approx(C12, rel=0.35)
    phi12_scan = PHI12 - np.deg2rad(ROTATION)
    assert abs((fit.phi12 - phi12_scan + np.pi / 2) % np.pi - np.pi / 2) < 0.25
    assert result["tcbf"].shape == SCAN


def test_tcbf_contrast_gradient_matches_finite_differences():
    """The analytic gradient L-BFGS-B follows (parallax refinement) against central differences."""
    from app_extension.measurements.aberrations import _Contrast

    rng = np.random.default_rng(3)
    images = rng.normal(size=(6, 12, 14))
    offsets = rng.normal(scale=2.0, size=(6, 2))
    contrast = _Contrast(images, offsets)
    m = np.array([0.3, -0.1, 0.2, 0.4])
    value, grad = contrast.value_and_gradient(m)
    assert value == pytest.approx(contrast(m), rel=1e-12)
    h = 1e-6
    numeric = [(contrast(m + h * e) - contrast(m - h * e)) / (2 * h) for e in np.eye(4)]
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-9 * np.abs(numeric).max())
