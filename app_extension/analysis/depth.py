"""Depth profiles: the phase along the slices through a column, and where along the beam it peaks.

A multislice result holds the object as slices along the beam (navigation axis
``z``, scale = recovered slice thickness dz). The profile of a column is the
phase of each slice averaged over a small disk around the column; a dopant,
vacancy or interface shows as an excess (or deficit) in some slices.

Depths are those of the slice centres, ``(k + 0.5) dz`` below the entrance
plane of the reconstruction (slice ``k``, 0-based), so a feature in slice ``k``
is reported at its middle. The peak depth is the slice of the strongest excess
over the column's own mean, refined by a parabola through it and its two
neighbours when it is an interior local maximum.

:func:`column_profiles` is the numerical core (numpy); :func:`depth_profile`
takes and returns HyperSpy signals.
"""

from __future__ import annotations

import numpy as np

from ..units import angstrom_in
from ._signals import stack_from_signal

__all__ = ["column_profiles", "peak_depth", "depth_profile"]


def _as_positions(positions) -> np.ndarray:
    p = np.asarray(positions, dtype=np.float64)
    if p.ndim == 1:
        p = p[None]
    if p.ndim != 2 or p.shape[1] != 2 or not np.all(np.isfinite(p)):
        raise ValueError(f"positions must be (x, y) in Å or a list of them, got shape {np.shape(positions)}.")
    return p


def _refine(image: np.ndarray, x: np.ndarray, y: np.ndarray, pos: np.ndarray, radius: float) -> np.ndarray:
    """Move each (x, y) to the phase-weighted centroid of ``image`` within ``radius`` (twice)."""
    xx, yy = np.meshgrid(x, y)
    out = pos.copy()
    for k in range(len(out)):
        for _ in range(2):
            m = (xx - out[k, 0]) ** 2 + (yy - out[k, 1]) ** 2 < radius**2
            if m.sum() < 3:
                break
            w = image[m] - image[m].min()
            if w.sum() <= 0:
                break
            out[k] = (w * xx[m]).sum() / w.sum(), (w * yy[m]).sum() / w.sum()
    return out


def peak_depth(excess: np.ndarray, dz: float) -> tuple[float, int]:
    """Depth (Å, slice-centre convention) and slice index of the largest value of ``excess``.

    Sub-slice by a parabola through the peak and its two neighbours when the
    peak is an interior strict local maximum (shift limited to half a slice).
    """
    e = np.asarray(excess, dtype=np.float64)
    k = int(np.argmax(e))
    shift = 0.0
    if 0 < k < e.size - 1:
        curvature = e[k - 1] - 2 * e[k] + e[k + 1]
        if curvature < 0:
            shift = float(np.clip(0.5 * (e[k - 1] - e[k + 1]) / curvature, -0.5, 0.5))
    return (k + 0.5 + shift) * float(dz), k


