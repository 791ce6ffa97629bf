"""Read (and set) the experiment's calibration on a HyperSpy 4D-STEM signal.

The solver needs the beam energy, the convergence semi-angle, the detector
sampling and the scan positions. On a HyperSpy signal they live in:

* ``metadata.Acquisition_instrument.TEM.beam_energy`` (keV),
* ``metadata.Acquisition_instrument.TEM.convergence_angle`` (mrad),
* the navigation axes (scan step, any length unit pint reads),
* the signal axes (detector pixel, in 1/length or in angle).

:func:`geometry_from_signal` checks them all before any computation and names
every missing item with the call that sets it; :func:`set_experimental_parameters`
is that call.
"""

from __future__ import annotations

import logging

import numpy as np
import pint

from ..solver.config import Geometry
from ..units import (
    CalibrationError,
    UncalibratedError,
    axis_length_scale,
    axis_reciprocal_scale,
    parse_units,
    to_magnitude,
    ureg,
)

__all__ = [
    "geometry_from_signal",
    "set_experimental_parameters",
    "beam_wavelength",
    "energy_keV",
    "convergence_mrad",
    "scan_step_A",
    "detector_scale",
    "check_bright_field_disk",
    "check_disk_on_detector",
    "refuse_calibration_options",
    "raster_rotation",
    "TEM_NODE",
]

_log = logging.getLogger(__name__)

TEM_NODE = "Acquisition_instrument.TEM"


#: Plausible beam energies (keV); outside them the value is almost surely in the wrong unit.
ENERGY_RANGE_KEV = (1.0, 3000.0)
#: Plausible convergence semi-angles (mrad) of a STEM probe.
CONVERGENCE_RANGE_MRAD = (0.1, 200.0)

_PINT_ERRORS = (pint.errors.PintError, AttributeError, TypeError, SyntaxError, ValueError)


def energy_keV(
    value, name: str = "beam_energy", number_unit: str = "keV", example: str = "300 (keV)"
) -> float:
    """Beam energy in keV from a number (keV), "300 keV", "300 kV" or "300000 eV", checked.

    ``number_unit`` and ``example`` are the caller's unit of bare numbers
    and an example value, for the messages.

    Raises
    ------
    CalibrationError
        If the value cannot be read, is not an energy or a voltage, or lies
        outside :data:`ENERGY_RANGE_KEV` (e.g. eV given where keV is expected).
    """
    shown = value
    if isinstance(value, str):
        try:
            value = ureg.Quantity(value.strip())
        except _PINT_ERRORS as error:
            raise CalibrationError(
                f"{name}={shown!r} could not be read as a beam energy ({error}); give a number in "
                f"{number_unit} or a string such as '300 kV'.",
                ("beam_energy",),
            ) from None
    if isinstance(value, pint.Quantity) and value.check("[electric_potential]"):
        value = value * ureg.elementary_charge
    try:
        x = to_magnitude(value, "keV", name)
    except (TypeError, ValueError):
        units = f"in {value.units}" if isinstance(value, pint.Quantity) else f"a {type(value).__name__}"
        raise CalibrationError(
            f"{name}={shown!r} is {units}, not a beam energy; give a number in {number_unit} or an energy "
            "or voltage such as '300 kV' or '300 keV'.",
            ("beam_energy",),
        ) from None
    low, high = ENERGY_RANGE_KEV
    if not (np.isfinite(x) and low <= x <= high):
        bare = not (isinstance(value, pint.Quantity) and not value.unitless)
        if bare and high < x <= high * 1e3:
            fix = f"it looks like eV: give {name}={x / 1e3:g} (keV) or '{x / 1e3:g} kV'."
        else:
            fix = f"check the value and its unit, e.g. {name}={example} or '300 kV'."
        raise CalibrationError(
            f"{name}={shown!r} is {x:g} keV, outside the beam energies of electron microscopes "
            f"({low:g} to {high:g} keV); {fix}",
            ("beam_energy",),
        )
    return x


def _convert(value, unit: str, name: str, what: str, example: str, item: str) -> float:
    """``to_magnitude`` with a :class:`CalibrationError` that says what the value should be."""
    try:
        return to_magnitude(value, unit, name)
    except TypeError:
        raise CalibrationError(
            f"{name} must be a number in {unit} or a string with units, got {type(value).__name__}; give "
            f"e.g. {name}={example}.",
            (item,),
        ) from None
    except ValueError as error:
        cause = error.__cause__
        reason = f" ({cause})" if isinstance(cause, pint.errors.PintError) and "defined" in str(cause) else ""
        problem = f"could not be read{reason}" if reason else f"is not {what}"
        raise CalibrationError(f"{name}={value!r} {problem}; give e.g. {name}={example}.", (item,)) from None


