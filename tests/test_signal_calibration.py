"""Calibration of a "ptychography" signal: axes and metadata -> solver Geometry, and clear errors."""

import hyperspy.api as hs
import numpy as np
import pytest

from app_extension.signals.calibration import beam_wavelength, geometry_from_signal
from app_extension.units import UncalibratedError

STEP_A = 0.3905
K_SAMPLING = 0.0507937  # 1/Å per pixel = 1.000 mrad at 300 keV


def _signal(lazy=False, shape=(3, 4, 16, 16)):
    s = hs.signals.Signal2D(np.ones(shape, dtype=np.float32))
    s.set_signal_type("ptychography")
    return s.as_lazy() if lazy else s


def _set_axes(s, nav_scale, nav_units, sig_scale, sig_units):
    for axis in s.axes_manager.navigation_axes:
        axis.scale, axis.units = nav_scale, nav_units
    for axis in s.axes_manager.signal_axes:
        axis.scale, axis.units = sig_scale, sig_units
        axis.offset = -(axis.size // 2) * sig_scale


def _set_beam(s, energy=300.0, angle=22.0):
    s.metadata.set_item("Acquisition_instrument.TEM.beam_energy", energy)
    s.metadata.set_item("Acquisition_instrument.TEM.convergence_angle", angle)


def test_wavelength_300kv():
    np.testing.assert_allclose(beam_wavelength(300), 0.0196875, rtol=1e-5)


@pytest.mark.parametrize("lazy", [True, False])
@pytest.mark.parametrize(
    ("nav_scale", "nav_units"), [(STEP_A, "Å"), (STEP_A / 10, "nm"), (STEP_A * 1e-10, "m"), (STEP_A, "A")]
)
@pytest.mark.parametrize(
    ("sig_scale", "sig_units"), [(K_SAMPLING, "1 / Å"), (K_SAMPLING * 10, "1/nm"), (1.0, "mrad")]
)
def test_geometry_unit_families(lazy, nav_scale, nav_units, sig_scale, sig_units):
    s = _signal(lazy)
    _set_axes(s, nav_scale, nav_units, sig_scale, sig_units)
    _set_beam(s)
    g = geometry_from_signal(s, defocus="20 nm")
    np.testing.assert_allclose(g.energy, 300e3)
    np.testing.assert_allclose(g.semiangle, 22.0)
    np.testing.assert_allclose(g.reciprocal_sampling, K_SAMPLING, rtol=1e-5)
    np.testing.assert_allclose(g.defocus, 200.0)
    # Raster with scan y slow: (3, 4) scan -> 12 positions, step 0.3905 Å.
    assert g.scan_positions.shape == (12, 2)
    np.testing.assert_allclose(g.scan_positions[1], [0, STEP_A], rtol=1e-12)
    np.testing.assert_allclose(g.scan_positions[4], [STEP_A, 0], atol=1e-12)
    np.testing.assert_allclose(g.scan_positions[-1], [2 * STEP_A, 3 * STEP_A], rtol=1e-12)


def test_scan_rotation_and_aberrations():
    s = _signal()
    _set_axes(s, STEP_A, "Å", K_SAMPLING, "1 / Å")
    _set_beam(s)
    g = geometry_from_signal(s, scan_rotation="90 deg", aberrations={"C30": "1 mm", "C12": 5})
    # Rotating by 90 degrees counter-clockwise takes the fast (x) step onto y.
    np.testing.assert_allclose(g.scan_positions[1], [STEP_A, 0], atol=1e-12)
    assert g.aberrations == {"C30": pytest.approx(1e7), "C12": 5.0}


@pytest.mark.parametrize("lazy", [True, False])
def test_set_experimental_parameters(lazy):
    s = _signal(lazy)
    s.set_experimental_parameters(
        beam_energy="300 kV",
        convergence_angle="0.022 rad",
        scan_step="0.03905 nm",
        detector_sampling="1 mrad",
    )
    tem = s.metadata.Acquisition_instrument.TEM
    np.testing.assert_allclose([tem.beam_energy, tem.convergence_angle], [300.0, 22.0])
    for axis in s.axes_manager.navigation_axes:
        assert axis.units == "Å"
        np.testing.assert_allclose(axis.scale, STEP_A)
    for axis in s.axes_manager.signal_axes:
        assert axis.units == "mrad"
        np.testing.assert_allclose([axis.scale, axis.offset], [1.0, -8.0])
    np.testing.assert_allclose(geometry_from_signal(s).reciprocal_sampling, K_SAMPLING, rtol=1e-5)


def test_set_experimental_parameters_numbers_and_partial():
    s = _signal()
    s.set_experimental_parameters(detector_sampling=0.05)
    assert s.axes_manager.signal_axes[0].units == "1 / Å"
    np.testing.assert_allclose(s.axes_manager.signal_axes[0].offset, -0.4)
    assert not s.metadata.has_item("Acquisition_instrument.TEM.beam_energy")
    s.set_experimental_parameters(beam_energy=200)
    assert s.metadata.Acquisition_instrument.TEM.beam_energy == 200
    with pytest.raises(ValueError, match="scan_step"):
        s.set_experimental_parameters(scan_step="-1 Å")
    with pytest.raises(ValueError, match="convergence_angle"):
        s.set_experimental_parameters(convergence_angle="2 nm")


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("beam_energy", r"beam energy is missing.*beam_energy=300"),
        ("convergence_angle", r"convergence semi-angle is missing.*convergence_angle=22"),
        ("scan", r"scan step is not calibrated.*scan_step="),
        ("detector", r"detector sampling is not calibrated.*detector_sampling="),
    ],
)
def test_missing_calibration_errors(missing, message):
    s = _signal()
    _set_axes(s, STEP_A, "Å", K_SAMPLING, "1 / Å")
    _set_beam(s)
    if missing in ("beam_energy", "convergence_angle"):
        s.metadata.Acquisition_instrument.TEM.__delattr__(missing)
    elif missing == "scan":
        s.axes_manager.navigation_axes[1].scale = 1.0
        s.axes_manager.navigation_axes[1].units = "px"
    else:
        s.axes_manager.signal_axes[0].units = "<undefined>"
    with pytest.raises(UncalibratedError, match=message) as info:
        s.ptycho_app(iterations=1)
    # Only the one problem is reported.
    assert str(info.value).count("\n- ") == 1


