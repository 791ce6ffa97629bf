"""Information limit of a phase image: from its diffractogram, or by split-data FRC.

* :func:`information_limit`: the highest-frequency lattice spot of the
  diffractogram (power spectrum of the Hann-windowed image) that stands clearly
  above the noise background, as in the paper's Fig. 4. Only the points of the
  reciprocal lattice (given, or found from the image) are tested. The
  background at a frequency is the median power of the ring of that radius
  (spots fill only a small part of a ring); a spot counts when its peak power
  is at least ``snr`` times that (default 20: for noise alone, power/median
  exceeds 20 with probability 2**-20 per pixel). The limit is 1 / |g| of the
  spot, in Å.
* :func:`fourier_ring_correlation`: FRC of two reconstructions from halves
  of the data, with the resolution where it first drops below a threshold:
  the half-bit curve (van Heel & Schatz 2005; default, the criterion for two
  half data sets) or the fixed 1/7.
"""

from __future__ import annotations

import numpy as np

from ._signals import as_image

__all__ = ["diffractogram", "information_limit", "fourier_ring_correlation"]


def diffractogram(image: np.ndarray, pad: int = 2) -> np.ndarray:
    """Power spectrum (fftshift order) of the mean-subtracted, Hann-windowed image, zero-padded ``pad`` times."""
    h, w = image.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    f = np.fft.fft2((image - image.mean()) * win, s=(pad * h, pad * w))
    return np.abs(np.fft.fftshift(f)) ** 2