def convergence_mrad(value, name: str = "convergence_angle") -> float:
    """Convergence semi-angle in mrad from a number (mrad) or a string ("22 mrad", "0.022 rad"), checked.

    Raises
    ------
    CalibrationError
        If the value cannot be read, is not an angle, or lies outside
        :data:`CONVERGENCE_RANGE_MRAD` (e.g. "22 deg" = 384 mrad).
    """
    x = _convert(value, "mrad", name, "an angle", "'22 mrad'", "convergence_angle")
    low, high = CONVERGENCE_RANGE_MRAD
    if not (np.isfinite(x) and low <= x <= high):
        if np.isfinite(x) and 0 < x < low:
            fix = f"if it is in radians, give '{x:g} rad' ({x * 1e3:g} mrad)."
        else:
            fix = f"give it in mrad, e.g. {name}=22 or '22 mrad'."
        raise CalibrationError(
            f"{name}={value!r} is {x:.4g} mrad, outside the convergence semi-angles of STEM probes "
            f"({low:g} to {high:g} mrad, typically 10 to 40); {fix}",
            ("convergence_angle",),
        )
    return x


def scan_step_A(value, name: str = "scan_step") -> float:
    """Scan step in Å from a number (Å) or a string ("0.39 Å", "0.039 nm"), positive and finite."""
    x = _convert(value, "Å", name, "a length", "'0.39 Å' or '0.039 nm'", "scan_step")
    if not (np.isfinite(x) and x > 0):
        raise CalibrationError(
            f"{name}={value!r} must be a positive, finite length, e.g. {name}='0.39 Å'.", ("scan_step",)
        )
    return x


def detector_scale(value, name: str = "detector_sampling") -> tuple[float, str]:
    """(scale, units) of a detector pixel: a number is 1/Å; strings keep reciprocal or angular units.

    Raises
    ------
    CalibrationError
        If the value cannot be read, is neither an angle nor a reciprocal
        length, or is not positive (the message says so for negative values).
    """
    if isinstance(value, str):
        text = value.strip().replace("1/A", "1/Å").replace("1 / A", "1 / Å")
        try:
            quantity = ureg.Quantity(text)
        except _PINT_ERRORS as error:
            raise CalibrationError(
                f"{name}={value!r} could not be read ({error}); give an angle per pixel ('1 mrad') or a "
                "spatial frequency per pixel ('0.05 1/Å').",
                ("detector_sampling",),
            ) from None
        if quantity.dimensionless and not quantity.unitless:
            scale, units = float(quantity.to("mrad").magnitude), "mrad"
        else:
            scale, units = _reciprocal(quantity, value, name), "1 / Å"
    else:
        scale, units = _reciprocal(value, value, name), "1 / Å"
    if not np.isfinite(scale) or scale == 0:
        raise CalibrationError(
            f"{name}={value!r} must be a positive, finite pixel size, e.g. '1 mrad' or '0.05 1/Å'.",
            ("detector_sampling",),
        )
    if scale < 0:
        raise CalibrationError(
            f"{name}={value!r} is negative: a detector pixel size must be positive. Give the size without "
            f"the sign, e.g. {name}='{abs(scale):g} {units.replace(' ', '')}'; if the detector is mirrored, flip the "
            "patterns instead (e.g. s = s.isig[::-1, :]).",
            ("detector_sampling",),
        )
    return scale, units


def _reciprocal(quantity, shown, name: str) -> float:
    try:
        return to_magnitude(quantity, "1/Å", name)
    except (TypeError, ValueError):
        raise CalibrationError(
            f"{name}={shown!r} is neither an angle nor a spatial frequency; give an angle per pixel "
            "('1 mrad') or a spatial frequency per pixel ('0.05 1/Å', '0.5 1/nm').",
            ("detector_sampling",),
        ) from None


