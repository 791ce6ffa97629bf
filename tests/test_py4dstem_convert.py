"""HyperSpy <-> py4DSTEM DataCube conversion and DataCube calibration reading."""

import numpy as np
import pytest

py4DSTEM = pytest.importorskip("py4DSTEM")

from app_extension.physics.optics import electron_wavelength  # noqa: E402
from app_extension.py4dstem import (  # noqa: E402
    datacube_to_signal,
    read_datacube_calibration,
    signal_to_datacube,
)


def _datacube(shape=(3, 4, 8, 8), r=(0.4, "A"), q=(0.05, "A^-1")):
    data = np.random.default_rng(0).random(shape).astype(np.float32)
    dc = py4DSTEM.DataCube(data=data, name="test cube")
    if r is not None:
        dc.calibration.set_R_pixel_size(r[0])
        dc.calibration.set_R_pixel_units(r[1])
    if q is not None:
        dc.calibration.set_Q_pixel_size(q[0])
        dc.calibration.set_Q_pixel_units(q[1])
    return dc


@pytest.mark.parametrize(
    ("r", "q", "step", "reciprocal"),
    [
        ((0.4, "A"), (0.05, "A^-1"), 0.4, 0.05),
        ((0.04, "nm"), (0.05, "A^-1"), 0.4, 0.05),
        ((0.4, "A"), (1.0, "mrad"), 0.4, 1e-3 / electron_wavelength(300e3)),
        ((0.04, "nm"), (2.0, "mrad"), 0.4, 2e-3 / electron_wavelength(300e3)),
    ],
)
def test_read_calibration_each_unit_family(r, q, step, reciprocal):
    cal = read_datacube_calibration(_datacube(r=r, q=q), energy=300e3)
    assert cal["scan_step"] == pytest.approx(step)
    assert cal["reciprocal_sampling"] == pytest.approx(reciprocal, rel=1e-9)
    assert cal["angular_sampling"] == pytest.approx(reciprocal * electron_wavelength(300e3) * 1e3, rel=1e-9)
    assert cal["rotation_deg"] == 0.0 and cal["flip"] is False


def test_read_calibration_rotation_flip_and_forced_values():
    dc = _datacube()
    dc.calibration.set_QR_rotflip_degrees((12.5, True))
    dc.calibration.set_convergence_semiangle_mrad(21.0)
    cal = read_datacube_calibration(dc, energy=200e3, force_scan_sampling=0.7, force_angular_sampling=1.5)
    assert cal["rotation_deg"] == pytest.approx(12.5)
    assert cal["flip"] is True
    assert cal["semiangle"] == 21.0
    assert cal["scan_step"] == 0.7
    assert cal["angular_sampling"] == 1.5


@pytest.mark.parametrize(
    ("r", "q", "match"),
    [
        (None, (0.05, "A^-1"), "set_R_pixel_units"),
        ((0.4, "A"), None, "set_Q_pixel_units"),
        ((0.4, "pixels"), (0.05, "A^-1"), "real-space"),
    ],
)
def test_missing_or_pixel_calibration_is_a_clear_error(r, q, match):
    with pytest.raises(ValueError, match=match):
        read_datacube_calibration(_datacube(r=r, q=q), energy=300e3)


def test_unsupported_real_space_units():
    with pytest.raises(ValueError, match="'A' or 'nm'"):
        read_datacube_calibration(_datacube(r=(0.4, "um")), energy=300e3)


