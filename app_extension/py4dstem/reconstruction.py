"""APP multislice ptychography as a py4DSTEM-style reconstruction class.

:class:`AdaptivePropagatorPtychography` is used like py4DSTEM's
``MultislicePtychography``: construct it with the beam energy, the slicing and
a ``DataCube``, then ``preprocess()``, ``reconstruct(num_iter=...)`` (call it
again to continue) and ``visualize()``. It has no physics of its own: it
translates the DataCube's calibration into a
:class:`~app_extension.solver.config.Geometry` and
:class:`~app_extension.solver.config.SolverConfig` and runs
:func:`app_extension.solver.engine.reconstruct`, the solver behind the HyperSpy
signal too.

Conventions (py4DSTEM's, so values move between the two classes unchanged):

* Arrays are ``(Rx, Ry, Qx, Qy)``; "x" is the first array axis (rows) and "y"
  the second, in real and reciprocal space.
* ``defocus = -C10`` (positive is underfocus); aberrations are polar
  coefficients in Å with angles in radians measured from the x (row) axis.
* ``theta_x``, ``theta_y`` (mrad) are the tilts of py4DSTEM's propagator: the
  propagator is multiplied by ``exp(-2 pi i dz kx tan(theta_x))`` with ``kx``
  along the rows. This is the opposite sign of Eq. 3 of Sha, Cui & Yu (2022),
  and its x is the paper's y. In the paper's (and the HyperSpy signal's)
  convention, with x along the columns and ``theta_x > 0`` when the columns
  lean toward +x with depth, the same tilt is
  ``(theta_x_paper, theta_y_paper) = (-theta_y, -theta_x)``; see
  :meth:`AdaptivePropagatorPtychography.tilt_from_py4dstem`. The recovered
  ``theta_x``/``theta_y`` can be passed to ``MultislicePtychography`` as they are.
* ``slice_thicknesses`` has ``num_slices - 1`` entries (the propagation steps),
  all equal: APP learns one slice thickness.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np
from emdfile import Custom, Metadata, _read_metadata

from ..preparation import prepare_data
from ..signals.calibration import ENERGY_RANGE_KEV, check_bright_field_disk, convergence_mrad, energy_keV
from ..solver.config import CalibrationOptions, Geometry, SolverConfig
from ..solver.data import check_intensities
from ..solver.engine import reconstruct as _solve
from ..solver.options import OptionError, UnknownOptionError, check, check_device
from ..solver.serialize import NotAStateError, read_h5, write_h5
from ..solver.state import ReconstructionState
from ..units import to_magnitude
from .convert import read_datacube_calibration

__all__ = ["AdaptivePropagatorPtychography"]

_emd_hook = True

# py4DSTEM's polar aberration names and aliases (public constants of py4DSTEM 0.14).
_ALIASES = {
    "defocus": "C10",
    "astigmatism": "C12",
    "astigmatism_angle": "phi12",
    "coma": "C21",
    "coma_angle": "phi21",
    "Cs": "C30",
    "C5": "C50",
}
# Those the solver's probe model implements (app_extension.physics.optics).
_SUPPORTED = ("C10", "C12", "C21", "C23", "C30", "C32", "C34", "C50")
_KNOWN = (
    "C10 C12 phi12 C21 phi21 C23 phi23 C30 C32 phi32 C34 phi34 C41 phi41 C43 phi43 C45 phi45 "
    "C50 C52 phi52 C54 phi54 C56 phi56"
).split()


#: Names a user may reach for, from the HyperSpy signal or the solver, and this class's own.
_OWN_NAMES = {
    "beam_energy": "energy (in eV)",
    "convergence_angle": "semiangle_cutoff (in mrad)",
    "semiangle": "semiangle_cutoff (in mrad)",
    "slice_thickness": "slice_thicknesses",
    "tilt": "theta_x and theta_y (mrad, py4DSTEM's convention)",
    "probe_modes": "num_probes",
    "padded_size": "padded_diffraction_intensities_shape",
    "scan_step": "the DataCube's R pixel size (or preprocess(force_scan_sampling=...))",
    "detector_sampling": "the DataCube's Q pixel size (or preprocess(force_angular_sampling=...))",
}


def _polar_value(key: str, value) -> float:
    """An aberration coefficient in Å or an angle in rad (numbers, or strings with units)."""
    unit = "rad" if key.startswith("phi") else "Å"
    try:
        return to_magnitude(value, unit, key)
    except (TypeError, ValueError) as error:
        raise OptionError(f"{error} (py4DSTEM polar parameter {key!r}, in {unit})") from None


def _polar_parameters(polar_parameters: Mapping | None, kwargs: Mapping) -> dict:
    """py4DSTEM polar parameters (aliases resolved, ``defocus`` -> ``-C10``), checked."""
    params = {}
    for source in (polar_parameters or {}, kwargs):
        for key, value in source.items():
            if key == "defocus":
                params["C10"] = -_polar_value("defocus", value)
                continue
            if key in _OWN_NAMES:
                raise UnknownOptionError(
                    f"{key!r} is not an argument of AdaptivePropagatorPtychography; give {_OWN_NAMES[key]}."
                )
            name = _ALIASES.get(key, key)
            if name not in _KNOWN:
                raise UnknownOptionError(
                    f"{key!r} is not a recognised argument or aberration; aberrations are py4DSTEM polar "
                    f"names {_KNOWN} or aliases {sorted(_ALIASES)}, and solver options are "
                    f"{sorted(SolverConfig.options())}."
                )
            params[name] = _polar_value(key, value)
    unsupported = [k for k, v in params.items() if k.startswith("C") and k not in _SUPPORTED and v != 0]
    if unsupported:
        raise ValueError(
            f"Aberrations {unsupported} are not modelled by the APP probe; supported: {list(_SUPPORTED)}."
        )
    return params


def _solver_aberrations(params: Mapping) -> tuple[float, dict]:
    """(defocus, aberrations) for :class:`Geometry` from py4DSTEM polar parameters.

    py4DSTEM measures the aberration angles from its x axis (rows) toward y
    (columns); the solver from its x axis (columns) toward y (rows). The mirror
    maps an angle ``phi`` to ``pi/2 - phi``.
    """
    defocus = -params.get("C10", 0.0)
    aberrations = {}
    for name in _SUPPORTED[1:]:
        value = params.get(name, 0.0)
        if value:
            aberrations[name] = value
            angle = params.get(f"phi{name[1:]}", 0.0)
            if name[2] != "0":
                aberrations[f"phi{name[1:]}"] = float(np.pi / 2 - angle)
    return defocus, aberrations


def _checked(option: str, value, where: str | None = None):
    """A value checked against the solver option's declaration, named as the caller wrote it."""
    return check(SolverConfig.options()[option], value, where or option)


