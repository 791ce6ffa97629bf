"""A held tilt map (``tilt_map_hold``): the bend in the slices, the crystal-frame prior, the entrance frame."""

import numpy as np
import pytest
import torch

from app_extension.results import state_to_signal
from app_extension.simulate import simulate_tilt_field
from app_extension.solver import steps
from app_extension.solver.alignment import fourier_shift
from app_extension.solver.config import SolverConfig
from app_extension.solver.constraints import smooth_depth
from app_extension.solver.crystal_frame import (
    crystal_frame_prior,
    entrance_frame,
    hold_map,
    map_departure,
)
from app_extension.solver.engine import reconstruct
from app_extension.solver.state import ReconstructionState
from app_extension.solver.tilt_field import TiltGrid, pixel_field, warp_levels

EXTENT = 11.0


def ramp(y, x):
    """theta_x = 5 mrad, theta_y from -15 to +15 mrad across the rows (as in test_tilt_field)."""
    y = np.asarray(y, dtype=np.float64)
    return np.full_like(y, 5.0), -15 + 30 * np.clip(y / EXTENT, 0, 1)


@pytest.fixture(scope="module")
def bend():
    return simulate_tilt_field(ramp, unit_cells_z=12, scan_shape=(12, 12), scan_step=1.0)


@pytest.fixture(scope="module")
def held_and_free(bend):
    """The same 16-iteration tilt-map run, held at iteration 13 (the default) and never held."""
    out = {}
    for name, hold in (("held", 13), ("free", 0)):
        config = SolverConfig(
            num_slices=4, slice_thickness=12.0, iterations=16, tilt_map=True, tilt_map_hold=hold
        )
        grids = []
        state = reconstruct(
            bend.data,
            bend.geometry,
            config,
            show_progressbar=False,
            callback=lambda s, grids=grids: grids.append(s.tilt_grid.detach().double().numpy().copy()),
        )
        out[name] = (config, state, np.stack(grids))
    return out


def _smooth_image(shape, seed=0):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    return gaussian_filter(rng.normal(size=shape), 1.5)


def _state_with_map(values_mrad, num_slices=4, shape=(64, 72)):
    """A state on a 3 x 3 control grid over a 64 x 72 px object, its slices one smooth image."""
    sampling = 0.2
    grid = TiltGrid(shape=(3, 3), origin=(2.0, 2.0), spacing=(4.0, 5.0))
    image = _smooth_image(shape)
    phase = torch.as_tensor(np.repeat(image[None], num_slices, axis=0), dtype=torch.float32)
    positions = 10
    state = ReconstructionState(
        phase=phase,
        amplitude=torch.ones_like(phase) + 0.1 * phase,
        probe=torch.ones((1, 16, 16), dtype=torch.complex64),
        tilt=torch.zeros((positions, 2)),
        slice_thickness=torch.tensor(25.0),
        window_corners=torch.zeros((positions, 2)),
        sampling=sampling,
        origin=(0.0, 0.0),
        wavelength=0.0197,
        tilt_grid=torch.as_tensor(np.asarray(values_mrad, dtype=np.float32)),
        tilt_field=grid,
    )
    return state


def _bend_values():
    nodes = TiltGrid(shape=(3, 3), origin=(2.0, 2.0), spacing=(4.0, 5.0)).nodes()
    return np.stack([2.0 + 0.0 * nodes[:, 0], -6.0 + 1.5 * nodes[:, 0]], axis=1)  # theta_y rises with y


def test_warp_levels_uniform_is_a_fourier_shift_and_varying_moves_locally():
    field = torch.as_tensor(np.stack([_smooth_image((40, 48), s) for s in range(3)]))
    shift = np.broadcast_to(np.array([0.3, -0.7]), (40, 48, 2))
    want = fourier_shift(field.numpy(), np.tile([0.3, -0.7], (3, 1)))
    np.testing.assert_allclose(warp_levels(field, shift).numpy(), want, atol=1e-10)
    np.testing.assert_allclose(warp_levels(field, np.zeros((40, 48, 2))).numpy(), field.numpy(), atol=1e-12)
    # a shift rising along y moves a line's centre by the local amount
    line = torch.as_tensor(np.exp(-((np.arange(48) - 24.0) ** 2) / 30.0)[None, None, :] * np.ones((1, 40, 1)))
    varying = np.zeros((40, 48, 2))
    varying[..., 1] = 0.05 * np.arange(40)[:, None]
    out = warp_levels(line, varying).numpy()[0]
    centre = (out * np.arange(48)).sum(axis=1) / out.sum(axis=1)
    np.testing.assert_allclose(centre[5:35], 24 + 0.05 * np.arange(40)[5:35], atol=0.05)


def test_hold_of_a_uniform_map_leaves_the_slices_and_the_prior_as_they_are():
    state = _state_with_map(np.tile([4.0, -3.0], (9, 1)))
    phase, amplitude = state.phase.clone(), state.amplitude.clone()
    np.testing.assert_allclose(map_departure(state), 0.0, atol=1e-12)
    hold_map(state)
    assert state.tilt_field.held
    torch.testing.assert_close(state.phase, phase, rtol=0, atol=0)
    torch.testing.assert_close(state.amplitude, amplitude, rtol=0, atol=0)
    noisy = phase + 0.1 * torch.as_tensor(
        np.random.default_rng(3).normal(size=phase.shape), dtype=torch.float32
    )
    plain, frame = noisy.clone(), noisy.clone()
    smooth_depth(plain, 0.5)
    crystal_frame_prior(state, [frame], 0.5)
    torch.testing.assert_close(frame, plain, rtol=0, atol=1e-5)


