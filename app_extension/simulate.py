"""A small 4D-STEM simulator for demos and tests: tilted SrTiO3 [001].

The specimen is built atom by atom, one atomic plane per slice (a/2 apart),
with the mistilt put into the atoms (each atom at depth ``d`` is moved by
``d tan(theta)``), and the beam propagated straight down with the *fixed*
propagator on a grid twice as fine as the reconstruction's. So the data do not
share the reconstruction's slicing, sampling or tilt model: recovering the tilt
and thickness from them is a real test. The atomic phase profiles are simple
Gaussians (not a tabulated parametrisation), which is enough for a demo; use
abTEM for quantitative simulations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .physics.multislice import farfield_intensity, multislice, shift_probes
from .physics.optics import electron_wavelength, fourier_grid, make_probe
from .physics.propagator import propagator
from .solver.config import Geometry

__all__ = ["SimulatedDataset", "simulate_tilted_crystal", "simulate_tilt_field", "two_grains", "STO_LATTICE"]

STO_LATTICE = 3.905  # Å

# Peak phase (rad) of one atom at 300 kV and the Gaussian width (Å) used here.
_ATOM_PHASE = {"Sr": 0.22, "Ti": 0.14, "O": 0.065}
_ATOM_WIDTH = 0.28

# Fractional (x, y) sites in the two planes of the SrTiO3 unit cell along [001].
_PLANES = (
    (("Sr", 0.0, 0.0), ("O", 0.5, 0.5)),  # SrO plane, z = 0
    (("Ti", 0.5, 0.5), ("O", 0.5, 0.0), ("O", 0.0, 0.5)),  # TiO2 plane, z = a/2
)


@dataclass
class SimulatedDataset:
    """Simulated 4D-STEM data and the truth behind it.

    Attributes
    ----------
    data
        Intensities (scan_y, scan_x, N, N), optic axis at pixel N // 2.
    geometry
        The :class:`~app_extension.solver.config.Geometry` to reconstruct with.
    tilt
        True (theta_x, theta_y) in mrad.
    thickness
        True specimen thickness in Å.
    scan_step
        Scan step in Å.
    columns
        Column sites at the entrance plane in the scan frame, dict of name ->
        (K, 2) arrays of (y, x) Å.
    """

    data: np.ndarray
    geometry: Geometry
    tilt: tuple[float, float]
    thickness: float
    scan_step: float
    columns: dict

    @property
    def scan_shape(self) -> tuple[int, int]:
        return tuple(self.data.shape[:2])


def _gaussians(
    grid_y: np.ndarray, grid_x: np.ndarray, sites: np.ndarray, peaks: np.ndarray, width: float
) -> np.ndarray:
    """Sum of Gaussians on a grid, evaluated only near each site."""
    out = np.zeros((grid_y.size, grid_x.size))
    step = grid_x[1] - grid_x[0]
    r = int(np.ceil(4 * width / step))
    for (y, x), p in zip(sites, peaks, strict=True):
        iy = int(round((y - grid_y[0]) / step))
        ix = int(round((x - grid_x[0]) / step))
        y0, y1 = max(iy - r, 0), min(iy + r + 1, grid_y.size)
        x0, x1 = max(ix - r, 0), min(ix + r + 1, grid_x.size)
        if y0 >= y1 or x0 >= x1:
            continue
        dy = grid_y[y0:y1, None] - y
        dx = grid_x[None, x0:x1] - x
        out[y0:y1, x0:x1] += p * np.exp(-(dy**2 + dx**2) / (2 * width**2))
    return out


def _transmissions(gy, gx, cy, cx, unit_cells_z: int, tangents) -> torch.Tensor:
    """Complex transmission of each atomic plane (2 per unit cell) on the grid ``gy`` x ``gx``.

    ``tangents(y0, x0) -> (tan theta_x, tan theta_y)`` gives, for the entrance sites (Å) of a
    kind of column, the shear of each column with depth; NaN leaves the site empty (vacuum).
    """
    a = STO_LATTICE
    planes = []
    for p in range(2 * unit_cells_z):
        depth = p * a / 2
        sites, peaks = [], []
        for name, fx, fy in _PLANES[p % 2]:
            y0 = (cy + fy).ravel() * a
            x0 = (cx + fx).ravel() * a
            tan_x, tan_y = tangents(y0, x0)
            keep = np.isfinite(tan_x) & np.isfinite(tan_y)
            ys = y0[keep] + depth * tan_y[keep]
            xs = x0[keep] + depth * tan_x[keep]
            sites.append(np.stack([ys, xs], axis=1))
            peaks.append(np.full(ys.size, _ATOM_PHASE[name]))
        planes.append(_gaussians(gy, gx, np.concatenate(sites), np.concatenate(peaks), _ATOM_WIDTH))
    phase = torch.as_tensor(np.array(planes), dtype=torch.float32)
    return torch.polar(torch.ones_like(phase), phase)


def _far_field(
    trans: torch.Tensor,
    grid_origin: tuple[float, float],
    positions: np.ndarray,
    sampling: float,
    energy: float,
    semiangle: float,
    defocus: float,
    aberrations: dict | None,
    dz: float,
    fine: int,
    pattern_size: int,
    batch_size: int,
) -> np.ndarray:
    """Far-field patterns (P, n, n), optic axis at n // 2, of the transmission slices ``trans``.

    The probe is propagated straight down (fixed propagator, slice spacing ``dz``) on the fine
    grid of ``trans``, whose pixel [0, 0] sits at ``grid_origin`` (y, x) in Å, through a
    ``fine`` x ``fine`` window per position; the central ``pattern_size`` pixels of each
    pattern are kept.
    """
    window = fine * sampling
    probe = make_probe((fine, fine), sampling, energy, semiangle, defocus, aberrations, intensity=1.0)[None]
    ky, kx = fourier_grid((fine, fine), sampling)
    prop = propagator(ky, kx, electron_wavelength(energy), dz)
    corners = (positions - np.array(grid_origin) - window / 2) / sampling
    start = fine // 2 - pattern_size // 2
    out = np.empty((positions.shape[0], pattern_size, pattern_size), dtype=np.float32)
    rows = torch.arange(fine)
    for b0 in range(0, positions.shape[0], batch_size):
        c = torch.as_tensor(corners[b0 : b0 + batch_size])
        ci = torch.floor(c).long()
        probes = shift_probes(probe, (c - ci).float())
        r = ci[:, 0, None] + rows[None]
        q = ci[:, 1, None] + rows[None]
        patches = trans[:, r[:, :, None], q[:, None, :]]
        intensity = farfield_intensity(multislice(probes, patches, prop))
        shifted = torch.fft.fftshift(intensity, dim=(-2, -1))
        out[b0 : b0 + batch_size] = shifted[
            :, start : start + pattern_size, start : start + pattern_size
        ].numpy()
    return out


def simulate_tilted_crystal(
    tilt: tuple[float, float] = (8.0, -3.0),
    unit_cells_z: int = 20,
    scan_shape: tuple[int, int] = (16, 16),
    scan_step: float = STO_LATTICE / 8,
    pattern_size: int = 64,
    reciprocal_sampling: float = 0.05,
    energy: float = 300e3,
    semiangle: float = 22.0,
    defocus: float = 100.0,
    dose: float | None = None,
    seed: int = 0,
    batch_size: int = 64,
    scan_rotation: float = 0.0,
    aberrations: dict | None = None,
) -> SimulatedDataset:
    """Simulate 4D-STEM patterns of SrTiO3 [001] with a specimen mistilt.

    Parameters
    ----------
    tilt
        (theta_x, theta_y) in mrad; columns lean towards +x with depth for
        theta_x > 0.
    unit_cells_z
        Thickness in unit cells (3.905 Å each).
    scan_shape, scan_step
        Raster scan (ny, nx) and step in Å. The scan starts a quarter cell
        past a Sr column.
    pattern_size, reciprocal_sampling
        Detector pixels per side and pixel size in 1/Å.
    energy, semiangle, defocus
        Beam energy (eV), convergence semi-angle (mrad), defocus (Å, -C10).
    dose
        Electrons per Å^2 for Poisson noise; ``None`` gives noiseless data
        normalised so a vacuum pattern sums to 1.
    seed
        Random seed for the noise.
    batch_size
        Positions simulated at once (memory only).
    scan_rotation
        Scan rotation in degrees (:meth:`Geometry.raster`): the fast scan axis
        points along (cos, sin) in the specimen's (x, y) frame, which is the
        detector's frame. ``geometry.scan_positions`` are then rotated too.
    aberrations
        Further probe aberrations, polar coefficients in Å and angles in rad
        in the detector frame (``{"C12": 20.0, "phi12": 0.3}``).

    Returns
    -------
    SimulatedDataset
    """
    a = STO_LATTICE
    fine = 2 * pattern_size  # simulate on a 2x finer real-space grid
    sampling = 1.0 / (fine * reciprocal_sampling)
    window = fine * sampling
    positions = Geometry.raster(scan_shape, scan_step, scan_rotation) + a / 4
    thickness = unit_cells_z * a
    tan = np.tan(np.asarray(tilt, dtype=np.float64) * 1e-3)  # (x, y)
    # Field of view: the scan, the window around it, and room for the shear.
    lo = positions.min(axis=0) - window / 2 - 2 * a - thickness * np.abs(tan[::-1])
    hi = positions.max(axis=0) + window / 2 + 2 * a + thickness * np.abs(tan[::-1])
    gy = np.arange(lo[0], hi[0], sampling)
    gx = np.arange(lo[1], hi[1], sampling)
    cells_y = np.arange(np.floor(gy[0] / a) - 2, np.ceil(gy[-1] / a) + 3)
    cells_x = np.arange(np.floor(gx[0] / a) - 2, np.ceil(gx[-1] / a) + 3)
    cy, cx = np.meshgrid(cells_y, cells_x, indexing="ij")
    trans = _transmissions(
        gy, gx, cy, cx, unit_cells_z, lambda y0, x0: (np.full_like(x0, tan[0]), np.full_like(y0, tan[1]))
    )

    out = _far_field(
        trans,
        (gy[0], gx[0]),
        positions,
        sampling,
        energy,
        semiangle,
        defocus,
        aberrations,
        a / 2,
        fine,
        pattern_size,
        batch_size,
    )
    if dose is not None:
        rng = np.random.default_rng(seed)
        electrons = dose * scan_step**2
        out = rng.poisson(out * electrons).astype(np.float32)
    data = out.reshape(*scan_shape, pattern_size, pattern_size)

    origin = positions[0]
    columns = {}
    for name, sites_frac in (("Sr", [(0.0, 0.0)]), ("TiO", [(0.5, 0.5)]), ("O", [(0.5, 0.0), (0.0, 0.5)])):
        pts = []
        for fx, fy in sites_frac:
            pts.append(np.stack([(cy + fy).ravel() * a, (cx + fx).ravel() * a], axis=1))
        pts = np.concatenate(pts) - origin
        lo = positions.min(axis=0) - origin
        extent = positions.max(axis=0) - origin
        keep = np.all((pts >= lo - 1e-9) & (pts <= extent + 1e-9), axis=1)
        columns[name] = pts[keep]
    geometry = Geometry(
        energy=energy,
        semiangle=semiangle,
        reciprocal_sampling=reciprocal_sampling,
        scan_positions=positions - origin,
        defocus=defocus,
        aberrations=dict(aberrations or {}),
    )
    return SimulatedDataset(
        data=data,
        geometry=geometry,
        tilt=(float(tilt[0]), float(tilt[1])),
        thickness=float(thickness),
        scan_step=float(scan_step),
        columns=columns,
    )


def simulate_tilt_field(
    tilt_field: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    unit_cells_z: int = 12,
    scan_shape: tuple[int, int] = (12, 12),
    scan_step: float = 1.0,
    pattern_size: int = 48,
    reciprocal_sampling: float = 0.1,
    energy: float = 300e3,
    semiangle: float = 22.0,
    defocus: float = 50.0,
    dose: float | None = None,
    seed: int = 0,
    batch_size: int = 64,
) -> SimulatedDataset:
    """Simulate SrTiO3 [001] whose tilt varies over the specimen (bent crystals, grains, vacuum).

    Like :func:`simulate_tilted_crystal` (tilt in the atoms, fixed propagator,
    a grid twice as fine as the reconstruction's), but every atom column
    takes the tilt of its own site: an atom whose column enters at (y, x)
    sits at depth ``d`` at ``(y + d tan(theta_y), x + d tan(theta_x))``.

    Parameters
    ----------
    tilt_field
        ``tilt_field(y, x) -> (theta_x, theta_y)``: arrays of the same shape,
        mrad, for column sites (y, x) in Å in the scan frame (0 at the first
        probe position); NaN means no atom there (vacuum).
    unit_cells_z, scan_shape, scan_step, pattern_size, reciprocal_sampling, energy, semiangle, defocus,
    dose, seed, batch_size
        As for :func:`simulate_tilted_crystal`.

    Returns
    -------
    SimulatedDataset
        ``tilt`` is the mean tilt over the probe positions; ``columns`` the
        column sites (entrance plane) that hold atoms.
    """
    a = STO_LATTICE
    fine = 2 * pattern_size
    sampling = 1.0 / (fine * reciprocal_sampling)
    window = fine * sampling
    positions = Geometry.raster(scan_shape, scan_step) + a / 4
    origin = positions[0]
    thickness = unit_cells_z * a
    lo = positions.min(axis=0) - window / 2 - 2 * a
    hi = positions.max(axis=0) + window / 2 + 2 * a
    gy = np.arange(lo[0], hi[0], sampling)
    gx = np.arange(lo[1], hi[1], sampling)
    # Column sites cover the field and the shear's reach (up to 0.1 rad here).
    reach = thickness * 0.1
    cells_y = np.arange(np.floor((gy[0] - reach) / a) - 1, np.ceil((gy[-1] + reach) / a) + 2)
    cells_x = np.arange(np.floor((gx[0] - reach) / a) - 1, np.ceil((gx[-1] + reach) / a) + 2)
    cy, cx = np.meshgrid(cells_y, cells_x, indexing="ij")

    def tangents(y0, x0):
        tx, ty = (np.asarray(t, dtype=np.float64) for t in tilt_field(y0 - origin[0], x0 - origin[1]))
        return np.tan(tx * 1e-3), np.tan(ty * 1e-3)

    trans = _transmissions(gy, gx, cy, cx, unit_cells_z, tangents)

    out = _far_field(
        trans,
        (gy[0], gx[0]),
        positions,
        sampling,
        energy,
        semiangle,
        defocus,
        None,
        a / 2,
        fine,
        pattern_size,
        batch_size,
    )
    if dose is not None:
        rng = np.random.default_rng(seed)
        out = rng.poisson(out * dose * scan_step**2).astype(np.float32)
    data = out.reshape(*scan_shape, pattern_size, pattern_size)

    columns = {}
    extent = positions.max(axis=0) - origin
    for name, sites_frac in (("Sr", [(0.0, 0.0)]), ("TiO", [(0.5, 0.5)]), ("O", [(0.5, 0.0), (0.0, 0.5)])):
        pts = (
            np.concatenate(
                [np.stack([(cy + fy).ravel() * a, (cx + fx).ravel() * a], axis=1) for fx, fy in sites_frac]
            )
            - origin
        )
        tx, ty = tilt_field(pts[:, 0], pts[:, 1])
        keep = np.all((pts >= -1e-9) & (pts <= extent + 1e-9), axis=1) & np.isfinite(tx) & np.isfinite(ty)
        columns[name] = pts[keep]
    scan = positions - origin
    tx, ty = (np.asarray(t, dtype=np.float64) for t in tilt_field(scan[:, 0], scan[:, 1]))
    inside = np.isfinite(tx) & np.isfinite(ty)
    mean_tilt = (float(tx[inside].mean()), float(ty[inside].mean())) if inside.any() else (0.0, 0.0)
    geometry = Geometry(
        energy=energy,
        semiangle=semiangle,
        reciprocal_sampling=reciprocal_sampling,
        scan_positions=scan,
        defocus=defocus,
    )
    return SimulatedDataset(
        data=data,
        geometry=geometry,
        tilt=mean_tilt,
        thickness=float(thickness),
        scan_step=float(scan_step),
        columns=columns,
    )


def two_grains(
    tilt: float = 28.0,
    boundary: float = 0.0,
    extent: tuple[float, float] = (20.0, 20.0),
    vacuum: float = 4.0,
    axis: str = "x",
):
    """A tilt field of two grains for :func:`simulate_tilt_field`.

    Parameters
    ----------
    tilt
        The grains lean by +tilt (x < boundary) and -tilt (x >= boundary)
        along ``axis``, in mrad.
    boundary
        Position of the straight grain boundary along x, in Å from the
        middle of ``extent``.
    extent
        (height, width) in Å of the scanned area; the grains fill it but for
        a band of ``vacuum`` Å along every edge (NaN: no atoms).
    axis
        The tilt's direction, "x" (theta_x) or "y" (theta_y).

    Returns
    -------
    callable
        ``f(y, x) -> (theta_x, theta_y)`` in mrad.
    """
    height, width = extent
    middle = width / 2 + boundary

    def field(y, x):
        y = np.asarray(y, dtype=np.float64)
        x = np.asarray(x, dtype=np.float64)
        value = np.where(x < middle, tilt, -tilt)
        inside = (y >= vacuum) & (y <= height - vacuum) & (x >= vacuum) & (x <= width - vacuum)
        value = np.where(inside, value, np.nan)
        zero = np.where(inside, 0.0, np.nan)
        return (value, zero) if axis == "x" else (zero, value)

    return field
