"""Column metrology: 2D Gaussian fits of atomic columns, and perovskite displacements.

Workflow on a phase image (a ptycho_app result, its mean phase, or any
calibrated Signal2D):

1. The lattice, :class:`Lattice` (two vectors and an origin in Å), from the
   user or from the image's FFT (:func:`find_lattice`: the two strongest
   non-collinear spots, reduced to the primitive cell and refined by a
   least-squares fit to all indexed spots; the origin on the brightest column).
2. Seeds at the motif sites of every cell in view; each column is fitted with
   an elliptical 2D Gaussian on a planar local background, by
   ``scipy.optimize.least_squares``, in a disk around its seed. The fit is
   repeated with the fitted neighbours subtracted, so that their tails do not
   pull a column (:func:`fit_columns`).
3. For perovskites (A at (0, 0), B at (1/2, 1/2), O at (1/2, 0) and (0, 1/2)):
   the B-site position relative to the centre of its 4 A neighbours
   (d_A-B, e.g. d_Sr-TiO) and of its 4 O neighbours (d_O-B), per cell, with the
   mean and standard deviation over the cells in pm
   (:func:`perovskite_displacements`, :func:`perovskite_metrology`).

Positions are (x, y) in Å in the image's calibrated frame (the axes' offsets
and scales, converted to Å with pint); displacements are in pm.

The column table is a numpy structured array with fields ``site`` (motif
label), ``i``, ``j`` (cell indices), ``x``, ``y`` (Å), ``amplitude``,
``sigma_major``, ``sigma_minor`` (Å), ``angle`` (rad), ``background``,
``success`` (bool).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from ._signals import as_image

__all__ = [
    "Lattice",
    "PEROVSKITE_MOTIF",
    "find_lattice",
    "lattice_sites",
    "perovskite_cell",
    "refine_lattice",
    "fit_columns",
    "perovskite_displacements",
    "perovskite_metrology",
    "COLUMN_DTYPE",
]

#: Fractional (u, v) sites of an ABO3 perovskite along [001]; A at the origin.
PEROVSKITE_MOTIF = {"A": (0.0, 0.0), "B": (0.5, 0.5), "O1": (0.5, 0.0), "O2": (0.0, 0.5)}

COLUMN_DTYPE = np.dtype(
    [
        ("site", "U8"),
        ("i", "i4"),
        ("j", "i4"),
        ("x", "f8"),
        ("y", "f8"),
        ("amplitude", "f8"),
        ("sigma_major", "f8"),
        ("sigma_minor", "f8"),
        ("angle", "f8"),
        ("background", "f8"),
        ("success", "?"),
    ]
)


@dataclass
class Lattice:
    """A 2D lattice in Å: site (i, j) of the motif at ``origin + (i + u) a1 + (j + v) a2``.

    Attributes
    ----------
    a1, a2
        Lattice vectors (x, y) in Å.
    origin
        (x, y) in Å of the motif's origin (for a perovskite, an A-site column).
    """

    a1: tuple[float, float]
    a2: tuple[float, float]
    origin: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self):
        self.a1 = tuple(float(v) for v in np.ravel(self.a1))
        self.a2 = tuple(float(v) for v in np.ravel(self.a2))
        self.origin = tuple(float(v) for v in np.ravel(self.origin))
        if len(self.a1) != 2 or len(self.a2) != 2 or len(self.origin) != 2:
            raise ValueError("Lattice a1, a2 and origin must each be (x, y) in Å.")
        if abs(np.cross(self.a1, self.a2)) < 1e-6:
            raise ValueError(f"Lattice vectors a1={self.a1} and a2={self.a2} are collinear.")

    @property
    def matrix(self) -> np.ndarray:
        """2 x 2 matrix with a1 and a2 as columns."""
        return np.array([self.a1, self.a2]).T

    def position(self, i, j, u: float = 0.0, v: float = 0.0) -> np.ndarray:
        """(x, y) in Å of fractional site (u, v) of cell (i, j); broadcasts over i and j."""
        i = np.asarray(i, dtype=float)
        j = np.asarray(j, dtype=float)
        a1, a2 = np.asarray(self.a1), np.asarray(self.a2)
        return np.asarray(self.origin) + (i + u)[..., None] * a1 + (j + v)[..., None] * a2

    def fractional(self, xy) -> np.ndarray:
        """Fractional coordinates (i + u, j + v) of points (x, y) in Å."""
        return np.linalg.solve(self.matrix, (np.asarray(xy, float) - self.origin).T).T


# --------------------------------------------------------------------------- lattice from the FFT


def _spots(image: np.ndarray, pad: int = 4, kmin_px: float = 3.0):
    """Power spectrum (zero-padded, Hann-windowed) and its local maxima, strongest first."""
    from scipy.ndimage import maximum_filter

    h, w = image.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    size = (pad * h, pad * w)
    power = np.abs(np.fft.fftshift(np.fft.fft2((image - image.mean()) * win, s=size))) ** 2
    cy, cx = size[0] // 2, size[1] // 2
    peaks = (power == maximum_filter(power, size=2 * pad + 1)) & (power > 0)
    yy, xx = np.nonzero(peaks)
    fy, fx = (yy - cy) / size[0], (xx - cx) / size[1]  # cycles per pixel
    keep = np.hypot(fy * h, fx * w) >= kmin_px  # leave out the lowest frequencies (background)
    yy, xx, fy, fx = yy[keep], xx[keep], fy[keep], fx[keep]
    order = np.argsort(power[yy, xx])[::-1]
    return power, yy[order], xx[order], fy[order], fx[order]


def _refine_peak(power: np.ndarray, iy: int, ix: int) -> tuple[float, float]:
    """Sub-pixel peak by a parabola through the log power in each direction."""
    out = []
    for axis, i0 in ((0, iy), (1, ix)):
        idx = [iy, ix]
        vals = []
        for d in (-1, 0, 1):
            idx[axis] = (i0 + d) % power.shape[axis]
            vals.append(np.log(power[tuple(idx)] + 1e-300))
        den = vals[0] - 2 * vals[1] + vals[2]
        out.append(float(np.clip(0.5 * (vals[0] - vals[2]) / den, -0.5, 0.5)) if den < 0 else 0.0)
    return iy + out[0], ix + out[1]


def _gauss_reduce(b1: np.ndarray, b2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lagrange-Gauss reduction: the shortest basis of the 2D lattice spanned by b1, b2."""
    for _ in range(50):
        if b1 @ b1 > b2 @ b2:
            b1, b2 = b2, b1
        m = np.round((b1 @ b2) / (b1 @ b1))
        if m == 0:
            break
        b2 = b2 - m * b1
    return b1, b2


