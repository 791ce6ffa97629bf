"""Bright-field disk centre, optic axis plus descan, and the convergence-angle check."""

import numpy as np
import pytest
from measurements_data import AXIS, DESCAN, SAMPLING, recorded_data, scan_positions

from app_extension.measurements.bad_pixels import fill_bad_pixels, find_bad_pixels
from app_extension.measurements.centre import disk_centres, fit_descan, mean_disk
from app_extension.measurements.disk import check_semiangle
from app_extension.physics.optics import electron_wavelength


def _blocks(data, b=4):
    sy, sx, n, _ = data.shape
    flat = data.reshape(-1, n, n)
    total = flat.sum(axis=0, dtype=np.float64)
    bad, _ = find_bad_pixels(total)
    filled = fill_bad_pixels(data, bad).reshape(sy // b, b, sx // b, b, n, n).mean(axis=(1, 3))
    pos = scan_positions().reshape(sy // b, b, sx // b, b, 2).mean(axis=(1, 3))
    return fill_bad_pixels(total / flat.shape[0], bad), filled.reshape(-1, n, n), pos.reshape(-1, 2)


def test_axis_and_descan_from_the_disk_edge():
    mean, blocks, pos = _blocks(recorded_data())
    guess, radius, _, _ = mean_disk(mean)
    assert np.hypot(*(guess - AXIS)) < 0.5
    centres, radii, quality = disk_centres(blocks, guess, radius)
    assert np.all(quality > 0.8)
    fit = fit_descan(centres, pos)
    assert np.hypot(*(fit.axis - AXIS)) < 0.1, fit.axis
    np.testing.assert_allclose(fit.descan, DESCAN, atol=0.01)
    # the fitted centre at the first position follows the descan
    expected = np.asarray(AXIS) + DESCAN @ (scan_positions()[0] - fit.scan_centre)
    assert np.hypot(*(fit(scan_positions()[:1])[0] - expected)) < 0.15


def test_disk_radius_gives_the_semiangle():
    mean, blocks, _ = _blocks(recorded_data())
    guess, radius, _, _ = mean_disk(mean)
    _, radii, _ = disk_centres(blocks, guess, radius)
    pixel_mrad = SAMPLING * electron_wavelength(300e3) * 1e3
    measured, warning = check_semiangle(float(np.median(radii)), pixel_mrad, 22.0)
    assert measured == pytest.approx(22.0, rel=0.02)
    assert warning == ""


def test_semiangle_warning_names_both_fixes():
    measured, warning = check_semiangle(20.0, 1.2, 22.0)  # 24 mrad: 9 % off
    assert measured == pytest.approx(24.0)
    assert "detector_sampling='1.1 mrad'" in warning and "convergence_angle=24.00" in warning
    _, warning = check_semiangle(22.0 * 2, 1.0, 22.0)
    assert "binning" in warning
    assert check_semiangle(22.5, 1.0, 22.0)[1] == ""


def test_fit_descan_drops_outliers():
    rng = np.random.default_rng(0)
    pos = rng.uniform(-5, 5, size=(200, 2))
    truth = np.array([30.0, 31.0]) + pos @ np.array([[0.1, 0.0], [0.02, -0.05]]).T
    noisy = truth + rng.normal(0, 0.02, truth.shape)
    noisy[:10] += 5.0
    noisy[10] = np.nan
    fit = fit_descan(noisy, pos)
    assert fit.used <= 189
    np.testing.assert_allclose(fit.descan, [[0.1, 0.0], [0.02, -0.05]], atol=0.005)
    with pytest.raises(ValueError, match="centre"):
        fit_descan(np.full((5, 2), np.nan), pos[:5])
