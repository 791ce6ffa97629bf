"""Extended APP: the specimen tilt as a smooth field over the scan.

With ``tilt_map=True`` the tilt is not one (theta_x, theta_y) pair but a field
over the scanned area, held as control points on a coarse regular grid
(:class:`TiltGrid`) and interpolated bilinearly to every probe position. The
control points are what is learned (``ReconstructionState.tilt_grid``, (K, 2)
mrad, K = rows x cols); the per-position tilt (P, 2) is derived from them
(:func:`interpolate`), so neighbouring positions are consistent by
construction and a batch only moves the control points its positions touch
(:class:`SparseAdam`, whose moments and step counts advance only for those).

The field is found from zero by the local form of the APP drift-to-tilt step
(:func:`move_local_drift_into_tilt`): around every control point the object
slices are registered pairwise, the lateral drift with depth is fitted by a
line, and the slope is added to that control point's tilt, after a run of
global APP (``tilt_map_start``) has brought the object and the mean tilt
close. The slices are then warped back by the spatially varying shift
``-z_s c(r)``. For a uniform change ``c`` this is the exact change of variables
of the global step, ``(t + c, o_s(x + z_s c))``. For a varying ``c`` it is exact
only where ``c`` is uniform over a probe footprint; elsewhere it differs from an
exact reparametrisation by about ``z_s |grad c| r_probe`` (the same
approximation the per-position tilt model itself makes: one propagator tilt
per probe). The residual is small because the step moves only the drift that
is left, and the gradient steps that follow remove it.

A regulariser acts on the control grid after each local step
(:func:`regularize`): ``"smooth"`` penalises second differences (linear
fields cost nothing), ``"tv"`` the total variation (edge preserving, for
grains). Control points over empty object (low phase contrast, see
``tilt_map_vacuum``) are marked undetermined: they are not learned, the
regulariser fills them from their neighbours, and the output map shows NaN
there. :func:`uniformity` tells whether the map is significantly
non-uniform, i.e. whether the global tilt would have been enough.

From ``tilt_map_hold`` on the map's shape is held and its bend is carried by
the slices instead (:mod:`.crystal_frame`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .alignment import fit_drift, register_shift
from .options import OptionError

__all__ = [
    "TiltGrid",
    "make_tilt_grid",
    "grid_shape",
    "default_spacing",
    "interpolate",
    "SparseAdam",
    "regularize",
    "measure_local_drift",
    "window_contrast",
    "mark_vacuum",
    "warp_levels",
    "pixel_field",
    "shift_slices_with_depth",
    "move_local_drift_into_tilt",
    "refresh_position_tilts",
    "uniformity",
    "position_undetermined",
    "TILT_FLOOR_PX",
]

#: The resolution floor of a drift measurement, in pixels of lateral drift over the whole
#: thickness: registration of reconstructed slices is not more precise than this, so tilt
#: differences below ``TILT_FLOOR_PX * sampling / thickness`` are not counted as significant.
TILT_FLOOR_PX = 0.1

#: Smallest default control-point spacing (Å): a registration window (two spacings) must
#: hold about two unit cells of a typical crystal.
MIN_SPACING = 4.0

#: Largest change (mrad) of one control point's tilt in one local drift step.
MAX_LOCAL_STEP = 20.0

#: Quantisation (px) of a varying shift in :func:`warp_levels`: copies this far apart are
#: blended, which blurs by at most half of it (RMS) where the shift varies.
LEVEL_STEP = 0.25


@dataclass
class TiltGrid:
    """Where the control points of a tilt field sit, and what is known about them.

    Attributes
    ----------
    shape
        (rows, cols) of control points; K = rows * cols, row-major.
    origin
        (y, x) in Å, scan frame, of control point [0, 0].
    spacing
        (dy, dx) in Å between control points (0 along an axis with one point).
    undetermined
        (K,) bool: True where the object is empty (no tilt is learned there).
    sigma
        (K, 2) uncertainty (theta_x, theta_y) in mrad of each control point,
        NaN before the first local measurement.
    scatter
        (K, 2) running mean square (mrad^2) of the local drift measured at
        each control point (the drift left after each step).
    measured
        Number of local drift steps taken.
    held
        True once the map is held (``tilt_map_hold``): its departure from
        its mean is carried by the slices and held; only its mean is
        learned (see :mod:`.crystal_frame`).
    """

    shape: tuple[int, int]
    origin: tuple[float, float]
    spacing: tuple[float, float]
    undetermined: np.ndarray = None
    sigma: np.ndarray = None
    scatter: np.ndarray = None
    measured: int = 0
    contrast: np.ndarray = field(default=None, repr=False)
    held: bool = False

    def __post_init__(self):
        k = self.size
        self.shape = (int(self.shape[0]), int(self.shape[1]))
        self.origin = (float(self.origin[0]), float(self.origin[1]))
        self.spacing = (float(self.spacing[0]), float(self.spacing[1]))
        if self.undetermined is None:
            self.undetermined = np.zeros(k, dtype=bool)
        if self.sigma is None:
            self.sigma = np.full((k, 2), np.nan)
        if self.scatter is None:
            self.scatter = np.zeros((k, 2))
        if self.contrast is None:
            self.contrast = np.full(k, np.nan)
        self.undetermined = np.asarray(self.undetermined, dtype=bool).reshape(k)
        self.sigma = np.asarray(self.sigma, dtype=np.float64).reshape(k, 2)
        self.scatter = np.asarray(self.scatter, dtype=np.float64).reshape(k, 2)
        self.contrast = np.asarray(self.contrast, dtype=np.float64).reshape(k)
        self.measured = int(self.measured)
        self.held = bool(self.held)

    @property
    def size(self) -> int:
        return int(self.shape[0]) * int(self.shape[1])

    def nodes(self) -> np.ndarray:
        """(K, 2) control-point positions (y, x) in Å, row-major."""
        iy, ix = np.meshgrid(np.arange(self.shape[0]), np.arange(self.shape[1]), indexing="ij")
        return np.stack(
            [self.origin[0] + iy.ravel() * self.spacing[0], self.origin[1] + ix.ravel() * self.spacing[1]],
            axis=1,
        )

    def weights(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bilinear interpolation onto ``points`` (N, 2) (y, x) Å: indices and weights, (N, 4) each.

        Points beyond the grid take the value of its edge (clamped).
        """
        points = np.asarray(points, dtype=np.float64)
        index, weight = [], []
        for axis in (0, 1):
            n = self.shape[axis]
            if n == 1 or self.spacing[axis] <= 0:
                i0 = np.zeros(points.shape[0], dtype=np.int64)
                index.append((i0, i0))
                weight.append((np.ones(points.shape[0]), np.zeros(points.shape[0])))
                continue
            u = np.clip((points[:, axis] - self.origin[axis]) / self.spacing[axis], 0, n - 1)
            i0 = np.minimum(np.floor(u).astype(np.int64), n - 2)
            f = u - i0
            index.append((i0, i0 + 1))
            weight.append((1 - f, f))
        cols = self.shape[1]
        idx = np.stack([index[0][a] * cols + index[1][b] for a in (0, 1) for b in (0, 1)], axis=1)
        w = np.stack([weight[0][a] * weight[1][b] for a in (0, 1) for b in (0, 1)], axis=1)
        return idx, w

    def to_tree(self) -> dict:
        return {
            "shape": list(self.shape),
            "origin": list(self.origin),
            "spacing": list(self.spacing),
            "undetermined": self.undetermined.copy(),
            "sigma": self.sigma.copy(),
            "scatter": self.scatter.copy(),
            "contrast": self.contrast.copy(),
            "measured": int(self.measured),
            "held": bool(self.held),
        }

    @classmethod
    def from_tree(cls, tree: dict) -> TiltGrid:
        d = dict(tree)
        return cls(
            shape=tuple(int(v) for v in np.asarray(d["shape"]).ravel()),
            origin=tuple(float(v) for v in np.asarray(d["origin"]).ravel()),
            spacing=tuple(float(v) for v in np.asarray(d["spacing"]).ravel()),
            undetermined=np.asarray(d["undetermined"]),
            sigma=np.asarray(d["sigma"]),
            scatter=np.asarray(d["scatter"]),
            contrast=np.asarray(d.get("contrast", np.full(int(np.prod(d["shape"])), np.nan))),
            measured=int(d.get("measured", 0)),
            held=bool(np.asarray(d.get("held", False))),
        )

    def copy(self) -> TiltGrid:
        return TiltGrid.from_tree(self.to_tree())