def information_limit(
    image,
    sampling: float | None = None,
    *,
    lattice=None,
    snr: float = 20.0,
    kmin: float = 0.15,
    pad: int = 2,
) -> dict:
    """Information limit (Å) from the diffractogram: the finest lattice spot clearly above the noise.

    Parameters
    ----------
    image
        A HyperSpy signal (a ptycho_app result: mean phase; any calibrated
        Signal2D) or a numpy image with ``sampling`` in Å per pixel.
    lattice
        The :class:`~app_extension.analysis.columns.Lattice` whose spots are
        tested; ``None`` finds it from the image
        (:func:`~app_extension.analysis.columns.find_lattice`). Only
        reciprocal-lattice points are tested, so the window's side lobes
        around strong spots do not count.
    snr
        A spot counts when its peak power (the maximum within one
        unpadded-pixel of the lattice point) is at least ``snr`` times the
        median power of its ring.
    kmin
        Frequencies below this (1/Å) are not tested.
    pad
        Zero-padding factor of the FFT (finer frequency sampling).

    Returns
    -------
    dict
        ``limit`` (Å, 1/|g| of the highest-frequency spot above ``snr``),
        ``frequency`` (1/Å), ``spot`` (h, k) indices and ``snr`` of that spot,
        and ``spots``: (K, 5) array of h, k, |g| (1/Å), snr and a 0/1 flag
        (above ``snr``) for every lattice point tested, by |g|. ``limit`` is
        NaN when no spot qualifies.
    """
    from .columns import find_lattice

    img, x, y = as_image(image, sampling)
    d = float(abs(x[1] - x[0]))
    if lattice is None:
        lattice = find_lattice(img, d, (y[0], x[0]))
    power = diffractogram(img, pad)
    ny, nx = power.shape
    fy = (np.arange(ny) - ny // 2) / (ny * d)
    fx = (np.arange(nx) - nx // 2) / (nx * d)
    k = np.hypot(fy[:, None], fx[None, :])
    dk = 1.0 / (max(ny, nx) * d)
    ring = np.round(k / dk).astype(int)
    order = np.argsort(ring.ravel())
    bounds = np.searchsorted(ring.ravel()[order], np.arange(ring.max() + 2))
    values = power.ravel()[order]
    medians = np.array(
        [
            np.median(values[bounds[r] : bounds[r + 1]]) if bounds[r + 1] > bounds[r] else np.inf
            for r in range(ring.max() + 1)
        ]
    )
    kmax = 0.5 / d  # inside the inscribed circle: full rings
    recip = np.linalg.inv(lattice.matrix).T  # columns: g1, g2 (x, y) in 1/Å
    gmin = min(np.linalg.norm(recip[:, 0]), np.linalg.norm(recip[:, 1]))
    nmax = int(np.ceil(kmax / gmin * 1.5)) + 1
    rows = []
    half = pad  # search radius: one unpadded pixel
    for h in range(-nmax, nmax + 1):
        for kk in range(-nmax, nmax + 1):
            g = recip @ np.array([h, kk], dtype=float)
            gn = float(np.hypot(*g))
            if not kmin <= gn <= kmax:
                continue
            # One of each +/- pair (the power spectrum of a real image is symmetric).
            if (h, kk) < (0, 0) and (-h, -kk) != (h, kk):
                continue
            ix = int(round(g[0] / (fx[1] - fx[0]))) + nx // 2
            iy = int(round(g[1] / (fy[1] - fy[0]))) + ny // 2
            patch = power[max(iy - half, 0) : iy + half + 1, max(ix - half, 0) : ix + half + 1]
            if patch.size == 0:
                continue
            ratio = float(patch.max() / max(medians[min(int(round(gn / dk)), medians.size - 1)], 1e-300))
            rows.append((h, kk, gn, ratio, float(ratio >= snr)))
    spots = np.array(sorted(rows, key=lambda r: r[2])) if rows else np.zeros((0, 5))
    good = spots[spots[:, 4] > 0] if len(spots) else spots
    if not len(good):
        return {"limit": np.nan, "frequency": np.nan, "spot": (0, 0), "snr": np.nan, "spots": spots}
    best = good[-1]
    return {
        "limit": float(1.0 / best[2]),
        "frequency": float(best[2]),
        "spot": (int(best[0]), int(best[1])),
        "snr": float(best[3]),
        "spots": spots,
    }


def _half_bit(n: np.ndarray) -> np.ndarray:
    root = np.sqrt(np.maximum(n, 1))
    return (0.2071 + 1.9102 / root) / (1.2071 + 0.9102 / root)


def fourier_ring_correlation(
    image1,
    image2,
    sampling: float | None = None,
    *,
    threshold: str | float = "half-bit",
    taper: float = 0.1,
) -> dict:
    """Fourier ring correlation of two independent reconstructions (e.g. of two halves of the scan data).

    Parameters
    ----------
    image1, image2
        Two phase images on the same grid (HyperSpy signals or numpy arrays
        with ``sampling`` in Å per pixel), reconstructed from disjoint halves
        of the data.
    threshold
        ``"half-bit"`` (default; the criterion for two half data sets),
        ``"1/7"``, or a number.
    taper
        Fraction of each edge tapered to zero by a cosine (edge artefacts).

    Returns
    -------
    dict
        ``frequency`` (1/Å, ring centres), ``frc``, ``threshold`` (curve),
        ``threshold_name``, and ``resolution`` (Å): 1 / the frequency where the
        FRC first falls below the threshold (linear interpolation; NaN if it
        never does up to Nyquist).
    """
    a, x, _ = as_image(image1, sampling)
    b, _, _ = as_image(image2, sampling)
    if a.shape != b.shape:
        raise ValueError(f"The two images must have the same shape, got {a.shape} and {b.shape}.")
    d = float(abs(x[1] - x[0]))
    h, w = a.shape

    def edge(n):
        t = np.ones(n)
        m = int(taper * n)
        if m < 1:
            return t
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(m) + 0.5) / m)
        t[:m], t[-m:] = ramp, ramp[::-1]
        return t

    win = np.outer(edge(h), edge(w))
    fa = np.fft.fftshift(np.fft.fft2((a - a.mean()) * win))
    fb = np.fft.fftshift(np.fft.fft2((b - b.mean()) * win))
    fy = (np.arange(h) - h // 2) / (h * d)
    fx = (np.arange(w) - w // 2) / (w * d)
    k = np.hypot(fy[:, None], fx[None, :])
    dk = 1.0 / (max(h, w) * d)
    ring = np.round(k / dk).astype(int)
    nr = int(0.5 / (d * dk))  # up to Nyquist
    num = np.bincount(ring.ravel(), (fa * fb.conj()).real.ravel(), minlength=nr + 1)[: nr + 1]
    pa = np.bincount(ring.ravel(), (np.abs(fa) ** 2).ravel(), minlength=nr + 1)[: nr + 1]
    pb = np.bincount(ring.ravel(), (np.abs(fb) ** 2).ravel(), minlength=nr + 1)[: nr + 1]
    count = np.bincount(ring.ravel(), minlength=nr + 1)[: nr + 1]
    frc = num / np.sqrt(np.maximum(pa * pb, 1e-300))
    freq = np.arange(nr + 1) * dk
    if isinstance(threshold, str):
        name = threshold.lower().replace("_", "-")
        if name in ("half-bit", "halfbit"):
            curve, name = _half_bit(count), "half-bit"
        elif name == "1/7":
            curve = np.full(freq.shape, 1 / 7)
        else:
            raise ValueError(f"threshold must be 'half-bit', '1/7' or a number, got {threshold!r}.")
    else:
        curve, name = np.full(freq.shape, float(threshold)), str(threshold)
    resolution = np.nan
    below = np.nonzero((frc < curve) & (np.arange(nr + 1) >= 1))[0]
    if below.size:
        i = int(below[0])
        if i >= 1:
            d0, d1 = frc[i - 1] - curve[i - 1], frc[i] - curve[i]
            f = freq[i - 1] + (freq[i] - freq[i - 1]) * d0 / (d0 - d1) if d0 != d1 else freq[i]
        else:
            f = freq[i]
        resolution = float(1.0 / f) if f > 0 else np.nan
    return {
        "frequency": freq,
        "frc": frc,
        "threshold": curve,
        "threshold_name": name,
        "resolution": resolution,
    }
