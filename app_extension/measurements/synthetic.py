"""Detector imperfections added to ideal simulated patterns, for tests and demos.

Scan rotation and probe aberrations belong in the simulation itself
(:func:`app_extension.simulate.simulate_tilted_crystal` takes ``scan_rotation``
and ``aberrations``); this module adds what the detector does afterwards:
an off-centre optic axis with a descan linear in the scan position, a
transpose, hot and dead pixels, and shot noise.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["corrupt_patterns"]


def corrupt_patterns(
    data: np.ndarray,
    positions: np.ndarray,
    axis: tuple[float, float] | None = None,
    descan: np.ndarray | None = None,
    transpose: bool = False,
    hot: list[tuple[int, int]] = (),
    dead: list[tuple[int, int]] = (),
    hot_level: float = 20.0,
    electrons: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Patterns as an imperfect detector would record them.

    Parameters
    ----------
    data
        Ideal patterns (scan_y, scan_x, N, N), optic axis at N // 2.
    positions
        (P, 2) scan positions (y, x) in Å, in the order of the patterns (for the descan).
    axis
        Optic axis (row, col) at the scan centre, in the recorded frame
        (after the transpose); None = N // 2.
    descan
        2x2 d(row, col)/d(y, x) px/Å of the axis, in the recorded frame.
    transpose
        Swap the detector axes (applied before the shift).
    hot, dead
        Pixel (row, col) lists in the recorded frame. Hot pixels get
        Poisson counts of ``hot_level`` times the mean pattern's maximum
        (or that level noiselessly without ``electrons``); dead ones 0.
    electrons
        Electrons per pattern for Poisson noise (None: noiseless).
    seed
        Random seed.

    Returns
    -------
    numpy.ndarray
        float32 (scan_y, scan_x, N, N).
    """
    sy, sx, n, _ = data.shape
    flat = np.asarray(data, dtype=np.float32).reshape(-1, n, n)
    if transpose:
        flat = flat.swapaxes(1, 2)
    positions = np.asarray(positions, dtype=np.float64)
    scan_centre = 0.5 * (positions.min(axis=0) + positions.max(axis=0))
    axis = (
        np.array([n // 2, n // 2], dtype=np.float64) if axis is None else np.asarray(axis, dtype=np.float64)
    )
    descan = np.zeros((2, 2)) if descan is None else np.asarray(descan, dtype=np.float64)
    centres = axis + (positions - scan_centre) @ descan.T
    out = np.empty_like(flat)
    for i, c in enumerate(centres):
        out[i] = ndimage.shift(flat[i], c - n // 2, order=1, mode="nearest")
    rng = np.random.default_rng(seed)
    if electrons is not None:
        scale = electrons / max(float(flat.sum(axis=(1, 2)).mean()), 1e-30)
        out = rng.poisson(out * scale).astype(np.float32)
    level = hot_level * float(out.mean(axis=0).max())
    for r, c in hot:
        out[:, r, c] = rng.poisson(level, size=out.shape[0]) if electrons is not None else level
    for r, c in dead:
        out[:, r, c] = 0.0
    return out.reshape(sy, sx, n, n)
