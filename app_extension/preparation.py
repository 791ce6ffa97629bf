"""The one data-preparation stage every front end calls before the solver.

:func:`prepare_data` takes the raw patterns (numpy, memmap or a lazy
signal's dask array) and the recorded calibration (a :class:`Geometry` read by
the front end from its own metadata), runs the measurements of
:mod:`app_extension.measurements` that :class:`CalibrationOptions` switches on,
and returns what :func:`app_extension.solver.engine.reconstruct` takes, plus
the calibration report. With ``calibrate=False`` the data pass through
untouched (today's behaviour and speed).

Lazy data stay out of memory: their patterns are resampled chunk by chunk into
a float32 memory-mapped file in a temporary folder, which the solver streams.
Under torchrun (several processes) rank 0 alone runs the measurements and sends
the result to the others. Lazy data: each rank's patterns are resampled lazily as
its share is read, so the other ranks read only their own positions; data in
memory, which every rank holds whole, are resampled by each rank with rank 0's
transform.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from .solver.config import CalibrationOptions, Geometry

__all__ = ["SolverInputs", "prepare_data"]

_log = logging.getLogger(__name__)


@dataclass
class SolverInputs:
    """What the solver takes, and what the preparation found."""

    patterns: object
    geometry: Geometry
    detector_mask: np.ndarray | None
    report: object | None  # measurements.CalibrationReport
    scan_rotation: float


def _raster_steps(geometry: Geometry, scan_shape: tuple[int, int]) -> tuple[float, float]:
    """(step_y, step_x) in Å of the geometry's raster (rotation-invariant)."""
    pos = np.asarray(geometry.scan_positions).reshape(scan_shape[0], scan_shape[1], 2)
    sx = float(np.linalg.norm(pos[0, 1] - pos[0, 0])) if scan_shape[1] > 1 else 1.0
    sy = float(np.linalg.norm(pos[1, 0] - pos[0, 0])) if scan_shape[0] > 1 else sx
    return sy, sx


def prepare_data(
    data,
    geometry: Geometry,
    scan_shape: tuple[int, int],
    calibration: CalibrationOptions,
    *,
    scan_rotation: float | None = None,
    thickness: float | None = None,
    device="cpu",
) -> SolverInputs:
    """Measure the calibration from the data and put the patterns in the solver's frame.

    Parameters
    ----------
    data
        Raw patterns (scan_y, scan_x, N, N), numpy or dask.
    geometry
        The recorded calibration as a :class:`Geometry`: energy, nominal
        semi-angle, detector sampling, the raster (with ``scan_rotation``
        applied when calibration is off), nominal defocus and aberrations.
    scan_shape
        (scan_y, scan_x).
    calibration
        Which steps run.
    scan_rotation
        A rotation the user gave (degrees, as ``Geometry.raster``), or None.
    thickness
        The thickness guess in Å (the parallax defocus refers to the
        specimen's middle).
    device
        The run's torch device: under torchrun the process group is joined
        for it (as the solver would) before the calibration stage, so that
        rank 0 alone measures.
    """
    if not calibration.calibrate:
        return SolverInputs(data, geometry, _user_mask(calibration), None, float(scan_rotation or 0.0))
    from .measurements import PrepareOptions, RecordedCalibration, prepare

    recorded = RecordedCalibration(
        energy=geometry.energy,
        semiangle=geometry.semiangle,
        scan_step=_raster_steps(geometry, scan_shape),
        reciprocal_sampling=geometry.reciprocal_sampling,
        defocus=geometry.defocus,
        aberrations=dict(geometry.aberrations),
    )
    options = PrepareOptions(
        centre=calibration.find_centre,
        descan=calibration.find_centre,
        orientation=calibration.find_orientation,
        rotation=scan_rotation,
        transpose=calibration.transpose,
        bad_pixels=calibration.find_bad_pixels,
        bad_pixel_mask=calibration.detector_mask,
        aberrations=calibration.fit_aberrations,
        use_measured_semiangle=calibration.use_measured_semiangle,
        thickness=thickness,
    )
    from .solver.distributed import from_environment, rank_and_size

    from_environment(device)  # under torchrun: join the process group before the calibration stage
    lazy = hasattr(data, "compute") and not isinstance(data, np.ndarray)
    rank, world = rank_and_size()
    if world > 1:
        # Several processes (torchrun): rank 0 measures, the others receive the result. Lazy data:
        # each rank resamples only the positions it reads (the solver streams its own share); data
        # in memory, which every rank holds whole: each rank resamples them with rank 0's transform.
        prepared = _measure_on_rank_zero(data, recorded, options, rank)
        if lazy:
            patterns = _resample_lazily(data, prepared.transform)
        else:
            from .measurements.stage import resample_into

            patterns = resample_into(None, data, prepared.transform, options.chunk)
    else:
        _check_values(data)  # NaN and negative counts: the solver's own clear errors, before any fit
        prepared = prepare(data, recorded, options, materialise=not lazy)
        patterns = prepared.patterns if not lazy else _resample_to_memmap(data, prepared)
    if rank == 0:
        for warning in prepared.report.warnings:
            _log.warning("%s", warning)
    rotation = prepared.report.rotation_deg
    return SolverInputs(
        patterns,
        prepared.geometry,
        prepared.mask,
        prepared.report,
        float(rotation) if rotation is not None else float(scan_rotation or 0.0),
    )


