"""Hot, dead and noisy detector pixels from the per-pixel statistics over the scan.

A pixel is compared with its eight neighbours, not with a global level: the
mean pattern spans four decades between the bright-field disk and the far dark
field, so only a local comparison is fair everywhere. The test is:

* **hot**: the pixel's summed counts exceed ``ratio`` times its second-largest
  neighbour (so a pixel on a steep edge, like the bright-field disk's, never
  qualifies, while a pair of hot pixels still does), and are improbably high
  for a Poisson variable with the neighbours' median as mean;
* **dead**: the mirror image (below the second-smallest neighbour divided by
  ``ratio``, improbably low);
* **noisy**: the variance over the scan is ``variance_ratio`` times the
  neighbours' median variance and above the second-largest neighbour's.

"Poisson-aware" without knowing the detector gain: the scatter of
pixel-minus-neighbour-median is measured in bins of intensity and fitted by
``sigma^2 = g m + (rho m)^2`` (shot noise of gain ``g`` plus a relative
pattern-structure term ``rho``). The pixel is then tested as a Poisson count
with the same mean-to-variance ratio (``m_eff = m^2 / sigma^2``), so raw
counts, counts times a gain and noiseless floats are all handled.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, special

__all__ = ["find_bad_pixels", "fill_bad_pixels", "fill_plan", "neighbour_stack"]

_MEDIAN8_VARIANCE = np.pi / 16
_OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def neighbour_stack(image: np.ndarray) -> np.ndarray:
    """Eight neighbours of every pixel, shape (8, N, M).

    Inside the detector these are the 3 x 3 neighbours. A pixel on the
    detector's border is compared with its border neighbours instead (two on
    each side along the edge, each counted twice): the outermost row often
    differs systematically from the next one, so reflected inner neighbours
    would flag whole border rows.
    """
    padded = np.pad(image, 1, mode="reflect")
    n, m = image.shape
    stack = np.stack([padded[1 + dy : 1 + dy + n, 1 + dx : 1 + dx + m] for dy, dx in _OFFSETS])
    if n < 5 or m < 5:
        return stack
    line = np.pad(image, 2, mode="reflect")
    rows = [line[2, 2 + d : 2 + d + m] for d in (-2, -1, 1, 2)]  # along the first row
    stack[:, 0, :] = np.stack(rows * 2)
    rows = [line[2 + n - 1, 2 + d : 2 + d + m] for d in (-2, -1, 1, 2)]
    stack[:, -1, :] = np.stack(rows * 2)
    cols = [line[2 + d : 2 + d + n, 2] for d in (-2, -1, 1, 2)]
    stack[:, :, 0] = np.stack(cols * 2)
    cols = [line[2 + d : 2 + d + n, 2 + m - 1] for d in (-2, -1, 1, 2)]
    stack[:, :, -1] = np.stack(cols * 2)
    for r, c, dr, dc in ((0, 0, 1, 1), (0, m - 1, 1, -1), (n - 1, 0, -1, 1), (n - 1, m - 1, -1, -1)):
        corner = [image[r, c + dc], image[r, c + 2 * dc], image[r + dr, c], image[r + 2 * dr, c]]
        stack[:, r, c] = corner * 2
    return stack


def _noise_model(value: np.ndarray, reference: np.ndarray, bins: int = 24) -> tuple[float, float]:
    """Fit ``sigma^2 = g m + rho^2 m^2`` to the binned robust scatter of value - reference."""
    good = reference > 0
    m = reference[good]
    r = value[good] - m
    if m.size < 4 * bins:
        bins = max(1, m.size // 4)
    edges = np.unique(np.quantile(m, np.linspace(0, 1, bins + 1)))
    idx = np.clip(np.searchsorted(edges, m, side="right") - 1, 0, len(edges) - 2)
    mb, sb = [], []
    for b in range(len(edges) - 1):
        sel = idx == b
        if sel.sum() < 8:
            continue
        mad = 1.4826 * np.median(np.abs(r[sel] - np.median(r[sel])))
        if mad > 0:
            mb.append(np.median(m[sel]))
            sb.append(mad**2)
    if not mb:
        return 0.0, 1e-3
    mb, sb = np.array(mb), np.array(sb)
    a = np.stack([mb / sb, mb**2 / sb], axis=1)
    coef, _ = optimize.nnls(a, np.ones_like(mb))
    g, rho2 = float(coef[0]), float(coef[1])
    if g <= 0 and rho2 <= 0:
        rho2 = float(np.median(sb / mb**2))
    return g, float(np.sqrt(max(rho2, 1e-12)))


def find_bad_pixels(
    pixel_sum: np.ndarray,
    pixel_variance: np.ndarray | None = None,
    user_mask: np.ndarray | None = None,
    p_value: float = 1e-5,
    ratio: float = 1.5,
    variance_ratio: float = 25.0,
) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
    """Find hot, dead and noisy pixels; merge a user mask.

    Parameters
    ----------
    pixel_sum
        Sum over all scan positions of each detector pixel, (N, M).
    pixel_variance
        Variance over the scan of each pixel, (N, M), or None (no "noisy" test).
    user_mask
        Boolean (N, M), True = bad pixel to leave out (kind ``"user"``).
    p_value
        Per-pixel false-alarm probability of the Poisson tests (1e-5 gives
        about 0.2 false alarms on a 128 x 128 detector).
    ratio
        A hot pixel must exceed ``ratio`` times its second-largest neighbour, a
        dead one fall below 1 / ``ratio`` times its second-smallest one.
    variance_ratio
        Factor above the neighbours' median variance for a "noisy" pixel.

    Returns
    -------
    bad, listing
        ``bad``: bool (N, M), True = leave out. ``listing``: (row, col, kind)
        with kind "hot", "dead", "noisy" or "user", sorted by (row, col).
    """
    s = np.asarray(pixel_sum, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"pixel_sum must be 2D (detector rows, cols), got shape {s.shape}.")
    kinds = np.full(s.shape, "", dtype=object)
    neigh = np.sort(neighbour_stack(s), axis=0)
    med = 0.5 * (neigh[3] + neigh[4])
    g, rho = _noise_model(s, med)
    # The fit measured var(pixel - median of 8 neighbours); the neighbours' median
    # carries about pi / (2 * 8) = 0.19 of a pixel's own variance.
    var = (g * med + (rho * med) ** 2) / (1.0 + _MEDIAN8_VARIANCE)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(var > 0, med / var, 0.0)  # converts to effective Poisson counts
        m_eff = med * scale
        s_eff = s * scale
        p_high = np.where(s_eff > 0, special.gammainc(np.maximum(s_eff, 1e-300), m_eff), 1.0)
        p_low = special.gammaincc(s_eff + 1.0, m_eff)
    testable = med > 0
    hot = testable & (s > ratio * neigh[6]) & (p_high < p_value)
    dead = testable & (s * ratio < neigh[1]) & (p_low < p_value)
    kinds[hot] = "hot"
    kinds[dead] = "dead"
    if pixel_variance is not None:
        v = np.asarray(pixel_variance, dtype=np.float64)
        if v.shape != s.shape:
            raise ValueError(f"pixel_variance has shape {v.shape}, pixel_sum {s.shape}.")
        vn = np.sort(neighbour_stack(v), axis=0)
        vmed = 0.5 * (vn[3] + vn[4])
        noisy = (v > variance_ratio * vmed) & (v > vn[6]) & (vmed > 0) & (kinds == "")
        kinds[noisy] = "noisy"
    if user_mask is not None:
        um = np.asarray(user_mask)
        if um.shape != s.shape:
            raise ValueError(
                f"The bad-pixel mask has shape {um.shape} but the patterns are {s.shape}; give a boolean "
                "array of the detector's shape, True = bad pixel."
            )
        if um.dtype != bool:
            raise TypeError(
                f"The bad-pixel mask must be boolean (True = bad pixel), got dtype {um.dtype}; "
                "use mask.astype(bool) if 1 marks the bad pixels."
            )
        kinds[um & (kinds == "")] = "user"
    bad = kinds != ""
    listing = [(int(r), int(c), str(kinds[r, c])) for r, c in np.argwhere(bad)]
    return bad, listing


def fill_plan(bad: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Order in which to fill bad pixels: stages of (targets, sources, weights) as flat indices.

    Each stage fills the bad pixels that have at least one good (or already
    filled) neighbour with the mean of those neighbours, so clusters are
    filled from the outside in.
    """
    bad = np.asarray(bad, dtype=bool)
    n, m = bad.shape
    good = ~bad
    stages = []
    while not good.all():
        targets, sources, weights = [], [], []
        newly = []
        for r, c in np.argwhere(~good):
            nb = [
                (r + dy) * m + (c + dx)
                for dy, dx in _OFFSETS
                if 0 <= r + dy < n and 0 <= c + dx < m and good[r + dy, c + dx]
            ]
            if nb:
                targets.extend([r * m + c] * len(nb))
                sources.extend(nb)
                weights.extend([1.0 / len(nb)] * len(nb))
                newly.append((r, c))
        if not newly:
            break
        stages.append((np.array(targets), np.array(sources), np.array(weights, dtype=np.float32)))
        for r, c in newly:
            good[r, c] = True
    return stages


def fill_bad_pixels(patterns: np.ndarray, bad: np.ndarray, plan=None) -> np.ndarray:
    """Replace bad pixels with the mean of their good neighbours (in a float32 copy).

    Works on (..., N, M) stacks; ``plan`` is :func:`fill_plan` of ``bad``
    (computed if not given).
    """
    bad = np.asarray(bad, dtype=bool)
    out = np.array(patterns, dtype=np.float32, copy=True)
    if not bad.any():
        return out
    plan = fill_plan(bad) if plan is None else plan
    flat = out.reshape(-1, bad.size)
    for targets, sources, weights in plan:
        values = np.zeros((flat.shape[0], bad.size), dtype=np.float32)
        np.add.at(values, (slice(None), targets), flat[:, sources] * weights)
        unique = np.unique(targets)
        flat[:, unique] = values[:, unique]
    return out