def _checked_angle(value, name: str) -> float:
    """A tilt component in mrad (number or string with units), checked."""
    opt = SolverConfig.options()["tilt"]
    return check(replace(opt, kind="float"), value, name)


def _positive(value, unit: str, name: str, high: float) -> float:
    try:
        x = to_magnitude(value, unit, name)
    except (TypeError, ValueError) as error:
        raise OptionError(str(error)) from None
    if not np.isfinite(x) or not 0 < x <= high:
        raise OptionError(f"{name}={value!r} must be between 0 and {high:g} {unit}.")
    return x


def _energy_eV(energy) -> float:
    """The beam energy in eV, as py4DSTEM takes it (numbers in eV; strings with units allowed)."""
    if energy is None:
        raise OptionError("energy must be the beam energy in eV (e.g. 300e3).")
    if isinstance(energy, str):
        try:
            energy = float(energy)  # a bare number, in eV
        except ValueError:
            pass
    if isinstance(energy, str):
        return energy_keV(energy, "energy", number_unit="eV", example="300e3 (eV)") * 1e3
    value = _positive(energy, "eV", "energy", 1e12)
    if value < 1000:
        raise OptionError(f"energy={energy} looks like keV; give it in eV (e.g. {value * 1e3:g}).")
    low, high = (1e3 * v for v in ENERGY_RANGE_KEV)
    if value > high:
        raise OptionError(
            f"energy={energy:g} eV is beyond the beam energies of electron microscopes ({low:g} to {high:g} "
            "eV); give the beam energy in eV, e.g. energy=300e3, or as a string, e.g. '300 kV'."
        )
    return value


def _check_datacube(datacube) -> None:
    """A DataCube (anything with 4D ``data`` and a ``calibration``) of square patterns, or a clear error."""
    data = getattr(datacube, "data", datacube)
    shape = tuple(np.shape(data)) if data is not None else ()
    hint = (
        f" For a stack of {shape[0]} patterns from a raster scan, reshape it first: "
        f"data.reshape(Rx, Ry, {shape[1]}, {shape[2]}) with Rx * Ry = {shape[0]}."
        if len(shape) == 3
        else ""
    )
    if not hasattr(datacube, "calibration") or not hasattr(datacube, "data"):
        raise TypeError(
            f"datacube must be a py4DSTEM DataCube, got {type(datacube).__name__} {shape}. Wrap an array of "
            "shape (Rx, Ry, Qx, Qy) with py4DSTEM.DataCube(data=array) and set its calibration "
            f"(datacube.calibration.set_R_pixel_size(...), set_Q_pixel_size(...)).{hint}"
        )
    if len(shape) != 4:
        raise ValueError(
            f"datacube holds {len(shape)}D data {shape}; the reconstruction needs 4D-STEM data "
            f"(Rx, Ry, Qx, Qy).{hint}"
        )
    if shape[2] != shape[3]:
        raise ValueError(
            f"The diffraction patterns must be square, got {shape[2]} x {shape[3]} pixels (Qx x Qy); crop "
            "them around the optic axis first (py4DSTEM: datacube.crop_Q)."
        )


#: Name of the HDF5 subgroup that holds the solver state (app_extension.solver.serialize).
_STATE_GROUP = "app_extension_state"