def _check_values(data) -> None:
    """NaN, negative and all-zero data: the solver's own chunk-wise checks, with no float copy."""
    from .solver.data import Patterns

    Patterns(data, None).check()


def _measure_on_rank_zero(data, recorded, options, rank: int):
    """The calibration stage on rank 0 only, its result (or its error) sent to every rank."""
    import torch.distributed as dist

    from .measurements import prepare

    box = [None]
    if rank == 0:
        try:
            _check_values(data)
            box = [prepare(data, recorded, options, materialise=False)]
        except Exception as error:  # every rank must raise it, not wait for a result forever
            box = [error]
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], Exception):
        raise box[0]
    return box[0]


def _resample_lazily(data, transform):
    """The lazy patterns mapped to the solver's frame chunk by chunk as they are read (dask)."""
    sy, sx, n, _ = (int(s) for s in data.shape)
    data = data.rechunk({2: -1, 3: -1})  # the transform needs whole patterns

    def block(patterns, block_info=None):
        (y0, y1), (x0, x1) = block_info[0]["array-location"][:2]
        index = (np.arange(y0, y1)[:, None] * sx + np.arange(x0, x1)[None, :]).reshape(-1)
        out = transform(np.asarray(patterns).reshape(-1, n, n), index)
        return out.reshape(y1 - y0, x1 - x0, n, n)

    return data.map_blocks(block, dtype=np.float32)


def _user_mask(calibration: CalibrationOptions) -> np.ndarray | None:
    return None if calibration.detector_mask is None else ~np.asarray(calibration.detector_mask, dtype=bool)


def _resample_to_memmap(data, prepared) -> np.memmap:
    """Resample lazy patterns chunk by chunk into a temporary float32 memory-mapped file."""
    from .measurements.stage import resample_into

    sy, sx, n, _ = (int(s) for s in data.shape)
    folder = tempfile.mkdtemp(prefix="app_extension_")
    path = os.path.join(folder, "patterns.f32")
    out = np.memmap(path, dtype=np.float32, mode="w+", shape=(sy * sx, n, n))
    rows = max(1, int(2**26 // max(1, sx * n * n * 4)))  # about 64 MB of output per block
    resample_into(out, data, prepared.transform, rows)
    out.flush()
    os.unlink(path)  # the mapping stays valid; the file goes when it is closed
    os.rmdir(folder)
    return out
