"""The HyperSpy signal for 4D-STEM multislice ptychography with an adaptive propagator.

``s.set_signal_type("ptychography")`` turns a 4D-STEM signal (navigation =
scan, signal = detector) into :class:`AppPtychography2D`; ``s.ptycho_app()``
reconstructs it with the solver in :mod:`app_extension.solver` and returns the
object as a calibrated complex signal (see :func:`app_extension.results.state_to_signal`).

This module only translates: calibration (:mod:`.calibration`), options
(names and units a user reads) and data loading in, the result signal out.
"""

from __future__ import annotations

import inspect
import os
import warnings
from pathlib import Path

import numpy as np
from hyperspy._signals.lazy_signal2d import LazySignal2D
from hyperspy._signals.signal2d import Signal2D
from hyperspy.docstrings.signal import SHOW_PROGRESSBAR_ARG

from ..frontend import calibration_record, options_doc, options_signature
from ..preparation import prepare_data
from ..units import angstrom_in
from .calibration import (
    TEM_NODE,
    check_disk_on_detector,
    geometry_from_signal,
    raster_rotation,
    refuse_calibration_options,
    set_experimental_parameters,
)

__all__ = ["AppPtychography2D", "LazyAppPtychography2D"]


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

    def ptycho_app(
        self,
        *,
        resume=None,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = 5,
        callback=None,
        depth_units: str = "Å",
        show_progressbar: bool | None = None,
        **options,
    ):
        """Multislice ptychography with an adaptive propagator (APP) or a fixed one (FPP).

                APP learns the specimen tilt and the slice thickness together with the
                object and probe (Sha, Cui & Yu, Sci. Adv. 8, eabn2275, 2022). Options
                left out (or ``None``) take their defaults, or, when continuing with
                ``resume``, the previous run's values. Lengths and angles are numbers
                in the unit given below or strings pint reads ("2 nm", "3 mrad").

                Parameters
                ----------
                resume
                    Continue from a previous result (the signal this method returned,
                    or a .hspy/.zspy file it was saved to), a checkpoint file written
                    with ``checkpoint=``, or a ``ReconstructionState``. The run goes
                    on exactly as if it had not stopped (optimiser state included).
                checkpoint, checkpoint_every
                    Write the solver state to this file (HDF5) every
                    ``checkpoint_every`` iterations and at the end.
                callback
                    Called with the solver state after every iteration.
                depth_units
                    Units of the result's depth axis ("Å" or "nm").
                %s
        %s

                Returns
                -------
                hyperspy.signals.ComplexSignal2D
                    The object (transmission function): navigation axis ``z`` =
                    slice depth (scale = recovered slice thickness), signal axes
                    ``x``, ``y`` in Å in the scan frame. ``metadata.Signal.Ptychography``
                    holds ``tilt_x``, ``tilt_y`` (mrad), ``slice_thickness``,
                    ``thickness`` (Å), ``num_slices``, ``loss``, ``status``, the full
                    parameter set, the ``probe`` and the ``history`` signals, the
                    solver ``State`` (to resume from), and, for FPP, ``Post_alignment``.

                Raises
                ------
                UncalibratedError
                    When the scan or detector axes, the beam energy or the convergence
                    angle are missing, before any computation.
                OptionError
                    An option with a wrong type, unit or range (the message names it).

                Examples
                --------
                >>> s.set_signal_type("ptychography")
                >>> s.set_experimental_parameters(beam_energy=300, convergence_angle=22)
                >>> obj = s.ptycho_app(defocus="20 nm", num_slices=5, slice_thickness="2.6 nm")
                >>> obj.metadata.Signal.Ptychography.tilt_x
                >>> obj.phase.plot()
        """
        from ..frontend import resolve_options
        from ..results import state_to_signal
        from ..solver.engine import reconstruct

        # Everything is checked before the data are touched.
        refuse_calibration_options(options)
        resolved = resolve_options(options, resume)
        config, experiment, state = resolved.config, resolved.experiment, resolved.state
        previous_positions = resolved.base_geometry.get("scan_positions")
        calibration = resolved.calibration
        angstrom_in(depth_units, "depth_units")  # a bad unit fails now, not after the run
        if checkpoint is not None and not Path(checkpoint).resolve().parent.is_dir():
            raise FileNotFoundError(f"checkpoint={str(checkpoint)!r}: the folder does not exist.")
        # With the calibration stage on, the patterns are turned into the scan frame, so the
        # raster stays unrotated; without it, a given scan rotation rotates the raster.
        defocus = experiment.defocus
        if defocus is None:  # the file's (load_4dstem stores it in Å, positive = underfocus), else 0
            defocus = self.metadata.get_item(f"{TEM_NODE}.defocus", 0.0)
        geometry = geometry_from_signal(
            self,
            defocus=defocus,
            scan_rotation=0.0 if calibration.calibrate else experiment.scan_rotation or 0.0,
            aberrations=experiment.aberrations or {},
        )
        check_disk_on_detector(geometry, self.axes_manager.signal_shape[0])
        thickness = state.thickness if state is not None else config.num_slices * config.slice_thickness
        inputs = prepare_data(
            self.data,
            geometry,
            self.axes_manager.navigation_shape[::-1],
            calibration,
            scan_rotation=experiment.scan_rotation,
            thickness=thickness,
            device=config.device,
        )
        geometry, rotation = inputs.geometry, inputs.scan_rotation
        if experiment.scan_rotation is None and previous_positions is not None and not calibration.calibrate:
            previous = np.asarray(previous_positions, dtype=np.float64)
            if previous.shape == geometry.scan_positions.shape:
                geometry.scan_positions = previous  # continue on the previous run's scan
                rotation = raster_rotation(previous)
        if show_progressbar is None:
            from hyperspy.defaults_parser import preferences

            show_progressbar = preferences.General.show_progressbar
        result = reconstruct(
            inputs.patterns,  # a lazy signal's data are streamed, never loaded whole
            geometry,
            config,
            state=state,
            show_progressbar=show_progressbar,
            callback=callback,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            detector_mask=inputs.detector_mask,
            checkpoint_extra={"calibration_options": calibration_record(calibration)},
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
            calibration=None if inputs.report is None else inputs.report.to_dict(),
            calibration_options=calibration_record(calibration),
        )

    ptycho_app.__doc__ %= (SHOW_PROGRESSBAR_ARG, options_doc())
    ptycho_app.__signature__ = options_signature(list(inspect.signature(ptycho_app).parameters.values()))


class LazyAppPtychography2D(AppPtychography2D, LazySignal2D):
    """Lazy (dask) version of :class:`AppPtychography2D`; ``ptycho_app`` reads the data chunk by chunk."""

    _lazy = True
