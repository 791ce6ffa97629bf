"""The steps of one iteration, each a named function a reader can follow and a test can call.

One iteration of :func:`app_extension.solver.engine.reconstruct` is::

    hold_tilt_map(run, it)                      # tilt map, once, at tilt_map_hold: its bend into
                                                # the slices (see .crystal_frame)
    set_trainable(run, it)
    batches = batch_order(run, it)              # chunk-aware for chunked data
    run.data.schedule(batches)                  # streaming data: read ahead
    for batch in batches:
        loss = gradient_step(run, batch)        # forward, loss, backward, (all-reduce,) Adam, bounds
        check_divergence(run, loss, batch)
    thickness_step(run)                         # one Rprop step on dz per pass
    positions_step(run)                         # one Rprop step on the scan positions per pass
    drift_to_tilt(run, it)                      # the slices' drift with depth -> tilt (APP);
                                                # with a tilt map, locally (see .tilt_field)
    apply_constraints(run)                      # probe modes, depth prior (a held map: along
                                                # its columns), dz > 0
    finish_iteration(run, it, total, seconds)   # history, optimiser state

:class:`Run` holds what the steps share: the state being learned, the
measured data, the options, the optimisers and the frequency grids, and,
when several processes share the positions, their communicator
(:mod:`.distributed`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..physics.multislice import forward
from ..physics.propagator import propagator
from ..physics.tilted_propagators import tilted_propagators
from .alignment import fit_drift, fourier_shift, slice_shifts
from .config import SolverConfig
from .constraints import clamp_amplitude, orthogonalize_probe, smooth_depth
from .crystal_frame import crystal_frame_prior, hold_iteration_due, hold_map, map_held
from .data import MeasuredData
from .distributed import Communicator
from .losses import LOSSES
from .positions import RUNAWAY_FRACTION, PositionModel
from .sign_step import ConfirmedRprop
from .state import ReconstructionState
from .tilt_field import (
    SparseAdam,
    interpolate,
    mark_vacuum,
    move_local_drift_into_tilt,
    refresh_position_tilts,
)

__all__ = [
    "Run",
    "Diverged",
    "make_optimizers",
    "hold_tilt_map",
    "set_trainable",
    "batch_order",
    "gradient_step",
    "check_divergence",
    "thickness_step",
    "positions_step",
    "tilt_field_step",
    "drift_to_tilt",
    "move_drift_into_tilt",
    "apply_constraints",
    "finish_iteration",
    "MAX_DRIFT_STEP",
]

_log = logging.getLogger(__name__)

#: Largest change of the tilt (mrad) one drift-to-tilt step may make.
MAX_DRIFT_STEP = 20.0

#: The affine correction's step, as a fraction of the offsets' step at the field's edge. Adam
#: moves every parameter by about its step size at first, whatever the gradient's size; the
#: affine is fixed by all positions together, so it takes smaller steps (a full step moved
#: the scale by 0.5 % on ideal data, 6 pm at the field's edge).
AFFINE_STEP = 0.25

#: Fraction by which the per-position offsets are pulled back toward the raster each step.
POSITION_SHRINK = 0.1


class Diverged(Exception):
    """A batch's loss was not finite or blew up (see ``SolverConfig.divergence_factor``)."""


@dataclass
class Run:
    """What the steps of an iteration share."""

    state: ReconstructionState
    data: MeasuredData
    config: SolverConfig
    adam: torch.optim.Optimizer
    rprop: torch.optim.Optimizer
    ky: torch.Tensor
    kx: torch.Tensor
    comm: Communicator | None = None
    positions_optimizer: torch.optim.Optimizer | None = None
    tilt_optimizer: SparseAdam | None = None
    map_active: bool = False

    @classmethod
    def start(
        cls,
        state: ReconstructionState,
        data: MeasuredData,
        config: SolverConfig,
        comm: Communicator | None = None,
    ) -> Run:
        """Set up the optimisers (restoring their saved moments) and the grids."""
        adam, rprop = make_optimizers(state, config)
        ky, kx = data.grids(state.sampling)
        run = cls(state, data, config, adam, rprop, ky, kx, comm)
        run.tilt_optimizer = make_tilt_optimizer(state, config)
        if state.positions is not None and config.refine_positions:
            run.positions_optimizer = make_position_optimizer(state, config)
        return run


# -- optimisers ---------------------------------------------------------------------------


