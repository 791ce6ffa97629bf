"""The optimisation loop: mini-batch Adam on object, probe, tilt and slice thickness.

:func:`reconstruct` is the one entry point every front end calls. It takes
the measured patterns, a :class:`Geometry` and a :class:`SolverConfig`, and
returns a :class:`ReconstructionState`. Passing a state back in continues from
it (more iterations, or a checkpoint read with ``ReconstructionState.load``).

Long runs lose nothing: Ctrl-C returns the state reached so far
(``status="interrupted"``), a non-finite loss restores the last good state and
stops (``status="diverged"``), and ``checkpoint=`` writes the state to disk
every ``checkpoint_every`` iterations.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from ..physics.multislice import forward
from ..physics.optics import electron_wavelength, fourier_grid, make_probe, probe_modes
from ..physics.propagator import propagator
from .alignment import fit_drift, fourier_shift, post_align, slice_shifts
from .allocator import tune_cpu_allocator
from .config import Geometry, SolverConfig
from .constraints import clamp_amplitude, orthogonalize_probe, smooth_depth
from .losses import LOSSES
from .state import ReconstructionState

__all__ = ["reconstruct", "prepare_intensities", "initial_state", "Problem"]

_log = logging.getLogger(__name__)

#: Largest change of the tilt (mrad) one drift step may make.
_MAX_DRIFT_STEP = 20.0


def prepare_intensities(intensities, num_positions: int | None = None) -> np.ndarray:
    """Check the measured patterns and return them as float32 (P, N, N).

    Accepts (P, N, N) or (scan_y, scan_x, N, N) arrays (numpy, dask, torch).
    """
    data = intensities
    if hasattr(data, "compute") and not isinstance(data, np.ndarray):
        data = data.compute()
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    data = np.asarray(data)
    if data.ndim == 4:
        data = data.reshape(-1, *data.shape[-2:])
    if data.ndim != 3:
        raise ValueError(
            f"Expected 4D-STEM data of shape (scan_y, scan_x, ky, kx) or (positions, ky, kx); "
            f"got an array of {data.ndim} dimension(s) {data.shape}."
        )
    if data.shape[-1] != data.shape[-2]:
        raise ValueError(
            f"Diffraction patterns must be square, got {data.shape[-2]} x {data.shape[-1]} pixels; "
            "crop or pad the detector axes first."
        )
    if num_positions is not None and data.shape[0] != num_positions:
        raise ValueError(f"{data.shape[0]} patterns but {num_positions} scan positions were given.")
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise TypeError(f"Intensities must be real numbers, got dtype {data.dtype}.")
    data = data.astype(np.float32, copy=False)
    bad = ~np.isfinite(data)
    if bad.any():
        raise ValueError(
            f"The data contain {int(bad.sum())} NaN or infinite value(s) "
            f"(first at pattern {int(np.argwhere(bad)[0][0])}); replace them, e.g. with 0 or "
            "the mean of their neighbours, before reconstructing."
        )
    if data.min() < 0:
        raise ValueError(
            f"The data contain negative intensities (minimum {float(data.min()):.3g}, "
            f"{int((data < 0).sum())} pixels); subtract the dark reference and clip at zero, "
            "e.g. numpy.clip(data, 0, None)."
        )
    if data.sum() <= 0:
        raise ValueError("The data are all zero.")
    return data


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
    return ReconstructionState(
        phase=torch.zeros((s, height, width), dtype=torch.float32),
        amplitude=torch.ones((s, height, width), dtype=torch.float32),
        probe=probe,
        tilt=torch.tensor([config.tilt] * ntilt, dtype=torch.float32),
        slice_thickness=torch.tensor(float(config.slice_thickness), dtype=torch.float32),
        positions_px=torch.as_tensor(corners, dtype=torch.float32),
        sampling=sampling,
        origin=origin,
        wavelength=wavelength,
    ).to(device)


class Problem:
    """Measured data on the model grid, plus the precomputed frequency grids."""

    def __init__(self, intensities, geometry: Geometry, config: SolverConfig, device):
        data = prepare_intensities(intensities, geometry.scan_positions.shape[0])
        n = data.shape[-1]
        window = config.padded_size or n
        if window < n:
            raise ValueError(f"padded_size ({window}) must be >= the pattern size ({n}).")
        self.window = window
        self.device = torch.device(device)
        # Patterns are scaled so that their mean pixel value is 1 (the probe's mean
        # intensity per pixel is then 1 too): learning rates do not depend on the
        # detector's units (counts, electrons, normalised).
        self.intensity_scale = float(n * n / data.sum(axis=(1, 2)).mean())
        data = data * np.float32(self.intensity_scale)
        # The mean pattern sum after scaling: the probe's total intensity. With
        # padding it is still n * n, since the measured pixels hold (nearly) all of it.
        self.mean_intensity = float(n * n)
        # Patterns go to numpy FFT order (DC at [0, 0]) on the model grid once,
        # so the loop never shifts arrays. Padding: the unmeasured pixels are masked.
        if window > n:
            padded = np.zeros((data.shape[0], window, window), dtype=np.float32)
            start = window // 2 - n // 2
            padded[:, start : start + n, start : start + n] = data
            mask = np.zeros((window, window), dtype=np.float32)
            mask[start : start + n, start : start + n] = 1
            data = padded
            self.mask = torch.as_tensor(np.fft.ifftshift(mask)).to(self.device)
        else:
            self.mask = None
        shifted = np.fft.ifftshift(data, axes=(-2, -1))
        intensities = torch.as_tensor(np.ascontiguousarray(shifted)).to(self.device)
        self.num_positions = data.shape[0]
        # Only what the loss compares with is kept (amplitudes for Eq. 1,
        # intensities for Poisson), and the loss normaliser of the history.
        if config.loss == "amplitude":
            self.target = intensities.sqrt_()
            self.norm = float(data.sum(dtype=np.float64))
        else:
            self.target = intensities
            self.norm = float(self.num_positions)

    def grids(self, sampling: float):
        return fourier_grid((self.window, self.window), sampling, device=self.device)


def _drift_step(state: ReconstructionState, window: int) -> np.ndarray:
    """Move the slices' linear drift with depth into the tilt; returns the change in mrad.

    The optimiser's moments are kept: the slices move by a fraction of a pixel,
    and resetting Adam would kick every object pixel by a full step.
    (Shifting the moments with the slices was tried: the Fourier shift rings
    where the second moment is near zero, which then gives large steps.)
    """
    roi = state.scan_window(window)
    phase = state.phase.detach().cpu().numpy()
    shifts = slice_shifts(phase, roi)
    depths = np.arange(state.num_slices) * state.dz
    slope_px = fit_drift(shifts, depths)  # px per Å, (y, x)
    slope = slope_px * state.sampling
    # A single step moves the tilt by at most _MAX_DRIFT_STEP mrad: on data too small or
    # too noisy to show the drift, a bad registration must not throw the tilt away.
    limit = np.tan(_MAX_DRIFT_STEP * 1e-3)
    if np.abs(slope).max() > limit:
        slope_px = slope_px * (limit / np.abs(slope).max())
        slope = slope_px * state.sampling
    with torch.no_grad():
        tan_old = torch.tan(state.tilt.double() * 1e-3)
        tan_new = tan_old + torch.as_tensor(slope[::-1].copy(), dtype=torch.float64, device=state.tilt.device)
        new_tilt = torch.atan(tan_new) * 1e3
        change = (new_tilt - state.tilt.double()).mean(dim=0).cpu().numpy()
        state.tilt.copy_(new_tilt.to(state.tilt.dtype))
        back = -np.outer(depths, slope_px)
        state.phase.copy_(torch.as_tensor(fourier_shift(phase, back)))
        amp = state.amplitude.detach().cpu().numpy()
        state.amplitude.copy_(torch.as_tensor(fourier_shift(amp, back)))
    return change


def _make_optimizer(state: ReconstructionState, config: SolverConfig) -> torch.optim.Optimizer:
    groups = [
        {"params": [state.phase, state.amplitude], "lr": config.lr_object, "name": "object"},
        {"params": [state.probe], "lr": config.lr_probe, "name": "probe"},
    ]
    if config.learns_geometry:
        groups.append({"params": [state.tilt], "lr": config.lr_tilt, "name": "tilt"})
    return torch.optim.Adam(groups)


def _make_thickness_optimizer(state: ReconstructionState, config: SolverConfig) -> torch.optim.Optimizer:
    """Rprop on dz, stepped once per iteration with the gradient summed over all batches.

    A single batch's dz gradient is dominated by noise (the object adapts at
    the same time), so per-batch steps mostly cancel; the gradient of the whole
    pass points the right way. Its size shrinks as dz converges, which stalls
    Adam, so the step follows the gradient's sign only: it grows by 1.2 while
    the sign holds and halves when it flips, starting from ``lr_dz``.
    """
    return torch.optim.Rprop(
        [state.slice_thickness], lr=config.lr_dz, etas=(0.5, 1.2), step_sizes=(1e-3, 4 * config.lr_dz)
    )


def _set_trainable(state: ReconstructionState, config: SolverConfig, iteration: int) -> None:
    state.phase.requires_grad_(True)
    state.amplitude.requires_grad_(True)
    state.probe.requires_grad_(config.lr_probe > 0 and iteration >= config.start_probe)
    learn = config.learns_geometry
    state.tilt.requires_grad_(learn and config.lr_tilt > 0 and iteration >= config.start_tilt)
    state.slice_thickness.requires_grad_(learn and config.lr_dz > 0 and iteration >= config.start_dz)


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

    Returns
    -------
    ReconstructionState
        ``status`` tells whether the run finished (``"ok"``), was interrupted
        by Ctrl-C (``"interrupted"``) or stopped on a non-finite loss
        (``"diverged"``, the state is the last good one).
    """
    config = config or SolverConfig()
    device = torch.device(config.device)
    if device.type == "cpu":
        tune_cpu_allocator()
    problem = Problem(intensities, geometry, config, device)
    if state is None:
        state = initial_state(geometry, config, problem.window, problem.mean_intensity, device)
        state.intensity_scale = problem.intensity_scale
    else:
        if state.phase.shape[0] != config.num_slices and config.num_slices:
            _log.info("continuing with the state's %d slices", state.phase.shape[0])
        if state.probe.shape[-1] != problem.window:
            raise ValueError(
                f"The state's probe window ({state.probe.shape[-1]} px) does not match the data "
                f"({problem.window} px); was it made from other data or another padded_size?"
            )
        if state.positions_px.shape[0] != problem.num_positions:
            raise ValueError("The state was made for a different number of scan positions.")
        state = state.to(device)
        state.status = "ok"
    n_iter = config.iterations if iterations is None else int(iterations)
    ky, kx = problem.grids(state.sampling)
    loss_fn = LOSSES[config.loss]
    target, norm = problem.target, problem.norm
    optimizer = _make_optimizer(state, config)
    dz_optimizer = _make_thickness_optimizer(state, config)
    generator = torch.Generator().manual_seed(config.seed + state.iteration)
    if config.device == "cpu":
        torch.manual_seed(config.seed)

    progress = None
    if show_progressbar and n_iter > 0:
        from tqdm.auto import tqdm

        progress = tqdm(total=n_iter, desc=f"{config.mode.upper()} ptychography", unit="it")
    last_good = state.clone()
    first = state.iteration
    reference = math.inf
    try:
        for it in range(first, first + n_iter):
            t0 = time.perf_counter()
            _set_trainable(state, config, it)
            order = torch.randperm(problem.num_positions, generator=generator).to(device)
            total = 0.0
            for batch in torch.split(order, config.batch_size):
                tilt = state.tilt if state.tilt.shape[0] == 1 else state.tilt[batch]
                tilt_arg = tilt[0] if tilt.shape[0] == 1 else tilt
                if config.learns_geometry or bool(torch.any(state.tilt != 0)):
                    prop = propagator(ky, kx, state.wavelength, state.slice_thickness, tilt_arg)
                else:
                    prop = propagator(ky, kx, state.wavelength, state.slice_thickness)
                model = forward(state.probe, state.phase, state.amplitude, state.positions_px[batch], prop)
                loss = loss_fn(model, target[batch], problem.mask)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                clamp_amplitude(state.amplitude, config.max_amplitude)
                value = float(loss.detach())
                total += value
                # Blow-up test per batch, against the lowest loss per position seen in this run.
                per_position = value / len(batch)
                if not math.isfinite(value) or per_position > config.divergence_factor * reference:
                    total = math.inf
                    break
                reference = min(reference, per_position)
            if state.slice_thickness.grad is not None:
                dz_optimizer.step()
                dz_optimizer.zero_grad(set_to_none=True)
            if not math.isfinite(total) or not _finite(state):
                state = _restore(last_good, "diverged")
                _log.warning(
                    "The reconstruction diverged at iteration %d; returning the last good state "
                    "(iteration %d). Lower the learning rates.",
                    it + 1,
                    state.iteration,
                )
                break
            # The drift is measured before the depth prior, which would pull the end
            # slices towards their neighbours and so shrink the measured drift.
            if (
                config.learns_geometry
                and config.tilt_alignment_every > 0
                and it >= config.tilt_alignment_start
                and (it - config.tilt_alignment_start) % config.tilt_alignment_every == 0
                and state.num_slices > 1
            ):
                _drift_step(state, problem.window)
            with torch.no_grad():
                if state.probe.shape[0] > 1:
                    orthogonalize_probe(state.probe)
                smooth_depth(state.phase, config.depth_weight)
                smooth_depth(state.amplitude, config.depth_weight)
                state.slice_thickness.clamp_(min=0.1)
            state.iteration = it + 1
            state.record(total / norm, time.perf_counter() - t0)
            last_good = state.clone()
            if progress is not None:
                progress.update(1)
                t = state.tilt_mrad.reshape(-1, 2).mean(axis=0)
                progress.set_postfix(
                    loss=f"{total / norm:.4g}", tilt=f"({t[0]:.2f}, {t[1]:.2f})", dz=f"{state.dz:.2f}"
                )
            if callback is not None:
                callback(state)
            if checkpoint is not None and checkpoint_every > 0 and state.iteration % checkpoint_every == 0:
                state.save(checkpoint, extra={"config": config.to_dict(), "geometry": geometry.to_dict()})
    except KeyboardInterrupt:
        state = _restore(last_good, "interrupted")
        _log.warning("Interrupted at iteration %d; returning the state reached so far.", state.iteration)
    finally:
        if progress is not None:
            progress.close()
    for name in ReconstructionState._TENSORS:
        getattr(state, name).requires_grad_(False)
    if config.mode == "fpp" and state.num_slices > 1:
        state.post_alignment = post_align(
            state.phase.cpu().numpy(),
            state.dz,
            state.sampling,
            roi=state.scan_window(problem.window),
            amplitude=state.amplitude.cpu().numpy(),
        )
    if checkpoint is not None:
        state.save(checkpoint, extra={"config": config.to_dict(), "geometry": geometry.to_dict()})
    return state


def _finite(state: ReconstructionState) -> bool:
    return all(bool(torch.isfinite(getattr(state, n)).all()) for n in ("phase", "amplitude", "probe", "tilt"))


def _restore(good: ReconstructionState, status: str) -> ReconstructionState:
    state = good.clone()
    state.status = status
    return state