def column_profiles(
    phase: np.ndarray,
    positions,
    *,
    x: np.ndarray,
    y: np.ndarray,
    dz: float,
    radius: float = 0.4,
    refine: float = 0.0,
    reference=None,
    lattice=None,
    reference_roi=None,
) -> dict:
    """Phase along the slices through columns, and the depth of each one's strongest excess.

    Parameters
    ----------
    phase
        Slices (S, H, W), e.g. the phase of a result.
    positions
        (x, y) in Å, or a list of them, in the frame of ``x``, ``y``.
    x, y
        Pixel-centre coordinates (Å) of the columns and rows of ``phase``.
    dz
        Slice thickness in Å.
    radius
        Radius (Å) of the disk the phase is averaged over.
    refine
        If > 0, first move each position to the phase-weighted centroid of
        the mean phase within this radius (Å): the column centre.
    reference
        What every column of the kind does with depth (channelling, probe
        spreading) is removed before the excess is taken, by subtracting a
        reference profile:

        * None: no reference (the excess over the column's own mean);
        * positions (x, y) of equivalent columns without the feature (e.g.
          undoped columns of the same kind): their mean profile;
        * ``"lattice"``: for each position, the median profile of its
          lattice-equivalent columns ``p + i a1 + j a2`` of ``lattice`` inside
          ``reference_roi``, leaving out those within 1 Å of any of the
          positions asked for. The median is not moved by a few other
          dopants among them.
    lattice
        A :class:`~app_extension.analysis.columns.Lattice` (only ``a1`` and
        ``a2`` are used), for ``reference="lattice"``: the translations that
        map a column onto equivalent ones. For a perovskite, the cell of
        :func:`~app_extension.analysis.perovskite_metrology` (its
        ``"lattice"``), not a centred sub-lattice that maps A onto B columns.
    reference_roi
        ((x_min, x_max), (y_min, y_max)) in Å: where reference columns are
        taken. Give the scanned field: outside it a reconstruction is poor.
        None: the image less a margin of one lattice period.

    Returns
    -------
    dict
        ``depth`` (S,) slice-centre depths in Å; ``profile`` (K, S) mean phase
        in the disk per slice (rad); ``excess`` (K, S) profile minus its mean
        over the slices (after the reference is subtracted); ``peak_depth``
        (K,) in Å and ``peak_index`` (K,); ``positions`` (K, 2) used (x, y) Å.
    """
    phase = np.asarray(phase, dtype=np.float64)
    if phase.ndim == 2:
        phase = phase[None]
    if phase.ndim != 3:
        raise ValueError(f"phase must be (slices, y, x), got shape {phase.shape}.")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.size != phase.shape[2] or y.size != phase.shape[1]:
        raise ValueError(f"x ({x.size}) and y ({y.size}) must match the slices' shape {phase.shape[1:]}.")
    if not dz > 0:
        raise ValueError(f"dz must be a positive slice thickness in Å, got {dz!r}.")
    pos = _as_positions(positions)
    mean = phase.mean(axis=0) if refine > 0 else None  # the image column centres are refined on
    if refine > 0:
        pos = _refine(mean, x, y, pos, refine)
    xx, yy = np.meshgrid(x, y)

    def disk_profiles(points: np.ndarray) -> np.ndarray:
        out = np.empty((len(points), phase.shape[0]))
        for k, (px, py) in enumerate(points):
            m = (xx - px) ** 2 + (yy - py) ** 2 <= radius**2
            if not m.any():
                raise ValueError(
                    f"No pixel within radius={radius} Å of ({px:.3f}, {py:.3f}) Å; the position is outside "
                    f"the image (x {x[0]:.2f}..{x[-1]:.2f}, y {y[0]:.2f}..{y[-1]:.2f} Å) or the radius is "
                    "smaller than a pixel."
                )
            out[k] = phase[:, m].mean(axis=1)
        return out

    profile = disk_profiles(pos)
    relative = profile
    references = None
    if isinstance(reference, str):
        if reference != "lattice":
            raise ValueError(f"reference must be None, positions or 'lattice', got {reference!r}.")
        if lattice is None:
            raise ValueError("reference='lattice' needs lattice= (a Lattice; see perovskite_metrology).")
        references = _equivalent_sites(pos, lattice, x, y, reference_roi)
        relative = profile.copy()
        for k, sites in enumerate(references):
            if len(sites) == 0:
                raise ValueError(
                    f"No lattice-equivalent column of ({pos[k, 0]:.2f}, {pos[k, 1]:.2f}) Å lies inside "
                    "reference_roi; widen it or give reference positions."
                )
            if refine > 0:
                sites = _refine(mean, x, y, sites, refine)
                references[k] = sites
            relative[k] = profile[k] - np.median(disk_profiles(sites), axis=0)
    elif reference is not None:
        ref = _as_positions(reference)
        if refine > 0:
            ref = _refine(mean, x, y, ref, refine)
        relative = profile - disk_profiles(ref).mean(axis=0)
    excess = relative - relative.mean(axis=1, keepdims=True)
    peaks = [peak_depth(e, dz) for e in excess]
    return {
        "depth": (np.arange(phase.shape[0]) + 0.5) * float(dz),
        "profile": profile,
        "excess": excess,
        "peak_depth": np.array([p[0] for p in peaks]),
        "peak_index": np.array([p[1] for p in peaks], dtype=int),
        "positions": pos,
        "reference_positions": references,
    }