def make_optimizers(state: ReconstructionState, config: SolverConfig):
    """Adam on object, probe (and tilt), Rprop on the slice thickness; saved moments restored.

    The slice thickness takes one Rprop step per iteration with the gradient
    summed over all batches: a single batch's dz gradient is dominated by
    noise (the object adapts at the same time), so per-batch steps mostly
    cancel, while the gradient of the whole pass points the right way. Its
    size shrinks as dz converges, which stalls Adam, so the step follows the
    gradient's sign only: it grows by 1.2 while the sign holds and halves when
    it flips, starting from ``lr_dz``. With ``dz_confirm_flips`` (default) a
    flip holds dz for a pass and halves the step only when the next pass
    confirms it (:class:`.sign_step.ConfirmedRprop`): the object lags a dz step,
    which flips the gradient for one pass while dz is still far off.
    """
    groups = [
        {"params": [state.phase, state.amplitude], "lr": config.lr_object, "name": "object"},
        {"params": [state.probe], "lr": config.lr_probe, "name": "probe"},
    ]
    if config.learns_geometry and not state.has_tilt_map:
        groups.append({"params": [state.tilt], "lr": config.lr_tilt, "name": "tilt"})
    if state.has_companion:
        groups.append(
            {
                "params": [state.companion_phase, state.companion_amplitude],
                "lr": config.lr_object,
                "name": "companion",
            }
        )
        groups.append({"params": [state.companion_probe], "lr": config.lr_probe, "name": "companion_probe"})
    adam = torch.optim.Adam(groups)
    rprop_class = ConfirmedRprop if config.dz_confirm_flips else torch.optim.Rprop
    lr_dz = config.lr_dz / state.companion_factor  # the companion's slices take lr_dz steps
    rprop = rprop_class([state.slice_thickness], lr=lr_dz, etas=(0.5, 1.2), step_sizes=(1e-3, 4 * lr_dz))
    saved = state.optimizer or {}
    for name, optimizer in (("adam", adam), ("rprop", rprop)):
        if name in saved and _compatible(optimizer, saved[name]):
            rates = [g["lr"] for g in optimizer.param_groups]
            optimizer.load_state_dict(saved[name])
            for group, lr in zip(optimizer.param_groups, rates, strict=True):
                group["lr"] = lr  # the options of this call win over the saved ones
    return adam, rprop


def make_position_optimizer(state: ReconstructionState, config: SolverConfig) -> torch.optim.Optimizer:
    """Rprop on the position model, one step per pass; step sizes in pixels.

    As for the slice thickness, the step follows the gradient's sign: it grows
    by 1.2 while the sign holds and halves when it flips. A position the data
    do not pin down (its gradient is noise) flips sign and so comes to rest,
    where Adam would keep moving it by about its step size. The affine part's
    steps are per unit of the field's half-size, scaled by ``AFFINE_STEP``.
    """
    model = state.positions
    lr_px = config.lr_positions / state.sampling
    half_extent = float((model.nominal - model.centre).abs().max().clamp(min=1.0))
    global_lr = lr_px if config.positions_global else 0.0
    groups = [
        (model.affine, AFFINE_STEP * global_lr / half_extent, "affine"),
        (model.drift, global_lr, "drift"),
        (model.offsets, lr_px, "offsets"),
    ]
    rprop = torch.optim.Rprop(
        [
            {"params": [p], "lr": lr, "step_sizes": (1e-3 * lr, max(4 * lr, 1e-12)), "name": name}
            for p, lr, name in groups
        ],
        etas=(0.5, 1.2),
    )
    saved = (state.optimizer or {}).get("positions")
    if saved is not None and _compatible(rprop, saved):
        rates = [g["lr"] for g in rprop.param_groups]
        rprop.load_state_dict(saved)
        for group, lr in zip(rprop.param_groups, rates, strict=True):
            group["lr"] = lr
    return rprop


def make_tilt_optimizer(state: ReconstructionState, config: SolverConfig) -> SparseAdam | None:
    """A tilt map's optimiser: :class:`~.tilt_field.SparseAdam` on the control grid (moments restored)."""
    if not (state.has_tilt_map and config.learns_geometry):
        return None
    optimizer = SparseAdam([state.tilt_grid], lr=config.lr_tilt)
    saved = (state.optimizer or {}).get("tilt_field")
    if saved is not None and _compatible(optimizer, saved):
        optimizer.load_state_dict(saved)
        optimizer.param_groups[0]["lr"] = config.lr_tilt
    return optimizer