# -- the grid -----------------------------------------------------------------------------


def default_spacing(semiangle: float, defocus: float, thickness: float) -> float:
    """Default control-point spacing (Å): the probe's footprint at mid-depth, at least 4 Å.

    A pattern sees the tilt averaged over the probe, so the field cannot be
    resolved more finely than the probe's diameter in the specimen (there
    ``2 |defocus - thickness / 2| tan(semiangle)``, ``defocus = -C10``).
    """
    diameter = 2 * abs(defocus - thickness / 2) * math.tan(semiangle * 1e-3)
    return max(MIN_SPACING, diameter)


def grid_shape(
    extent: tuple[float, float], spacing: float | None, grid: tuple[float, float] | None, default: float
) -> tuple[int, int]:
    """Control-grid shape (rows, cols).

    Parameters
    ----------
    extent
        (height, width) of the scanned area in Å.
    spacing
        ``tilt_map_resolution``: the largest spacing between control points
        in Å, or None for ``default``.
    grid
        ``tilt_map_grid``: (rows, cols), overrides ``spacing``.
    default
        The default spacing in Å (:func:`default_spacing`).
    """
    if grid is not None:
        shape = []
        for name, n in zip(("rows", "cols"), grid, strict=True):
            if n != int(n) or n < 1:
                raise OptionError(f"tilt_map_grid={tuple(grid)!r}: {name} must be a whole number >= 1.")
            shape.append(int(n))
        return tuple(1 if e <= 0 else n for n, e in zip(shape, extent, strict=True))
    step = default if spacing is None else float(spacing)
    return tuple(max(1, int(math.ceil(e / step - 1e-9)) + 1) if e > 0 else 1 for e in extent)


