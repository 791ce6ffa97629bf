"""Inputs of the solver: the experiment's geometry and the reconstruction options.

Units are fixed here and nowhere else converted: lengths in Å, angles in mrad,
beam energy in eV, detector sampling in 1/Å per pixel. The front ends (HyperSpy
signal, py4DSTEM class, CLI) translate their calibrations into these.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Geometry", "SolverConfig"]


@dataclass
class Geometry:
    """What the microscope did: beam, probe, detector sampling and scan.

    Parameters
    ----------
    energy
        Beam energy in eV.
    semiangle
        Convergence semi-angle in mrad.
    reciprocal_sampling
        Detector pixel size in 1/Å.
    scan_positions
        Probe positions (y, x) in Å, shape (P, 2), in the order of the patterns.
    defocus
        Defocus in Å, ``-C10`` (positive = underfocus).
    aberrations
        Further polar aberration coefficients in Å (``{"C30": ...}``).
    """

    energy: float
    semiangle: float
    reciprocal_sampling: float
    scan_positions: np.ndarray
    defocus: float = 0.0
    aberrations: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("energy", "semiangle", "reciprocal_sampling"):
            value = getattr(self, name)
            if value is None or not np.isfinite(value) or value <= 0:
                raise ValueError(f"Geometry.{name} must be a positive finite number, got {value!r}.")
        pos = np.asarray(self.scan_positions, dtype=np.float64)
        if pos.ndim != 2 or pos.shape[1] != 2 or not np.all(np.isfinite(pos)):
            raise ValueError(
                f"scan_positions must be a finite (P, 2) array of (y, x) in Å, got shape {pos.shape}."
            )
        self.scan_positions = pos

    @staticmethod
    def raster(
        shape: tuple[int, int], step: float | tuple[float, float], rotation: float = 0.0
    ) -> np.ndarray:
        """Positions (y, x) in Å of a raster scan, slow axis y first.

        Parameters
        ----------
        shape
            Scan shape (ny, nx).
        step
            Scan step in Å, one value or (step_y, step_x).
        rotation
            Scan rotation in degrees, counter-clockwise from the detector x axis.
        """
        sy, sx = (step, step) if np.isscalar(step) else step
        iy, ix = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
        pos = np.stack([iy.ravel() * sy, ix.ravel() * sx], axis=1)
        if rotation:
            a = np.deg2rad(rotation)
            c, s = np.cos(a), np.sin(a)
            y, x = pos[:, 0].copy(), pos[:, 1].copy()
            pos = np.stack([s * x + c * y, c * x - s * y], axis=1)
        return pos

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["scan_positions"] = np.asarray(self.scan_positions).tolist()
        return d


@dataclass
class SolverConfig:
    """Reconstruction options (all optional).

    Parameters
    ----------
    mode
        ``"app"``: adaptive propagator, tilt and slice thickness learned.
        ``"fpp"``: fixed propagator at ``tilt`` (default 0) and
        ``slice_thickness``, with post-alignment of the slices.
    num_slices
        Number of object slices S.
    slice_thickness
        Initial slice thickness dz in Å (total thickness is S * dz).
    tilt
        Initial tilt (theta_x, theta_y) in mrad.
    tilt_map
        Learn one tilt per scan position (extended APP) instead of one global tilt.
    iterations
        Passes over all scan positions.
    batch_size
        Scan positions per gradient step.
    probe_modes
        Number of mixed-state probe modes M.
    loss
        ``"amplitude"`` (Eq. 1) or ``"poisson"``.
    padded_size
        Pad the patterns to this many pixels per side in the model (the
        paper padded 128 to 256 to halve the real-space pixel); ``None`` for none.
    lr_object, lr_probe, lr_tilt, lr_dz
        Adam step sizes: object phase (rad) and amplitude, probe (in units of
        its root-mean-square amplitude; the solver scales the patterns to a
        mean pixel value of 1), tilt (mrad), slice thickness (Å). Object,
        probe and tilt take an Adam step per batch; the slice thickness takes
        one sign-based (Rprop) step per iteration, with the gradient of the
        whole pass: ``lr_dz`` is its first step, which then grows while the
        gradient keeps its sign and halves when it flips.
    start_probe, start_tilt, start_dz
        First iteration (0-based) at which each is learned.
    depth_regularization
        Weight in [0, 1) of the z-smoothness prior: after every iteration each
        slice's phase and amplitude move that fraction towards the mean of
        their neighbours. It keeps the slices a crystal seen along its axis,
        which is what makes tilt and thickness well defined. ``None`` (the
        default) means 0.5 for APP and 0 for FPP, whose slices are sheared by
        the tilt and must stay free for the post-alignment to measure it.
    tilt_alignment_every
        In APP mode, every this many iterations the slices' remaining lateral
        drift with depth is measured by cross-correlation and moved into the
        tilt (a change of variables that leaves the model's patterns unchanged).
        0 switches it off.
    tilt_alignment_start
        First iteration at which the drift step runs.
    max_amplitude
        Upper clamp of the object amplitude (1 = no gain).
    divergence_factor
        Stop (status ``"diverged"``, last good state kept) when a batch's
        loss per position exceeds this multiple of the lowest seen in the run,
        or is not finite.
    seed
        Random seed (mini-batch order, probe modes). CPU runs are deterministic.
    device
        Torch device, e.g. ``"cpu"`` or ``"cuda"``.
    """

    mode: str = "app"
    num_slices: int = 5
    slice_thickness: float = 20.0
    tilt: tuple[float, float] = (0.0, 0.0)
    tilt_map: bool = False
    iterations: int = 20
    batch_size: int = 64
    probe_modes: int = 1
    loss: str = "amplitude"
    padded_size: int | None = None
    lr_object: float = 2e-2
    lr_probe: float = 1e-2
    lr_tilt: float = 0.1
    lr_dz: float = 0.5
    start_probe: int = 1
    start_tilt: int = 1
    start_dz: int = 2
    depth_regularization: float | None = None
    tilt_alignment_every: int = 1
    tilt_alignment_start: int = 1
    max_amplitude: float = 1.0
    divergence_factor: float = 1e3
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        self.mode = str(self.mode).lower()
        if self.mode not in ("app", "fpp"):
            raise ValueError(f"mode must be 'app' or 'fpp', got {self.mode!r}.")
        self.loss = str(self.loss).lower()
        if self.loss not in ("amplitude", "poisson"):
            raise ValueError(f"loss must be 'amplitude' or 'poisson', got {self.loss!r}.")
        for name in ("num_slices", "iterations", "batch_size", "probe_modes"):
            value = getattr(self, name)
            if int(value) != value or value < (0 if name == "iterations" else 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
            setattr(self, name, int(value))
        if not np.isfinite(self.slice_thickness) or self.slice_thickness <= 0:
            raise ValueError(f"slice_thickness must be > 0 Å, got {self.slice_thickness!r}.")
        tilt = tuple(float(t) for t in np.ravel(self.tilt))
        if len(tilt) != 2 or not np.all(np.isfinite(tilt)):
            raise ValueError(f"tilt must be a pair (theta_x, theta_y) in mrad, got {self.tilt!r}.")
        if max(abs(t) for t in tilt) > 200:
            raise ValueError(f"tilt {tilt} mrad is implausibly large; give it in mrad, not µrad or degrees.")
        self.tilt = tilt
        if not self.divergence_factor > 1:
            raise ValueError(f"divergence_factor must be > 1, got {self.divergence_factor}.")
        if self.depth_regularization is not None and not 0 <= self.depth_regularization < 1:
            raise ValueError(f"depth_regularization must be in [0, 1), got {self.depth_regularization}.")
        for name in ("lr_object", "lr_probe", "lr_tilt", "lr_dz"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")

    @property
    def depth_weight(self) -> float:
        """The z-smoothness weight in use (``depth_regularization`` or the mode's default)."""
        if self.depth_regularization is not None:
            return float(self.depth_regularization)
        return 0.5 if self.mode == "app" else 0.0

    @property
    def learns_geometry(self) -> bool:
        """True when tilt and thickness are learned (APP)."""
        return self.mode == "app"

    def replace(self, **changes) -> SolverConfig:
        """A copy with some options changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["tilt"] = list(self.tilt)
        return d