def _equivalent_sites(pos: np.ndarray, lattice, x, y, roi) -> list[np.ndarray]:
    """For each position, its lattice translates inside ``roi``, away (> 1 Å) from every position."""
    a1 = np.asarray(lattice.a1, dtype=np.float64)
    a2 = np.asarray(lattice.a2, dtype=np.float64)
    if roi is None:
        margin = max(np.hypot(*a1), np.hypot(*a2))
        roi = ((x.min() + margin, x.max() - margin), (y.min() + margin, y.max() - margin))
    (x0, x1), (y0, y1) = roi
    span = np.hypot(x1 - x0, y1 - y0)
    n = int(np.ceil(span / min(np.hypot(*a1), np.hypot(*a2)))) + 1
    i, j = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
    shifts = i.reshape(-1, 1) * a1 + j.reshape(-1, 1) * a2
    out = []
    for p in pos:
        sites = p + shifts
        inside = (sites[:, 0] >= x0) & (sites[:, 0] <= x1) & (sites[:, 1] >= y0) & (sites[:, 1] <= y1)
        far = np.min(np.hypot(*(sites[:, None, :] - pos[None, :, :]).transpose(2, 0, 1)), axis=1) > 1.0
        out.append(sites[inside & far])
    return out


def depth_profile(
    result,
    positions,
    radius: float = 0.4,
    units: str = "Å",
    refine: float = 0.0,
    reference=None,
    lattice=None,
    reference_roi=None,
):
    """Depth profile(s) of a multislice result through one or more columns.

    Parameters
    ----------
    result
        A ptycho_app result (:class:`~hyperspy.signals.ComplexSignal2D`,
        navigation axis ``z`` = slices, scale = slice thickness), or a real
        Signal2D stack of phase slices with a calibrated ``z`` axis. Lateral
        axes in any length unit.
    positions
        (x, y) in Å, or a list of them, in the result's lateral frame.
    radius
        Radius (Å) of the disk the phase is averaged over.
    units
        Units of the depth axis and of the returned peak depths ("Å", "nm", ...).
    refine, reference, lattice, reference_roi
        See :func:`column_profiles`. ``reference="lattice"`` with the
        result's lattice and the scanned field as ``reference_roi`` gives the
        excess over the column's equivalents (what a dopant adds), rather
        than over its own mean.

    Returns
    -------
    profile : hyperspy.signals.Signal1D
        Phase (rad) per slice, signal axis ``z`` = depth of the slice centres
        in ``units`` (offset dz / 2, scale dz); one navigation index per
        position. ``metadata.Signal.Depth_profile`` holds the positions (Å),
        the radius, the excess over each column's mean and the peak depths.
    peak_depths : float or numpy.ndarray
        Depth (in ``units``) of the strongest excess over each column's mean
        (a float for one position, an array for a list).
    """
    from hyperspy.signals import Signal1D

    phase, x, y, dz = stack_from_signal(result)
    if dz is None or phase.shape[0] < 2:
        raise ValueError(
            "The signal has no depth axis: pass a ptycho_app result (navigation axis z = slices) or "
            "a stack of slices with a calibrated z axis."
        )
    factor = angstrom_in(units, "units")
    core = column_profiles(
        phase,
        positions,
        x=x,
        y=y,
        dz=dz,
        radius=radius,
        refine=refine,
        reference=reference,
        lattice=lattice,
        reference_roi=reference_roi,
    )
    single = np.ndim(positions) == 1
    data = core["profile"][0] if single else core["profile"]
    axes = []
    if not single:
        axes.append(
            {"name": "column", "units": "", "scale": 1, "offset": 0, "size": data.shape[0], "navigate": True}
        )
    axes.append(
        {
            "name": "z",
            "units": units,
            "scale": dz * factor,
            "offset": 0.5 * dz * factor,
            "size": phase.shape[0],
            "navigate": False,
        }
    )
    signal = Signal1D(data, axes=axes)
    signal.metadata.General.title = "Depth profile"
    signal.metadata.Signal.quantity = "Phase (rad)"
    peaks = core["peak_depth"] * factor
    signal.metadata.set_item(
        "Signal.Depth_profile",
        {
            "positions": core["positions"],
            "positions_units": "Å",
            "radius": float(radius),
            "radius_units": "Å",
            "excess": core["excess"][0] if single else core["excess"],
            "peak_depth": peaks,
            "peak_depth_units": units,
            "peak_index": core["peak_index"],
            "reference": "none"
            if reference is None
            else ("lattice" if isinstance(reference, str) else "positions"),
        },
    )
    return signal, (float(peaks[0]) if single else peaks)