class AdaptivePropagatorPtychography(Custom):
    """Adaptive-propagator multislice ptychography (APP) with py4DSTEM's interface.

    Diffraction intensities dimensions  : (Rx, Ry, Qx, Qy)
    Reconstructed probe dimensions      : (Sx, Sy), or (N, Sx, Sy) for N modes
    Reconstructed object dimensions     : (T, Px, Py)

    Parameters
    ----------
    energy
        Electron energy in eV.
    num_slices
        Number of object slices T.
    slice_thicknesses
        Initial slice thickness in Å: a float, or ``num_slices - 1`` equal
        values (py4DSTEM's form). APP learns it (``mode="app"``).
    datacube
        The 4D-STEM data, calibrated (R pixel size in "A" or "nm", Q pixel
        size in "A^-1" or "mrad").
    semiangle_cutoff
        Convergence semi-angle in mrad; default: the calibration's
        ``convergence_semiangle_mrad``.
    polar_parameters
        Aberrations as py4DSTEM polar parameters (Å, angles in rad), e.g.
        ``{"C10": -200, "C30": 1e4}``. Keywords (``defocus=200``, ``C30=...``)
        work too, as in py4DSTEM; ``defocus = -C10``.
    theta_x, theta_y
        Initial tilt in mrad, py4DSTEM's convention (see the module docstring).
    num_probes
        Number of mixed-state probe modes.
    mode
        ``"app"`` learns tilt and slice thickness; ``"fpp"`` keeps them fixed
        (the conventional fixed propagator) and aligns the slices afterwards.
    tilt_map
        Learn one tilt per scan position (extended APP) instead of one.
    padded_diffraction_intensities_shape
        Pad the patterns to this square size in the model (finer real-space
        pixel); ``None`` for none.
    verbose
        Print a summary in ``preprocess`` and a progress bar in ``reconstruct``.
    device
        ``"cpu"``, ``"gpu"`` (= ``"cuda"``) or any torch device string.
    name
        Name of the node when saved with ``py4DSTEM.save``.
    **kwargs
        Aberrations by name, or further :class:`SolverConfig` options
        (``lr_tilt``, ``depth_regularization``, ``loss``, ...).

    Attributes (after ``reconstruct``)
    ----------------------------------
    object : (T, Px, Py) complex ndarray
    object_cropped : the object over the scanned field only
    probe : (Sx, Sy) or (N, Sx, Sy) complex ndarray
    error, error_iterations : last and per-iteration loss
    theta_x, theta_y : recovered tilt in mrad (py4DSTEM's convention), floats
        or (Rx, Ry) maps with ``tilt_map=True``
    tilt : (theta_x, theta_y) in the paper's convention, as the HyperSpy signal reports it
    slice_thicknesses : (T - 1,) learned slice thicknesses in Å; ``slice_thickness``, ``thickness``
    positions : (J, 2) probe positions in Å in the object frame
    sampling : real-space pixel size (Å, Å)
    history : per-iteration loss, tilt (paper's convention), slice thickness and time
    state : the solver's :class:`~app_extension.solver.state.ReconstructionState`
    """

    def __init__(
        self,
        energy: float,
        num_slices: int,
        slice_thicknesses: float | Sequence[float],
        datacube=None,
        semiangle_cutoff: float | None = None,
        polar_parameters: Mapping[str, float] | None = None,
        theta_x: float = 0.0,
        theta_y: float = 0.0,
        num_probes: int = 1,
        mode: str = "app",
        tilt_map: bool = False,
        padded_diffraction_intensities_shape: int | tuple[int, int] | None = None,
        verbose: bool = True,
        device: str = "cpu",
        name: str = "adaptive-propagator_ptychographic_reconstruction",
        **kwargs,
    ):
        Custom.__init__(self, name=name)
        if datacube is not None:
            _check_datacube(datacube)
        self._energy = _energy_eV(energy)
        self._num_slices = _checked("num_slices", num_slices)
        if isinstance(slice_thicknesses, str) or np.ndim(slice_thicknesses) == 0:
            dz = [_checked("slice_thickness", slice_thicknesses, "slice_thicknesses")]
        else:
            dz = [
                _checked("slice_thickness", v, f"slice_thicknesses[{i}]")
                for i, v in enumerate(slice_thicknesses)
            ]
        if len(dz) > 1:
            if len(dz) != self._num_slices - 1:
                raise OptionError(
                    f"slice_thicknesses must be a float or {self._num_slices - 1} values (num_slices - 1), "
                    f"got {len(dz)}."
                )
            if not np.allclose(dz, dz[0]):
                raise OptionError(
                    f"APP learns one slice thickness for all slices; give equal slice_thicknesses (got {dz})."
                )
        self._initial_slice_thickness = float(dz[0])
        self._semiangle_cutoff = (
            None if semiangle_cutoff is None else convergence_mrad(semiangle_cutoff, "semiangle_cutoff")
        )
        theta_x = _checked_angle(theta_x, "theta_x")
        theta_y = _checked_angle(theta_y, "theta_y")
        reserved = {"mode", "num_slices", "slice_thickness", "tilt", "tilt_map", "probe_modes", "padded_size"}
        solver_options = {k: kwargs.pop(k) for k in list(kwargs) if k in SolverConfig.options()}
        clash = reserved & set(solver_options)
        if clash:
            own = {"mode": "mode", "num_slices": "num_slices", "tilt_map": "tilt_map", **_OWN_NAMES}
            raise OptionError(
                "Give these through the constructor's own arguments: "
                + "; ".join(f"{k} as {own[k]}" for k in sorted(clash))
                + "."
            )
        self._polar_parameters = _polar_parameters(polar_parameters, kwargs)
        if isinstance(padded_diffraction_intensities_shape, Sequence) and not isinstance(
            padded_diffraction_intensities_shape, str
        ):
            shape = tuple(padded_diffraction_intensities_shape)
            if len(shape) != 2 or shape[0] != shape[1]:
                raise OptionError(
                    f"padded_diffraction_intensities_shape must be square, e.g. (128, 128), got {shape}."
                )
            padded_diffraction_intensities_shape = shape[0]
        if padded_diffraction_intensities_shape is not None:
            padded_diffraction_intensities_shape = _checked(
                "padded_size", padded_diffraction_intensities_shape, "padded_diffraction_intensities_shape"
            )
        self._device = check_device(device)
        self._verbose = bool(verbose)
        self._config = SolverConfig(
            mode=mode,
            num_slices=self._num_slices,
            slice_thickness=self._initial_slice_thickness,
            tilt=self.tilt_from_py4dstem(theta_x, theta_y),
            tilt_map=tilt_map,
            probe_modes=_checked("probe_modes", num_probes, "num_probes"),
            padded_size=padded_diffraction_intensities_shape,
            device=self._device,
            **solver_options,
        )
        self._datacube = datacube
        self._geometry: Geometry | None = None
        self._intensities: np.ndarray | None = None
        self._flip = False
        self._scan_shape: tuple[int, int] | None = None
        self._calibration: dict = {}
        self._calibration_options: CalibrationOptions | None = None
        self._force_rotation: float | None = None
        self._report: dict | None = None
        self._detector_mask: np.ndarray | None = None
        self.state: ReconstructionState | None = None
        self._preprocessed = False

    # ------------------------------------------------------------------ conventions
    @staticmethod
    def tilt_from_py4dstem(theta_x: float, theta_y: float) -> tuple[float, float]:
        """py4DSTEM's (theta_x, theta_y) -> the paper's/solver's (theta_x, theta_y), mrad.

        py4DSTEM's x is the first array axis (the solver's y) and its tilt term
        has the opposite sign, so the map is ``(tx, ty) -> (-ty, -tx)``. It is
        its own inverse.
        """
        return (-float(theta_y) + 0.0, -float(theta_x) + 0.0)

    tilt_to_py4dstem = tilt_from_py4dstem

    # ------------------------------------------------------------------ preprocess
    def attach_datacube(self, datacube) -> AdaptivePropagatorPtychography:
        """Attach the data (e.g. to a reconstruction read from file, to continue it)."""
        _check_datacube(datacube)
        self._datacube = datacube
        if self._geometry is not None:
            self._intensities = self._read_intensities(datacube)
        return self

    def _read_intensities(self, datacube) -> np.ndarray:
        """The solver's patterns: through the data-preparation stage (app_extension.preparation)."""
        _check_datacube(datacube)
        data = np.asarray(datacube.data)
        if self._scan_shape is not None and tuple(data.shape[:2]) != tuple(self._scan_shape):
            raise ValueError(
                f"The DataCube's scan {data.shape[:2]} differs from the reconstruction's {self._scan_shape}."
            )
        options = getattr(self, "_calibration_options", None) or CalibrationOptions(calibrate=False)
        if not options.calibrate:
            self._report, self._detector_mask = None, None
            if self._flip:
                data = np.swapaxes(data, 2, 3)
            return check_intensities(data)
        thickness = self._num_slices * self._initial_slice_thickness
        inputs = prepare_data(
            data,
            self._geometry,
            self._scan_shape,
            options,
            scan_rotation=self._force_rotation,
            thickness=thickness,
            device=self._device,
        )
        self._geometry = inputs.geometry
        self._report = inputs.report.to_dict()
        self._detector_mask = inputs.detector_mask
        return inputs.patterns

    def preprocess(
        self,
        force_scan_sampling: float | None = None,
        force_angular_sampling: float | None = None,
        force_reciprocal_sampling: float | None = None,
        force_scan_rotation: float | None = None,
        force_transpose: bool | None = None,
        initial_scan_positions: np.ndarray | None = None,
        **calibration_options,
    ) -> AdaptivePropagatorPtychography:
        """Read the DataCube's calibration, find what it lacks from the data, and set up the solver.

        Parameters
        ----------
        force_scan_sampling
            Scan step in Å, overriding the R calibration.
        force_angular_sampling, force_reciprocal_sampling
            Detector pixel in mrad or in 1/Å, overriding the Q calibration.
        force_scan_rotation
            Rotation in degrees with the meaning of the calibration's
            ``QR_rotation_degrees`` (default: the calibration's, else 0).
        force_transpose
            Swap the detector axes (the calibration's ``QR_flip``; default: its value, else False).
        initial_scan_positions
            (J, 2) probe positions in Å, (x, y) = (row, column) order, instead of the raster.
        **calibration_options
            The data-preparation stage's switches (the same as ``ptycho_app``'s):
            ``calibrate`` (default True: optic axis and descan, rotation and
            transpose, bad pixels, defocus and astigmatism found from the data;
            ``force_scan_rotation`` and ``force_transpose`` override the
            measured orientation), ``find_centre``, ``find_orientation``,
            ``find_bad_pixels``, ``fit_aberrations``, ``use_measured_semiangle``,
            ``detector_mask``. The report is :attr:`calibration_report`.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            If there is no DataCube, or its calibration is missing or in pixels
            (the message names the py4DSTEM calls that set it).
        """
        if self._datacube is None:
            raise ValueError(
                "No DataCube: pass datacube= to the constructor or call attach_datacube(datacube) first."
            )
        _check_datacube(self._datacube)
        unknown = sorted(set(calibration_options) - set(CalibrationOptions.options()))
        if unknown:
            raise UnknownOptionError(
                f"preprocess got unknown option(s) {unknown}; its calibration options are "
                f"{sorted(CalibrationOptions.options())}."
            )
        self._calibration_options = CalibrationOptions(**dict(calibration_options, transpose=force_transpose))
        calibrating = self._calibration_options.calibrate
        self._force_rotation = force_scan_rotation
        cal = read_datacube_calibration(
            self._datacube,
            energy=self._energy,
            force_scan_sampling=force_scan_sampling,
            force_angular_sampling=force_angular_sampling,
            force_reciprocal_sampling=force_reciprocal_sampling,
        )
        semiangle = self._semiangle_cutoff if self._semiangle_cutoff is not None else cal["semiangle"]
        if semiangle is None:
            raise ValueError(
                "The convergence semi-angle is unknown: pass semiangle_cutoff= (mrad) or set "
                "datacube.calibration.set_convergence_semiangle_mrad(...)."
            )
        self._semiangle_cutoff = convergence_mrad(semiangle, "semiangle_cutoff")
        rotation = cal["rotation_deg"] if force_scan_rotation is None else float(force_scan_rotation)
        self._flip = cal["flip"] if force_transpose is None else bool(force_transpose)
        data_shape = np.shape(self._datacube.data)
        self._scan_shape = tuple(int(n) for n in data_shape[:2])
        if not calibrating:  # else the optic axis is measured
            self._check_origin(data_shape)
        check_bright_field_disk(
            self._semiangle_cutoff,
            cal["angular_sampling"],
            int(data_shape[-1]),
            "semiangle_cutoff= and the DataCube's Q pixel size, or preprocess(force_angular_sampling=...)",
            ("semiangle_cutoff", "Q_pixel_size"),
        )
        padded = self._config.padded_size
        if padded is not None and padded < max(data_shape[-2:]):
            raise OptionError(
                f"padded_diffraction_intensities_shape={padded} is smaller than the patterns "
                f"({data_shape[-2]} x {data_shape[-1]}); give at least {max(data_shape[-2:])}, or None."
            )
        if initial_scan_positions is None:
            # with the calibration stage, the patterns are turned into the scan frame instead
            positions = Geometry.raster(self._scan_shape, cal["scan_step"], 0.0 if calibrating else rotation)
        else:
            positions = np.asarray(initial_scan_positions, dtype=np.float64)
        defocus, aberrations = _solver_aberrations(self._polar_parameters)
        self._geometry = Geometry(
            energy=self._energy,
            semiangle=self._semiangle_cutoff,
            reciprocal_sampling=cal["reciprocal_sampling"],
            scan_positions=positions,
            defocus=defocus,
            aberrations=aberrations,
        )
        self._calibration = dict(cal, rotation_deg=rotation, flip=self._flip)
        self._intensities = self._read_intensities(self._datacube)
        if self._report is not None:
            rotation, self._flip = self._report["rotation_deg"], bool(self._report["transposed"])
            self._calibration.update(rotation_deg=rotation, flip=self._flip)
        self.state = None
        self._preprocessed = True
        if self._verbose:
            print(
                f"{type(self).__name__}: {self._intensities.shape[0]} patterns of "
                f"{self._intensities.shape[-1]} px, scan step {cal['scan_step']:.4g} Å, detector "
                f"{cal['reciprocal_sampling']:.4g} 1/Å ({cal['angular_sampling']:.4g} mrad) per px, "
                f"rotation {rotation:g}°, transpose {self._flip}, mode {self._config.mode}."
            )
        return self

    def _check_origin(self, shape) -> None:
        cal = self._datacube.calibration
        for name, value, n in (
            ("qx0_mean", cal.get_qx0_mean(), shape[2]),
            ("qy0_mean", cal.get_qy0_mean(), shape[3]),
        ):
            if value is not None and abs(float(value) - n // 2) > 1.0:
                raise ValueError(
                    f"The patterns' origin {name}={float(value):.2f} px is not at the centre pixel {n // 2}; "
                    "the model expects the optic axis at pixel N // 2. Centre the patterns first, e.g. "
                    "shift them so the unscattered beam sits at (Qx // 2, Qy // 2)."
                )

    # ------------------------------------------------------------------ reconstruct
    def reconstruct(
        self,
        num_iter: int = 8,
        reset: bool | None = None,
        max_batch_size: int | None = None,
        seed_random: int | None = None,
        progress_bar: bool | None = None,
        device: str | None = None,
        callback: Callable | None = None,
        checkpoint: str | None = None,
        **solver_options,
    ) -> AdaptivePropagatorPtychography:
        """Run ``num_iter`` iterations; called again, it continues from where it stopped.

        Parameters
        ----------
        num_iter
            Iterations (passes over all scan positions) to run now.
        reset
            Start again from the initial object, probe, tilt and thickness.
        max_batch_size
            Scan positions per gradient step (default 64).
        seed_random
            Random seed (mini-batch order, probe modes).
        progress_bar
            Show a progress bar (default: ``verbose``).
        device
            Move the run to this device (``"cpu"``, ``"gpu"``/``"cuda"``).
        callback, checkpoint
            Passed to :func:`app_extension.solver.engine.reconstruct`.
        **solver_options
            :class:`SolverConfig` options for this and later calls, e.g.
            ``lr_tilt=0.05``, ``depth_regularization=0.3``, ``mode="fpp"``.

        Returns
        -------
        self
        """
        if not self._preprocessed:
            raise RuntimeError("Call preprocess() before reconstruct().")
        if self._intensities is None:
            raise RuntimeError(
                "This reconstruction has no data attached (it was read from file): call "
                "attach_datacube(datacube) with the same DataCube, then reconstruct()."
            )
        unknown = set(solver_options) - set(SolverConfig.options())
        if unknown:
            raise UnknownOptionError(
                f"Unknown reconstruct option(s) {sorted(unknown)}; the options are {sorted(SolverConfig.options())}."
            )
        changes = dict(solver_options, iterations=_checked("iterations", num_iter, "num_iter"))
        if max_batch_size is not None:
            changes["batch_size"] = _checked("batch_size", max_batch_size, "max_batch_size")
        if seed_random is not None:
            changes["seed"] = _checked("seed", seed_random, "seed_random")
        if device is not None:
            self._device = check_device(device)
        changes["device"] = self._device
        self._config = self._config.replace(**changes)
        if reset:
            self.state = None
        show = self._verbose if progress_bar is None else bool(progress_bar)
        self.state = _solve(
            self._intensities,
            self._geometry,
            self._config,
            state=self.state,
            show_progressbar=show,
            callback=callback,
            checkpoint=checkpoint,
            detector_mask=getattr(self, "_detector_mask", None),
        )
        if self.state.status != "ok":
            warnings.warn(f"The reconstruction stopped early: status {self.state.status!r}.", stacklevel=2)
        return self

    # ------------------------------------------------------------------ results
    def _need_state(self) -> ReconstructionState:
        if self.state is None:
            raise RuntimeError("No reconstruction yet: call preprocess() and reconstruct() first.")
        return self.state

    @property
    def tilt_map(self):
        """The tilt map (extended APP, ``tilt_map=True``) as a HyperSpy signal: (θx, θy) in mrad over the
        scan axes, in this project's (the paper's) convention, with the uniformity verdict in its
        metadata; None for a global-tilt run."""
        from ..results import tilt_map_to_signal

        state = self._need_state()
        if not state.has_tilt_map:
            return None
        return tilt_map_to_signal(state, self._geometry, self._scan_shape)

    @property
    def calibration_report(self) -> dict | None:
        """What the data-preparation stage found (optic axis, descan, rotation, transpose, bad pixels,
        defocus, astigmatism), or None when it was off."""
        return self._report

    @property
    def config(self) -> SolverConfig:
        """The solver options in use."""
        return self._config

    @property
    def geometry(self) -> Geometry | None:
        """The solver geometry read from the DataCube (after ``preprocess``)."""
        return self._geometry

    @property
    def object(self) -> np.ndarray:
        """Complex object slices (T, Px, Py)."""
        return self._need_state().object

    @property
    def object_phase(self) -> np.ndarray:
        """Phase of the object slices (T, Px, Py), rad."""
        return np.angle(self.object)

    @property
    def object_cropped(self) -> np.ndarray:
        """The object over the scanned field only (T, px, py)."""
        state = self._need_state()
        rows, cols = state.scan_window(int(state.probe.shape[-1]))
        return state.object[:, rows, cols]

    @property
    def probe(self) -> np.ndarray:
        """Probe, centred: (Sx, Sy), or (N, Sx, Sy) with N > 1 modes."""
        probe = self._need_state().probe.detach().cpu().numpy()
        return probe[0] if probe.shape[0] == 1 else probe

    @property
    def error_iterations(self) -> list[float]:
        """Loss after each iteration."""
        return list(self._need_state().history["loss"])

    @property
    def error(self) -> float:
        """Loss of the last iteration."""
        errors = self.error_iterations
        return errors[-1] if errors else float("nan")

    @property
    def tilt(self) -> np.ndarray:
        """Recovered tilt (theta_x, theta_y) in mrad in the paper's convention; (Rx*Ry, 2) for a map."""
        return self._need_state().tilt_mrad

    def _theta(self, index: int):
        tilt = self.tilt
        if tilt.ndim == 1:
            return -float(tilt[index])
        return -tilt[:, index].reshape(self._scan_shape)

    @property
    def theta_x(self):
        """Recovered tilt along x (rows) in mrad, py4DSTEM's convention."""
        return self._theta(1)

    @property
    def theta_y(self):
        """Recovered tilt along y (columns) in mrad, py4DSTEM's convention."""
        return self._theta(0)

    @property
    def slice_thickness(self) -> float:
        """Learned slice thickness in Å."""
        return self._need_state().dz

    @property
    def slice_thicknesses(self) -> np.ndarray:
        """(num_slices - 1,) slice thicknesses in Å, as py4DSTEM's classes take them."""
        return np.full(self._num_slices - 1, self.slice_thickness)

    @property
    def thickness(self) -> float:
        """Specimen thickness num_slices * slice_thickness in Å."""
        return self._need_state().thickness

    @property
    def sampling(self) -> tuple[float, float]:
        """Real-space pixel size (Å, Å)."""
        s = float(self._need_state().sampling)
        return (s, s)

    @property
    def positions(self) -> np.ndarray:
        """(J, 2) probe positions in Å in the object frame, (x, y) = (row, column)."""
        state = self._need_state()
        window = int(state.probe.shape[-1])
        return (state.window_corners.detach().cpu().numpy().astype(np.float64) + window // 2) * state.sampling

    @property
    def history(self) -> dict:
        """Per-iteration loss, tilt_x/tilt_y (paper's convention, mrad), slice_thickness (Å), time (s)."""
        return {k: list(v) for k, v in self._need_state().history.items()}

    @property
    def iteration(self) -> int:
        """Iterations completed."""
        return 0 if self.state is None else int(self.state.iteration)

    def __repr__(self) -> str:
        if self.state is None:
            return f"<{type(self).__name__} ({self._config.mode}), not reconstructed>"
        return (
            f"<{type(self).__name__} ({self._config.mode}): iteration {self.iteration}, "
            f"theta_x {np.mean(self.theta_x):.2f} mrad, theta_y {np.mean(self.theta_y):.2f} mrad "
            f"(py4DSTEM convention), slice thickness {self.slice_thickness:.3f} Å, error {self.error:.4g}>"
        )

    # ------------------------------------------------------------------ visualize
    def visualize(self, fig=None, cbar: bool = True, plot_convergence: bool = True, plot_probe: bool = True):
        """Plot the summed phase, the probe and the error, tilt and slice-thickness histories.

        Parameters
        ----------
        fig
            A matplotlib Figure to draw into (cleared); default: a new one.
        cbar
            Add colour bars.
        plot_convergence
            Plot the histories.
        plot_probe
            Plot the probe intensity.

        Returns
        -------
        matplotlib.figure.Figure
        """
        import matplotlib.pyplot as plt

        state = self._need_state()
        panels = 1 + int(plot_probe) + 3 * int(plot_convergence)
        if fig is None:
            fig = plt.figure(figsize=(3.2 * panels, 3.2), layout="constrained")
        else:
            fig.clear()
        axes = fig.subplots(1, panels, squeeze=False)[0]
        ext_y, ext_x = (n * state.sampling for n in self.object_cropped.shape[1:])
        phase = np.angle(self.object_cropped).sum(axis=0)
        im = axes[0].imshow(phase, cmap="magma", extent=(0, ext_x, ext_y, 0))
        axes[0].set(title="phase, summed over slices", xlabel="y [Å]", ylabel="x [Å]")
        if cbar:
            fig.colorbar(im, ax=axes[0], shrink=0.8, label="rad")
        k = 1
        if plot_probe:
            intensity = (np.abs(state.probe.detach().cpu().numpy()) ** 2).sum(axis=0)
            n = intensity.shape[-1] * state.sampling
            im = axes[k].imshow(intensity, cmap="gray", extent=(0, n, n, 0))
            axes[k].set(title="probe intensity", xlabel="y [Å]", ylabel="x [Å]")
            if cbar:
                fig.colorbar(im, ax=axes[k], shrink=0.8)
            k += 1
        if plot_convergence:
            hist = state.history
            it = np.arange(1, len(hist["loss"]) + 1)
            axes[k].semilogy(it, hist["loss"], ".-")
            axes[k].set(title="error", xlabel="iteration")
            theta_x = -np.asarray(hist["tilt_y"])
            theta_y = -np.asarray(hist["tilt_x"])
            axes[k + 1].plot(it, theta_x, ".-", label="theta_x")
            axes[k + 1].plot(it, theta_y, ".-", label="theta_y")
            axes[k + 1].set(title="tilt (py4DSTEM convention)", xlabel="iteration", ylabel="mrad")
            axes[k + 1].legend()
            axes[k + 2].plot(it, hist["slice_thickness"], ".-")
            axes[k + 2].set(title="slice thickness", xlabel="iteration", ylabel="Å")
        return fig

    # ------------------------------------------------------------------ HyperSpy
    def to_hyperspy(self, **kwargs):
        """The result as the calibrated HyperSpy signal that ``s.ptycho_app()`` returns.

        Keyword arguments go to :func:`app_extension.results.state_to_signal`.
        """
        from ..results import state_to_signal

        state = self._need_state()
        title = getattr(self._datacube, "name", "") or ""
        tem = {"beam_energy": self._energy / 1e3, "convergence_angle": self._semiangle_cutoff}
        options = {
            "title": f"{self._config.mode.upper()} ptychography" + (f" of {title}" if title else ""),
            "metadata": {"Acquisition_instrument": {"TEM": tem}},
            "scan_shape": self._scan_shape,
            "extra_parameters": {
                "scan_rotation": float(self._calibration.get("rotation_deg", 0.0)),
                "scan_rotation_units": "deg",
            },
        }
        options.update(kwargs)
        options.setdefault("calibration", self._report)
        return state_to_signal(state, self._config, self._geometry, **options)

    # ------------------------------------------------------------------ file i/o (emdfile)
    def to_h5(self, group):
        """Write to an open HDF5 group (used by ``py4DSTEM.save``); the DataCube is not saved."""
        state = self._need_state()
        instantiation = {
            "energy": self._energy,
            "num_slices": self._num_slices,
            "slice_thicknesses": self._initial_slice_thickness,
            "semiangle_cutoff": self._semiangle_cutoff,
            "polar_parameters": json.dumps(self._polar_parameters),
            "num_probes": self._config.probe_modes,
            "mode": self._config.mode,
            "tilt_map": self._config.tilt_map,
            "verbose": self._verbose,
            "name": self.name,
        }
        self.metadata = Metadata(name="instantiation_metadata", data=instantiation)
        # The solver's state goes in the one serialised form shared with the checkpoint
        # and the HyperSpy result (app_extension.solver.serialize), as a subgroup.
        tree = state.to_tree(
            extra={
                "config": self._config.to_dict(),
                "geometry": self._geometry.to_dict(),
                "calibration": self._calibration,
                "scan_shape": list(self._scan_shape),
                "flip": bool(self._flip),
            }
        )
        datacube, self._datacube = self._datacube, None
        try:
            group = Custom.to_h5(self, group)
        finally:
            self._datacube = datacube
        write_h5(group.create_group(_STATE_GROUP), tree)
        return group

    @classmethod
    def _get_constructor_args(cls, group) -> dict:
        md = _read_metadata(group, "instantiation_metadata")
        config = read_h5(group[_STATE_GROUP])["extra"]["config"]
        theta_x, theta_y = cls.tilt_to_py4dstem(*config["tilt"])
        return {
            "energy": md["energy"],
            "num_slices": md["num_slices"],
            "slice_thicknesses": md["slice_thicknesses"],
            "semiangle_cutoff": md["semiangle_cutoff"],
            "polar_parameters": json.loads(md["polar_parameters"]),
            "num_probes": md["num_probes"],
            "mode": md["mode"],
            "tilt_map": md["tilt_map"],
            "verbose": md["verbose"],
            "name": md["name"],
            "theta_x": theta_x,
            "theta_y": theta_y,
        }

    def _populate_instance(self, group) -> None:
        if _STATE_GROUP not in group:
            raise NotAStateError(
                f"{group.name} holds no app_extension state; was it written by this version?"
            )
        self.state, extra = ReconstructionState.from_tree(read_h5(group[_STATE_GROUP]), with_extra=True)
        self._config = SolverConfig.from_dict(extra["config"])
        self._device = self._config.device
        self._geometry = Geometry(**extra["geometry"])
        self._calibration = extra["calibration"]
        self._scan_shape = tuple(extra["scan_shape"])
        self._flip = bool(extra["flip"])
        self._intensities = None
        self._preprocessed = True

    def save(self, path, mode: str = "w") -> None:
        """Write the reconstruction to an EMD/HDF5 file (same as ``py4DSTEM.save(path, self)``)."""
        import py4DSTEM

        py4DSTEM.save(path, self, mode=mode)

    @classmethod
    def load(cls, path, datacube=None) -> AdaptivePropagatorPtychography:
        """Read a reconstruction written by :meth:`save` or ``py4DSTEM.save``.

        Parameters
        ----------
        path
            The file.
        datacube
            Optionally the same DataCube, attached so ``reconstruct`` can continue.
        """
        import os

        import h5py
        import py4DSTEM

        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file.")
        if not h5py.is_hdf5(path):
            raise NotAStateError(
                f"{path} is not a saved {cls.__name__} (not an HDF5 file). Give a file written with "
                "save() or py4DSTEM.save()."
            )
        try:
            obj = py4DSTEM.read(path)
        except Exception as error:  # noqa: BLE001 - py4DSTEM raises bare Exceptions for foreign files
            raise NotAStateError(
                f"{path} is not a saved {cls.__name__}: py4DSTEM cannot read it ({error}). Give a file "
                "written with save() or py4DSTEM.save()."
            ) from None
        if not isinstance(obj, cls):
            raise ValueError(f"{path} holds a {type(obj).__name__}, not an {cls.__name__}.")
        if datacube is not None:
            obj.attach_datacube(datacube)
        return obj
