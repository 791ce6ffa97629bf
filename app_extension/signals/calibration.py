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

from ..solver.config import Geometry
from ..units import (
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
    "raster_rotation",
    "TEM_NODE",
]

_log = logging.getLogger(__name__)

TEM_NODE = "Acquisition_instrument.TEM"


def _energy_keV(value, name: str = "beam_energy") -> float:
    """Beam energy in keV from a number (keV), "300 keV", "300 kV" or "300000 eV"."""
    if isinstance(value, str):
        quantity = ureg.Quantity(value.strip())
        if quantity.check("[electric_potential]"):
            quantity = quantity * ureg.elementary_charge
        return to_magnitude(quantity, "keV", name)
    return to_magnitude(value, "keV", name)


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
    problems = []
    md = signal.metadata
    energy = md.get_item(f"{TEM_NODE}.beam_energy")
    semiangle = md.get_item(f"{TEM_NODE}.convergence_angle")
    if energy is None:
        problems.append(
            "the beam energy is missing: s.set_experimental_parameters(beam_energy=300) (keV), "
            "or set metadata.Acquisition_instrument.TEM.beam_energy"
        )
    if semiangle is None:
        problems.append(
            "the convergence semi-angle is missing: s.set_experimental_parameters(convergence_angle=22) "
            "(mrad), or set metadata.Acquisition_instrument.TEM.convergence_angle"
        )
    wavelength = beam_wavelength(_energy_keV(energy)) if energy is not None else None
    nav = signal.axes_manager.navigation_axes
    steps, failed = [], []
    for label, axis in zip(("scan x", "scan y"), nav, strict=True):
        try:
            steps.append(axis_length_scale(axis, "Å"))
        except UncalibratedError:
            failed.append(f"{label} (name {axis.name!r}, scale {axis.scale:g}, units {axis.units!r})")
    if failed:
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
            "scan_step='0.39 Å', detector_sampling='0.0508 1/Å')"
        )
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
        energy=_energy_keV(energy) * 1e3,
        semiangle=to_magnitude(semiangle, "mrad", "convergence_angle"),
        reciprocal_sampling=float(np.mean(sampling)),
        scan_positions=positions,
        defocus=to_magnitude(defocus, "Å", "defocus"),
        aberrations=coefficients,
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
    if beam_energy is not None:
        signal.metadata.set_item(f"{TEM_NODE}.beam_energy", _energy_keV(beam_energy))
    if convergence_angle is not None:
        signal.metadata.set_item(
            f"{TEM_NODE}.convergence_angle", to_magnitude(convergence_angle, "mrad", "convergence_angle")
        )
    if scan_step is not None:
        step = to_magnitude(scan_step, "Å", "scan_step")
        if step <= 0:
            raise ValueError(f"scan_step must be positive, got {scan_step!r}.")
        for axis in signal.axes_manager.navigation_axes:
            axis.scale, axis.units = step, "Å"
    if detector_sampling is not None:
        scale, units = _detector_scale(detector_sampling)
        for axis in signal.axes_manager.signal_axes:
            axis.scale, axis.units = scale, units
            axis.offset = -(axis.size // 2) * scale


def _detector_scale(value) -> tuple[float, str]:
    """(scale, units) of a detector pixel: a number is 1/Å; strings keep reciprocal or angular units."""
    if isinstance(value, str):
        quantity = ureg.Quantity(value.strip().replace("1/A", "1/Å").replace("1 / A", "1 / Å"))
        if quantity.dimensionless and not quantity.unitless:
            return float(quantity.to("mrad").magnitude), "mrad"
        return to_magnitude(quantity, "1/Å", "detector_sampling"), "1 / Å"
    scale = to_magnitude(value, "1/Å", "detector_sampling")
    if scale <= 0:
        raise ValueError(f"detector_sampling must be positive, got {value!r}.")
    return scale, "1 / Å"
