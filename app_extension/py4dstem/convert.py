"""Conversion between 4D HyperSpy signals and py4DSTEM ``DataCube`` objects.

Both hold 4D-STEM data as the same array, ``(scan_y, scan_x, ky, kx)`` in
HyperSpy's array order, which is ``(Rx, Ry, Qx, Qy)`` in py4DSTEM's naming: the
data are passed through unchanged (no transpose) and only the calibrations are
translated.

What is carried, and where it lives on each side:

======================  ===========================================  ==========================================
quantity                HyperSpy signal                              py4DSTEM DataCube
======================  ===========================================  ==========================================
scan step               navigation axes ``scale``/``units`` (Å, nm)  ``calibration`` R_pixel_size/_units
                                                                     ("A" or "nm")
detector sampling       signal axes ``scale``/``units``              ``calibration`` Q_pixel_size/_units
                        ("1 / Å" or "mrad")                          ("A^-1" or "mrad")
optic axis position     signal axes ``offset`` (0: unset)            ``calibration`` qx0_mean, qy0_mean (px)
beam energy             ``metadata.Acquisition_instrument.TEM        ``metadata["microscope"]["beam_energy_eV"]``
                        .beam_energy`` (keV)                         (py4DSTEM has no calibration key for it)
convergence angle       ``...TEM.convergence_angle`` (mrad)          ``calibration`` convergence_semiangle_mrad
scan rotation           ``...TEM.scan_rotation`` (degrees)           ``calibration`` QR_rotation_degrees
detector transpose      ``...TEM.detector_transposed`` (bool)        ``calibration`` QR_flip
scan origin             navigation axes ``offset``                   ``metadata["microscope"]["scan_offset_A"]``
title                   ``metadata.General.title``                   ``name``
======================  ===========================================  ==========================================

Not carried: HyperSpy's ``original_metadata`` and any other metadata
(they have no place in a DataCube), non-square pixels (py4DSTEM keeps one
size per space: a :class:`ValueError` says so), non-uniform axes, and
py4DSTEM's per-position calibrations (``qx0``/``qy0`` maps, ellipse, ...).

The rotation is py4DSTEM's ``QR_rotation``: the angle by which a detector
vector is turned counter-clockwise to give the scan direction it belongs to
(as ``BraggVectors`` applies it; ``QR_flip`` swaps the detector axes first).
It is the same number as the ``rotation`` of
:meth:`app_extension.solver.config.Geometry.raster`.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..units import parse_units, ureg
from . import require_py4dstem

__all__ = ["signal_to_datacube", "datacube_to_signal", "read_datacube_calibration", "DataCubeCalibration"]

# Where the HyperSpy side keeps what HyperSpy has no axis for.
TEM = "Acquisition_instrument.TEM"
ROTATION_KEY = f"{TEM}.scan_rotation"
TRANSPOSE_KEY = f"{TEM}.detector_transposed"
# The py4DSTEM side: a Metadata block attached to the DataCube (saved with it).
MICROSCOPE_MD = "microscope"


class DataCubeCalibration(dict):
    """The calibration of a DataCube in the solver's units (a plain dict).

    Keys: ``scan_step`` (Å), ``reciprocal_sampling`` (1/Å per px, or None),
    ``angular_sampling`` (mrad per px, or None), ``rotation_deg``, ``flip``,
    ``energy`` (eV or None), ``semiangle`` (mrad or None), ``R_units``, ``Q_units``.
    """


def _length_A(value: float, units) -> float:
    u = parse_units(units)
    if u is None:
        raise ValueError(f"units {units!r} are not a length")
    return float((value * u).to("Å").magnitude)


def read_datacube_calibration(
    datacube,
    energy: float | None = None,
    force_scan_sampling: float | None = None,
    force_angular_sampling: float | None = None,
    force_reciprocal_sampling: float | None = None,
) -> DataCubeCalibration:
    """Read a DataCube's calibration into the solver's units.

    Parameters
    ----------
    datacube
        A ``py4DSTEM.DataCube``.
    energy
        Beam energy in eV, used to convert between mrad and 1/Å; ``None``
        takes it from the DataCube's ``microscope`` metadata, if any.
    force_scan_sampling, force_angular_sampling, force_reciprocal_sampling
        Override the calibration (as py4DSTEM's ``preprocess`` does): scan step
        in Å, detector pixel in mrad, or detector pixel in 1/Å.

    Raises
    ------
    ValueError
        If the real-space or reciprocal-space calibration is missing or in
        pixels, with the py4DSTEM calls that set it.
    """
    from ..physics.optics import electron_wavelength

    cal = datacube.calibration
    r_units = cal.get_R_pixel_units()
    r_size = cal.get_R_pixel_size()
    if force_scan_sampling is not None:
        r_units, r_size = "A", float(force_scan_sampling)
    if r_units in (None, "pixels") or r_size is None:
        raise ValueError(
            f"The DataCube's real-space (scan) calibration is missing (R_pixel_units={r_units!r}). "
            "Set the scan step, e.g. datacube.calibration.set_R_pixel_size(0.39) and "
            "datacube.calibration.set_R_pixel_units('A')."
        )
    if r_units not in ("A", "nm"):
        raise ValueError(f"R_pixel_units must be 'A' or 'nm', got {r_units!r}.")
    scan_step = float(r_size) * (10.0 if r_units == "nm" else 1.0)
    if not (np.isfinite(scan_step) and scan_step > 0):
        source = "force_scan_sampling" if force_scan_sampling is not None else "the R pixel size"
        raise ValueError(
            f"{source} = {r_size!r} {r_units}: the scan step must be a positive number. Set it with "
            "datacube.calibration.set_R_pixel_size(0.39) (and set_R_pixel_units('A')), or "
            "preprocess(force_scan_sampling=0.39) (Å)."
        )

    if energy is None:
        energy = _metadata_value(datacube, "beam_energy_eV")
    q_units = cal.get_Q_pixel_units()
    q_size = cal.get_Q_pixel_size()
    if force_angular_sampling is not None and force_reciprocal_sampling is not None:
        raise ValueError("Give force_angular_sampling or force_reciprocal_sampling, not both.")
    if force_angular_sampling is not None:
        q_units, q_size = "mrad", float(force_angular_sampling)
    if force_reciprocal_sampling is not None:
        q_units, q_size = "A^-1", float(force_reciprocal_sampling)
    if q_units in (None, "pixels") or q_size is None:
        raise ValueError(
            f"The DataCube's detector calibration is missing (Q_pixel_units={q_units!r}). "
            "Set the detector sampling, e.g. datacube.calibration.set_Q_pixel_size(0.05) with "
            "set_Q_pixel_units('A^-1'), or set_Q_pixel_size(1.0) with set_Q_pixel_units('mrad')."
        )
    if not (np.isfinite(float(q_size)) and float(q_size) > 0):
        source = (
            "force_angular_sampling"
            if force_angular_sampling is not None
            else "force_reciprocal_sampling"
            if force_reciprocal_sampling is not None
            else "the Q pixel size"
        )
        sign = " (negative: give the size without the sign)" if float(q_size) < 0 else ""
        raise ValueError(
            f"{source} = {q_size!r} {q_units}: a detector pixel size must be positive{sign}. Set it with "
            "datacube.calibration.set_Q_pixel_size(...), or preprocess(force_angular_sampling=...) (mrad)."
        )
    wavelength = electron_wavelength(energy) if energy else None
    if q_units == "A^-1":
        reciprocal = float(q_size)
        angular = reciprocal * wavelength * 1e3 if wavelength else None
    elif q_units == "mrad":
        angular = float(q_size)
        reciprocal = angular * 1e-3 / wavelength if wavelength else None
    else:
        raise ValueError(f"Q_pixel_units must be 'A^-1' or 'mrad', got {q_units!r}.")
    rotation = cal.get_QR_rotation_degrees()
    flip = cal.get_QR_flip()
    semiangle = cal.get_convergence_semiangle_mrad()
    return DataCubeCalibration(
        scan_step=scan_step,
        reciprocal_sampling=reciprocal,
        angular_sampling=angular,
        rotation_deg=0.0 if rotation is None else float(rotation),
        flip=bool(flip) if flip is not None else False,
        energy=None if energy is None else float(energy),
        semiangle=None if semiangle is None else float(semiangle),
        R_units=r_units,
        Q_units=q_units,
    )


def _metadata_value(datacube, key: str):
    md = datacube.metadata.get(MICROSCOPE_MD) if isinstance(datacube.metadata, dict) else None
    if md is None:
        return None
    try:
        return md[key]
    except KeyError:
        return None


def _uniform_axis(axis, what: str):
    if not getattr(axis, "is_uniform", True):
        raise NotImplementedError(
            f"The {what} axis '{axis.name}' is non-uniform; py4DSTEM needs uniform axes."
        )


def _same_scale(a: float, b: float, what: str, fix: str) -> float:
    if not np.isclose(a, b, rtol=1e-6):
        raise ValueError(
            f"The two {what} axes have different steps ({a} and {b}); a py4DSTEM DataCube keeps one "
            f"pixel size per space. {fix}"
        )
    return float(a)


def signal_to_datacube(s, name: str | None = None):
    """A py4DSTEM ``DataCube`` with the data and calibration of a 4D HyperSpy signal.

    Parameters
    ----------
    s
        A 4D signal (two navigation and two signal axes), e.g. of signal type
        ``"ptychography"``. Lazy signals are computed.
    name
        The DataCube's name; default: the signal's title, or ``"datacube"``.

    Returns
    -------
    py4DSTEM.DataCube
        Same array, R pixel size in "A" (or "nm") and Q pixel size in "A^-1"
        (or "mrad"); energy, scan rotation and origin in the ``microscope``
        metadata, convergence angle, QR rotation and flip in the calibration.
        Uncalibrated axes stay in "pixels" (with a warning).

    Raises
    ------
    ValueError
        If the signal is not 4D or its pixels are not square.
    """
    py4DSTEM = require_py4dstem()
    from emdfile import Metadata

    if s.axes_manager.navigation_dimension != 2 or s.axes_manager.signal_dimension != 2:
        raise ValueError(
            f"Expected a 4D-STEM signal with 2 navigation and 2 signal axes, got "
            f"{s.axes_manager.navigation_dimension} and {s.axes_manager.signal_dimension}: "
            f"{s.axes_manager._get_dimension_str()}."
        )
    nav_x, nav_y = s.axes_manager.navigation_axes
    sig_x, sig_y = s.axes_manager.signal_axes
    for axis, what in ((nav_x, "scan"), (nav_y, "scan"), (sig_x, "detector"), (sig_y, "detector")):
        _uniform_axis(axis, what)
    data = np.asarray(s.data.compute() if s._lazy else s.data)
    title = s.metadata.get_item("General.title", "") or ""
    dc = py4DSTEM.DataCube(data=data, name=name or title or "datacube")
    cal = dc.calibration
    microscope = {}

    # Scan (real space).
    nav_units = parse_units(nav_x.units)
    if nav_units is None:
        warnings.warn(
            "The scan axes are not calibrated; the DataCube's R pixel units stay 'pixels'.", stacklevel=2
        )
    else:
        step_x = _length_A(nav_x.scale, nav_x.units)
        step_y = _length_A(nav_y.scale, nav_y.units)
        step = _same_scale(step_x, step_y, "scan", "Resample the scan to square pixels first.")
        if nav_units == ureg.nanometer:
            cal.set_R_pixel_size(step / 10.0)
            cal.set_R_pixel_units("nm")
        else:
            cal.set_R_pixel_size(step)
            cal.set_R_pixel_units("A")
        microscope["scan_offset_A"] = [
            _length_A(nav_y.offset, nav_y.units),
            _length_A(nav_x.offset, nav_x.units),
        ]

    # Detector (reciprocal space).
    sig_units = parse_units(sig_x.units)
    if sig_units is None:
        warnings.warn(
            "The detector axes are not calibrated; the DataCube's Q pixel units stay 'pixels'.", stacklevel=2
        )
    else:
        quantity = sig_x.scale * sig_units
        if quantity.dimensionality == (1 / ureg.meter).dimensionality:
            q_units, unit = "A^-1", "1/Å"
        elif quantity.dimensionless:
            q_units, unit = "mrad", "mrad"
        else:
            raise ValueError(
                f"The detector axes have units {sig_x.units!r}; use a reciprocal length ('1 / Å') or an angle "
                "('mrad')."
            )
        qx = float((sig_x.scale * parse_units(sig_x.units)).to(unit).magnitude)
        qy = float((sig_y.scale * parse_units(sig_y.units)).to(unit).magnitude)
        q = _same_scale(qx, qy, "detector", "Bin or resample the patterns to square pixels first.")
        cal.set_Q_pixel_size(q)
        cal.set_Q_pixel_units(q_units)
        # Optic axis: the pixel where the axis value is zero (py4DSTEM's origin, in pixels).
        # An offset of 0 usually means "never set", so the origin is then left unset.
        if sig_x.offset != 0 or sig_y.offset != 0:
            cal.set_qx0_mean(-sig_y.offset / sig_y.scale)
            cal.set_qy0_mean(-sig_x.offset / sig_x.scale)

    # Microscope parameters.
    energy_keV = s.metadata.get_item(f"{TEM}.beam_energy")
    if energy_keV is not None:
        microscope["beam_energy_eV"] = float(energy_keV) * 1e3
    convergence = s.metadata.get_item(f"{TEM}.convergence_angle")
    if convergence is not None:
        cal.set_convergence_semiangle_mrad(float(convergence))
    rotation = s.metadata.get_item(ROTATION_KEY)
    flip = s.metadata.get_item(TRANSPOSE_KEY)
    cal.set_QR_rotflip_degrees((0.0 if rotation is None else float(rotation), bool(flip)))
    if microscope:
        dc.metadata = Metadata(name=MICROSCOPE_MD, data=microscope)
    return dc


def datacube_to_signal(
    dc,
    beam_energy: float | None = None,
    convergence_angle: float | None = None,
    lazy: bool = False,
):
    """A 4D HyperSpy signal (signal type "ptychography") from a py4DSTEM ``DataCube``.

    Parameters
    ----------
    dc
        A ``py4DSTEM.DataCube``.
    beam_energy
        Beam energy in keV (HyperSpy's unit). Default: from the DataCube's
        ``microscope`` metadata (written by :func:`signal_to_datacube`), else unset.
    convergence_angle
        Convergence semi-angle in mrad. Default: the calibration's
        ``convergence_semiangle_mrad``, else unset.
    lazy
        Return a lazy signal wrapping the array.

    Returns
    -------
    hyperspy signal
        Navigation axes "x", "y" in Å (or nm), signal axes "kx", "ky" in "1 / Å"
        (or mrad), centred on the calibration's origin (``qx0_mean``,
        ``qy0_mean``; pixel N // 2 when unset). QR rotation and flip go to
        ``metadata.Acquisition_instrument.TEM.scan_rotation`` (degrees) and
        ``.detector_transposed``.
    """
    import hyperspy.api as hs

    if getattr(dc, "data", None) is None or np.ndim(dc.data) != 4:
        raise ValueError(f"Expected a 4D py4DSTEM DataCube, got {type(dc).__name__}.")
    if beam_energy is not None and beam_energy > 2000:
        raise ValueError(
            f"beam_energy={beam_energy} looks like eV; datacube_to_signal takes keV "
            f"(HyperSpy's unit), e.g. beam_energy={beam_energy / 1e3:g}."
        )
    data = dc.data
    if lazy:
        import dask.array as da

        s = hs.signals.Signal2D(da.from_array(data)).as_lazy()
    else:
        s = hs.signals.Signal2D(np.asarray(data))
    cal = dc.calibration
    nav_x, nav_y = s.axes_manager.navigation_axes
    sig_x, sig_y = s.axes_manager.signal_axes
    for axis, axis_name in ((nav_x, "x"), (nav_y, "y"), (sig_x, "kx"), (sig_y, "ky")):
        axis.name = axis_name

    r_units = cal.get_R_pixel_units()
    if r_units in ("A", "nm"):
        units = "Å" if r_units == "A" else "nm"
        for axis in (nav_x, nav_y):
            axis.scale = float(cal.get_R_pixel_size())
            axis.units = units
        offset = _metadata_value(dc, "scan_offset_A")
        if offset is not None:
            factor = 1.0 if r_units == "A" else 0.1
            nav_y.offset = float(offset[0]) * factor
            nav_x.offset = float(offset[1]) * factor
    else:
        warnings.warn(
            f"The DataCube's R pixel units are {r_units!r}; the scan axes are left uncalibrated.",
            stacklevel=2,
        )

    q_units = cal.get_Q_pixel_units()
    if q_units in ("A^-1", "mrad"):
        units = "1 / Å" if q_units == "A^-1" else "mrad"
        q = float(cal.get_Q_pixel_size())
        qx0 = cal.get_qx0_mean()
        qy0 = cal.get_qy0_mean()
        qx0 = data.shape[2] // 2 if qx0 is None else float(qx0)
        qy0 = data.shape[3] // 2 if qy0 is None else float(qy0)
        for axis, origin in ((sig_y, qx0), (sig_x, qy0)):
            axis.scale = q
            axis.units = units
            axis.offset = -origin * q
    else:
        warnings.warn(
            f"The DataCube's Q pixel units are {q_units!r}; the detector axes are left uncalibrated.",
            stacklevel=2,
        )

    if beam_energy is None:
        energy_eV = _metadata_value(dc, "beam_energy_eV")
        beam_energy = None if energy_eV is None else float(energy_eV) / 1e3
    if beam_energy is not None:
        s.metadata.set_item(f"{TEM}.beam_energy", float(beam_energy))
    if convergence_angle is None:
        convergence_angle = cal.get_convergence_semiangle_mrad()
    if convergence_angle is not None:
        s.metadata.set_item(f"{TEM}.convergence_angle", float(convergence_angle))
    rotation = cal.get_QR_rotation_degrees()
    flip = cal.get_QR_flip()
    if rotation is not None:
        s.metadata.set_item(ROTATION_KEY, float(rotation))
    if flip is not None:
        s.metadata.set_item(TRANSPOSE_KEY, bool(flip))
    s.metadata.General.title = dc.name or ""
    s.set_signal_type("ptychography")
    return s
