"""Centre of the bright-field disk, per pattern and as optic axis plus descan.

Why the disk *edge* and not the centre of mass: the specimen moves the
intensity inside and around the disk (that is the centre-of-mass / DPC
signal, and a mistilted crystal shifts the position-averaged pattern as a
whole), but it does not move the image of the condenser aperture. The optic
axis is the aperture image's centre, so it is measured from the edge:

1. the mean pattern gives a first centre and radius (threshold half-way
   between the disk level and the dark-field level, largest connected region,
   holes filled, centroid and equivalent radius);
2. in every pattern (lightly smoothed against shot noise), rays from the
   current centre are sampled across the edge; on each ray the edge is where
   the profile crosses half-way between its own inside and outside levels
   (local levels, so structure inside the disk and overlapping dark-field
   disks outside do not bias it); a least-squares circle through the edge
   points (outliers dropped) gives centre and radius; this is done twice;
3. the optic axis and a descan linear in the scan position are a robust
   least-squares fit to all the centres.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["mean_disk", "disk_centres", "fit_descan", "DescanFit"]


def mean_disk(mean_pattern: np.ndarray) -> tuple[np.ndarray, float, float, float]:
    """First estimate of the bright-field disk on the position-averaged pattern.

    Returns
    -------
    centre, radius, inside, outside
        Centre (row, col) px, radius px (from the area), and the disk's and
        the surroundings' median levels.
    """
    # the 3 x 3 median removes isolated hot pixels even when bad pixels were not masked
    img = ndimage.gaussian_filter(ndimage.median_filter(np.asarray(mean_pattern, dtype=np.float64), 3), 1.0)
    if not np.isfinite(img).all() or img.max() <= 0:
        raise ValueError("The mean diffraction pattern is empty or not finite; no bright-field disk to find.")
    threshold = 0.5 * img.max()
    inside = outside = None
    for _ in range(3):
        labels, count = ndimage.label(img > threshold)
        if count == 0:
            break
        sizes = ndimage.sum(np.ones_like(img), labels, index=np.arange(1, count + 1))
        region = ndimage.binary_fill_holes(labels == (1 + int(np.argmax(sizes))))
        ring = ndimage.binary_dilation(region, iterations=4) & ~ndimage.binary_dilation(region, iterations=2)
        inside = float(
            np.median(img[ndimage.binary_erosion(region, iterations=2)] if region.sum() > 30 else img[region])
        )
        outside = float(np.median(img[ring])) if ring.any() else 0.0
        threshold = 0.5 * (inside + outside)
    labels, count = ndimage.label(img > threshold)
    if count == 0:
        raise ValueError("No bright-field disk found in the mean pattern.")
    sizes = ndimage.sum(np.ones_like(img), labels, index=np.arange(1, count + 1))
    region = ndimage.binary_fill_holes(labels == (1 + int(np.argmax(sizes))))
    centre = np.array(ndimage.center_of_mass(region))
    radius = float(np.sqrt(region.sum() / np.pi))
    if radius < 3:
        raise ValueError(
            f"The bright-field disk is only {radius:.1f} px in radius; the centre and orientation cannot "
            "be measured. Switch the measurement steps off and give the calibration."
        )
    return centre, radius, inside, outside


def _fit_circle(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Algebraic (Kåsa) least-squares circle through (K, 2) points: centre, radius."""
    y, x = points[:, 0], points[:, 1]
    a = np.stack([2 * y, 2 * x, np.ones_like(y)], axis=1)
    b = y**2 + x**2
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    cy, cx, c = sol
    return np.array([cy, cx]), float(np.sqrt(max(c + cy**2 + cx**2, 0.0)))


