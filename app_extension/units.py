"""Unit parsing for the front ends, with the pint registry HyperSpy uses.

Every length or angle a user gives may be a plain number in the documented
unit or anything pint understands ("2 nm", "200 Å", "3 mrad", a
``pint.Quantity``). Axis calibrations are read the same way. The solver's
units are fixed: lengths in Å, angles in mrad, energies in eV, detector
sampling in 1/Å per pixel.

There is one registry: ``pint.get_application_registry()``, the one HyperSpy
uses for its axes, so quantities made here and there can be mixed.
"""

from __future__ import annotations

import re
from numbers import Real

import numpy as np
import pint

__all__ = [
    "ureg",
    "UncalibratedError",
    "CalibrationError",
    "to_magnitude",
    "parse_units",
    "is_uncalibrated",
    "axis_length_scale",
    "axis_reciprocal_scale",
    "reciprocal_from_angle",
    "angstrom_in",
]

ureg = pint.get_application_registry()

# Units strings that mean "no calibration".
_UNDEFINED = {"", "<undefined>", "px", "pixel", "pixels", "pix", "none", "a.u.", "au", "arb. u."}

# "A" is ampere to pint, but in microscopy files it means ångström.
_ANGSTROM_A = re.compile(r"(?<![A-Za-z_])A(?![A-Za-z_])")


class UncalibratedError(ValueError):
    """An axis or a metadata item the reconstruction needs is missing or uncalibrated.

    ``missing`` names the calibration items (``"beam_energy"``,
    ``"convergence_angle"``, ``"scan_step"``, ``"detector_sampling"``) that are
    missing, so a front end can say how to give them its own way.
    """

    def __init__(self, message: str, missing: tuple[str, ...] = ()):
        super().__init__(message)
        self.missing = tuple(missing)


class CalibrationError(ValueError):
    """A calibration value is unreadable, of the wrong sign or implausible.

    ``parameters`` names the calibration items involved (as in
    :class:`UncalibratedError`); the message names them and the fix.
    """

    def __init__(self, message: str, parameters: tuple[str, ...] = ()):
        super().__init__(message)
        self.parameters = tuple(parameters)


def parse_units(units) -> pint.Unit | None:
    """The pint unit of an axis-units string, or ``None`` if it means "uncalibrated".

    ``"A"`` and ``"1/A"`` are read as ångström, as microscopy files mean them.
    """
    if units is None:
        return None
    if isinstance(units, pint.Unit):
        return units
    text = str(units).strip()
    if text.lower() in _UNDEFINED:
        return None
    text = _ANGSTROM_A.sub("Å", text)
    try:
        quantity = ureg.parse_expression(text)
    except (pint.errors.PintError, AttributeError, TypeError, SyntaxError, ValueError) as error:
        raise ValueError(f"Cannot read the units {units!r}: {error}") from error
    if not isinstance(quantity, pint.Quantity):
        return None  # a bare number: dimensionless
    return quantity.units


