"""The HyperSpy signal for 4D-STEM multislice ptychography with an adaptive propagator.

``s.set_signal_type("ptychography")`` turns a 4D-STEM signal (navigation =
scan, signal = detector) into :class:`AppPtychography2D`; ``s.ptycho_app()``
reconstructs it with the solver in :mod:`app_extension.solver` and returns the
object as a calibrated complex signal (see :func:`app_extension.results.state_to_signal`).

This module only translates: calibration (:mod:`.calibration`), options
(names and units a user reads) and data loading in, the result signal out.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from hyperspy._signals.lazy_signal2d import LazySignal2D
from hyperspy._signals.signal2d import Signal2D
from hyperspy.docstrings.signal import SHOW_PROGRESSBAR_ARG

from ..units import angstrom_in, to_magnitude
from .calibration import geometry_from_signal, raster_rotation, set_experimental_parameters

__all__ = ["AppPtychography2D", "LazyAppPtychography2D"]

# Options passed to SolverConfig unchanged (numbers, strings, flags).
_PLAIN_OPTIONS = (
    "mode",
    "num_slices",
    "iterations",
    "probe_modes",
    "batch_size",
    "device",
    "seed",
    "tilt_map",
    "loss",
    "padded_size",
    "lr_object",
    "lr_probe",
    "lr_tilt",
    "lr_dz",
    "start_probe",
    "start_tilt",
    "start_dz",
    "depth_regularization",
    "drift_to_tilt_every",
    "drift_to_tilt_start",
    "max_amplitude",
    "divergence_factor",
)


def _tilt_pair(tilt) -> tuple[float, float]:
    if isinstance(tilt, str) or np.ndim(tilt) == 0 or len(tilt) != 2:
        raise ValueError(
            f"tilt must be a pair (theta_x, theta_y), each in mrad or a string such as '3 mrad'; got {tilt!r}."
        )
    return (to_magnitude(tilt[0], "mrad", "tilt[0]"), to_magnitude(tilt[1], "mrad", "tilt[1]"))


class AppPtychography2D(Signal2D):
    """4D-STEM data (navigation: scan x, y; signal: detector kx, ky) for multislice ptychography.

    Calibrate it with :meth:`set_experimental_parameters` (or the axes and
    ``metadata.Acquisition_instrument.TEM``), then call :meth:`ptycho_app`.
    """

    _signal_type = "ptychography"

    def set_experimental_parameters(
        self,
        beam_energy: float | str | None = None,
        convergence_angle: float | str | None = None,
        scan_step: float | str | None = None,
        detector_sampling: float | str | None = None,
    ) -> None:
        """Set the calibration the reconstruction needs (only what is given).

        Parameters
        ----------
        beam_energy
            In keV, or a string: "300 keV", "300 kV".
        convergence_angle
            Convergence semi-angle in mrad, or a string: "22 mrad".
        scan_step
            Scan step in Å, or a string: "0.39 Å", "0.039 nm" (both scan axes).
        detector_sampling
            Detector pixel in 1/Å, or a string: "0.0508 1/Å", "0.508 1/nm",
            "1 mrad" (both detector axes; the offset puts k = 0 at pixel
            N // 2, where the reconstruction expects the optic axis).

        Examples
        --------
        >>> s.set_experimental_parameters(beam_energy=300, convergence_angle=22,
        ...                               scan_step="0.39 Å", detector_sampling="1 mrad")
        """
        set_experimental_parameters(self, beam_energy, convergence_angle, scan_step, detector_sampling)

    def _intensities(self) -> np.ndarray:
        """The patterns as one float32 array; lazy data are copied in block by block."""
        if not self._lazy:
            return np.asarray(self.data)
        import dask.array as da

        out = np.empty(self.data.shape, dtype=np.float32)
        da.store(self.data.astype(np.float32), out, lock=False)
        return out

    def ptycho_app(
        self,
        mode: str | None = None,
        num_slices: int | None = None,
        slice_thickness: float | str | None = None,
        iterations: int | None = None,
        tilt: tuple | None = None,
        defocus: float | str | None = None,
        probe_modes: int | None = None,
        batch_size: int | None = None,
        device: str | None = None,
        seed: int | None = None,
        show_progressbar: bool | None = None,
        *,
        scan_rotation: float | str | None = None,
        aberrations: dict | None = None,
        tilt_map: bool | None = None,
        loss: str | None = None,
        padded_size: int | None = None,
        lr_object: float | None = None,
        lr_probe: float | None = None,
        lr_tilt: float | None = None,
        lr_dz: float | None = None,
        start_probe: int | None = None,
        start_tilt: int | None = None,
        start_dz: int | None = None,
        depth_regularization: float | None = None,
        drift_to_tilt_every: int | None = None,
        drift_to_tilt_start: int | None = None,
        max_amplitude: float | None = None,
        divergence_factor: float | None = None,
        resume=None,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = 5,
        callback=None,
        depth_units: str = "Å",
        **solver_options,
    ):
        """Multislice ptychography with an adaptive propagator (APP) or a fixed one (FPP).

        APP learns the specimen tilt and the slice thickness together with the
        object and probe (Sha, Cui & Yu, Sci. Adv. 8, eabn2275, 2022). Options
        left at ``None`` take the solver's defaults
        (:class:`app_extension.solver.config.SolverConfig`), or, when
        continuing with ``resume``, the previous run's values.

        Lengths and angles are numbers in the unit given below or strings pint
        reads ("2 nm", "200 Å", "3 mrad").

        Parameters
        ----------
        mode
            ``"app"`` (tilt and thickness learned) or ``"fpp"`` (fixed
            propagator at ``tilt`` and ``slice_thickness``, then the slices are
            post-aligned to measure the tilt).
        num_slices
            Number of object slices.
        slice_thickness
            Initial slice thickness, Å.
        iterations
            Passes over all scan positions (with ``resume``: how many more).
        tilt
            Initial specimen tilt (theta_x, theta_y), mrad each; theta_x > 0
            means columns lean toward +x with depth.
        defocus
            Defocus in Å, ``-C10`` as in abTEM and py4DSTEM (positive =
            underfocus). Default 0 (or the resumed run's).
        probe_modes
            Number of mixed-state probe modes.
        batch_size
            Scan positions per gradient step.
        device
            Torch device, "cpu" or "cuda".
        seed
            Random seed (mini-batch order, probe modes).
        %s
        scan_rotation
            Scan rotation in degrees (counter-clockwise from the detector x
            axis), or a string ("35 mrad"). Default 0, or with ``resume`` the
            previous run's scan positions.
        aberrations
            Further aberrations, e.g. ``{"C30": "1.2 mm"}`` (numbers in Å).
        tilt_map
            Learn one tilt per scan position instead of one global tilt.
        loss
            "amplitude" or "poisson".
        padded_size
            Pad the patterns to this many pixels per side in the model.
        lr_object, lr_probe, lr_tilt, lr_dz
            Adam step sizes of the object, probe, tilt (mrad) and slice
            thickness (Å).
        start_probe, start_tilt, start_dz
            First iteration (0-based) at which each is learned.
        depth_regularization
            Weight in [0, 1) of the smoothness prior along depth.
        drift_to_tilt_every, drift_to_tilt_start
            APP: move the slices' lateral drift into the tilt every this many
            iterations, from this iteration on (0 = never).
        max_amplitude
            Upper clamp of the object amplitude.
        divergence_factor
            Stop (status "diverged", last good state kept) when a batch's loss
            exceeds this multiple of the lowest seen in the run.
        resume
            Continue from a previous result (the signal this method returned,
            or a .hspy/.zspy file it was saved to), a checkpoint file written
            with ``checkpoint=``, or a ``ReconstructionState``.
        checkpoint, checkpoint_every
            Write the solver state to this file every ``checkpoint_every``
            iterations and at the end.
        callback
            Called with the solver state after every iteration.
        depth_units
            Units of the result's depth axis ("Å" or "nm").
        **solver_options
            Any other :class:`~app_extension.solver.config.SolverConfig`
            option, by name.

        Returns
        -------
        hyperspy.signals.ComplexSignal2D
            The object (transmission function): navigation axis ``z`` =
            slice depth (scale = recovered slice thickness), signal axes
            ``x``, ``y`` in Å in the scan frame. ``metadata.Signal.Ptychography``
            holds ``tilt_x``, ``tilt_y`` (mrad), ``slice_thickness``,
            ``thickness`` (Å), ``num_slices``, ``loss``, ``status``, the full
            parameter set, the ``probe`` and the ``history`` signals, and, for
            FPP, ``Post_alignment``.

        Raises
        ------
        UncalibratedError
            When the scan or detector axes, the beam energy or the convergence
            angle are missing, before any computation.

        Examples
        --------
        >>> s.set_signal_type("ptychography")
        >>> s.set_experimental_parameters(beam_energy=300, convergence_angle=22)
        >>> obj = s.ptycho_app(defocus="20 nm", num_slices=5, slice_thickness="2.6 nm")
        >>> obj.metadata.Signal.Ptychography.tilt_x
        >>> obj.phase.plot()
        """
        given = dict(locals())
        from ..results import load_resume, state_to_signal
        from ..solver.config import SolverConfig
        from ..solver.engine import reconstruct

        state, base_config, base_geometry = (None, None, None) if resume is None else load_resume(resume)
        base_geometry = base_geometry or {}
        if defocus is None:
            defocus = float(base_geometry.get("defocus", 0.0))
        if aberrations is None:
            aberrations = dict(base_geometry.get("aberrations", {}))
        # Everything is checked before the data are touched.
        geometry = geometry_from_signal(
            self, defocus=defocus, scan_rotation=scan_rotation or 0.0, aberrations=aberrations
        )
        rotation = to_magnitude(scan_rotation or 0.0, "deg", "scan_rotation")
        if scan_rotation is None and "scan_positions" in base_geometry:
            previous = np.asarray(base_geometry["scan_positions"], dtype=np.float64)
            if previous.shape == geometry.scan_positions.shape:
                geometry.scan_positions = previous  # continue on the previous run's scan
                rotation = raster_rotation(previous)
        unknown = sorted(set(solver_options) - set(SolverConfig.__dataclass_fields__))
        if unknown:
            raise TypeError(
                f"ptycho_app got unknown option(s) {unknown}; the solver's options are "
                f"{sorted(SolverConfig.__dataclass_fields__)}."
            )
        options = {name: given[name] for name in _PLAIN_OPTIONS if given[name] is not None}
        options.update(solver_options)
        if slice_thickness is not None:
            options["slice_thickness"] = to_magnitude(slice_thickness, "Å", "slice_thickness")
        if tilt is not None:
            options["tilt"] = _tilt_pair(tilt)
        if state is not None:
            if num_slices is not None and num_slices != state.num_slices:
                raise ValueError(
                    f"num_slices={num_slices} but the run to continue has {state.num_slices} slices; "
                    "leave num_slices out when resuming."
                )
            options["num_slices"] = state.num_slices
        config = (base_config or SolverConfig()).replace(**options)
        angstrom_in(depth_units, "depth_units")  # a bad unit fails now, not after the run
        if checkpoint is not None and not Path(checkpoint).resolve().parent.is_dir():
            raise FileNotFoundError(f"checkpoint={str(checkpoint)!r}: the folder does not exist.")
        if show_progressbar is None:
            from hyperspy.defaults_parser import preferences

            show_progressbar = preferences.General.show_progressbar
        result = reconstruct(
            self._intensities(),
            geometry,
            config,
            state=state,
            show_progressbar=show_progressbar,
            callback=callback,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
        )
        if result.status != "ok":
            warnings.warn(
                f"The reconstruction stopped early ({result.status}) after iteration {result.iteration}; "
                "the result holds the state reached so far (metadata.Signal.Ptychography.status). "
                "Continue it with ptycho_app(resume=result).",
                UserWarning,
                stacklevel=2,
            )
        title = self.metadata.General.title
        return state_to_signal(
            result,
            config,
            geometry,
            title=f"{config.mode.upper()} ptychography" + (f" of {title}" if title else ""),
            metadata=self.metadata,
            scan_shape=self.axes_manager.navigation_shape[::-1],
            depth_units=depth_units,
            extra_parameters={"scan_rotation": rotation, "scan_rotation_units": "deg"},
        )

    ptycho_app.__doc__ %= SHOW_PROGRESSBAR_ARG


class LazyAppPtychography2D(AppPtychography2D, LazySignal2D):
    """Lazy (dask) version of :class:`AppPtychography2D`; ``ptycho_app`` copies the data in block by block."""

    _lazy = True