def _edge_points(img: np.ndarray, centre: np.ndarray, radius: float, angles: np.ndarray, width: float):
    """Sub-pixel edge crossing on each ray; returns (K, 2) points (NaN where none)."""
    r = np.arange(radius - width, radius + width + 1e-9, 0.5)
    cos, sin = np.cos(angles), np.sin(angles)
    rows = centre[0] + sin[:, None] * r[None, :]
    cols = centre[1] + cos[:, None] * r[None, :]
    prof = ndimage.map_coordinates(img, [rows.ravel(), cols.ravel()], order=1, mode="nearest")
    prof = prof.reshape(angles.size, r.size)
    q = max(2, r.size // 4)
    inside = np.median(prof[:, :q], axis=1)
    outside = np.median(prof[:, -q:], axis=1)
    half = 0.5 * (inside + outside)
    above = prof >= half[:, None]
    contrast = inside - outside
    # the crossing: after the last sample above half-way (smoothing keeps noise from re-crossing)
    j = r.size - 1 - np.argmax(above[:, ::-1], axis=1)
    valid = (contrast > 0) & above[:, 0] & above.any(axis=1) & (j + 1 < r.size)
    j = np.minimum(j, r.size - 2)
    k = np.arange(angles.size)
    p0, p1 = prof[k, j], prof[k, j + 1]
    denom = np.where(p0 != p1, p0 - p1, 1.0)
    t = np.clip(np.where(p0 != p1, (p0 - half) / denom, 0.5), 0, 1)
    rr = r[j] + 0.5 * t
    out = np.stack([centre[0] + sin * rr, centre[1] + cos * rr], axis=1)
    out[~valid] = np.nan
    return out, contrast


def disk_centres(
    patterns: np.ndarray,
    guess: np.ndarray,
    radius: float,
    rays: int = 72,
    smooth: float = 0.5,
    width: float = 2.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sub-pixel centre and radius of the bright-field disk in every pattern.

    Parameters
    ----------
    patterns
        (B, N, M) patterns (bad pixels already filled). Averages of a few
        neighbouring scan positions (e.g. 4 x 4) beat the shot noise and the
        position-dependent interference at the edge, and move the edge by
        only the descan inside the block.
    guess
        First centre (row, col), e.g. from :func:`mean_disk`; (2,) or (B, 2).
    radius
        Disk radius in px from :func:`mean_disk`.
    rays
        Number of rays across the edge.
    smooth
        Gaussian smoothing (px) against shot noise; symmetric, so it does not
        move the edge.
    width
        Half-width (px) of the window across the edge in the final passes.
        Narrow, because the edges of the overlapping first-order disks lie a
        few pixels away and the local levels must not reach them (on the
        abTEM scan, widening it from 2 to 4 px moved the centre by 0.05 px).

    Returns
    -------
    centres, radii, quality
        (B, 2) centres (row, col), (B,) radii, (B,) fraction of rays used
        (NaN centre where the fit failed).
    """
    patterns = np.asarray(patterns, dtype=np.float32)
    guess = np.broadcast_to(np.asarray(guess, dtype=np.float64), (patterns.shape[0], 2))
    angles = np.linspace(0, 2 * np.pi, rays, endpoint=False)
    widths = (float(np.clip(0.3 * radius, width, 8.0)), width, width)
    centres = np.full((patterns.shape[0], 2), np.nan)
    radii = np.full(patterns.shape[0], np.nan)
    quality = np.zeros(patterns.shape[0])
    for i, pattern in enumerate(patterns):
        img = ndimage.gaussian_filter(pattern, smooth) if smooth > 0 else pattern
        c, rad = guess[i].copy(), float(radius)
        ok = None
        for w in widths:
            pts, _ = _edge_points(img, c, rad, angles, w)
            ok = np.isfinite(pts[:, 0])
            if ok.sum() < max(6, rays // 4):
                ok = None
                break
            c_new, r_new = _fit_circle(pts[ok])
            res = np.hypot(pts[ok, 0] - c_new[0], pts[ok, 1] - c_new[1]) - r_new
            mad = 1.4826 * np.median(np.abs(res - np.median(res))) + 1e-6
            keep = np.abs(res - np.median(res)) < 3 * mad + 0.25
            if keep.sum() >= 6:
                c_new, r_new = _fit_circle(pts[ok][keep])
            if not np.all(np.isfinite(c_new)) or np.hypot(*(c_new - c)) > max(w, 2.0):
                ok = None
                break
            c, rad = c_new, r_new
        if ok is not None:
            centres[i], radii[i], quality[i] = c, rad, ok.mean()
    return centres, radii, quality


class DescanFit:
    """Optic axis plus descan linear in the scan position.

    ``centre(p) = axis + descan @ (p - scan_centre)`` with ``p`` the scan
    positions (y, x) in Å and the result (row, col) in raw detector pixels.
    """

    def __init__(self, axis, descan, scan_centre, scatter: float = 0.0, used: int = 0):
        self.axis = np.asarray(axis, dtype=np.float64)
        self.descan = np.asarray(descan, dtype=np.float64).reshape(2, 2)
        self.scan_centre = np.asarray(scan_centre, dtype=np.float64)
        self.scatter = float(scatter)
        self.used = int(used)

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """Centres (row, col) at positions (P, 2) (y, x) Å."""
        d = np.asarray(positions, dtype=np.float64) - self.scan_centre
        return self.axis + d @ self.descan.T


def fit_descan(
    centres: np.ndarray, positions: np.ndarray, linear: bool = True, clip: float = 4.0
) -> DescanFit:
    """Robust least-squares fit of the optic axis (and descan) to per-pattern centres.

    Parameters
    ----------
    centres
        (P, 2) centres (row, col); NaN rows are ignored.
    positions
        (P, 2) scan positions (y, x) in Å.
    linear
        Fit the descan (False: constant centre only).
    clip
        Iteratively drop centres further than ``clip`` robust standard
        deviations from the fit.
    """
    centres = np.asarray(centres, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.float64)
    scan_centre = 0.5 * (positions.min(axis=0) + positions.max(axis=0))
    ok = np.all(np.isfinite(centres), axis=1)
    if ok.sum() < (3 if linear else 1):
        raise ValueError(
            f"Only {int(ok.sum())} pattern(s) gave a disk centre; cannot fit the optic axis. Give the "
            "centre yourself (centre=(row, col)) or switch the centre step off."
        )
    d = positions - scan_centre
    design = np.concatenate([np.ones((len(d), 1)), d], axis=1) if linear else np.ones((len(d), 1))
    keep = ok.copy()
    for _ in range(5):
        coef, *_ = np.linalg.lstsq(design[keep], centres[keep], rcond=None)
        res = centres - design @ coef
        dist = np.hypot(res[:, 0], res[:, 1])
        sigma = 1.4826 * np.median(dist[keep]) + 1e-9
        new = ok & (dist < clip * sigma)
        if np.array_equal(new, keep):
            break
        keep = new
    axis = coef[0]
    descan = coef[1:].T if linear else np.zeros((2, 2))
    scatter = float(np.sqrt(np.mean(dist[keep] ** 2)))
    return DescanFit(axis, descan, scan_centre, scatter, int(keep.sum()))