def test_all_missing_listed_once():
    s = _signal()
    with pytest.raises(UncalibratedError) as info:
        s.ptycho_app(iterations=1)
    text = str(info.value)
    for word in ("beam energy", "convergence semi-angle", "scan step", "detector sampling"):
        assert word in text
    assert text.count("\n- ") == 4


def test_mrad_axes_without_energy_reports_energy_only():
    s = _signal()
    _set_axes(s, STEP_A, "Å", 1.0, "mrad")
    s.metadata.set_item("Acquisition_instrument.TEM.convergence_angle", 22.0)
    with pytest.raises(UncalibratedError, match="beam energy is missing") as info:
        geometry_from_signal(s)
    assert "detector sampling" not in str(info.value)


@pytest.mark.parametrize(
    ("shape", "message"),
    [((4, 16, 16), "two scan"), ((2, 3, 4, 16, 16), "two scan"), ((3, 4, 16, 12), "must be square")],
)
def test_wrong_shape_errors(shape, message):
    s = hs.signals.Signal2D(np.ones(shape, dtype=np.float32))
    s.set_signal_type("ptychography")
    with pytest.raises(ValueError, match=message):
        s.ptycho_app(iterations=1)


def test_non_uniform_axis_error():
    s = _signal()
    _set_axes(s, STEP_A, "Å", K_SAMPLING, "1 / Å")
    _set_beam(s)
    s.axes_manager.navigation_axes[0].convert_to_non_uniform_axis()
    with pytest.raises(NotImplementedError, match="non-uniform"):
        s.ptycho_app(iterations=1)


def test_rectangular_detector_pixels_error():
    s = _signal()
    _set_axes(s, STEP_A, "Å", K_SAMPLING, "1 / Å")
    _set_beam(s)
    s.axes_manager.signal_axes[1].scale = 2 * K_SAMPLING
    with pytest.raises(ValueError, match="different pixel sizes"):
        s.ptycho_app(iterations=1)


def test_off_centre_calibration_warns(caplog):
    s = _signal()
    _set_axes(s, STEP_A, "Å", K_SAMPLING, "1 / Å")
    _set_beam(s)
    s.axes_manager.signal_axes[0].offset = -3 * K_SAMPLING
    with caplog.at_level("WARNING"):
        geometry_from_signal(s)
    assert "optic axis" in caplog.text
