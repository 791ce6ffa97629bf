"""The optimisation loop: mini-batch Adam on object, probe, tilt and slice thickness.

:func:`reconstruct` is the one entry point every front end calls. It takes
the measured patterns, a :class:`Geometry` and a :class:`SolverConfig`, and
returns a :class:`ReconstructionState`. Passing a state back in continues from
it exactly (more iterations, or a checkpoint read with
``ReconstructionState.load``): the optimisers' moments are part of the state.

The iteration itself is a short sequence of named steps (:mod:`.steps`).
Long runs lose nothing: Ctrl-C returns the state reached so far
(``status="interrupted"``), a non-finite loss restores the last good state and
stops (``status="diverged"``), and ``checkpoint=`` writes the state to disk
every ``checkpoint_every`` iterations.

Before anything is allocated, :func:`.memory.preflight` estimates the run's
peak memory from the shapes and refuses what cannot fit (the estimate is
logged and kept as ``state.memory_estimate``). The data are read where they
are (:mod:`.data`: eager targets on the device, or streamed per batch for
large or lazy data). Under ``torchrun`` the positions are shared by the
processes (:mod:`.distributed`): rank 0 writes checkpoints, shows progress
and calls the callback.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from ..physics.optics import electron_wavelength, make_probe, probe_modes
from . import steps
from .alignment import post_align
from .allocator import tune_cpu_allocator
from .config import Geometry, SolverConfig
from .data import MeasuredData, Patterns
from .data_checks import warn_about_patterns
from .distributed import from_environment
from .memory import preflight
from .state import ReconstructionState
from .thickness_companion import factor_for, merge
from .tilt_field import make_tilt_grid

__all__ = ["reconstruct", "initial_state"]

_log = logging.getLogger(__name__)


def initial_state(
    geometry: Geometry, config: SolverConfig, window: int, mean_intensity: float, device
) -> ReconstructionState:
    """Uniform object, aperture-and-defocus probe, initial tilt and dz."""
    sampling = 1.0 / (window * geometry.reciprocal_sampling)
    wavelength = electron_wavelength(geometry.energy)
    pos_px = geometry.scan_positions / sampling
    margin = 4
    lo = pos_px.min(axis=0)
    corners = pos_px - lo + margin
    height, width = (np.ceil(corners.max(axis=0)).astype(int) + window + margin + 1).tolist()
    origin = tuple((geometry.scan_positions.min(axis=0) - (margin + window // 2) * sampling).tolist())
    s = config.num_slices
    probe = make_probe(
        (window, window),
        sampling,
        geometry.energy,
        geometry.semiangle,
        geometry.defocus,
        geometry.aberrations,
        intensity=mean_intensity,
    )
    probe = probe_modes(probe, config.probe_modes, seed=config.seed)
    ntilt = geometry.scan_positions.shape[0] if config.tilt_map else 1
    field = grid = None
    if config.tilt_map:  # the control grid is learned, the (P, 2) tilts are derived from it
        field = make_tilt_grid(
            geometry.scan_positions,
            geometry.semiangle,
            geometry.defocus,
            s * config.slice_thickness,
            spacing=config.tilt_map_resolution,
            grid=config.tilt_map_grid,
        )
        grid = torch.tensor([config.tilt] * field.size, dtype=torch.float32)
    phase = torch.zeros((s, height, width), dtype=torch.float32)
    amplitude = torch.ones((s, height, width), dtype=torch.float32)
    companion = (None, None)
    factor = factor_for(config, wavelength, geometry.semiangle)
    if factor > 1:  # the slice thickness is learned on merged slices (see .thickness_companion)
        companion = merge(phase, amplitude, factor)
    return ReconstructionState(
        phase=phase,
        amplitude=amplitude,
        probe=probe,
        tilt=torch.tensor([config.tilt] * ntilt, dtype=torch.float32),
        slice_thickness=torch.tensor(float(config.slice_thickness), dtype=torch.float32),
        window_corners=torch.as_tensor(corners, dtype=torch.float32),
        sampling=sampling,
        origin=origin,
        wavelength=wavelength,
        tilt_grid=grid,
        tilt_field=field,
        companion_phase=companion[0],
        companion_amplitude=companion[1],
        companion_probe=None if companion[0] is None else probe.clone(),
    ).to(device)


def _continue_from(state: ReconstructionState, data: MeasuredData, config: SolverConfig, device):
    if state.phase.shape[0] != config.num_slices:
        _log.info("continuing with the state's %d slices", state.phase.shape[0])
    if state.probe.shape[-1] != data.window:
        raise ValueError(
            f"The state's probe window ({state.probe.shape[-1]} px) does not match the data "
            f"({data.window} px); was it made from other data or another padded_size?"
        )
    if state.window_corners.shape[0] != data.num_positions:
        raise ValueError(
            f"The state was made for {state.window_corners.shape[0]} scan positions, "
            f"the data have {data.num_positions}."
        )
    state = state.to(device)
    state.status = "ok"
    return state


def reconstruct(
    intensities,
    geometry: Geometry,
    config: SolverConfig | None = None,
    state: ReconstructionState | None = None,
    iterations: int | None = None,
    show_progressbar: bool = True,
    callback: Callable[[ReconstructionState], None] | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 5,
    checkpoint_extra: dict | None = None,
    detector_mask: np.ndarray | None = None,
    stream: bool | None = None,
) -> ReconstructionState:
    """Multislice ptychography with an adaptive (APP) or fixed (FPP) propagator.

    Parameters
    ----------
    intensities
        Measured patterns, (P, N, N) or (scan_y, scan_x, N, N), optic axis at
        pixel N // 2 (numpy ``fftshift`` convention), non-negative.
    geometry
        Beam, probe, detector sampling and scan positions.
    config
        Options; defaults to ``SolverConfig()`` (APP, 5 slices of 20 Å).
    state
        A state to continue from (a previous result or a loaded checkpoint).
    iterations
        Iterations to run now; defaults to ``config.iterations``.
    show_progressbar
        Show a tqdm progress bar with the loss, tilt and dz.
    callback
        Called with the state after every iteration.
    checkpoint, checkpoint_every
        Write the state to this file every ``checkpoint_every`` iterations
        and at the end.
    checkpoint_extra
        Further JSON-like items a front end stores with the checkpoint (e.g.
        its data-preparation options, so a resumed run prepares the data alike).
    detector_mask
        Boolean (N, N), True for the detector pixels the loss uses.
    stream
        True: read the patterns per batch (prefetched in a background
        thread); False: hold all targets on the device; None: decide from the
        size, the free memory and whether the input is lazy
        (:func:`.data.decide_streaming`).

    Returns
    -------
    ReconstructionState
        ``status`` tells whether the run finished (``"ok"``), was interrupted
        by Ctrl-C (``"interrupted"``) or stopped on a non-finite loss
        (``"diverged"``, the state is the last good one).
        ``memory_estimate`` holds the preflight's estimate
        (:meth:`.memory.MemoryEstimate.to_dict`).

    Raises
    ------
    memory.MemoryPreflightError
        The run would not fit in the free memory, or the object grid is
        absurd (:class:`.memory.ObjectTooLargeError`); nothing large was
        allocated.
    """
    config = config or SolverConfig()
    comm, device = from_environment(config.device)
    if comm is not None and not comm.is_writer:
        show_progressbar, callback, checkpoint = False, None, None
    if device.type == "cpu":
        tune_cpu_allocator()
        torch.manual_seed(config.seed)
    if isinstance(intensities, np.ndarray):
        # empty and saturated patterns (in blocks; lazy data are checked chunk-wise by MeasuredData)
        warn_about_patterns(intensities)
    patterns = Patterns(intensities, geometry.scan_positions.shape[0])
    ranks = 1 if comm is None else comm.world_size
    estimate = preflight(patterns, geometry, config, device, stream=stream, world_size=ranks)
    _log.info("%s", estimate.summary())
    data = MeasuredData(
        patterns, geometry, config, device, detector_mask=detector_mask, stream=estimate.streaming, comm=comm
    )
    if state is None:
        state = initial_state(geometry, config, data.window, data.mean_intensity, device)
        state.intensity_scale = data.intensity_scale
    else:
        state = _continue_from(state, data, config, device)
    n_iter = config.iterations if iterations is None else int(iterations)
    run = steps.Run.start(state, data, config, comm)
    extra = {**(checkpoint_extra or {}), "config": config.to_dict(), "geometry": geometry.to_dict()}

    progress = None
    if show_progressbar and n_iter > 0:
        from tqdm.auto import tqdm

        progress = tqdm(total=n_iter, desc=f"{config.mode.upper()} ptychography", unit="it")
    last_good = state.clone()
    first = state.iteration
    try:
        for it in range(first, first + n_iter):
            t0 = time.perf_counter()
            try:
                total = _iteration(run, it)
            except steps.Diverged:
                run.state = _restore(last_good, "diverged")
                _log.warning(
                    "The reconstruction diverged at iteration %d; returning the last good state "
                    "(iteration %d). Lower the learning rates.",
                    it + 1,
                    run.state.iteration,
                )
                break
            steps.finish_iteration(run, it, total, time.perf_counter() - t0)
            last_good = run.state.clone()
            _show(progress, run.state, total / data.norm)
            if callback is not None:
                callback(run.state)
            if (
                checkpoint is not None
                and checkpoint_every > 0
                and run.state.iteration % checkpoint_every == 0
            ):
                run.state.save(checkpoint, extra=extra)
    except KeyboardInterrupt:
        run.state = _restore(last_good, "interrupted")
        _log.warning("Interrupted at iteration %d; returning the state reached so far.", run.state.iteration)
    finally:
        data.close()
        if progress is not None:
            progress.close()
    state = run.state
    for name in ReconstructionState._TENSORS:
        getattr(state, name).requires_grad_(False)
    if state.positions is not None:
        state.positions.requires_grad_(False)
    if state.has_tilt_map:
        state.tilt_grid.requires_grad_(False)
    if state.has_companion:
        for name in state._COMPANION:
            getattr(state, name).requires_grad_(False)
    if config.mode == "fpp" and state.num_slices > 1:
        state.post_alignment = post_align(
            state.phase.cpu().numpy(),
            state.dz,
            state.sampling,
            roi=state.scan_window(data.window),
            amplitude=state.amplitude.cpu().numpy(),
        )
    if checkpoint is not None:
        state.save(checkpoint, extra=extra)
    state.memory_estimate = estimate.to_dict()
    return state


def _iteration(run: steps.Run, it: int) -> float:
    """One pass over all scan positions; returns the summed loss."""
    steps.hold_tilt_map(run, it)
    steps.set_trainable(run, it)
    total = 0.0
    batches = steps.batch_order(run, it)
    run.data.schedule(batches)
    for batch in batches:
        value = steps.gradient_step(run, batch)
        steps.check_divergence(run, value, len(batch))
        total += value
    steps.thickness_step(run)
    steps.positions_step(run)
    if not steps.finite(run.state):
        raise steps.Diverged
    steps.drift_to_tilt(run, it)
    steps.apply_constraints(run)
    return total


def _show(progress, state: ReconstructionState, loss: float) -> None:
    if progress is None:
        return
    progress.update(1)
    t = state.tilt_mrad.reshape(-1, 2).mean(axis=0)
    progress.set_postfix(loss=f"{loss:.4g}", tilt=f"({t[0]:.2f}, {t[1]:.2f})", dz=f"{state.dz:.2f}")


def _restore(good: ReconstructionState, status: str) -> ReconstructionState:
    state = good.clone()
    state.status = status
    return state
