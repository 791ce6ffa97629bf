"""Inputs of the solver: the experiment's geometry and the reconstruction options.

Units are fixed here and nowhere else converted: lengths in Å, angles in mrad,
beam energy in eV, detector sampling in 1/Å per pixel. The front ends (HyperSpy
signal, py4DSTEM class, CLI) translate their calibrations into these.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from .options import Declared, OptionError, UnknownOptionError, option

__all__ = ["Geometry", "SolverConfig", "ExperimentOptions", "CalibrationOptions", "OptionError"]


def check_beam_numbers(calibration) -> None:
    """``energy``, ``semiangle`` and ``reciprocal_sampling`` of ``calibration`` must be positive and finite."""
    for name in ("energy", "semiangle", "reciprocal_sampling"):
        value = getattr(calibration, name)
        if value is None or not np.isfinite(value) or value <= 0:
            raise ValueError(
                f"{type(calibration).__name__}.{name} must be a positive finite number, got {value!r}."
            )


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
        check_beam_numbers(self)
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
class SolverConfig(Declared):
    """Reconstruction options, each declared once (see :mod:`.options`).

    Every field carries its type, unit, default, valid range and help text;
    the front ends' signatures, checks, docstrings and CLI flags derive from
    them. Values are checked and normalised on construction (strings with
    units are converted: ``slice_thickness="2 nm"`` becomes 20.0 Å).
    """

    mode: str = option(
        "app",
        "'app': adaptive propagator, tilt and slice thickness learned; 'fpp': fixed propagator at `tilt` "
        "and `slice_thickness`, with post-alignment of the slices.",
        kind="str",
        choices=("app", "fpp"),
    )
    num_slices: int = option(5, "Number of object slices S.", kind="int", low=1, high=1000)
    slice_thickness: float = option(
        20.0,
        "Initial slice thickness dz (total thickness = S * dz).",
        unit="Å",
        low=0,
        open_low=True,
        high=1e4,
    )
    tilt: tuple[float, float] = option(
        (0.0, 0.0),
        "Initial specimen tilt (theta_x, theta_y); theta_x > 0: columns lean toward +x with depth.",
        kind="pair",
        unit="mrad",
        low=-200,
        high=200,
    )
    tilt_map: bool = option(
        False,
        "Extended APP: learn the tilt as a smooth field over the scan (control points interpolated to the "
        "positions) instead of one global tilt.",
        kind="bool",
    )
    tilt_map_resolution: float | None = option(
        None,
        "Tilt map: largest spacing of its control points, e.g. '2 nm'. None: the probe's diameter in the "
        "specimen, at least 4 Å.",
        unit="Å",
        low=0,
        open_low=True,
        high=1e5,
        allow_none=True,
    )
    tilt_map_grid: tuple[float, float] | None = option(
        None,
        "Tilt map: the control grid's shape (rows, cols) instead of a spacing, e.g. (4, 4).",
        kind="pair",
        low=1,
        high=1e4,
        allow_none=True,
    )
    tilt_map_start: int = option(
        5,
        "Tilt map: first iteration at which the tilt may vary over the scan; before it the map is held "
        "uniform (global APP), so the map starts from the global solution.",
        kind="int",
        low=0,
    )
    tilt_map_hold: int = option(
        13,
        "Tilt map: iteration (after tilt_map_start) from which the map's shape is held: its departure from "
        "the mean tilt is moved into the slices (which then follow a bent crystal's columns, stretch "
        "included), the propagator takes the mean tilt, learned as a global tilt. 0: the map is learned "
        "locally to the end.",
        kind="int",
        low=0,
    )
    tilt_map_regularizer: str = option(
        "smooth",
        "Tilt map: 'smooth' penalises curvature (linear bends cost nothing); 'tv' is total variation, "
        "edge preserving (grains with sharp boundaries).",
        kind="str",
        choices=("smooth", "tv"),
    )
    tilt_map_smoothness: float = option(
        1.0,
        "Tilt map: weight of the regulariser against the local drift measurements (0: none).",
        low=0,
        high=1e6,
    )
    tilt_map_vacuum: float = option(
        0.3,
        "Tilt map: control points whose phase contrast is below this fraction of the object's (90th "
        "percentile) are marked undetermined (vacuum): not learned, NaN in the map; reconstructed vacuum "
        "shows about a quarter of a thin crystal's contrast.",
        low=0,
        high=1,
    )
    iterations: int = option(20, "Passes over all scan positions.", kind="int", low=0, high=1e6)
    batch_size: int = option(64, "Scan positions per gradient step.", kind="int", low=1, high=1e6)
    probe_modes: int = option(1, "Number of mixed-state probe modes M.", kind="int", low=1, high=64)
    loss: str = option(
        "amplitude",
        "Data term: 'amplitude' (Eq. 1), 'anscombe' (Eq. 1 on sqrt(I + 3/8 count): unbiased for counts "
        "of about one electron per pixel and fewer) or 'poisson'.",
        kind="str",
        choices=("amplitude", "anscombe", "poisson"),
    )
    padded_size: int | None = option(
        None,
        "Pad the patterns to this many pixels per side in the model (halves the real-space pixel when "
        "doubled); None: no padding.",
        kind="int",
        low=2,
        high=8192,
        allow_none=True,
    )
    lr_object: float = option(2e-2, "Adam step size of the object phase (rad) and amplitude.", low=0)
    lr_probe: float = option(
        1e-2, "Adam step size of the probe, in units of its root-mean-square amplitude.", low=0
    )
    lr_tilt: float = option(0.1, "Adam step size of the tilt.", unit="mrad", low=0, high=100)
    lr_dz: float = option(
        0.5,
        "First Rprop step of the slice thickness (one step per iteration with the whole pass's gradient; "
        "grows while the gradient keeps its sign, halves when it flips; see dz_confirm_flips).",
        unit="Å",
        low=0,
        high=100,
    )
    dz_confirm_flips: bool = option(
        True,
        "APP: the slice thickness's Rprop step reverses and halves only when the pass's gradient changes "
        "sign in two passes in a row; a single change holds dz for a pass (the object lags a dz step, "
        "which flips the gradient for one pass while dz is still far off). False: plain Rprop.",
        kind="bool",
    )
    dz_companion: bool = option(
        True,
        "APP: learn the slice thickness of slices thinner than the depth of field lambda / alpha^2 on a "
        "companion model with them merged k at a time (at least 3 left), fitted beside them; thin slices "
        "bias dz high at a realistic dose. False: dz learned on the requested slices.",
        kind="bool",
    )
    start_probe: int = option(
        1, "First iteration (0-based) at which the probe is learned.", kind="int", low=0
    )
    start_tilt: int = option(1, "First iteration at which the tilt is learned (APP).", kind="int", low=0)
    start_dz: int = option(
        2, "First iteration at which the slice thickness is learned (APP).", kind="int", low=0
    )
    depth_regularization: float | None = option(
        None,
        "Weight in [0, 1) of the depth prior: after each iteration every slice moves this fraction toward "
        "its neighbours' mean. None: 0.5 for APP, 0 for FPP (whose slices must stay free for post-alignment).",
        low=0,
        high=1,
        open_high=True,
        allow_none=True,
    )
    drift_to_tilt_every: int = option(
        1,
        "APP: every this many iterations, measure the slices' remaining lateral drift with depth and move it "
        "into the tilt (an exact change of variables); 0 switches it off.",
        kind="int",
        low=0,
    )
    drift_to_tilt_start: int = option(
        1, "First iteration at which the drift-to-tilt step runs.", kind="int", low=0
    )
    refine_positions: bool = option(
        True,
        "Learn the scan positions: a global affine correction (scale, rotation, shear), a linear drift "
        "and per-position offsets regularised toward the raster.",
        kind="bool",
    )
    positions_global: bool = option(
        False,
        "Also learn the global affine correction and the linear drift of the scan (off by default: on "
        "ideal data they trade off against the learned thickness and defocus and moved the field's edge "
        "by up to 0.1 Å).",
        kind="bool",
    )
    positions_start: int = option(
        3, "First iteration at which the scan positions are learned.", kind="int", low=0
    )
    lr_positions: float = option(
        0.02, "Adam step size of the scan positions (one step per iteration).", unit="Å", low=0, high=10
    )
    positions_max_offset: float = option(
        0.5, "Largest per-position offset from the affine-corrected raster.", unit="Å", low=0, high=100
    )
    max_amplitude: float = option(
        1.0, "Upper clamp of the object amplitude (1 = no gain).", low=0, open_low=True
    )
    divergence_factor: float = option(
        1e3,
        "Stop (status 'diverged', last good state kept) when a batch's loss per position exceeds this "
        "multiple of the lowest seen, or is not finite.",
        low=1,
        open_low=True,
    )
    seed: int = option(
        0, "Random seed (mini-batch order, probe modes); CPU runs are deterministic.", kind="int", low=0
    )
    device: str = option("cpu", "Torch device: 'cpu', 'cuda', 'cuda:1' ('gpu' = 'cuda').", kind="device")

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
        """A copy with some options changed (unknown names raise :class:`~.options.OptionError`)."""
        unknown = sorted(set(changes) - set(self.options()))
        if unknown:
            raise UnknownOptionError(
                f"unknown option(s) {unknown}; the options are {sorted(self.options())}."
            )
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["tilt"] = list(self.tilt)
        return d

    @classmethod
    def from_dict(cls, params) -> SolverConfig:
        """Options from a stored dictionary (``to_dict``, or read back from HDF5/zarr).

        Unknown keys are ignored; numpy scalars and arrays are converted by the
        options' own checks; 0 for ``padded_size`` means no padding; the names
        of older versions (``tilt_alignment_*``) are read as today's.
        """
        params = dict(params)
        for old, new in _RENAMED.items():
            if old in params and new not in params:
                params[new] = params.pop(old)
        known = cls.options()
        kwargs = {}
        for key, value in params.items():
            if key not in known:
                continue
            if isinstance(value, np.ndarray):
                value = value.tolist() if value.ndim else value.item()
            if isinstance(value, np.generic):
                value = value.item()
            kwargs[key] = value
        if kwargs.get("padded_size") == 0:
            kwargs["padded_size"] = None
        return cls(**kwargs)


#: Options renamed since earlier versions (old name -> new name).
_RENAMED = {"tilt_alignment_every": "drift_to_tilt_every", "tilt_alignment_start": "drift_to_tilt_start"}


@dataclass
class ExperimentOptions(Declared):
    """Options that set the probe and the scan rather than the optimisation.

    They change the physics of the model, so a resumed run refuses them
    unless they equal the run's own values.
    """

    defocus: float | None = option(
        None,
        "Defocus = -C10 (positive = underfocus, as in abTEM and py4DSTEM); a starting value. None: the "
        "file's metadata, else 0.",
        unit="Å",
        low=-1e6,
        high=1e6,
        allow_none=True,
    )
    scan_rotation: float | None = option(
        None,
        "Rotation of the scan's fast axis from the detector's column axis, counter-clockwise with y up "
        "(clockwise as displayed, y down). None: the file's, else 0.",
        unit="deg",
        low=-360,
        high=360,
        allow_none=True,
    )
    aberrations: dict | None = option(
        None,
        "Further probe aberrations as polar coefficients, e.g. {'C30': '1.2 mm', 'C12': 20, 'phi12': 0.3} "
        "(numbers in Å, angles in rad).",
        kind="dict",
        allow_none=True,
        cli=False,
    )


@dataclass
class CalibrationOptions(Declared):
    """The data-preparation stage (:mod:`app_extension.measurements`): what it finds from the data.

    Every step is on by default; ``calibrate=False`` switches them all off, so
    the patterns are used as given (optic axis at pixel N // 2, detector axes
    along the scan axes): the behaviour and speed of earlier versions.
    """

    calibrate: bool = option(
        True,
        "Find from the data what the microscope did not record (the steps below): optic axis and descan, "
        "scan-detector rotation and transpose, bad pixels, defocus and astigmatism, semi-angle check; "
        "False: use the patterns as given.",
        kind="bool",
    )
    find_centre: bool = option(
        True, "Measure the optic axis from the bright-field disk edge and fit a linear descan.", kind="bool"
    )
    find_orientation: bool = option(
        True,
        "Measure the scan-detector rotation and transpose (bright-field parallax); `scan_rotation` and "
        "`transpose` override it.",
        kind="bool",
    )
    transpose: bool | None = option(
        None,
        "The detector is transposed relative to the scan; None: measured (or False without calibration).",
        kind="bool",
        allow_none=True,
    )
    find_bad_pixels: bool = option(
        True,
        "Detect hot and dead pixels from their mean and variance over the scan and leave them out.",
        kind="bool",
    )
    fit_aberrations: bool = option(
        True,
        "Fit defocus and two-fold astigmatism from the bright-field parallax before the run (the given "
        "defocus is only a starting value).",
        kind="bool",
    )
    use_measured_semiangle: bool = option(
        False,
        "Use the semi-angle measured from the bright-field disk instead of the stated one.",
        kind="bool",
    )
    detector_mask: object = option(
        None,
        "Pixels to leave out of the loss: a boolean (N, N) array or HyperSpy signal, True = bad pixel.",
        kind="mask",
        allow_none=True,
        cli=False,
    )