def _compatible(optimizer: torch.optim.Optimizer, saved: dict) -> bool:
    groups = saved.get("param_groups", [])
    if len(groups) != len(optimizer.param_groups):
        return False
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for index, entry in saved.get("state", {}).items():
        shape = tuple(params[int(index)].shape)
        for key, value in entry.items():
            per_row = key == "step" and len(shape) > 0 and tuple(value.shape) == (shape[0], 1)  # SparseAdam
            if value.ndim and tuple(value.shape) != shape and not per_row:
                return False
    return True


def optimizer_snapshot(run: Run) -> dict:
    """The optimisers' state dicts, detached copies on the CPU."""

    def cpu(node):
        if isinstance(node, torch.Tensor):
            return node.detach().cpu().clone()
        if isinstance(node, dict):
            return {k: cpu(v) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return type(node)(cpu(v) for v in node)
        return node

    snapshot = {"adam": cpu(run.adam.state_dict()), "rprop": cpu(run.rprop.state_dict())}
    if run.positions_optimizer is not None:
        snapshot["positions"] = cpu(run.positions_optimizer.state_dict())
    if run.tilt_optimizer is not None:
        snapshot["tilt_field"] = cpu(run.tilt_optimizer.state_dict())
    return snapshot


# -- the steps ----------------------------------------------------------------------------


def hold_tilt_map(run: Run, iteration: int) -> bool:
    """At ``tilt_map_hold``: move a tilt map's bend into the slices and hold the map; True when it did.

    See :mod:`.crystal_frame`. From then on the propagator takes the map's
    mean tilt, which is learned as a global tilt would be (gradient and
    global drift-to-tilt steps move every control point alike), the map's
    shape is held, and the depth prior follows the map's columns.
    """
    if not hold_iteration_due(run.config, run.state, iteration):
        return False
    hold_map(run.state)
    if run.tilt_optimizer is not None:
        # every control point the same moments: the uniform gradient of the mean tilt then moves all
        # alike, and the map's shape stays as held
        with torch.no_grad():
            for moments in run.tilt_optimizer.state.values():
                for value in moments.values():
                    if isinstance(value, torch.Tensor) and value.ndim:
                        value.copy_(value.mean(dim=0, keepdim=True).expand_as(value))
    return True


def set_trainable(run: Run, iteration: int) -> None:
    """Switch each parameter's gradient on from its start iteration (a held tilt map: its mean only)."""
    state, config = run.state, run.config
    state.phase.requires_grad_(True)
    state.amplitude.requires_grad_(True)
    learn_probe = config.lr_probe > 0 and iteration >= config.start_probe
    state.probe.requires_grad_(learn_probe)
    if state.has_companion:
        state.companion_phase.requires_grad_(True)
        state.companion_amplitude.requires_grad_(True)
        state.companion_probe.requires_grad_(learn_probe)
    learn = config.learns_geometry
    learn_tilt = learn and config.lr_tilt > 0 and iteration >= config.start_tilt
    if state.has_tilt_map:  # a held map: the propagator takes its mean, learned as a global tilt
        state.tilt_grid.requires_grad_(learn_tilt)
        run.map_active = not map_held(state) and iteration >= config.tilt_map_start
    else:
        state.tilt.requires_grad_(learn_tilt)
    state.slice_thickness.requires_grad_(learn and config.lr_dz > 0 and iteration >= config.start_dz)
    if positions_learned(config, iteration, state.positions):
        if state.positions is None:
            state.positions = PositionModel(state.window_corners)
        if run.positions_optimizer is None:
            run.positions_optimizer = make_position_optimizer(state, config)
        state.positions.requires_grad_(True)
    elif state.positions is not None:
        state.positions.requires_grad_(False)


def positions_learned(config: SolverConfig, iteration: int, model: PositionModel | None = None) -> bool:
    """Whether the scan positions are learned in this iteration (not once ``model`` gave them up)."""
    if model is not None and model.given_up:
        return False
    return config.refine_positions and config.lr_positions > 0 and iteration >= config.positions_start


def batch_corners(run: Run, batch: torch.Tensor) -> torch.Tensor:
    """The batch's probe-window corners: from the position model when it is learned."""
    model = run.state.positions
    if model is not None and model.offsets.requires_grad:
        return model.corners(batch)
    return run.state.window_corners[batch]


def batch_order(run: Run, iteration: int) -> list[torch.Tensor]:
    """The mini-batches of this iteration: a random order seeded by (seed, iteration).

    Seeding per iteration makes a resumed run draw the same batches as an
    uninterrupted one, and every process of a distributed run the same global
    batches. For chunked (lazy, file-backed) data the order is chunk-aware
    (:meth:`.data.MeasuredData.permutation`): units of chunks are shuffled,
    then the positions within groups of them; otherwise it is a plain random
    permutation.
    """
    generator = torch.Generator().manual_seed(run.config.seed * 1_000_003 + iteration)
    order = run.data.permutation(generator, run.config.batch_size).to(run.data.device)
    return list(torch.split(order, run.config.batch_size))


def batch_propagator(
    run: Run, batch: torch.Tensor, dz: torch.Tensor | None = None, detach_tilt: bool = False
) -> torch.Tensor:
    """The propagator for a batch: (N, N) with a global tilt, (B, N, N) with a tilt map.

    A tilt map is interpolated from its control points to the batch's
    positions; before ``tilt_map_start`` it is held uniform (its mean: global APP), and
    from ``tilt_map_hold`` on the propagator takes that mean again (the slices carry the bend).
    ``dz``: the slice thickness to propagate by (default the state's; with a
    thickness companion the requested slices take it detached);
    ``detach_tilt``: no gradient reaches the tilt (the companion's pass).
    """
    state = run.state
    if dz is None:
        dz = state.slice_thickness.detach() if state.has_companion else state.slice_thickness
    grid = state.tilt_grid
    if state.has_tilt_map:
        grid = grid.detach() if detach_tilt else grid
        if run.map_active:
            index, weight = state.tilt_weights()
            tilt = interpolate(grid, index[batch], weight[batch])
            return tilted_propagators(run.ky, run.kx, state.wavelength, dz, tilt)
        return propagator(run.ky, run.kx, state.wavelength, dz, grid.mean(dim=0))
    tilts = state.tilt.detach() if detach_tilt else state.tilt
    tilt = tilts if tilts.shape[0] == 1 else tilts[batch]
    tilt_arg = tilt[0] if tilt.shape[0] == 1 else tilt
    if run.config.learns_geometry or bool(torch.any(state.tilt != 0)):
        return propagator(run.ky, run.kx, state.wavelength, dz, tilt_arg)
    return propagator(run.ky, run.kx, state.wavelength, dz)


def gradient_step(run: Run, batch: torch.Tensor) -> float:
    """Forward model, loss, backward and one Adam step for a batch; returns the batch's loss.

    The slice thickness's gradient is accumulated (not stepped) for
    :func:`thickness_step`; with a thickness companion it comes from the
    companion's pass alone (:func:`companion_loss`). With several processes, each computes its share
    of the (global) batch and the object, probe and tilt gradients and the
    loss are summed over the processes before the Adam step, so all take the
    same step.
    """
    state = run.state
    local = run.data.local(batch)
    value = 0.0
    if local.numel():
        prop = batch_propagator(run, local)
        model = forward(state.probe, state.phase, state.amplitude, batch_corners(run, local), prop)
        extra = {"offset": run.data.count_offset} if run.config.loss == "anscombe" else {}
        targets = run.data.targets(local)
        loss = LOSSES[run.config.loss](model, targets, run.data.mask, **extra)
        value = float(loss.detach())
        if state.has_companion:
            loss = loss + companion_loss(run, local, targets, extra)
        loss.backward()
    if run.comm is not None:
        params = [p for g in run.adam.param_groups for p in g["params"]]
        if run.tilt_optimizer is not None:
            params.append(state.tilt_grid)
        value = run.comm.all_reduce_gradients(params, value)
    run.adam.step()
    run.adam.zero_grad(set_to_none=True)
    tilt_field_step(run, batch)
    clamp_amplitude(state.amplitude, run.config.max_amplitude)
    if state.has_companion:
        clamp_amplitude(state.companion_amplitude, run.config.max_amplitude)
    return value


def companion_loss(run: Run, batch: torch.Tensor, targets: torch.Tensor, extra: dict) -> torch.Tensor:
    """The thickness companion's loss for a batch (:mod:`.thickness_companion`).

    Its merged slices and its own probe, propagated by ``k dz`` with the
    gradient reaching dz, at the requested model's tilt and positions (held:
    no gradient reaches them from here).
    """
    state = run.state
    dz = state.slice_thickness * state.companion_factor
    prop = batch_propagator(run, batch, dz=dz, detach_tilt=True)
    corners = batch_corners(run, batch).detach()
    model = forward(state.companion_probe, state.companion_phase, state.companion_amplitude, corners, prop)
    return LOSSES[run.config.loss](model, targets, run.data.mask, **extra)


def tilt_field_step(run: Run, batch: torch.Tensor) -> None:
    """A tilt map's Adam step: only the control points the batch's positions touch move.

    Undetermined points (vacuum) are never moved; before ``tilt_map_start``
    (uniform map) all points take the same step.
    """
    state = run.state
    if run.tilt_optimizer is None or state.tilt_grid.grad is None:
        return
    if run.map_active:
        index, weight = state.tilt_weights()
        touched = torch.zeros(state.tilt_grid.shape[0], dtype=torch.bool, device=state.tilt_grid.device)
        touched[index[batch][weight[batch] > 0]] = True
        touched &= ~torch.as_tensor(state.tilt_field.undetermined, device=touched.device)
    else:
        touched = torch.ones(state.tilt_grid.shape[0], dtype=torch.bool, device=state.tilt_grid.device)
    run.tilt_optimizer.step(touched)
    run.tilt_optimizer.zero_grad(set_to_none=True)
    refresh_position_tilts(state)


def check_divergence(run: Run, value: float, batch_size: int) -> None:
    """Raise :class:`Diverged` on a non-finite loss or one far above the lowest seen.

    The test is per position, against the lowest loss per position of any
    batch so far in the run (kept in the state, so it survives a resume).
    """
    per_position = value / batch_size
    if not math.isfinite(value) or per_position > run.config.divergence_factor * run.state.lowest_loss:
        raise Diverged
    run.state.lowest_loss = min(run.state.lowest_loss, per_position)


def thickness_step(run: Run) -> None:
    """One Rprop step on dz with the gradient summed over the whole pass (and the processes)."""
    if run.comm is not None:
        run.comm.reduce_thickness_gradient(run.state.slice_thickness)
    if run.state.slice_thickness.grad is not None:
        run.rprop.step()
        run.rprop.zero_grad(set_to_none=True)


def positions_step(run: Run) -> None:
    """One Rprop step on the scan positions with the whole pass's gradient, then their constraints.

    ``window_corners`` is updated to the new positions. When more than
    :data:`.positions.RUNAWAY_FRACTION` of the offsets end at their bound, the
    data do not determine them: they are given up (back to the raster) and
    position learning stops for the rest of the run, with a warning.
    """
    model = run.state.positions
    if model is None or run.positions_optimizer is None or not model.offsets.requires_grad:
        return
    if run.comm is not None:  # each process holds the gradients of its own positions
        run.comm.all_reduce_gradients(model.parameters(), 0.0)
    if model.offsets.grad is None:
        return
    run.positions_optimizer.step()
    run.positions_optimizer.zero_grad(set_to_none=True)
    bound = run.config.positions_max_offset / run.state.sampling
    model.constrain(shrink=POSITION_SHRINK, max_offset=bound)
    fraction = model.at_bound(bound)
    if fraction > RUNAWAY_FRACTION:
        model.give_up()
        model.requires_grad_(False)
        _log.warning(
            "The scan-position offsets ran into their bound (%.0f %% of the positions at +-%g Å): the data "
            "do not determine them (too little overlap between neighbouring probe positions), so the "
            "positions are kept on the raster for the rest of the run. Set refine_positions=False to skip "
            "this, or raise positions_max_offset if the scan really is that far off.",
            100 * fraction,
            run.config.positions_max_offset,
        )
    with torch.no_grad():
        run.state.window_corners.copy_(model.corners())


def drift_due(config: SolverConfig, iteration: int, num_slices: int) -> bool:
    """Whether the drift-to-tilt step runs after this iteration."""
    return (
        config.learns_geometry
        and config.drift_to_tilt_every > 0
        and iteration >= config.drift_to_tilt_start
        and (iteration - config.drift_to_tilt_start) % config.drift_to_tilt_every == 0
        and num_slices > 1
    )


def drift_to_tilt(run: Run, iteration: int) -> np.ndarray | None:
    """The drift-to-tilt step (APP), when due: see :func:`move_drift_into_tilt`.

    A held tilt map takes the global step (its mean moves, its bend is in the slices), and its
    vacuum marks are renewed (:func:`.tilt_field.mark_vacuum`).

    Returns
    -------
    numpy.ndarray or None
        The change of the tilt (mrad), or None when the step was not due.
    """
    state = run.state
    due = drift_due(run.config, iteration, state.num_slices)
    local = state.has_tilt_map and not map_held(state) and iteration >= run.config.tilt_map_start
    if local and run.config.learns_geometry:
        # the local step; when not due, only the regulariser runs
        return move_local_drift_into_tilt(state, run.data.window, run.config, measure=due)
    if not due:
        return None
    if map_held(state):
        mark_vacuum(state, run.data.window, run.config.tilt_map_vacuum)
    return move_drift_into_tilt(state, run.data.window)


def move_drift_into_tilt(state: ReconstructionState, window: int) -> np.ndarray:
    """Move the slices' linear drift with depth into the tilt; returns the change in mrad.

    The slices are registered pairwise over the scanned field; their lateral
    shift against depth, fitted by a line, is a tilt the propagator has not
    yet taken up. The step adds it to the tilt and shifts the slices back: an
    exact change of variables, (t + c, o_s(x + z_s c)) gives the same patterns.
    It runs before the depth prior, which would pull the end slices toward
    their neighbours and so shrink the measured drift. The optimiser's moments
    are kept (the slices move by a fraction of a pixel; resetting Adam would
    kick every object pixel by a full step).
    """
    roi = state.scan_window(window)
    phase = state.phase.detach().cpu().numpy()
    shifts = slice_shifts(phase, roi)
    depths = np.arange(state.num_slices) * state.dz
    slope_px = fit_drift(shifts, depths)  # px per Å, (y, x)
    slope = slope_px * state.sampling
    # A single step moves the tilt by at most MAX_DRIFT_STEP mrad: on data too small or
    # too noisy to show the drift, a bad registration must not throw the tilt away.
    limit = np.tan(MAX_DRIFT_STEP * 1e-3)
    if np.abs(slope).max() > limit:
        slope_px = slope_px * (limit / np.abs(slope).max())
        slope = slope_px * state.sampling
    with torch.no_grad():
        tan_old = torch.tan(state.tilt.double() * 1e-3)
        tan_new = tan_old + torch.as_tensor(slope[::-1].copy(), dtype=torch.float64, device=state.tilt.device)
        new_tilt = torch.atan(tan_new) * 1e3
        change = (new_tilt - state.tilt.double()).mean(dim=0).cpu().numpy()
        state.tilt.copy_(new_tilt.to(state.tilt.dtype))
        if state.has_tilt_map:  # a (uniform) tilt map: the same change on every control point
            grid = torch.atan(torch.tan(state.tilt_grid.double() * 1e-3) + tan_new.mean(0) - tan_old.mean(0))
            state.tilt_grid.copy_((grid * 1e3).to(state.tilt_grid.dtype))
            refresh_position_tilts(state)
        for phase_t, amplitude_t, dz in state.slice_sets():  # the slices, and the companion's alike
            back = -np.outer(np.arange(phase_t.shape[0]) * dz, slope_px)
            for tensor in (phase_t, amplitude_t):
                moved = fourier_shift(tensor.detach().cpu().numpy(), back)
                tensor.copy_(torch.as_tensor(moved, dtype=tensor.dtype, device=tensor.device))
    return change


@torch.no_grad()
def apply_constraints(run: Run) -> None:
    """Between iterations: orthogonal probe modes, the depth prior, dz > 0.

    With a held tilt map the depth prior averages along the map's columns
    (:func:`.crystal_frame.crystal_frame_prior`).
    """
    state = run.state
    if state.probe.shape[0] > 1:
        orthogonalize_probe(state.probe)
        if state.has_companion:
            orthogonalize_probe(state.companion_probe)
    for phase, amplitude, dz in state.slice_sets():  # the slices, and the companion's alike
        if map_held(state):
            crystal_frame_prior(state, (phase, amplitude), run.config.depth_weight, dz=dz)
        else:
            smooth_depth(phase, run.config.depth_weight)
            smooth_depth(amplitude, run.config.depth_weight)
    state.slice_thickness.clamp_(min=0.1)


def finish_iteration(run: Run, iteration: int, total: float, seconds: float) -> None:
    """Count the iteration, append the history and keep the optimisers' state."""
    state = run.state
    state.iteration = iteration + 1
    state.record(total / run.data.norm, seconds)
    state.optimizer = optimizer_snapshot(run)


def finite(state: ReconstructionState) -> bool:
    """True when object, probe and tilt are all finite."""
    names = ("phase", "amplitude", "probe", "tilt") + (("tilt_grid",) if state.has_tilt_map else ())
    names += state._COMPANION if state.has_companion else ()
    return all(bool(torch.isfinite(getattr(state, n)).all()) for n in names)
