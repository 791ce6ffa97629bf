"""The one data-preparation stage every front end calls: raw patterns in, solver inputs out.

:func:`prepare` takes the raw 4D-STEM patterns and what the microscope
recorded (:class:`RecordedCalibration`), measures what it did not record, and
returns :class:`PreparedData`: the patterns in the frame the solver expects,
a detector mask, the :class:`~app_extension.solver.config.Geometry` and a
:class:`~app_extension.measurements.report.CalibrationReport`.

The solver's frame: the optic axis at pixel ``N // 2`` of every pattern
(descan removed), detector axes parallel to the scan axes (rotation and
transpose undone), so that the object, the positions and the tilt come out in
the scan frame with x along the fast scan axis. Every pattern is resampled
with one affine map (shift + rotation + transpose, bilinear, bad pixels
filled first); the mask leaves out the bad pixels and the pixels the map
pulls in from outside the detector.

Passes over the data (each in chunks of scan rows, so a dask array is never
materialised as a whole): (1) per-pixel sum and variance, and block-averaged
patterns for the disk edge; (2) centre of mass and virtual bright-field
images; (3) the resampling into the solver's frame.

Each step can be switched off or given a value (:class:`PrepareOptions`);
with every step off the patterns pass through unchanged (today's behaviour).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..physics.optics import electron_wavelength
from ..solver.config import Geometry, check_beam_numbers
from .aberrations import decompose_parallax, parallax_map, sample_virtual_bf, virtual_bf_offsets
from .bad_pixels import fill_bad_pixels, fill_plan, find_bad_pixels
from .centre import DescanFit, disk_centres, fit_descan, mean_disk
from .disk import check_semiangle
from .orientation import centre_of_mass, rotation_from_com, scan_to_detector
from .report import CalibrationReport

__all__ = ["RecordedCalibration", "PrepareOptions", "PreparedData", "DetectorTransform", "prepare"]

_log = logging.getLogger(__name__)


@dataclass
class RecordedCalibration:
    """What the microscope recorded (nominal values).

    Parameters
    ----------
    energy
        Beam energy in eV.
    semiangle
        Nominal convergence semi-angle in mrad.
    scan_step
        Nominal scan step in Å, one value or (step_y, step_x).
    reciprocal_sampling
        Detector pixel size in 1/Å (see :meth:`from_mrad`).
    defocus
        Nominal defocus in Å (``-C10``, positive = underfocus).
    aberrations
        Further known polar aberrations in Å (``{"C30": ...}``), passed on.
    """

    energy: float
    semiangle: float
    scan_step: float | tuple[float, float]
    reciprocal_sampling: float
    defocus: float = 0.0
    aberrations: dict = field(default_factory=dict)

    def __post_init__(self):
        check_beam_numbers(self)
        step = np.broadcast_to(np.asarray(self.scan_step, dtype=np.float64), (2,))
        if not np.all(np.isfinite(step)) or np.any(step <= 0):
            raise ValueError(f"scan_step must be positive (Å), got {self.scan_step!r}.")
        self.scan_step = (float(step[0]), float(step[1]))

    @classmethod
    def from_mrad(cls, energy, semiangle, scan_step, pixel_mrad, defocus=0.0, aberrations=None):
        """Same, with the detector pixel given in mrad."""
        k = pixel_mrad * 1e-3 / electron_wavelength(energy)
        return cls(energy, semiangle, scan_step, k, defocus, dict(aberrations or {}))

    @property
    def wavelength(self) -> float:
        return electron_wavelength(self.energy)


@dataclass
class PrepareOptions:
    """Switches of the preparation steps; every step is on by default.

    Parameters
    ----------
    centre
        Measure the optic axis from the bright-field disk edge. A (row, col)
        tuple gives the axis (raw pixels, at the scan centre) instead.
    descan
        Fit a descan linear in the scan position (with ``centre``). A 2x2
        array ``d(row, col)/d(y, x)`` px/Å gives it instead.
    orientation
        Measure the scan rotation and transpose. ``rotation`` and
        ``transpose`` override the measured values.
    rotation
        Scan rotation in degrees (fast scan axis along (cos, sin) in the
        detector's (col, row) frame), or None to measure it.
    transpose
        Whether the raw detector is transposed, or None to measure it.
    semiangle_check
        Measure the convergence semi-angle from the disk radius and warn when
        it is more than ``semiangle_tolerance`` off the nominal one.
    use_measured_semiangle
        Give the solver the measured semi-angle instead of the nominal one.
    bad_pixels
        Detect hot, dead and noisy pixels.
    bad_pixel_mask
        User mask, bool (N, N), True = bad pixel (always used when given).
    bad_pixel_p_value
        False-alarm probability per pixel of the bad-pixel tests.
    aberrations
        Fit defocus and two-fold astigmatism from the bright-field parallax.
    thickness
        Specimen thickness guess in Å (e.g. ``num_slices * slice_thickness``):
        the parallax defocus refers to the specimen's middle, and is moved
        to its entrance surface by ``thickness / 2``. None: no correction.
    parallax_bin
        Detector binning (px) of the virtual bright-field images.
    resample_order
        Spline order of the resampling (1 = bilinear keeps the bad pixels local).
    chunk
        Scan rows read at a time.
    """

    centre: bool | tuple[float, float] = True
    descan: bool | np.ndarray = True
    orientation: bool = True
    rotation: float | None = None
    transpose: bool | None = None
    semiangle_check: bool = True
    semiangle_tolerance: float = 0.05
    use_measured_semiangle: bool = False
    bad_pixels: bool = True
    bad_pixel_mask: np.ndarray | None = None
    bad_pixel_p_value: float = 1e-5
    aberrations: bool = True
    thickness: float | None = None
    parallax_bin: float = 2.0
    resample_order: int = 1
    chunk: int = 8

    @classmethod
    def all_off(cls, **changes) -> PrepareOptions:
        """Every measurement off (the data pass through unless values are given)."""
        base = dict(
            centre=False,
            descan=False,
            orientation=False,
            semiangle_check=False,
            bad_pixels=False,
            aberrations=False,
        )
        base.update(changes)
        return cls(**base)


@dataclass
class DetectorTransform:
    """The affine map from the raw detector to the solver's frame, per scan position.

    ``raw = centre(p) + A @ (out - N // 2)`` for output pixel ``out`` (row, col),
    with ``centre(p)`` the descan fit at scan position ``p`` and ``A`` the
    rotation (and transpose) from the solver's frame to the raw detector.
    """

    n: int
    matrix: np.ndarray
    descan: DescanFit
    positions: np.ndarray
    bad: np.ndarray
    order: int = 1
    identity: bool = False
    _plan: list | None = None

    def __post_init__(self):
        self._plan = fill_plan(self.bad) if self.bad.any() else []

    def __call__(self, patterns: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """Patterns (B, N, N) of flat scan indices ``indices`` in the solver's frame (float32)."""
        patterns = np.asarray(patterns)
        if patterns.ndim != 3 or patterns.shape[-2:] != (self.n, self.n):
            raise ValueError(f"Expected a batch of (B, {self.n}, {self.n}) patterns, got {patterns.shape}.")
        filled = fill_bad_pixels(patterns, self.bad, self._plan) if self.bad.any() else patterns
        if self.identity:
            return np.asarray(filled, dtype=np.float32)
        centres = self.descan(self.positions[np.asarray(indices)])
        half = self.n // 2
        out = np.empty(patterns.shape, dtype=np.float32)
        for i, c in enumerate(centres):
            offset = c - self.matrix @ np.array([half, half], dtype=np.float64)
            out[i] = ndimage.affine_transform(
                filled[i].astype(np.float32, copy=False),
                self.matrix,
                offset=offset,
                order=self.order,
                mode="nearest",
                prefilter=self.order > 1,
            )
        return out

    def mask(self) -> np.ndarray:
        """bool (N, N) in the solver's frame, True = use: bad pixels and outside-detector pixels excluded."""
        n = self.n
        if self.identity:
            return ~self.bad
        half = n // 2
        rr, cc = np.mgrid[:n, :n].astype(np.float64)
        grid = np.stack([rr.ravel() - half, cc.ravel() - half])
        mapped = self.matrix @ grid  # (2, N*N) offsets from the centre
        centres = self.descan(self.positions)
        lo, hi = centres.min(axis=0), centres.max(axis=0)
        reach = self.order  # interpolation stencil reaches this far
        inside = np.ones(n * n, dtype=bool)
        for ax in range(2):
            inside &= mapped[ax] + lo[ax] >= 0
            inside &= mapped[ax] + hi[ax] <= n - 1
        good = inside.reshape(n, n)
        if self.bad.any():
            spread = int(np.ceil(np.abs(hi - lo).max())) + reach
            dil = ndimage.binary_dilation(self.bad, iterations=max(spread, 1))
            centre = self.descan.axis
            offset = centre - self.matrix @ np.array([half, half], dtype=np.float64)
            touched = ndimage.affine_transform(dil.astype(np.float32), self.matrix, offset=offset, order=1)
            good &= touched <= 0
        return good


@dataclass
class PreparedData:
    """What the solver needs, plus the report.

    Attributes
    ----------
    patterns
        float32 (P, N, N) in the solver's frame (see the module docstring).
    mask
        bool (N, N), True = pixel used by the loss.
    geometry
        The solver's :class:`Geometry` (scan positions in the scan frame when
        the patterns were rotated, fitted defocus and astigmatism).
    report
        :class:`CalibrationReport`.
    transform
        The per-batch map, ``transform(batch, indices)``, for streaming readers.
    scan_shape
        (scan_y, scan_x).
    """

    patterns: np.ndarray | None
    mask: np.ndarray
    geometry: Geometry
    report: CalibrationReport
    transform: DetectorTransform
    scan_shape: tuple[int, int]

    def filled_patterns(self) -> np.ndarray:
        """The patterns with masked pixels replaced by the mean of their unmasked neighbours.

        For a solver without a mask argument; with one, pass ``patterns`` and ``mask``.
        """
        if self.patterns is None:
            raise ValueError("The patterns were not materialised (prepare(..., materialise=False)).")
        if self.mask.all():
            return self.patterns
        return fill_bad_pixels(self.patterns, ~self.mask)


def _as_4d(patterns):
    shape = tuple(int(s) for s in patterns.shape)
    if len(shape) != 4:
        raise ValueError(
            f"prepare() needs 4D-STEM data (scan_y, scan_x, det_row, det_col); got shape {shape}. "
            "Reshape a (P, N, N) stack to the scan shape first."
        )
    if shape[2] != shape[3]:
        raise ValueError(
            f"The diffraction patterns must be square, got {shape[2]} x {shape[3]} pixels; crop them first."
        )
    return shape


def resample_into(out, patterns, transform, rows: int):
    """Fill ``out`` (P, N, N) with ``transform`` of the (scan_y, scan_x, N, N) patterns, ``rows`` scan
    rows at a time (numpy or dask; a memory-mapped ``out`` keeps lazy data out of memory).
    ``out=None``: a new float32 array in memory."""
    if out is None:
        sy, sx, n, _ = (int(v) for v in patterns.shape)
        out = np.empty((sy * sx, n, n), dtype=np.float32)
    for start, block in _chunks(patterns, rows):
        idx = np.arange(start, start + block.shape[0])
        out[idx] = transform(block, idx)
    return out


def _chunks(patterns, rows: int):
    """Yield (flat start index, float32 (B, N, N)) over blocks of scan rows."""
    sy, sx, n, _ = patterns.shape
    for r0 in range(0, sy, rows):
        block = patterns[r0 : r0 + rows]
        if hasattr(block, "compute") and not isinstance(block, np.ndarray):
            block = block.compute()
        block = np.asarray(block)
        if not np.issubdtype(block.dtype, np.number) or np.iscomplexobj(block):
            raise TypeError(f"Intensities must be real numbers, got dtype {block.dtype}.")
        block = block.astype(np.float32, copy=False).reshape(-1, n, n)
        if not np.isfinite(block).all():
            raise ValueError(
                f"The data contain NaN or infinite values (scan rows {r0}-{r0 + rows - 1}); replace them "
                "(e.g. with 0) before reconstructing."
            )
        if block.size and block.min() < 0:
            raise ValueError(
                f"The data contain negative intensities (minimum {float(block.min()):.3g}); subtract the "
                "dark reference and clip at zero, e.g. numpy.clip(data, 0, None)."
            )
        yield r0 * sx, block


def _block_size(scan_shape) -> int:
    return int(max(1, min(4, min(scan_shape) // 4)))


def prepare(
    patterns,
    recorded: RecordedCalibration,
    options: PrepareOptions | None = None,
    *,
    materialise: bool = True,
    **changes,
) -> PreparedData:
    """Measure the calibration from the data and put the patterns in the solver's frame.

    Parameters
    ----------
    patterns
        Raw 4D-STEM data (scan_y, scan_x, N, N), numpy or dask, any real dtype.
    recorded
        The recorded (nominal) calibration.
    options
        Step switches; keyword arguments override single fields
        (``prepare(data, cal, aberrations=False)``).
    materialise
        Resample all patterns now (``PreparedData.patterns``); False leaves
        that to ``PreparedData.transform`` batch by batch.

    Returns
    -------
    PreparedData
    """
    options = dataclasses.replace(options or PrepareOptions(), **changes)
    sy, sx, n, _ = _as_4d(patterns)
    scan_shape = (sy, sx)
    npos = sy * sx
    step = recorded.scan_step
    positions = Geometry.raster(scan_shape, step)
    wavelength = recorded.wavelength
    pixel_mrad = recorded.reciprocal_sampling * wavelength * 1e3
    report = CalibrationReport(
        semiangle_nominal_mrad=float(recorded.semiangle),
        semiangle_used_mrad=float(recorded.semiangle),
        defocus_nominal_A=float(recorded.defocus),
        defocus_A=float(recorded.defocus),
    )
    user_centre = options.centre if isinstance(options.centre, (tuple, list, np.ndarray)) else None
    user_descan = None if isinstance(options.descan, bool) else np.asarray(options.descan, dtype=float)
    measure_centre = user_centre is None and bool(options.centre)
    measure_orientation = bool(options.orientation) and (
        options.rotation is None or options.transpose is None
    )
    need_disk = measure_centre or options.semiangle_check or measure_orientation or options.aberrations
    report.steps = {
        "centre": bool(options.centre),
        "descan": bool(options.descan) if user_descan is None else True,
        "orientation": bool(options.orientation)
        or options.rotation is not None
        or options.transpose is not None,
        "semiangle_check": bool(options.semiangle_check),
        "bad_pixels": bool(options.bad_pixels) or options.bad_pixel_mask is not None,
        "aberrations": bool(options.aberrations),
    }
    timings = {}

    # ---- pass 1: per-pixel statistics and block-averaged patterns
    t0 = time.perf_counter()
    total = np.zeros((n, n))
    total_sq = np.zeros((n, n))
    b = _block_size(scan_shape)
    by, bx = sy // b, sx // b
    blocks = np.zeros((by * bx, n, n)) if need_disk else None
    for start, block in _chunks(patterns, options.chunk):
        total += block.sum(axis=0, dtype=np.float64)
        total_sq += np.einsum("bij,bij->ij", block, block, dtype=np.float64)
        if blocks is not None:
            idx = np.arange(start, start + block.shape[0])
            iy, ix = idx // sx, idx % sx
            keep = (iy < by * b) & (ix < bx * b)
            np.add.at(blocks, (iy[keep] // b) * bx + ix[keep] // b, block[keep])
    if total.sum() <= 0:
        raise ValueError("The data are all zero.")
    variance = np.maximum(total_sq / npos - (total / npos) ** 2, 0.0)
    timings["statistics"] = time.perf_counter() - t0

    # ---- bad pixels
    t0 = time.perf_counter()
    if options.bad_pixels or options.bad_pixel_mask is not None:
        if options.bad_pixels:
            bad, listing = find_bad_pixels(
                total, variance, options.bad_pixel_mask, p_value=options.bad_pixel_p_value
            )
        else:
            bad, listing = find_bad_pixels(total, None, options.bad_pixel_mask, p_value=0.0)
        report.bad_pixels = listing
        if bad.mean() > 0.01:
            report.warnings.append(
                f"{int(bad.sum())} bad pixels ({100 * bad.mean():.1f} % of the detector): check the detector "
                "or give bad_pixel_mask= and bad_pixels=False."
            )
    else:
        bad = np.zeros((n, n), dtype=bool)
    plan = fill_plan(bad) if bad.any() else []
    timings["bad_pixels"] = time.perf_counter() - t0

    # ---- disk: centre, descan, radius
    t0 = time.perf_counter()
    scan_centre = 0.5 * (positions.min(axis=0) + positions.max(axis=0))
    radius = None
    if need_disk:
        mean_pattern = fill_bad_pixels(total / npos, bad, plan) if bad.any() else total / npos
        guess, radius0, _, _ = mean_disk(mean_pattern)
        blocks /= b * b
        if bad.any():
            blocks = fill_bad_pixels(blocks, bad, plan)
        bpos = positions.reshape(sy, sx, 2)[: by * b, : bx * b].reshape(by, b, bx, b, 2).mean(axis=(1, 3))
        bpos = bpos.reshape(-1, 2)
        centres, radii, _ = disk_centres(blocks, guess, radius0)
        good = np.isfinite(radii)
        radius = float(np.median(radii[good])) if good.any() else radius0
        report.disk_radius_px = radius
        if measure_centre:
            fit = fit_descan(centres, bpos, linear=bool(options.descan) and len(bpos) >= 3)
            if user_descan is not None:
                fit = DescanFit(fit.axis, user_descan, fit.scan_centre)
            descan = fit
            report.centre_source = "measured"
            report.centre_scatter_px = fit.scatter
        else:
            descan = None
    else:
        descan = None
    if descan is None:
        axis = (
            np.asarray(user_centre, dtype=float)
            if user_centre is not None
            else np.array([n // 2, n // 2], float)
        )
        descan = DescanFit(axis, user_descan if user_descan is not None else np.zeros((2, 2)), scan_centre)
        report.centre_source = "user" if user_centre is not None else "off"
    if options.centre or user_centre is not None:
        report.centre_px = (float(descan.axis[0]), float(descan.axis[1]))
    if not np.allclose(descan.descan, 0) or user_descan is not None:
        report.descan_px_per_A = descan.descan.tolist()
    timings["centre"] = time.perf_counter() - t0

    # ---- convergence semi-angle
    semiangle = float(recorded.semiangle)
    if options.semiangle_check and radius is not None:
        measured, warning = check_semiangle(
            radius, pixel_mrad, recorded.semiangle, options.semiangle_tolerance
        )
        report.semiangle_mrad = measured
        report.semiangle_warning = warning
        if warning:
            report.warnings.append(warning)
        if options.use_measured_semiangle:
            semiangle = measured
    report.semiangle_used_mrad = semiangle

    # ---- pass 2: centre of mass and virtual bright-field images
    t0 = time.perf_counter()
    com_result = None
    parallax = None
    pfit = None
    if measure_orientation or options.aberrations:
        centres_all = descan(positions)
        com = np.zeros((npos, 2))
        bin_px = float(options.parallax_bin)
        offsets = virtual_bf_offsets(radius, bin_px)
        vbf = np.zeros((npos, len(offsets)), dtype=np.float32)
        for start, block in _chunks(patterns, options.chunk):
            if bad.any():
                block = fill_bad_pixels(block, bad, plan)
            sl = slice(start, start + block.shape[0])
            com[sl] = centre_of_mass(block, centres_all[sl])
            vbf[sl] = sample_virtual_bf(block, centres_all[sl], offsets, bin_px)
        timings["pass2"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if measure_orientation:
            com_result = rotation_from_com(com.reshape(sy, sx, 2), step)
            report.rotation_com_deg = com_result["rotation_deg"]
            report.com_curl_fraction = com_result["curl_fraction"]
        timings["com"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        expected = wavelength * max(abs(recorded.defocus), 1.0) * recorded.reciprocal_sampling / min(step)
        try:
            parallax = parallax_map(vbf.T.reshape(-1, sy, sx), offsets, bin_px, expected)
            sign = np.sign(recorded.defocus)
            if sign == 0 and com_result is not None:
                sign = 0.0
            pfit = decompose_parallax(
                parallax["M"],
                step,
                recorded.reciprocal_sampling,
                wavelength,
                defocus_sign=sign if sign != 0 else 1.0,
                transposed=options.transpose,
                rotation_deg=options.rotation,
            )
            if recorded.defocus == 0 and com_result is not None and com_result["confident_sign"]:
                # no nominal defocus sign: take the 180° choice from the COM field
                diff = (pfit.rotation_deg - com_result["rotation_deg"] + 180) % 360 - 180
                if abs(diff) > 90:
                    pfit = decompose_parallax(
                        parallax["M"],
                        step,
                        recorded.reciprocal_sampling,
                        wavelength,
                        -1.0,
                        options.transpose,
                        options.rotation,
                    )
            report.rotation_parallax_deg = pfit.rotation_deg
            report.parallax_rms_px = parallax["pair_rms_px"]
            report.parallax_pixels = int(len(offsets))
        except (ValueError, np.linalg.LinAlgError) as err:  # pragma: no cover - reported
            report.warnings.append(f"The parallax fit failed ({err}); aberrations and rotation not from it.")
            pfit = None
        timings["parallax"] = time.perf_counter() - t0

    # ---- orientation used
    rotation = options.rotation
    transposed = options.transpose
    if rotation is not None:
        report.rotation_source = "user"
    if transposed is not None:
        report.transposed_source = "user"
    if options.orientation:
        if rotation is None:
            if pfit is not None and pfit.definite:
                rotation, report.rotation_source = pfit.rotation_deg, "parallax"
            elif com_result is not None:
                rotation, report.rotation_source = com_result["rotation_deg"], "com"
                if not com_result["confident_sign"]:
                    report.warnings.append(
                        "The scan rotation comes from the COM field, whose 180° choice is uncertain here; "
                        "give rotation= if the reconstruction looks wrong."
                    )
        if transposed is None:
            if pfit is not None and pfit.definite:
                transposed, report.transposed_source = pfit.transposed, "parallax"
            elif com_result is not None:
                transposed, report.transposed_source = com_result["transposed"], "com"
        if com_result is not None and pfit is not None:
            if com_result["transposed"] != pfit.transposed:
                report.warnings.append(
                    "The COM field and the parallax disagree on the detector transpose "
                    f"(COM {com_result['transposed']}, parallax {pfit.transposed}); using "
                    f"{transposed} ({report.transposed_source})."
                )
            diff = (com_result["rotation_mod180_deg"] - pfit.rotation_deg + 90) % 180 - 90
            if abs(diff) > 5:
                report.warnings.append(
                    f"The COM field and the parallax disagree on the scan rotation by {abs(diff):.1f}° "
                    "(modulo 180°); the parallax value is used."
                )
    rotation = float(rotation or 0.0)
    transposed = bool(transposed or False)
    report.rotation_deg = rotation
    report.transposed = transposed

    # ---- aberrations used
    defocus = float(recorded.defocus)
    aberrations = dict(recorded.aberrations)
    if options.aberrations and pfit is not None:
        # re-decode with the orientation actually used (a user value may differ)
        pfit = decompose_parallax(
            parallax["M"],
            step,
            recorded.reciprocal_sampling,
            wavelength,
            np.sign(recorded.defocus) or 1.0,
            transposed,
            rotation,
        )
        report.defocus_parallax_A = pfit.defocus
        defocus = pfit.defocus + (0.5 * options.thickness if options.thickness else 0.0)
        report.defocus_source = "parallax" + (" + thickness/2" if options.thickness else "")
        if options.thickness:
            report.notes.append(
                f"parallax defocus {pfit.defocus:.1f} Å refers to the specimen's middle; "
                f"{0.5 * options.thickness:.1f} Å (half the given thickness) added for the entrance surface"
            )
        report.C12_A = pfit.C12
        report.phi12_rad = pfit.phi12
        report.phi12_detector_rad = float((pfit.phi12 + np.deg2rad(rotation) + np.pi / 2) % np.pi - np.pi / 2)
        aberrations.update({"C12": pfit.C12, "phi12": pfit.phi12})
    report.defocus_A = defocus

    # ---- pass 3: resample into the solver's frame
    t0 = time.perf_counter()
    identity = (
        np.allclose(descan.axis, n // 2)
        and np.allclose(descan.descan, 0)
        and rotation == 0.0
        and not transposed
    )
    frame_matrix = scan_to_detector(rotation)  # solver-frame (y, x) -> detector (y, x)
    matrix = frame_matrix[::-1] if transposed else frame_matrix  # raw (row, col) = P J out
    transform = DetectorTransform(
        n=n,
        matrix=matrix,
        descan=descan,
        positions=positions,
        bad=bad,
        order=int(options.resample_order),
        identity=bool(identity),
    )
    report.frame = "scan" if (rotation != 0.0 or transposed) else "detector"
    mask = transform.mask()
    report.masked_pixels = int((~mask).sum())
    out = None
    if materialise:
        out = resample_into(None, patterns, transform, options.chunk)
    timings["resample"] = time.perf_counter() - t0
    report.timings_s = {k: round(float(v), 4) for k, v in timings.items()}
    geometry = Geometry(
        energy=float(recorded.energy),
        semiangle=semiangle,
        reciprocal_sampling=float(recorded.reciprocal_sampling),
        scan_positions=positions,
        defocus=defocus,
        aberrations=aberrations,
    )
    return PreparedData(out, mask, geometry, report, transform, scan_shape)
