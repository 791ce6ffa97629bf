"""A held tilt map: the bend carried by the slices, the propagator at the mean tilt.

A tilt map (:mod:`.tilt_field`) gives every probe position its own propagator
tilt, constant over the probe's footprint. A bent crystal's tilt changes within
that footprint too: its columns fan out (or in) with depth, which one tilt per
pattern cannot hold. Global APP lets the slices hold that stretch, which is why
its loss is the lower one on a bend, while its columns blur at the field's edges.

From ``tilt_map_hold`` on, the solver combines the two (:func:`hold_map`):

* the map's departure from its mean, ``c(r) = tan(theta(r)) - mean tan(theta)``,
  is moved into the slices (slice ``s`` warped by ``+z_s c(r)``, the inverse of
  the local drift-to-tilt step's warp), so the slices follow the crystal's
  columns, stretch included;
* the propagator takes the map's mean tilt for every position; that mean is
  learned as a global tilt is (gradient steps and the global drift-to-tilt
  step move every control point alike), while the map's shape is held;
* the depth prior averages each slice with its neighbours after shifting them
  onto it by the map's drift between adjacent slices, ``dz c(r)``
  (:func:`crystal_frame_prior`): it keeps the slices alike along the
  crystal's columns and no longer pulls the bend straight.

What a user sees (the result signal, the py4DSTEM object) is in the entrance
frame (:func:`entrance_frame`): each slice warped back by ``-z_s c(r)``, so
every column sits at its entrance position in every slice, as after a tilt
map that was never held.

Warps use :func:`.tilt_field.warp_levels`: a spatially varying shift as a
blend of exact Fourier shifts by quantised amounts, no interpolating resampler.
"""

from __future__ import annotations

import numpy as np
import torch

from .tilt_field import TiltGrid, shift_slices_with_depth, warp_levels

__all__ = [
    "map_held",
    "hold_iteration_due",
    "map_departure",
    "hold_map",
    "neighbours_along",
    "crystal_frame_prior",
    "entrance_frame",
]


def map_held(state) -> bool:
    """True when the state's tilt map is held (its bend carried by the slices)."""
    return state.has_tilt_map and state.tilt_field.held


def hold_iteration_due(config, state, iteration: int) -> bool:
    """Whether the map is to be held before ``iteration`` (``tilt_map_hold``; 0: never)."""
    return (
        state.has_tilt_map
        and not map_held(state)
        and config.learns_geometry
        and config.tilt_map_hold > 0
        and iteration >= config.tilt_map_hold
        and state.num_slices > 1
    )


def map_departure(state) -> np.ndarray:
    """The map's departure from its mean as tan(theta), at the control points: (K, (x, y))."""
    tan = np.tan(state.tilt_grid.detach().double().cpu().numpy() * 1e-3)
    return tan - tan.mean(axis=0)


def _departure_at(state, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """:func:`map_departure` at the points (yy, xx) Å, in px per Å of depth: (..., (y, x))."""
    index, weight = state.tilt_field.weights(np.stack([yy.ravel(), xx.ravel()], axis=1))
    values = (map_departure(state)[index] * weight[..., None]).sum(axis=1)
    return values.reshape(*yy.shape, 2)[..., ::-1] / state.sampling


def _pixel_grid(state) -> tuple[np.ndarray, np.ndarray]:
    """(yy, xx) Å of every object pixel, (H, W) each."""
    ys, xs = state.coordinates()
    return np.meshgrid(ys, xs, indexing="ij")


def _departure_px(state) -> np.ndarray:
    """:func:`map_departure` at every object pixel, in px of lateral shift per Å of depth: (H, W, (y, x))."""
    return _departure_at(state, *_pixel_grid(state))


@torch.no_grad()
def hold_map(state) -> None:
    """Move the map's departure from its mean into the slices and mark the map held (in place)."""
    grid: TiltGrid = state.tilt_field
    shift_slices_with_depth(state, _departure_px(state))
    grid.held = True


def neighbours_along(field: torch.Tensor, step: np.ndarray) -> torch.Tensor:
    """Each slice's neighbours' mean after shifting them onto it by ``step`` (H, W, (y, x)) px per slice.

    Slice ``s - 1`` is moved by ``+step`` and slice ``s + 1`` by ``-step``;
    the end slices take their single neighbour (as
    :func:`.depth_prior.neighbour_mean` does without a shift).
    """
    up = warp_levels(field[:-1], step)  # slice s-1 onto slice s, for s = 1 .. S-1
    down = warp_levels(field[1:], -step)  # slice s+1 onto slice s, for s = 0 .. S-2
    near = torch.empty_like(field)
    near[1:-1] = 0.5 * (up[:-1] + down[1:])
    near[0], near[-1] = down[0], up[-1]
    return near


@torch.no_grad()
def crystal_frame_prior(state, fields, weight: float, dz: float | None = None) -> None:
    """The depth prior along a held map's columns: each slice ``weight`` of the way to its neighbours.

    ``fields``: the (S, H, W) tensors to smooth in place (phase and
    amplitude). The neighbours are first shifted onto the slice by the map's
    drift between adjacent slices, ``dz c(r)`` (:func:`neighbours_along`);
    ``dz`` defaults to the state's (the thickness companion passes its own).
    """
    if weight <= 0 or fields[0].shape[0] < 2:
        return
    step = _departure_px(state) * (state.dz if dz is None else dz)
    for field in fields:
        near = neighbours_along(field, step)  # before field changes
        field.mul_(1 - weight).add_(near, alpha=weight)


@torch.no_grad()
def entrance_frame(state) -> tuple[np.ndarray, np.ndarray]:
    """Phase and amplitude (S, H, W) as numpy with a held map's bend taken out of the slices.

    The inverse of :func:`hold_map`, which gives pixel ``p`` of slice ``s``
    the content from ``p - z_s c(p)``: here pixel ``q`` takes the content
    from ``q - t(q)`` with ``t(q) = -z_s c(q - t(q))`` (solved by fixed-point
    iteration), so that every column sits at its entrance position in every
    slice. For a state whose map is not held (or without a map) these are the
    slices as they are.
    """
    phase, amplitude = state.phase.detach(), state.amplitude.detach()
    if not map_held(state):
        return phase.cpu().numpy(), amplitude.cpu().numpy()
    yy, xx = _pixel_grid(state)
    departure = _departure_at(state, yy, xx)
    out = {"phase": [], "amplitude": []}
    for s in range(state.num_slices):
        depth = s * state.dz
        back = -depth * departure  # px
        for _ in range(4):
            back = -depth * _departure_at(
                state, yy - back[..., 0] * state.sampling, xx - back[..., 1] * state.sampling
            )
        for name, tensor in (("phase", phase), ("amplitude", amplitude)):
            out[name].append(warp_levels(tensor[s : s + 1], back)[0].cpu().numpy())
    return np.stack(out["phase"]), np.stack(out["amplitude"])