def check_bright_field_disk(
    semiangle_mrad: float,
    pixel_mrad: float,
    size: int,
    fix: str,
    parameters: tuple[str, ...] = ("convergence_angle", "detector_sampling"),
) -> None:
    """Refuse a convergence angle whose bright-field disk covers the whole detector.

    The disk's edge fixes the probe; when the disk reaches past the detector's
    corners no pixel lies outside it (usually a convergence angle or a
    detector sampling in the wrong unit). A disk cut by the detector's edges
    but not its corners is logged as a warning.

    Parameters
    ----------
    semiangle_mrad, pixel_mrad
        Convergence semi-angle and detector pixel size, mrad.
    size
        Detector pixels per side.
    fix
        How to set the two values in the caller's terms (end of the message).
    parameters
        The calibration items named in the error.

    Raises
    ------
    CalibrationError
        When the disk radius exceeds the half-diagonal of the detector.
    """
    edge = size / 2 * pixel_mrad
    corner = edge * np.sqrt(2.0)
    if semiangle_mrad > corner:
        raise CalibrationError(
            f"The convergence semi-angle ({semiangle_mrad:.4g} mrad) puts the bright-field disk beyond the "
            f"detector: it reaches {edge:.3g} mrad from the centre ({size // 2} pixels of {pixel_mrad:.3g} "
            f"mrad) and {corner:.3g} mrad in the corners, so no pixel lies outside the disk. The disk must "
            f"fit on the detector: check the convergence angle and the detector sampling ({fix}).",
            parameters,
        )
    if semiangle_mrad > edge:
        _log.warning(
            "The bright-field disk (%.4g mrad) is cut by the detector edge (%.3g mrad from the centre); "
            "only its parts in the corners show its rim. Check the convergence angle and the detector "
            "sampling if this is not expected.",
            semiangle_mrad,
            edge,
        )


def beam_wavelength(energy_keV: float) -> float:
    """Relativistic electron wavelength in Å for a beam energy in keV."""
    from ..physics.optics import electron_wavelength

    return float(electron_wavelength(float(energy_keV) * 1e3))


def _check_uniform(signal) -> None:
    for axis in signal.axes_manager._axes:
        if not axis.is_uniform:
            raise NotImplementedError(
                f"Axis '{axis.name}' is non-uniform; ptychography needs a regular scan and detector "
                "grid. Convert it with axis.convert_to_uniform_axis()."
            )


def _check_dimensions(signal) -> None:
    am = signal.axes_manager
    if am.signal_dimension != 2 or am.navigation_dimension != 2:
        raise ValueError(
            f"Ptychography needs 4D-STEM data with two scan (navigation) axes and two detector "
            f"(signal) axes; this signal has {am.navigation_dimension} navigation and "
            f"{am.signal_dimension} signal axes ({am.navigation_shape}|{am.signal_shape}). "
            "Use s.transpose(signal_axes=2) or reshape the data first."
        )
    kx, ky = am.signal_shape
    if kx != ky:
        raise ValueError(
            f"The diffraction patterns must be square, got {kx} x {ky} pixels; crop them around "
            f"the optic axis first, e.g. s.isig[{(kx - min(kx, ky)) // 2}:{(kx + min(kx, ky)) // 2}, "
            f"{(ky - min(kx, ky)) // 2}:{(ky + min(kx, ky)) // 2}]."
        )


