"""Scan rotation and transpose from the centre-of-mass field."""

import numpy as np
import pytest
from measurements_data import AXIS, DESCAN, ROTATION, SCAN, ideal, recorded_data, scan_positions

from app_extension.measurements.orientation import (
    centre_of_mass,
    integrate_gradient,
    rotation_from_com,
    scan_to_detector,
    to_scan_frame,
)


def _com(data):
    centres = np.asarray(AXIS) + (scan_positions() - scan_positions().mean(axis=0)) @ DESCAN.T
    return centre_of_mass(data.reshape(-1, 48, 48), centres).reshape(*SCAN, 2)


@pytest.mark.parametrize("transpose", [False, True])
def test_com_curl_gives_rotation_modulo_180_and_transpose(transpose):
    data = recorded_data(transpose=transpose, electrons=None)
    step = ideal().scan_step
    res = rotation_from_com(_com(data), (step, step))
    diff = (res["rotation_mod180_deg"] - ROTATION + 90) % 180 - 90
    assert abs(diff) < 3, res
    assert res["transposed"] == transpose
    assert res["curl_fraction"][str(transpose)] < res["curl_fraction"][str(not transpose)]


def test_scan_frame_conversion():
    # the fast scan axis (x = 1) at +30° in the detector frame
    j = scan_to_detector(30.0)
    fast_det = j @ np.array([0.0, 1.0])
    np.testing.assert_allclose(fast_det, [np.sin(np.pi / 6), np.cos(np.pi / 6)])
    # a raw-detector vector along the fast axis comes back as (0, 1) in the scan frame
    np.testing.assert_allclose(to_scan_frame(fast_det, 30.0, False), [0, 1], atol=1e-12)
    np.testing.assert_allclose(to_scan_frame(fast_det[::-1], 30.0, True), [0, 1], atol=1e-12)


def test_integrate_gradient_recovers_a_potential():
    y, x = np.mgrid[:32, :32] * 0.5
    phi = np.cos(2 * np.pi * x / 4.0) * np.cos(2 * np.pi * y / 8.0)
    grad = np.stack(np.gradient(phi, 0.5, 0.5), axis=-1)
    est = integrate_gradient(grad, (0.5, 0.5))
    c = np.corrcoef(est[4:-4, 4:-4].ravel(), phi[4:-4, 4:-4].ravel())[0, 1]
    assert c > 0.95


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="COM field"):
        rotation_from_com(np.zeros((2, 2, 2)), (1.0, 1.0))