def test_hold_then_entrance_frame_round_trips_and_the_prior_follows_the_columns():
    state = _state_with_map(_bend_values())
    entrance = state.phase.detach().numpy().copy()
    hold_map(state)
    carried = state.phase.detach().numpy()
    # the slices now lean: slice s moved by z_s c(r), the deepest by several tenths of a pixel
    depth_shift = 3 * state.dz * np.abs(pixel_field(state, state.tilt_field, map_departure(state))).max()
    assert depth_shift / state.sampling > 0.5
    assert np.abs(carried[-1] - entrance[-1]).max() > 0.1 * np.abs(entrance).max()
    # the entrance frame takes the bend out again (the inverse warp, up to the quantised blend)
    back, _ = entrance_frame(state)
    inner = (slice(None), slice(8, -8), slice(8, -8))
    assert np.abs(back - entrance)[inner].max() < 0.05 * np.abs(entrance).max()  # the naive inverse: 0.09
    # slices that already follow the columns are what the crystal-frame prior keeps; the plain prior
    # pulls them straight
    frame, plain = state.phase.clone(), state.phase.clone()
    crystal_frame_prior(state, [frame], 0.5)
    smooth_depth(plain, 0.5)
    moved_frame = (frame - state.phase).abs().numpy()[inner].max()
    moved_plain = (plain - state.phase).abs().numpy()[inner].max()
    assert moved_frame < 0.2 * moved_plain


def test_held_flag_survives_serialisation(tmp_path):
    state = _state_with_map(_bend_values())
    hold_map(state)
    assert TiltGrid.from_tree(state.tilt_field.to_tree()).held
    assert state.clone().tilt_field.held
    path = tmp_path / "held.h5"
    state.save(path)
    assert ReconstructionState.load(path).tilt_field.held
    tree = state.tilt_field.to_tree()
    del tree["held"]  # a file from before the option
    assert not TiltGrid.from_tree(tree).held


def test_hold_step_holds_the_maps_shape_and_learns_its_mean(held_and_free):
    _, state, grids = held_and_free["held"]
    assert state.tilt_field.held
    shape = grids - grids.mean(axis=1, keepdims=True)  # (iteration, K, 2): the map's departure
    # from the hold (before iteration 13) on the departure is held, the mean still moves
    np.testing.assert_allclose(shape[13:], shape[12][None].repeat(3, axis=0), atol=2e-3)
    assert np.abs(np.diff(grids[12:].mean(axis=1), axis=0)).max() > 1e-3
    _, free, free_grids = held_and_free["free"]
    assert not free.tilt_field.held
    free_shape = free_grids - free_grids.mean(axis=1, keepdims=True)
    assert np.abs(free_shape[13:] - free_shape[12]).max() > 1e-2  # the control: a free map's shape moves on


def test_held_map_fits_a_bend_better_and_keeps_the_map(bend, held_and_free):
    (_, held, _), (_, free, _) = held_and_free["held"], held_and_free["free"]
    # the slices can hold the stretch within a probe's footprint that one tilt per pattern cannot
    assert held.history["loss"][-1] < free.history["loss"][-1]
    tx, ty = ramp(bend.geometry.scan_positions[:, 0], bend.geometry.scan_positions[:, 1])
    est = held.tilt_mrad
    spread = np.sqrt(np.mean((ty - ty.mean()) ** 2))
    assert np.sqrt(np.mean((est[:, 1] - ty) ** 2)) < spread / 3
    assert np.all(np.diff(est[:, 1].reshape(12, 12).mean(axis=1)) > 0)
    assert held.thickness == pytest.approx(bend.thickness, rel=0.15)


def test_result_signal_shows_the_entrance_frame(bend, held_and_free):
    config, state, _ = held_and_free["held"]
    signal = state_to_signal(state, config, bend.geometry, scan_shape=(12, 12))
    phase, amplitude = state.slices()
    np.testing.assert_allclose(np.angle(signal.data), np.angle(amplitude * np.exp(1j * phase)), atol=1e-5)
    assert np.abs(np.angle(signal.data) - state.phase.numpy()).max() > 1e-3  # not the carried slices
    np.testing.assert_allclose(state.object, signal.data, atol=1e-6)


def test_resume_across_the_hold_is_exact(bend):
    config = SolverConfig(
        num_slices=3, slice_thickness=16.0, iterations=4, tilt_map=True, tilt_map_start=1, tilt_map_hold=3
    )
    data, geometry = bend.data, bend.geometry
    straight = reconstruct(data, geometry, config, show_progressbar=False)
    half = reconstruct(data, geometry, config, iterations=2, show_progressbar=False)
    assert not half.tilt_field.held
    again = reconstruct(data, geometry, config, state=half, iterations=2, show_progressbar=False)
    assert again.tilt_field.held and straight.tilt_field.held
    for name in ("phase", "amplitude", "probe", "tilt", "slice_thickness", "tilt_grid"):
        torch.testing.assert_close(getattr(again, name), getattr(straight, name), atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(again.history["loss"], straight.history["loss"], rtol=1e-5)


def test_hold_is_skipped_without_a_map_or_with_zero():
    config = SolverConfig(tilt_map=True, tilt_map_hold=0)
    state = _state_with_map(_bend_values())
    run = steps.Run.__new__(steps.Run)
    run.state, run.config = state, config
    assert not steps.hold_tilt_map(run, 50)
    run.config = SolverConfig(tilt_map=True, tilt_map_hold=13)
    assert not steps.hold_tilt_map(run, 12)
    assert steps.hold_tilt_map(run, 13) and state.tilt_field.held
    assert not steps.hold_tilt_map(run, 14)  # once