def geometry_from_signal(
    signal,
    defocus: float | str = 0.0,
    scan_rotation: float | str = 0.0,
    aberrations: dict | None = None,
) -> Geometry:
    """The solver's :class:`Geometry` from a calibrated 4D-STEM signal.

    Parameters
    ----------
    signal
        4D-STEM signal, navigation axes (scan x, scan y), signal axes
        (detector kx, ky).
    defocus
        Defocus in Å (``-C10``, positive = underfocus) or a string ("20 nm").
    scan_rotation
        Scan rotation in degrees (counter-clockwise from the detector x axis)
        or a string ("2 deg", "35 mrad").
    aberrations
        Further aberration coefficients, ``{"C30": value}``, values in Å or
        strings ("1.2 mm").

    Raises
    ------
    UncalibratedError
        Listing every missing calibration and how to set it.
    """
    _check_dimensions(signal)
    _check_uniform(signal)
    problems, missing = [], []
    md = signal.metadata
    energy = md.get_item(f"{TEM_NODE}.beam_energy")
    semiangle = md.get_item(f"{TEM_NODE}.convergence_angle")
    if energy is None:
        missing.append("beam_energy")
        problems.append(
            "the beam energy is missing: s.set_experimental_parameters(beam_energy=300) (keV), "
            "or set metadata.Acquisition_instrument.TEM.beam_energy"
        )
    if semiangle is None:
        missing.append("convergence_angle")
        problems.append(
            "the convergence semi-angle is missing: s.set_experimental_parameters(convergence_angle=22) "
            "(mrad), or set metadata.Acquisition_instrument.TEM.convergence_angle"
        )
    # Values found in the metadata are checked as if given to set_experimental_parameters.
    energy = None if energy is None else _from_metadata(energy_keV, energy, "beam_energy")
    semiangle = (
        None if semiangle is None else _from_metadata(convergence_mrad, semiangle, "convergence_angle")
    )
    wavelength = beam_wavelength(energy) if energy is not None else None
    nav = signal.axes_manager.navigation_axes
    steps, failed = [], []
    for label, axis in zip(("scan x", "scan y"), nav, strict=True):
        try:
            steps.append(axis_length_scale(axis, "Å"))
        except UncalibratedError:
            failed.append(f"{label} (name {axis.name!r}, scale {axis.scale:g}, units {axis.units!r})")
    if failed:
        missing.append("scan_step")
        problems.append(
            "the scan step is not calibrated (navigation axes must be lengths: nm, Å, m): "
            + "; ".join(failed)
            + ". Set it with s.set_experimental_parameters(scan_step='0.39 Å')"
        )
    sampling, failed = [], []
    for label, axis in zip(("detector kx", "detector ky"), signal.axes_manager.signal_axes, strict=True):
        try:
            sampling.append(axis_reciprocal_scale(axis, wavelength))
        except UncalibratedError:
            if energy is None and parse_units(axis.units) is not None:
                continue  # angular axes need the energy, whose absence is reported above
            failed.append(f"{label} (name {axis.name!r}, scale {axis.scale:g}, units {axis.units!r})")
    if failed:
        missing.append("detector_sampling")
        problems.append(
            "the detector sampling is not calibrated (signal axes must be in 1/Å, 1/nm or mrad): "
            + "; ".join(failed)
            + ". Set it with s.set_experimental_parameters(detector_sampling='0.0508 1/Å') or "
            "detector_sampling='1 mrad'"
        )
    if problems:
        raise UncalibratedError(
            "The signal is not calibrated for ptychography:\n- "
            + "\n- ".join(problems)
            + "\nFor example: s.set_experimental_parameters(beam_energy=300, convergence_angle=22, "
            "scan_step='0.39 Å', detector_sampling='0.0508 1/Å')",
            missing=tuple(missing),
        )
    _check_axis_signs(signal, steps, sampling)
    if abs(sampling[0] - sampling[1]) > 1e-3 * max(sampling):
        raise ValueError(
            f"The detector axes have different pixel sizes ({sampling[0]:.5g} and {sampling[1]:.5g} 1/Å); "
            "the reconstruction needs square pixels: resample the patterns or set one detector_sampling."
        )
    _warn_off_centre(signal)
    shape = (nav[1].size, nav[0].size)  # (scan_y, scan_x)
    rotation = to_magnitude(scan_rotation, "deg", "scan_rotation")
    positions = Geometry.raster(shape, (steps[1], steps[0]), rotation)
    coefficients = {
        str(k): to_magnitude(v, "Å", f"aberrations[{k!r}]") for k, v in (aberrations or {}).items()
    }
    return Geometry(
        energy=energy * 1e3,
        semiangle=semiangle,
        reciprocal_sampling=float(np.mean(sampling)),
        scan_positions=positions,
        defocus=to_magnitude(defocus, "Å", "defocus"),
        aberrations=coefficients,
    )


def check_disk_on_detector(geometry: Geometry, size: int) -> None:
    """:func:`check_bright_field_disk` for a signal's geometry (``size`` detector pixels per side)."""
    wavelength = beam_wavelength(geometry.energy / 1e3)
    check_bright_field_disk(
        geometry.semiangle,
        geometry.reciprocal_sampling * wavelength * 1e3,
        size,
        "s.set_experimental_parameters(convergence_angle='22 mrad', detector_sampling='1 mrad')",
    )


def _from_metadata(reader, value, name: str) -> float:
    """A calibration value read from the metadata, with the call that corrects it named."""
    try:
        return reader(value, name)
    except CalibrationError as error:
        raise CalibrationError(
            f"The signal's metadata ({TEM_NODE}.{name}): {error} Correct it with "
            f"s.set_experimental_parameters({name}=...).",
            error.parameters,
        ) from None


