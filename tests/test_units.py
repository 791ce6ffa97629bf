"""Unit parsing with the registry shared with HyperSpy."""

import hyperspy.api as hs
import numpy as np
import pint
import pytest
from hyperspy.axes import UniformDataAxis

from app_extension.units import (
    UncalibratedError,
    angstrom_in,
    axis_length_scale,
    axis_reciprocal_scale,
    is_uncalibrated,
    parse_units,
    reciprocal_from_angle,
    to_magnitude,
    ureg,
)

WAVELENGTH_300KV = 0.0196875  # Å (the reference data's README)


def test_registry_is_hyperspys():
    assert ureg is pint.get_application_registry()
    assert ureg is hs._ureg
    # Quantities from both sides mix.
    assert (hs._ureg("1 nm") + ureg("5 Å")).to("Å").magnitude == pytest.approx(15)


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (2.5, "Å", 2.5),
        ("2 nm", "Å", 20.0),
        ("200 Å", "Å", 200.0),
        ("200 A", "Å", 200.0),  # microscopy files' "A" is ångström, not ampere
        ("2e-9 m", "Å", 20.0),
        ("0.02 µm", "Å", 200.0),
        ("3 mrad", "mrad", 3.0),
        ("0.003 rad", "mrad", 3.0),
        ("1 deg", "mrad", np.pi / 180 * 1e3),
        ("300 keV", "keV", 300.0),
        ("7", "Å", 7.0),  # a bare number string is in the documented unit
        (np.float32(4), "mrad", 4.0),
    ],
)
def test_to_magnitude(value, unit, expected):
    np.testing.assert_allclose(to_magnitude(value, unit, "x"), expected, rtol=1e-12)


def test_to_magnitude_quantity():
    assert to_magnitude(ureg.Quantity(2, "nm"), "Å", "x") == pytest.approx(20)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("3 mrad", "cannot be converted to Å"),
        ("3 furlongs per fortnight", "cannot be converted|could not be read"),
        ("two nm", "could not be read"),
    ],
)
def test_to_magnitude_errors(value, message):
    with pytest.raises(ValueError, match=message):
        to_magnitude(value, "Å", "slice_thickness")


def test_to_magnitude_error_names_parameter():
    with pytest.raises(ValueError, match="slice_thickness"):
        to_magnitude("3 mrad", "Å", "slice_thickness")
    with pytest.raises(TypeError, match="defocus"):
        to_magnitude([1, 2], "Å", "defocus")


@pytest.mark.parametrize("units", [None, "", "<undefined>", "px", "pixels", "a.u."])
def test_uncalibrated_units(units):
    assert parse_units(units) is None


@pytest.mark.parametrize(
    ("units", "expected"), [("nm", "nanometer"), ("1/A", "1 / angstrom"), ("mrad", "milliradian")]
)
def test_parse_units(units, expected):
    assert str(parse_units(units)) == expected


def _axis(scale, units, size=8):
    return UniformDataAxis(size=size, scale=scale, units=units, offset=0)


@pytest.mark.parametrize(
    ("scale", "units", "expected_A"),
    [(0.39, "Å", 0.39), (0.039, "nm", 0.39), (3.9e-11, "m", 0.39), (0.39, "A", 0.39), (3.9e-5, "µm", 0.39)],
)
def test_axis_length_scale(scale, units, expected_A):
    np.testing.assert_allclose(axis_length_scale(_axis(scale, units)), expected_A, rtol=1e-12)


@pytest.mark.parametrize("units", ["<undefined>", "px", "1/nm", "mrad"])
def test_axis_length_scale_rejects(units):
    with pytest.raises(UncalibratedError, match="scan_step"):
        axis_length_scale(_axis(1.0, units))


@pytest.mark.parametrize(
    ("scale", "units", "expected"),
    [
        (0.0507937, "1 / Å", 0.0507937),
        (0.507937, "1/nm", 0.0507937),
        (0.0507937, "1/A", 0.0507937),
        (1.0, "mrad", 1e-3 / WAVELENGTH_300KV),  # 1 mrad at 300 kV is 0.0507937 1/Å
        (1e-3, "rad", 1e-3 / WAVELENGTH_300KV),
    ],
)
def test_axis_reciprocal_scale(scale, units, expected):
    value = axis_reciprocal_scale(_axis(scale, units), WAVELENGTH_300KV)
    np.testing.assert_allclose(value, expected, rtol=1e-9)


def test_mrad_reference_value():
    # The reference file's README: 1.000 mrad per pixel = 0.0507937 1/Å at 300 keV.
    np.testing.assert_allclose(reciprocal_from_angle(1.0, WAVELENGTH_300KV), 0.0507937, rtol=1e-6)


def test_axis_reciprocal_scale_errors():
    with pytest.raises(UncalibratedError, match="detector_sampling"):
        axis_reciprocal_scale(_axis(1.0, "<undefined>"))
    with pytest.raises(UncalibratedError, match="beam_energy"):
        axis_reciprocal_scale(_axis(1.0, "mrad"), None)
    with pytest.raises(UncalibratedError, match="neither reciprocal length nor angle"):
        axis_reciprocal_scale(_axis(1.0, "nm"), WAVELENGTH_300KV)


def test_is_uncalibrated():
    assert is_uncalibrated(_axis(1.0, "<undefined>"))
    assert not is_uncalibrated(_axis(1.0, "nm"))


@pytest.mark.parametrize(("unit", "expected"), [("Å", 1.0), ("nm", 0.1), ("pm", 100.0), ("A", 1.0)])
def test_angstrom_in(unit, expected):
    np.testing.assert_allclose(angstrom_in(unit), expected, rtol=1e-12)


@pytest.mark.parametrize("unit", ["mrad", "px", "", "1/nm"])
def test_angstrom_in_rejects(unit):
    with pytest.raises(ValueError, match="must be a length unit"):
        angstrom_in(unit, "depth_units")