def to_magnitude(value, unit: str, name: str) -> float:
    """A length, angle or energy as a float in ``unit``.

    Parameters
    ----------
    value
        A number (taken to be in ``unit`` already), a string pint parses
        ("2 nm", "3 mrad") or a ``pint.Quantity``.
    unit
        The unit wanted, e.g. ``"Å"`` or ``"mrad"``.
    name
        The parameter's name, for error messages.

    Raises
    ------
    ValueError
        If the string cannot be parsed or has the wrong dimension.
    """
    if isinstance(value, (Real, np.number)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        text = _ANGSTROM_A.sub("Å", value.strip())
        try:
            quantity = ureg.Quantity(text)
        except (pint.errors.PintError, AttributeError, TypeError, SyntaxError, ValueError) as error:
            raise ValueError(
                f"{name}={value!r} could not be read as a quantity ({error}); give a number in "
                f"{unit} or a string such as '2 {unit}'."
            ) from error
    elif isinstance(value, pint.Quantity):
        quantity = value
    else:
        raise TypeError(
            f"{name} must be a number in {unit} or a string with units such as '2 {unit}', "
            f"got {type(value).__name__}."
        )
    if quantity.unitless:
        return float(quantity.magnitude)
    try:
        return float(quantity.to(unit).magnitude)
    except pint.errors.DimensionalityError as error:
        raise ValueError(
            f"{name}={value!r} is in {quantity.units}, which cannot be converted "
            f"to {unit}; give e.g. '1 {unit}'."
        ) from error


def angstrom_in(unit: str, name: str = "units") -> float:
    """How many ``unit`` make one Å (e.g. 0.1 for "nm"); ``unit`` must be a length."""
    parsed = parse_units(unit)
    if parsed is None or (1 * parsed).dimensionality != ureg.meter.dimensionality:
        raise ValueError(f"{name} must be a length unit such as 'Å' or 'nm', got {unit!r}.")
    return float(ureg.Quantity(1, "Å").to(parsed).magnitude)


def is_uncalibrated(axis) -> bool:
    """True when a HyperSpy axis carries no physical calibration (units undefined or pixels)."""
    return parse_units(getattr(axis, "units", None)) is None


def axis_length_scale(axis, unit: str = "Å") -> float:
    """The step of a real-space (scan) axis in ``unit``.

    Raises
    ------
    UncalibratedError
        If the axis has no length units.
    """
    units = parse_units(axis.units)
    name = getattr(axis, "name", "") or "axis"
    if units is None:
        raise UncalibratedError(
            f"The scan axis '{name}' is not calibrated (scale {axis.scale}, units {axis.units!r}). "
            "Set the scan step, e.g. s.set_experimental_parameters(scan_step='0.39 Å'), "
            "or s.axes_manager.navigation_axes[i].scale/units."
        )
    quantity = axis.scale * units
    if quantity.dimensionality != ureg.meter.dimensionality:
        raise UncalibratedError(
            f"The scan axis '{name}' has units {axis.units!r}, which are not a length; the navigation "
            "axes must be the scan in real space (nm, Å, ...). Set them with "
            "s.set_experimental_parameters(scan_step='0.39 Å')."
        )
    return float(quantity.to(unit).magnitude)


def reciprocal_from_angle(angle_mrad: float, wavelength_A: float) -> float:
    """Spatial frequency (1/Å) of a scattering angle (mrad): k = sin(theta) / lambda ~ theta / lambda."""
    return float(angle_mrad) * 1e-3 / float(wavelength_A)


def axis_reciprocal_scale(axis, wavelength_A: float | None = None) -> float:
    """The step of a detector axis in 1/Å per pixel.

    Axes in 1/length (1/Å, 1/nm) convert directly; axes in angle (mrad, rad)
    need the electron wavelength in Å.

    Raises
    ------
    UncalibratedError
        If the axis has no units, or angular units and no wavelength.
    """
    units = parse_units(axis.units)
    name = getattr(axis, "name", "") or "axis"
    hint = (
        "Set the detector sampling, e.g. s.set_experimental_parameters(detector_sampling='0.05 1/Å') "
        "or detector_sampling='1 mrad'."
    )
    if units is None:
        raise UncalibratedError(
            f"The detector axis '{name}' is not calibrated (scale {axis.scale}, units {axis.units!r}). {hint}"
        )
    quantity = axis.scale * units
    if quantity.dimensionality == (1 / ureg.meter).dimensionality:
        return float(quantity.to("1/Å").magnitude)
    if quantity.dimensionless:  # radians are dimensionless to pint; bare numbers parse to None above
        if wavelength_A is None:
            raise UncalibratedError(
                f"The detector axis '{name}' is in {axis.units}; converting it to 1/Å needs the beam "
                "energy: set s.set_experimental_parameters(beam_energy=300) (keV)."
            )
        return reciprocal_from_angle(float(quantity.to("mrad").magnitude), wavelength_A)
    raise UncalibratedError(
        f"The detector axis '{name}' has units {axis.units!r}, neither reciprocal length nor angle. {hint}"
    )