def _check_axis_signs(signal, steps: list[float], sampling: list[float]) -> None:
    """Scan steps and detector pixels must be finite and non-zero, detector pixels positive."""
    nav, sig = signal.axes_manager.navigation_axes, signal.axes_manager.signal_axes
    for axis, step in zip(nav, steps, strict=True):
        if not np.isfinite(step) or step == 0:
            raise CalibrationError(
                f"The scan axis '{axis.name}' has the step {axis.scale!r} {axis.units}; set a positive "
                "scan step, e.g. s.set_experimental_parameters(scan_step='0.39 Å').",
                ("scan_step",),
            )
    for axis, value in zip(sig, sampling, strict=True):
        if not np.isfinite(value) or value <= 0:
            sign = "a negative" if np.isfinite(value) and value < 0 else "an invalid"
            raise CalibrationError(
                f"The detector axis '{axis.name}' has {sign} pixel size ({axis.scale!r} {axis.units}); a "
                "detector pixel size must be positive. Set it with "
                f"s.set_experimental_parameters(detector_sampling='{abs(axis.scale):g} {axis.units}') "
                "(flip the patterns, e.g. s.isig[::-1, :], if the detector is mirrored).",
                ("detector_sampling",),
            )


def raster_rotation(positions: np.ndarray) -> float:
    """Scan rotation in degrees of a raster from :meth:`Geometry.raster` (fast axis first step)."""
    positions = np.asarray(positions, dtype=np.float64)
    if positions.shape[0] < 2:
        return 0.0
    dy, dx = positions[1] - positions[0]
    return float(np.degrees(np.arctan2(dy, dx)))


def _warn_off_centre(signal) -> None:
    """Log a warning when the detector axes put the optic axis away from pixel N // 2."""
    for axis in signal.axes_manager.signal_axes:
        if axis.offset == 0:
            continue  # offset never set: nothing to compare
        centre = -axis.offset / axis.scale
        if abs(centre - axis.size // 2) > 0.5:
            _log.warning(
                "The calibration of detector axis '%s' puts k = 0 at pixel %.1f, but the reconstruction "
                "assumes the optic axis at pixel %d (N // 2); centre the patterns (e.g. shift them) "
                "if the direct beam is not there.",
                axis.name,
                centre,
                axis.size // 2,
            )


def set_experimental_parameters(
    signal,
    beam_energy: float | str | None = None,
    convergence_angle: float | str | None = None,
    scan_step: float | str | None = None,
    detector_sampling: float | str | None = None,
) -> None:
    """Set the calibration on ``signal`` in place (only what is given).

    The parameters are described in
    :meth:`app_extension.signals.ptychography.AppPtychography2D.set_experimental_parameters`,
    which calls this; this function also works on signals of other types.
    """
    # Everything is checked before anything is set.
    energy = None if beam_energy is None else energy_keV(beam_energy)
    angle = None if convergence_angle is None else convergence_mrad(convergence_angle)
    step = None if scan_step is None else scan_step_A(scan_step)
    pixel = None if detector_sampling is None else detector_scale(detector_sampling)
    if energy is not None:
        signal.metadata.set_item(f"{TEM_NODE}.beam_energy", energy)
    if angle is not None:
        signal.metadata.set_item(f"{TEM_NODE}.convergence_angle", angle)
    if step is not None:
        for axis in signal.axes_manager.navigation_axes:
            axis.scale, axis.units = step, "Å"
    if pixel is not None:
        scale, units = pixel
        for axis in signal.axes_manager.signal_axes:
            axis.scale, axis.units = scale, units
            axis.offset = -(axis.size // 2) * scale


#: The calibration items, and names for them from other packages.
_CALIBRATION_NAMES = {
    "beam_energy": "beam_energy",
    "convergence_angle": "convergence_angle",
    "scan_step": "scan_step",
    "detector_sampling": "detector_sampling",
    "energy": "beam_energy",
    "semiangle_cutoff": "convergence_angle",
    "semiangle": "convergence_angle",
}


def refuse_calibration_options(options, caller: str = "ptycho_app") -> None:
    """Refuse calibration items passed as reconstruction options, saying where they go.

    Raises
    ------
    UnknownOptionError
        Naming ``s.set_experimental_parameters(...)`` with the value given.
    """
    from ..solver.options import UnknownOptionError

    misplaced = [k for k in options if k in _CALIBRATION_NAMES]
    if misplaced:
        calls = ", ".join(f"{_CALIBRATION_NAMES[k]}={options[k]!r}" for k in misplaced)
        raise UnknownOptionError(
            f"{caller} got {misplaced}, which belong to the calibration, not to the reconstruction options. "
            f"Set the calibration first with s.set_experimental_parameters({calls}) (beam energy in keV, "
            f"convergence semi-angle in mrad), then call {caller}() without them."
        )