def make_tilt_grid(
    positions: np.ndarray,
    semiangle: float,
    defocus: float,
    thickness: float,
    spacing: float | None = None,
    grid: tuple[float, float] | None = None,
) -> TiltGrid:
    """The control grid over the bounding box of the scan positions (y, x) Å.

    The spacing is ``spacing`` (Å) if given, else :func:`default_spacing`;
    ``grid`` = (rows, cols) fixes the shape instead. The points span the
    scan's bounding box evenly (corners on its corners).
    """
    positions = np.asarray(positions, dtype=np.float64)
    lo, hi = positions.min(axis=0), positions.max(axis=0)
    extent = tuple((hi - lo).tolist())
    shape = grid_shape(extent, spacing, grid, default_spacing(semiangle, defocus, thickness))
    step = tuple(e / (n - 1) if n > 1 else 0.0 for e, n in zip(extent, shape, strict=True))
    return TiltGrid(shape=shape, origin=tuple(lo.tolist()), spacing=step)


def interpolate(values: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-position tilts (N, 2) from control-point values (K, 2); differentiable."""
    return (values[index] * weight[..., None]).sum(dim=1)


@torch.no_grad()
def refresh_position_tilts(state) -> None:
    """Set ``state.tilt`` (P, 2) from the control grid (the derived per-position tilts)."""
    index, weight = state.tilt_weights()
    state.tilt.copy_(interpolate(state.tilt_grid.detach(), index, weight).to(state.tilt.dtype))


# -- the optimiser ------------------------------------------------------------------------


class SparseAdam(torch.optim.Optimizer):
    """Adam whose state is correct when each step updates only some rows of a parameter.

    ``step(touched)`` advances the moments, the per-row step counts (for the
    bias correction) and the values of the rows in ``touched`` only. A row a
    batch does not touch keeps its value and its moments exactly: it does not
    coast on stale momentum, as dense Adam would make it.
    """

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, touched: torch.Tensor | None = None):  # noqa: D102
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                rows = (grad != 0).reshape(grad.shape[0], -1).any(dim=1) if touched is None else touched
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((p.shape[0], 1), dtype=torch.float64, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                if not bool(rows.any()):
                    continue
                t = state["step"][rows] + 1
                state["step"][rows] = t
                m = state["exp_avg"][rows].mul(beta1).add(grad[rows], alpha=1 - beta1)
                v = state["exp_avg_sq"][rows].mul(beta2).addcmul(grad[rows], grad[rows], value=1 - beta2)
                state["exp_avg"][rows] = m
                state["exp_avg_sq"][rows] = v
                m_hat = m / (1 - beta1**t).to(m.dtype)
                v_hat = v / (1 - beta2**t).to(v.dtype)
                p[rows] = p[rows] - group["lr"] * m_hat / (v_hat.sqrt() + group["eps"])


# -- the regulariser ----------------------------------------------------------------------


def _differences(shape: tuple[int, int], order: int):
    """Sparse first or second differences along rows and columns of a (rows, cols) grid."""
    import scipy.sparse as sp

    rows, cols = shape

    def along(n: int):
        if n <= order:
            return sp.csr_matrix((0, n))
        d = sp.eye(n, format="csr")
        for _ in range(order):
            d = (d[1:] - d[:-1]).tocsr()
        return d

    blocks = []
    if rows > order:
        blocks.append(sp.kron(along(rows), sp.eye(cols)))
    if cols > order:
        blocks.append(sp.kron(sp.eye(rows), along(cols)))
    if not blocks:
        return sp.csr_matrix((0, rows * cols))
    return sp.vstack(blocks).tocsr()


def regularize(
    values: np.ndarray,
    shape: tuple[int, int],
    weight: float,
    kind: str = "smooth",
    confidence: np.ndarray | None = None,
    scale: float = 1.0,
    iterations: int = 30,
) -> np.ndarray:
    """The regularised control-point tilts (K, 2) closest to ``values``.

    Minimises ``sum_k c_k |T_k - values_k|^2 + weight * R(T)`` with

    * ``"smooth"``: ``R = sum |second differences along rows and columns|^2``
      (mrad^2); planes and bilinear fields cost nothing, so a uniformly bent
      crystal is not flattened;
    * ``"tv"``: ``R = scale * sum |first differences|`` (isotropic over the two
      components, ``scale`` in mrad): edge preserving, a step between two
      grains costs its height only, not its sharpness.

    ``confidence`` (K,) weights the data term (small where a point is
    undetermined: the regulariser fills it from its neighbours).
    """
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    values = np.asarray(values, dtype=np.float64)
    k = values.shape[0]
    c = np.ones(k) if confidence is None else np.asarray(confidence, dtype=np.float64)
    if weight <= 0 or k < 2:
        return values.copy()
    data = sp.diags(c)
    if kind == "smooth":
        d = _differences(shape, 2)
        if d.shape[0] == 0:
            return values.copy()
        a = (data + weight * (d.T @ d)).tocsc()
        return np.stack([spla.spsolve(a, c * values[:, j]) for j in range(values.shape[1])], axis=1)
    if kind != "tv":
        raise OptionError(f"tilt_map_regularizer={kind!r}: expected 'smooth' or 'tv'.")
    d = _differences(shape, 1)
    if d.shape[0] == 0:
        return values.copy()
    t = values.copy()
    eps = 1e-2 * scale
    for _ in range(iterations):
        jumps = np.sqrt(((d @ t) ** 2).sum(axis=1) + eps**2)
        r = sp.diags(0.5 * weight * scale / jumps)
        a = (data + d.T @ r @ d).tocsc()
        t = np.stack([spla.spsolve(a, c * values[:, j]) for j in range(values.shape[1])], axis=1)
    return t


# -- the local drift step -----------------------------------------------------------------


def _node_windows(state, grid: TiltGrid, window: int) -> list[tuple[slice, slice] | None]:
    """Object-pixel windows around each control point, inside the scanned field.

    A window spans one spacing either side of its control point (at least
    12 px), clipped to the probe centres' area widened by half a spacing.
    """
    rows, cols = state.scan_window(window)
    h, w = state.phase.shape[-2:]
    half = [max(12, int(round(s / state.sampling))) if s > 0 else 12 for s in grid.spacing]
    widen = [hh // 2 for hh in half]
    limits = (
        (max(0, rows.start - widen[0]), min(h, rows.stop + widen[0])),
        (max(0, cols.start - widen[1]), min(w, cols.stop + widen[1])),
    )
    out = []
    for y, x in grid.nodes():
        cy = (y - state.origin[0]) / state.sampling
        cx = (x - state.origin[1]) / state.sampling
        box = []
        for centre, hh, (lo, hi) in zip((cy, cx), half, limits, strict=True):
            a, b = max(lo, int(round(centre)) - hh), min(hi, int(round(centre)) + hh + 1)
            box.append(slice(a, b) if b - a >= 12 else None)
        out.append(None if None in box else (box[0], box[1]))
    return out


def window_contrast(image: np.ndarray, windows: list, vacuum: float) -> tuple[np.ndarray, np.ndarray]:
    """Phase contrast (standard deviation, rad) of ``image`` in each window, and which are vacuum.

    A window is undetermined when it lies outside the object (None) or its
    contrast is below ``vacuum`` times the 90th percentile of all windows'.
    """
    contrast = np.array([float(image[box].std()) if box is not None else 0.0 for box in windows])
    reference = np.percentile(contrast, 90) if len(windows) > 1 else contrast.max()
    undetermined = np.array([box is None for box in windows]) | (contrast < max(vacuum * reference, 1e-4))
    return contrast, undetermined


@torch.no_grad()
def mark_vacuum(state, window: int, vacuum: float) -> None:
    """A held map's vacuum marks, renewed: control points whose window has become empty are undetermined.

    The map is no longer measured once held, but the object still
    converges, and vacuum loses contrast; points are only added (a point
    the measurements left undetermined has no measured tilt).
    """
    grid: TiltGrid = state.tilt_field
    windows = _node_windows(state, grid, window)
    contrast, undetermined = window_contrast(state.phase.detach().cpu().numpy().mean(axis=0), windows, vacuum)
    grid.contrast = contrast
    grid.undetermined = grid.undetermined | undetermined


def measure_local_drift(state, grid: TiltGrid, window: int, vacuum: float = 0.3) -> dict:
    """The slices' drift with depth around every control point.

    Returns
    -------
    dict
        ``slope`` (K, 2): the drift as a change of tan(theta) (x, y);
        ``sigma`` (K, 2) mrad: its standard error from the residual of the
        straight-line fit (NaN with fewer than 3 slices); ``contrast`` (K,):
        the standard deviation (rad) of the slice-averaged phase in the
        window; ``undetermined`` (K,): windows outside the object or with a
        contrast below ``vacuum`` times the 90th percentile of all windows.
    """
    phase = state.phase.detach().cpu().numpy().astype(np.float64)
    s = phase.shape[0]
    depths = np.arange(s) * state.dz
    k = grid.size
    slope = np.zeros((k, 2))
    sigma = np.full((k, 2), np.nan)
    windows = _node_windows(state, grid, window)
    contrast, undetermined = window_contrast(phase.mean(axis=0), windows, vacuum)
    for i, box in enumerate(windows):
        if undetermined[i] or s < 2:
            continue
        sub = phase[(slice(None), *box)]
        steps = [np.zeros(2)] + [
            register_shift(sub[j - 1], sub[j], upsample=20, refine=1) for j in range(1, s)
        ]
        shifts = np.cumsum(np.array(steps), axis=0)
        fit = fit_drift(shifts, depths)  # px per Å, (y, x)
        slope[i] = fit[::-1] * state.sampling
        if s > 2:
            zc = depths - depths.mean()
            resid = shifts - shifts.mean(axis=0) - np.outer(zc, fit)
            err = np.sqrt((resid**2).sum(axis=0) / (s - 2) / (zc**2).sum())  # px per Å
            sigma[i] = err[::-1] * state.sampling * 1e3
    return {"slope": slope, "sigma": sigma, "contrast": contrast, "undetermined": undetermined}


def _pixel_weights(state, grid: TiltGrid) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear (index, weight) from the control grid to every object pixel, (H * W, 4) each."""
    ys, xs = state.coordinates()
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return grid.weights(np.stack([yy.ravel(), xx.ravel()], axis=1))


def _ramp(h: int, w: int, dy: float, dx: float, dtype, device) -> torch.Tensor:
    """rfft2-ordered phase ramp moving content by (+dy, +dx) px; the Nyquist terms symmetrised."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64, device=device)[:, None]
    fx = torch.fft.rfftfreq(w, dtype=torch.float64, device=device)[None, :]
    ramp = torch.exp(-2j * np.pi * (fy * dy + fx * dx))
    # the real part of a full FFT shift: cosines on the Nyquist row and column
    if h % 2 == 0:
        ramp[h // 2, :] = np.cos(np.pi * dy) * torch.exp(-2j * np.pi * fx[0] * dx)
    if w % 2 == 0:
        ramp[:, -1] = torch.exp(-2j * np.pi * fy[:, 0] * dy) * np.cos(np.pi * dx)
        if h % 2 == 0:
            ramp[h // 2, -1] = np.cos(np.pi * (dy + dx))
    return ramp.to(dtype)


def warp_levels(field: torch.Tensor, shift: np.ndarray, delta: float = LEVEL_STEP) -> torch.Tensor:
    """Every slice of ``field`` (S, H, W) moved by the same smooth field ``shift`` (H, W, (y, x)) px.

    The content at r moves by ``shift(r)``. No interpolating resampler is
    used (one would blur the object a little on every call): the shift's
    departure from its mean is quantised into levels ``delta`` px apart, the
    slices are Fourier-shifted (periodically, over the whole object) by the
    mean plus each level, and every pixel takes the bilinear blend of its
    four nearest levels. A uniform shift is an exact Fourier shift; elsewhere
    the blend of copies ``delta`` apart blurs by at most ``delta / 2`` px RMS.
    """
    h, w = field.shape[-2:]
    mean = shift.reshape(-1, 2).mean(axis=0)
    u = (shift - mean) / delta
    if np.abs(u).max() < 1e-9:
        u = np.zeros_like(u)
    base = np.floor(u).astype(np.int64)
    frac = u - base
    spectrum = torch.fft.rfft2(field.to(torch.float64))
    out = torch.zeros(field.shape, dtype=torch.float64, device=field.device)
    complex_dtype = spectrum.dtype

    def level_weights(axis: int) -> dict[int, np.ndarray]:
        """Per level along ``axis``: each pixel's linear weight of it (the nonzero ones only)."""
        b, f = base[..., axis], frac[..., axis]
        levels = {}
        for level in range(int(b.min()), int(b.max()) + 2):
            linear = np.where(b == level, 1 - f, 0.0) + np.where(b == level - 1, f, 0.0)
            if linear.any():
                levels[level] = linear
        return levels

    along_x = level_weights(1)
    for ly, wy in level_weights(0).items():
        for lx, wx in along_x.items():
            weight = wy * wx
            if not weight.any():
                continue
            dy, dx = mean[0] + delta * ly, mean[1] + delta * lx
            ramp = _ramp(h, w, float(dy), float(dx), complex_dtype, field.device)
            moved = torch.fft.irfft2(spectrum * ramp, s=(h, w))
            out += torch.as_tensor(weight, dtype=torch.float64, device=field.device) * moved
    return out.to(field.dtype)


@torch.no_grad()
def move_local_drift_into_tilt(state, window: int, config, measure: bool = True) -> np.ndarray:
    """The local drift-to-tilt step of a tilt map; returns the mean change of the tilt (mrad).

    Measures the drift around every control point (:func:`measure_local_drift`),
    adds it to the control points' tilts (as tan(theta), like the global
    step), regularises the grid (:func:`regularize`; undetermined points are
    filled from their neighbours), and warps the slices back by
    ``-z_s (tan(t_new) - tan(t_old))(r)``, the field interpolated to each
    object pixel. See the module docstring for when this is an exact change
    of variables. With ``measure=False`` only the regulariser runs.
    """
    grid: TiltGrid = state.tilt_field
    old = state.tilt_grid.detach().double().cpu().numpy()
    target = old.copy()
    if measure:
        found = measure_local_drift(state, grid, window, config.tilt_map_vacuum)
        step = found["slope"]
        limit = math.tan(MAX_LOCAL_STEP * 1e-3)
        big = np.abs(step).max(axis=1, keepdims=True)
        step = np.where(big > limit, step * limit / np.maximum(big, 1e-30), step)
        step[found["undetermined"]] = 0.0
        target = np.arctan(np.tan(old * 1e-3) + step) * 1e3
        residual = (step * 1e3) ** 2
        n = grid.measured
        rate = 1.0 / min(n + 1, 3)  # mean of the first steps, then an exponential average
        grid.scatter = np.where(
            found["undetermined"][:, None], grid.scatter, (1 - rate) * grid.scatter + rate * residual
        )
        grid.sigma = found["sigma"]
        grid.contrast = found["contrast"]
        grid.undetermined = found["undetermined"]
        grid.measured = n + 1
    confidence = np.where(grid.undetermined, 1e-3, 1.0)
    if grid.undetermined.all():
        return np.zeros(2)
    new = regularize(target, grid.shape, config.tilt_map_smoothness, config.tilt_map_regularizer, confidence)
    change_tan = np.tan(new * 1e-3) - np.tan(old * 1e-3)  # (K, (x, y))
    state.tilt_grid.copy_(torch.as_tensor(new, dtype=state.tilt_grid.dtype))
    refresh_position_tilts(state)
    # content of slice s moves by -z_s * change: the drift taken up by the tilt
    shift_slices_with_depth(state, -pixel_field(state, grid, change_tan) / state.sampling)
    return (new - old).mean(axis=0)


def pixel_field(state, grid: TiltGrid, values: np.ndarray) -> np.ndarray:
    """Control-point values (K, (x, y)) interpolated bilinearly to every object pixel: (H, W, (y, x))."""
    index, weight = _pixel_weights(state, grid)
    h, w = state.phase.shape[-2:]
    return (values[index] * weight[..., None]).sum(axis=1).reshape(h, w, 2)[..., ::-1]


@torch.no_grad()
def shift_slices_with_depth(state, slope: np.ndarray) -> None:
    """Move the content of slice s by ``z_s * slope(r)`` px, phase and amplitude, in place.

    ``slope``: (H, W, (y, x)) px per Å of depth (z_s = s dz); nothing moves below 1e-4 px.
    A thickness companion's slices move alike, at their own depths.
    """
    for phase, amplitude, dz in state.slice_sets():
        depths = np.arange(phase.shape[0]) * dz
        if np.abs(slope).max() * depths[-1] > 1e-4:
            for tensor in (phase, amplitude):
                for s in range(1, phase.shape[0]):  # slice 0 (z = 0) stays
                    tensor[s].copy_(warp_levels(tensor[s : s + 1].detach(), depths[s] * slope)[0])


# -- what the map tells -------------------------------------------------------------------


def position_undetermined(state) -> np.ndarray:
    """(P,) True where a position's tilt comes mostly (> half) from undetermined control points."""
    index, weight = state.tilt_field.weights(state.probe_positions())
    bad = state.tilt_field.undetermined[index]
    return (weight * bad).sum(axis=1) > 0.5


def uniformity(state, threshold: float = 3.0) -> dict:
    """Whether the tilt map is significantly non-uniform (so the global tilt was not enough).

    The spread of the determined control points about their mean is set
    against their uncertainty: per point, the quadrature sum of the
    straight-line fit error of its last local drift measurement, the RMS of
    the drift its local steps still found (the scatter of the measurement),
    and a floor of :data:`TILT_FLOOR_PX` pixel of drift over the thickness.

    Returns
    -------
    dict
        ``mean`` (theta_x, theta_y) mrad of the determined points, ``spread``
        (RMS deviation from it, per component and ``spread_total``),
        ``uncertainty`` (RMS, per component and total), ``ratio`` =
        spread_total / uncertainty_total, ``chi2`` and ``dof`` of the
        uniform hypothesis, ``non_uniform`` (ratio above ``threshold``),
        ``determined`` / ``undetermined`` counts and a one-line ``verdict``.
    """
    grid: TiltGrid = state.tilt_field
    values = state.tilt_grid.detach().double().cpu().numpy()
    ok = ~grid.undetermined
    floor = TILT_FLOOR_PX * state.sampling / max(state.thickness, 1e-9) * 1e3
    if ok.sum() == 0:
        return {
            "determined": 0,
            "undetermined": int(grid.size),
            "non_uniform": False,
            "verdict": "no control point is determined (empty object?)",
        }
    sigma = np.where(np.isfinite(grid.sigma), grid.sigma, 0.0)
    u = np.sqrt(sigma**2 + grid.scatter + floor**2)[ok]
    v = values[ok]
    mean = v.mean(axis=0)
    dev = v - mean
    spread = np.sqrt((dev**2).mean(axis=0))
    unc = np.sqrt((u**2).mean(axis=0))
    spread_total = float(np.sqrt((spread**2).sum()))
    unc_total = float(np.sqrt((unc**2).sum()))
    ratio = spread_total / unc_total
    chi2 = float((dev**2 / u**2).sum())
    dof = int(2 * (ok.sum() - 1))
    non_uniform = bool(ok.sum() > 1 and ratio > threshold)
    if non_uniform:
        verdict = (
            f"the tilt varies significantly over the scan (spread {spread_total:.2f} mrad, "
            f"{ratio:.1f}x its uncertainty {unc_total:.2f} mrad): the map was needed"
        )
    else:
        verdict = (
            f"the tilt map is uniform within its uncertainty (spread {spread_total:.2f} mrad, "
            f"uncertainty {unc_total:.2f} mrad): the global tilt ({mean[0]:.2f}, {mean[1]:.2f}) mrad "
            "was enough, the map was not needed"
        )
    return {
        "mean": mean.tolist(),
        "spread": spread.tolist(),
        "spread_total": spread_total,
        "uncertainty": unc.tolist(),
        "uncertainty_total": unc_total,
        "ratio": float(ratio),
        "threshold": float(threshold),
        "chi2": chi2,
        "dof": dof,
        "non_uniform": non_uniform,
        "determined": int(ok.sum()),
        "undetermined": int((~ok).sum()),
        "floor_mrad": float(floor),
        "verdict": verdict,
    }