def _oriented(a1: np.ndarray, a2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same basis in a fixed orientation: a1 the more x-like vector, pointing to +x, and a
    right-handed pair (a1 x a2 > 0)."""
    if abs(a2[0]) > abs(a1[0]):
        a1, a2 = a2, a1
    if a1[0] < 0:
        a1 = -a1
    if np.cross(a1, a2) < 0:
        a2 = -a2
    return a1, a2


def find_lattice(
    image,
    sampling: float | None = None,
    origin=None,
    *,
    a_site=None,
    snr: float = 20.0,
) -> Lattice:
    """The lattice of an atomic-resolution image, from its FFT.

    Parameters
    ----------
    image
        A HyperSpy signal (result, mean phase, calibrated Signal2D) or a
        numpy image (then ``sampling`` in Å per pixel and ``origin``, the
        (y, x) of pixel [0, 0] in Å, are needed).
    a_site
        Optional (x, y) in Å near a column that should be the origin (for a
        perovskite: an A-site column). Default: the brightest column near the
        image centre.
    snr
        A spot must exceed ``snr`` times the median power to count.

    Returns
    -------
    Lattice
        Reduced (shortest) vectors, the first the more nearly along +x.

    Notes
    -----
    The two strongest non-collinear spots are taken first; if a spot lies at
    half of one of them or of their sum or difference (the primitive cell is
    larger than the one the strongest spots describe, as for a perovskite
    whose all-columns a/2 grid gives the strongest spots), the basis is
    reduced to it. The reciprocal basis is then fitted, by least squares, to
    all spots above ``snr`` that index within 0.15 of an integer.
    """
    img, x, y = as_image(image, sampling, origin if origin is not None else (0.0, 0.0))
    dx = float(x[1] - x[0])
    dy = float(y[1] - y[0])
    if not np.isclose(dx, dy, rtol=1e-3):
        raise ValueError(f"find_lattice needs square pixels, got {dx} x {dy} Å.")
    h, w = img.shape
    pad = 4
    power, yy, xx, fy, fx = _spots(img, pad)
    if yy.size < 2:
        raise ValueError("No lattice spots found in the image's FFT; give the lattice explicitly.")
    threshold = snr * np.median(power)
    strong = power[yy, xx] > threshold
    if strong.sum() < 2:
        raise ValueError(
            "Fewer than two lattice spots stand above the noise in the image's FFT; give the lattice "
            "explicitly with Lattice(a1, a2, origin)."
        )
    size = np.array(power.shape)
    centre = size // 2
    ref = np.array([_refine_peak(power, a, b) for a, b in zip(yy[strong], xx[strong], strict=True)])
    g_all = (ref[:, ::-1] - centre[::-1]) / (size[::-1] * dx)  # (gx, gy) in 1/Å
    g1 = g_all[0]
    g2 = None
    for g in g_all[1:]:
        cos = abs(g @ g1) / (np.linalg.norm(g) * np.linalg.norm(g1))
        if cos < np.cos(np.deg2rad(20)):
            g2 = g
            break
    if g2 is None:
        raise ValueError("The strongest FFT spots are all collinear; give the lattice explicitly.")

    def present(g) -> bool:
        d = np.linalg.norm(g_all - g, axis=1) * size[1] * dx  # in padded pixels
        return bool(np.any(d < 1.5 * pad / 2))

    for _ in range(3):
        changed = False
        for cand, new in ((g1 / 2, "g1"), (g2 / 2, "g2"), ((g1 + g2) / 2, "g2"), ((g1 - g2) / 2, "g2")):
            if present(cand) and np.linalg.norm(cand) * h * dx >= 1.5:
                if new == "g1":
                    g1 = cand
                else:
                    g2 = cand
                changed = True
                break
        g1, g2 = _gauss_reduce(g1, g2)
        if not changed:
            break
    # Least-squares refinement of the reciprocal basis on all strong spots that index.
    basis = np.array([g1, g2]).T
    hk = np.linalg.solve(basis, g_all.T).T
    ok = np.all(np.abs(hk - np.round(hk)) < 0.15, axis=1) & np.any(np.round(hk) != 0, axis=1)
    if ok.sum() >= 2:
        n = np.round(hk[ok])
        sol, *_ = np.linalg.lstsq(n, g_all[ok], rcond=None)
        g1, g2 = sol[0], sol[1]
    real = np.linalg.inv(np.array([g1, g2])).T  # rows: a1, a2 with a_i . g_j = delta_ij
    a1, a2 = real[0], real[1]
    a1, a2 = _oriented(*_gauss_reduce(a1, a2))
    lattice = Lattice(a1, a2, (0.0, 0.0))
    return _place_origin(img, x, y, lattice, a_site)


def _place_origin(img, x, y, lattice: Lattice, a_site) -> Lattice:
    """Put the lattice origin on a column: near ``a_site``, or the brightest near the centre."""
    if a_site is not None:
        start = np.asarray(a_site, dtype=float)
    else:
        from scipy.ndimage import gaussian_filter

        sm = gaussian_filter(img, 1.0)
        h, w = img.shape
        cy, cx = slice(h // 4, 3 * h // 4), slice(w // 4, 3 * w // 4)
        iy, ix = np.unravel_index(np.argmax(sm[cy, cx]), sm[cy, cx].shape)
        start = np.array([x[cx][ix], y[cy][iy]])
    spacing = min(np.linalg.norm(lattice.a1), np.linalg.norm(lattice.a2))
    fit = _fit_one(img, x, y, start, 0.25 * spacing)
    pos = np.array([fit[1], fit[2]]) if fit is not None else start
    return Lattice(lattice.a1, lattice.a2, tuple(pos))


# --------------------------------------------------------------------------- Gaussian fits


def _gaussian(params, xx, yy):
    amp, x0, y0, sa, sb, ang, b0, bx, by = params
    c, s = np.cos(ang), np.sin(ang)
    u = c * (xx - x0) + s * (yy - y0)
    v = -s * (xx - x0) + c * (yy - y0)
    return amp * np.exp(-0.5 * ((u / sa) ** 2 + (v / sb) ** 2)) + b0 + bx * (xx - x0) + by * (yy - y0)


def _fit_one(img, x, y, start, radius, sigma0=None, model_others=None):
    """Fit one column in a disk of ``radius`` around ``start``; returns the 9 parameters or None."""
    xx, yy = np.meshgrid(x, y)
    m = (xx - start[0]) ** 2 + (yy - start[1]) ** 2 <= radius**2
    if m.sum() < 12:
        return None
    data = img[m] if model_others is None else img[m] - model_others[m]
    px, py = xx[m], yy[m]
    step = float(abs(x[1] - x[0]))
    sigma0 = sigma0 or max(0.4 * radius, step)
    b0 = float(np.percentile(data, 10))
    amp0 = float(data.max() - b0)
    if amp0 <= 0:
        return None
    p0 = [amp0, start[0], start[1], sigma0, sigma0, 0.0, b0, 0.0, 0.0]
    lo = [
        0.0,
        start[0] - radius,
        start[1] - radius,
        0.3 * step,
        0.3 * step,
        -np.pi,
        -np.inf,
        -np.inf,
        -np.inf,
    ]
    hi = [np.inf, start[0] + radius, start[1] + radius, 2 * radius, 2 * radius, np.pi, np.inf, np.inf, np.inf]
    try:
        res = least_squares(
            lambda p: _gaussian(p, px, py) - data, p0, bounds=(lo, hi), x_scale="jac", xtol=1e-12, ftol=1e-12
        )
    except ValueError:
        return None
    p = res.x
    if not res.success:
        return None
    return p


def lattice_sites(lattice: Lattice, motif: dict, x: np.ndarray, y: np.ndarray, margin: float) -> list:
    """(label, i, j, (x, y)) of every motif site at least ``margin`` Å inside the image."""
    corners = np.array([[x[0], y[0]], [x[-1], y[0]], [x[0], y[-1]], [x[-1], y[-1]]])
    frac = lattice.fractional(corners)
    lo = np.floor(frac.min(axis=0)).astype(int) - 1
    hi = np.ceil(frac.max(axis=0)).astype(int) + 1
    sites = []
    for i in range(lo[0], hi[0] + 1):
        for j in range(lo[1], hi[1] + 1):
            for label, (u, v) in motif.items():
                p = lattice.position(i, j, u, v)
                if x[0] + margin <= p[0] <= x[-1] - margin and y[0] + margin <= p[1] <= y[-1] - margin:
                    sites.append((label, i, j, p))
    return sites


def fit_columns(
    image,
    lattice: Lattice | None = None,
    motif: dict | None = None,
    *,
    sampling: float | None = None,
    origin=(0.0, 0.0),
    radius: float | None = None,
    passes: int = 2,
    roi=None,
    a_site=None,
) -> np.ndarray:
    """Fit an elliptical 2D Gaussian (planar local background) to every column of a lattice.

    Parameters
    ----------
    image
        A HyperSpy signal (ptycho_app result: mean phase over slices; FPP
        result: its post-aligned mean phase; any calibrated Signal2D) or a
        numpy image with ``sampling`` (Å/px) and ``origin`` ((y, x) Å of pixel [0, 0]).
    lattice
        The lattice; ``None`` finds it from the FFT (:func:`find_lattice`).
    motif
        Label -> fractional (u, v) site in the cell; default
        :data:`PEROVSKITE_MOTIF`. Use ``{"col": (0, 0)}`` for one column per cell.
    radius
        Radius (Å) of the disk each column is fitted in; default 0.45 times
        the smallest distance between two sites.
    passes
        Fit passes; from the second on, the fitted neighbours are subtracted.
    roi
        Optional ((x_min, x_max), (y_min, y_max)) in Å: only columns inside.
    a_site
        With ``lattice=None``: (x, y) Å near the column to put at the origin.

    Returns
    -------
    numpy.ndarray
        Structured array (:data:`COLUMN_DTYPE`) in the image's frame, Å.
    """
    img, x, y = as_image(image, sampling, origin)
    motif = dict(PEROVSKITE_MOTIF if motif is None else motif)
    if lattice is None:
        lattice = find_lattice(img, float(x[1] - x[0]), (y[0], x[0]), a_site=a_site)
    fr = np.array(list(motif.values()))
    shifts = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)]
    dmin = min(
        np.linalg.norm(lattice.position(di, dj, *fr[b]) - lattice.position(0, 0, *fr[a]))
        for a in range(len(fr))
        for b in range(len(fr))
        for di, dj in shifts
        if not (a == b and di == 0 and dj == 0)
    )
    radius = float(radius or 0.45 * dmin)
    sites = lattice_sites(lattice, motif, x, y, margin=radius)
    if roi is not None:
        (x0, x1), (y0, y1) = roi
        sites = [s for s in sites if x0 <= s[3][0] <= x1 and y0 <= s[3][1] <= y1]
    if not sites:
        raise ValueError("No lattice site lies inside the image (or the roi); check the lattice and origin.")
    table = np.zeros(len(sites), dtype=COLUMN_DTYPE)
    params = [None] * len(sites)
    xx, yy = np.meshgrid(x, y)
    for p in range(max(1, passes)):
        model = None
        if p > 0:
            model = np.zeros_like(img)
            cache = []
            for q in params:
                if q is None:
                    cache.append(None)
                    continue
                g = q.copy()
                g[6:] = 0  # the peak only, not the local background
                m = (xx - q[1]) ** 2 + (yy - q[2]) ** 2 <= (3 * radius) ** 2
                contribution = _gaussian(g, xx[m], yy[m])
                model[m] += contribution
                cache.append((m, contribution))
        new = []
        for k, (_, _, _, seed) in enumerate(sites):
            start = seed if params[k] is None else params[k][1:3]
            others = None
            if model is not None:
                others = model.copy()
                if cache[k] is not None:
                    others[cache[k][0]] -= cache[k][1]
            new.append(_fit_one(img, x, y, np.asarray(start), radius, model_others=others))
        params = new
    for k, ((label, i, j, seed), q) in enumerate(zip(sites, params, strict=True)):
        row = table[k]
        row["site"], row["i"], row["j"] = label, i, j
        if q is None:
            row["x"], row["y"] = seed
            for f in ("amplitude", "sigma_major", "sigma_minor", "angle", "background"):
                row[f] = np.nan
            row["success"] = False
            continue
        sa, sb, ang = abs(q[3]), abs(q[4]), q[5]
        if sb > sa:
            sa, sb, ang = sb, sa, ang + np.pi / 2
        row["x"], row["y"] = q[1], q[2]
        row["amplitude"] = q[0]
        row["sigma_major"], row["sigma_minor"] = sa, sb
        row["angle"] = (ang + np.pi / 2) % np.pi - np.pi / 2
        row["background"] = q[6]
        row["success"] = True
    return table


def refine_lattice(columns: np.ndarray, lattice: Lattice, motif: dict | None = None) -> Lattice:
    """The lattice (vectors and origin) that best fits the fitted column positions (least squares)."""
    motif = dict(PEROVSKITE_MOTIF if motif is None else motif)
    ok = columns[columns["success"]]
    if len(ok) < 3:
        return lattice
    uv = np.array([motif[str(r["site"])] for r in ok])
    design = np.column_stack([np.ones(len(ok)), ok["i"] + uv[:, 0], ok["j"] + uv[:, 1]])
    sol, *_ = np.linalg.lstsq(design, np.column_stack([ok["x"], ok["y"]]), rcond=None)
    return Lattice(sol[1], sol[2], sol[0])


# --------------------------------------------------------------------------- perovskites


def _site_contrast(img, x, y, lattice: Lattice, motif: dict) -> np.ndarray:
    """Mean contrast (smoothed image minus its median) at the sites of each sublattice of ``motif``."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    sm = gaussian_filter(img, 1.0)
    level = np.median(sm)
    step = float(x[1] - x[0])
    out = []
    for u, v in motif.values():
        pts = [p for (_, _, _, p) in lattice_sites(lattice, {"s": (u, v)}, x, y, margin=0.5)]
        if not pts:
            out.append(-np.inf)
            continue
        pts = np.array(pts)
        coords = [(pts[:, 1] - y[0]) / step, (pts[:, 0] - x[0]) / step]
        out.append(float(np.mean(map_coordinates(sm, coords, order=1)) - level))
    return np.array(out)


def perovskite_cell(img, x, y, lattice: Lattice) -> Lattice:
    """The perovskite cell among the found lattice and its small supercells.

    In a phase image the A and B columns of a perovskite can look alike, so
    the FFT's strongest lattice is then the centred one (A and B, spacing
    a / sqrt 2) and the O spots that set the true cell are weak; in a
    distorted image one spot pair may be missed. Candidates are the lattice,
    each vector doubled, the 45-degree supercell and both doubled; the
    smallest whose four sublattices (A, B, O1, O2) all fall on columns
    (mean contrast of each above 15 % of the strongest's) is kept; origin
    unchanged, on an A or B column.
    """
    b1, b2 = np.asarray(lattice.a1), np.asarray(lattice.a2)
    o = lattice.origin
    # By cell area: the lattice, one vector doubled (a spot pair missed along one
    # direction), the 45-degree supercell (A and B alike), both doubled.
    candidates = [
        lattice,
        Lattice(2 * b1, b2, o),
        Lattice(b1, 2 * b2, o),
        Lattice(b1 + b2, b2 - b1, o),
        Lattice(2 * b1, 2 * b2, o),
    ]
    best = None
    for c in candidates:  # the smaller cell first
        contrast = _site_contrast(img, x, y, c, PEROVSKITE_MOTIF)
        if contrast.max() > 0 and contrast.min() > 0.15 * contrast.max():
            best = c
            break
    if best is None:
        scores = [_site_contrast(img, x, y, c, PEROVSKITE_MOTIF).min() for c in candidates]
        best = candidates[int(np.argmax(scores))]
    a1, a2 = _oriented(np.asarray(best.a1), np.asarray(best.a2))
    return Lattice(a1, a2, best.origin)


_CELL_DTYPE = np.dtype(
    [
        ("i", "i4"),
        ("j", "i4"),
        ("x", "f8"),
        ("y", "f8"),
        ("dA_x", "f8"),
        ("dA_y", "f8"),
        ("dA", "f8"),
        ("dO_x", "f8"),
        ("dO_y", "f8"),
        ("dO", "f8"),
    ]
)


def perovskite_displacements(columns: np.ndarray, a: str = "A", b: str = "B", o1: str = "O1", o2: str = "O2"):
    """Per-cell displacement of the B column from the centre of its 4 A and its 4 O neighbours.

    Parameters
    ----------
    columns
        A table from :func:`fit_columns` with the perovskite motif (B of cell
        (i, j) at (i + 1/2, j + 1/2); A at the cell corners; O1 at
        (i + 1/2, j), O2 at (i, j + 1/2)).
    a, b, o1, o2
        The motif labels.

    Returns
    -------
    cells : numpy.ndarray
        Structured array per cell with all 9 columns fitted: ``i``, ``j``, the
        B position ``x``, ``y`` (Å), and in pm ``dA_x``, ``dA_y``, ``dA``
        (= |d_A-B|, e.g. d_Sr-TiO), ``dO_x``, ``dO_y``, ``dO`` (|d_O-B|).
    summary : dict
        ``n_cells``, and for ``dA`` and ``dO``: ``mean`` and ``std`` of the
        magnitude over the cells (pm), ``mean_vector`` (x, y) and its norm
        ``norm_of_mean`` (pm).
    """
    ok = columns[columns["success"]]
    pos = {(str(r["site"]), int(r["i"]), int(r["j"])): np.array([r["x"], r["y"]]) for r in ok}
    rows = []
    for (label, i, j), pb in pos.items():
        if label != b:
            continue
        na = [(a, i + di, j + dj) for di in (0, 1) for dj in (0, 1)]
        no = [(o1, i, j), (o1, i, j + 1), (o2, i, j), (o2, i + 1, j)]
        if not all(k in pos for k in na + no):
            continue
        da = (pb - np.mean([pos[k] for k in na], axis=0)) * 100
        do = (pb - np.mean([pos[k] for k in no], axis=0)) * 100
        rows.append((i, j, pb[0], pb[1], da[0], da[1], np.hypot(*da), do[0], do[1], np.hypot(*do)))
    cells = np.array(rows, dtype=_CELL_DTYPE)
    summary = {"n_cells": int(len(cells)), "units": "pm"}
    for key in ("dA", "dO"):
        if len(cells):
            vec = np.array([cells[f"{key}_x"].mean(), cells[f"{key}_y"].mean()])
            summary[key] = {
                "mean": float(cells[key].mean()),
                "std": float(cells[key].std()),
                "mean_vector": vec.tolist(),
                "norm_of_mean": float(np.hypot(*vec)),
            }
        else:
            summary[key] = {
                "mean": np.nan,
                "std": np.nan,
                "mean_vector": [np.nan, np.nan],
                "norm_of_mean": np.nan,
            }
    return cells, summary


def _cell_map(cells: np.ndarray, key: str, lattice: Lattice, title: str):
    from hyperspy.signals import Signal2D

    i0, j0 = cells["i"].min(), cells["j"].min()
    data = np.full((cells["j"].max() - j0 + 1, cells["i"].max() - i0 + 1), np.nan)
    data[cells["j"] - j0, cells["i"] - i0] = cells[key]
    axes = [
        {"name": "j", "units": "cell", "scale": 1.0, "offset": float(j0), "size": data.shape[0]},
        {"name": "i", "units": "cell", "scale": 1.0, "offset": float(i0), "size": data.shape[1]},
    ]
    s = Signal2D(data, axes=axes)
    s.metadata.General.title = title
    s.metadata.Signal.quantity = f"{title} (pm)"
    return s


def perovskite_metrology(
    image,
    lattice: Lattice | None = None,
    *,
    a_site=None,
    sampling: float | None = None,
    origin=(0.0, 0.0),
    radius: float | None = None,
    roi=None,
    labels: tuple[str, str] = ("Sr", "TiO"),
) -> dict:
    """Column fits and d_A-B / d_O-B displacements of a perovskite [001] phase image.

    Parameters
    ----------
    image
        A ptycho_app result (mean phase over slices is used; for FPP the
        post-aligned mean phase), a mean-phase Signal2D, any calibrated
        Signal2D (axes in Å, nm, ...), or a numpy image with ``sampling``.
    lattice
        :class:`Lattice` with its origin on an A-site column; ``None`` finds
        it from the FFT (:func:`find_lattice`, then :func:`perovskite_cell`
        between it and its 45-degree supercell), with the origin on the column nearest ``a_site``
        ((x, y) Å) or, by default, on the brightest column near the centre.
        The A and B sites of a perovskite look alike in a phase image, so pass
        ``a_site`` (or the lattice) when it matters which is which.
    radius, roi
        See :func:`fit_columns`.
    labels
        Names of the A and B columns, for titles (``("Sr", "TiO")``).

    Returns
    -------
    dict
        ``columns`` (table of :func:`fit_columns`, Å), ``cells`` and
        ``summary`` (of :func:`perovskite_displacements`, pm), ``lattice``
        (refined by least squares on the fitted columns, :func:`refine_lattice`),
        and ``maps``: Signal2D maps over the cell indices of ``dA`` and
        ``dO`` (pm).
    """
    img, x, y = as_image(image, sampling, origin)
    if lattice is None:
        lattice = perovskite_cell(
            img, x, y, find_lattice(img, float(x[1] - x[0]), (y[0], x[0]), a_site=a_site)
        )
    columns = fit_columns(
        img,
        lattice,
        PEROVSKITE_MOTIF,
        sampling=float(x[1] - x[0]),
        origin=(y[0], x[0]),
        radius=radius,
        roi=roi,
    )
    lattice = refine_lattice(columns, lattice)
    cells, summary = perovskite_displacements(columns)
    maps = {}
    if len(cells):
        a_name, b_name = labels
        maps["dA"] = _cell_map(cells, "dA", lattice, f"|d {a_name}-{b_name}|")
        maps["dO"] = _cell_map(cells, "dO", lattice, f"|d O-{b_name}|")
    return {"columns": columns, "cells": cells, "summary": summary, "lattice": lattice, "maps": maps}