def test_signal_to_datacube_to_signal_keeps_every_calibration(small_signal):
    s = small_signal
    s.metadata.set_item("Acquisition_instrument.TEM.scan_rotation", 7.5)
    s.metadata.set_item("Acquisition_instrument.TEM.detector_transposed", True)
    for axis in s.axes_manager.navigation_axes:
        axis.offset = 1.25
    dc = signal_to_datacube(s)
    assert dc.data.shape == s.data.shape
    np.testing.assert_array_equal(dc.data, s.data)
    cal = dc.calibration
    assert cal.get_R_pixel_units() == "A"
    assert cal.get_R_pixel_size() == pytest.approx(s.axes_manager.navigation_axes[0].scale)
    assert cal.get_Q_pixel_units() == "A^-1"
    assert cal.get_Q_pixel_size() == pytest.approx(s.axes_manager.signal_axes[0].scale)
    assert cal.get_qx0_mean() == pytest.approx(s.data.shape[2] // 2)
    assert cal.get_convergence_semiangle_mrad() == pytest.approx(22.0)
    assert cal.get_QR_rotation_degrees() == pytest.approx(7.5)
    assert cal.get_QR_flip() is True
    assert dc.name == "small STO"

    back = datacube_to_signal(dc)
    assert back.metadata.Signal.signal_type == "ptychography"
    assert type(back).__name__ == "AppPtychography2D"
    np.testing.assert_array_equal(back.data, s.data)
    for a, b in zip(back.axes_manager._axes, s.axes_manager._axes, strict=True):
        assert a.scale == pytest.approx(b.scale)
        assert a.offset == pytest.approx(b.offset)
        assert str(a.units) == str(b.units)
    tem = back.metadata.Acquisition_instrument.TEM
    assert tem.beam_energy == pytest.approx(s.metadata.Acquisition_instrument.TEM.beam_energy)
    assert tem.convergence_angle == pytest.approx(22.0)
    assert tem.scan_rotation == pytest.approx(7.5)
    assert tem.detector_transposed is True
    assert back.metadata.General.title == "small STO"


@pytest.mark.parametrize(("r", "q"), [((0.04, "nm"), (1.0, "mrad")), ((0.39, "A"), (0.0508, "A^-1"))])
def test_datacube_to_signal_to_datacube_keeps_every_calibration(r, q):
    dc = _datacube(r=r, q=q)
    dc.calibration.set_QR_rotflip_degrees((-30.0, False))
    dc.calibration.set_convergence_semiangle_mrad(20.0)
    dc.calibration.set_qx0_mean(4.0)
    dc.calibration.set_qy0_mean(3.0)
    s = datacube_to_signal(dc, beam_energy=200.0)
    nav_units = {"A": "Å", "nm": "nm"}[r[1]]
    sig_units = {"A^-1": "1 / Å", "mrad": "mrad"}[q[1]]
    assert [a.units for a in s.axes_manager.navigation_axes] == [nav_units] * 2
    assert [a.units for a in s.axes_manager.signal_axes] == [sig_units] * 2
    assert s.axes_manager.signal_axes[1].offset == pytest.approx(-4.0 * q[0])  # ky <- Qx
    assert s.axes_manager.signal_axes[0].offset == pytest.approx(-3.0 * q[0])
    assert s.metadata.Acquisition_instrument.TEM.beam_energy == 200.0
    back = signal_to_datacube(s)
    np.testing.assert_array_equal(back.data, dc.data)
    for getter in (
        "get_R_pixel_size",
        "get_R_pixel_units",
        "get_Q_pixel_size",
        "get_Q_pixel_units",
        "get_QR_rotation_degrees",
        "get_QR_flip",
        "get_convergence_semiangle_mrad",
        "get_qx0_mean",
        "get_qy0_mean",
    ):
        a, b = getattr(back.calibration, getter)(), getattr(dc.calibration, getter)()
        assert a == pytest.approx(b) if isinstance(b, float) else a == b, getter
    assert back.metadata["microscope"]["beam_energy_eV"] == pytest.approx(200e3)
    # The energy then comes back without being given again.
    assert datacube_to_signal(back).metadata.Acquisition_instrument.TEM.beam_energy == pytest.approx(200.0)


def test_calibration_survives_py4dstem_save_and_read(tmp_path, small_signal):
    dc = signal_to_datacube(small_signal)
    path = tmp_path / "cube.h5"
    py4DSTEM.save(str(path), dc)
    back = py4DSTEM.read(str(path))
    s = datacube_to_signal(back)
    assert s.metadata.Acquisition_instrument.TEM.beam_energy == pytest.approx(300.0)
    assert s.axes_manager.navigation_axes[0].scale == pytest.approx(small_signal.axes_manager[0].scale)
    assert s.axes_manager.signal_axes[0].scale == pytest.approx(
        small_signal.axes_manager.signal_axes[0].scale
    )


def test_conversion_errors(small_signal):
    with pytest.raises(ValueError, match="keV"):
        datacube_to_signal(_datacube(), beam_energy=300e3)
    s = small_signal
    s.axes_manager.navigation_axes[0].scale *= 2
    with pytest.raises(ValueError, match="different steps"):
        signal_to_datacube(s)
    with pytest.raises(ValueError, match="2 navigation and 2 signal"):
        signal_to_datacube(s.inav[0])


def test_uncalibrated_axes_warn_and_stay_in_pixels():
    import hyperspy.api as hs

    s = hs.signals.Signal2D(np.ones((2, 3, 4, 4)))
    with pytest.warns(UserWarning, match="not calibrated"):
        dc = signal_to_datacube(s)
    assert dc.calibration.get_R_pixel_units() == "pixels"
    assert dc.calibration.get_Q_pixel_units() == "pixels"


def test_zero_detector_offset_leaves_the_origin_unset(small_signal):
    for axis in small_signal.axes_manager.signal_axes:
        axis.offset = 0.0
    dc = signal_to_datacube(small_signal)
    assert dc.calibration.get_qx0_mean() is None and dc.calibration.get_qy0_mean() is None
    s = datacube_to_signal(dc)
    n = small_signal.axes_manager.signal_axes[0].size
    assert s.axes_manager.signal_axes[0].offset == pytest.approx(
        -(n // 2) * s.axes_manager.signal_axes[0].scale
    )
