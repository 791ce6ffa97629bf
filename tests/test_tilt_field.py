"""The tilt map (extended APP): control grid, sparse updates, local drift step, regulariser, output."""

import numpy as np
import pytest
import torch

from app_extension.results import state_to_signal, tilt_map_to_signal
from app_extension.simulate import simulate_tilt_field
from app_extension.solver import steps
from app_extension.solver.config import Geometry, SolverConfig
from app_extension.solver.data import MeasuredData
from app_extension.solver.engine import initial_state, reconstruct
from app_extension.solver.options import OptionError
from app_extension.solver.tilt_field import (
    SparseAdam,
    TiltGrid,
    make_tilt_grid,
    measure_local_drift,
    regularize,
    uniformity,
)

EXTENT = 11.0  # Å, the scan's extent of the smooth-field data


def ramp(y, x):
    """theta_x = 5 mrad, theta_y from -15 to +15 mrad across the scan's rows."""
    y = np.asarray(y, dtype=np.float64)
    return np.full_like(y, 5.0), -15 + 30 * np.clip(y / EXTENT, 0, 1)


@pytest.fixture(scope="module")
def bent():
    """A bent crystal from the project's forward model and its tilt-map reconstruction."""
    ds = simulate_tilt_field(ramp, unit_cells_z=12, scan_shape=(12, 12), scan_step=1.0)
    config = SolverConfig(num_slices=4, slice_thickness=12.0, iterations=16, tilt_map=True)
    state = reconstruct(ds.data, ds.geometry, config, show_progressbar=False)
    return ds, config, state


def test_smooth_field_is_recovered(bent):
    ds, _, state = bent
    tx, ty = ramp(ds.geometry.scan_positions[:, 0], ds.geometry.scan_positions[:, 1])
    est = state.tilt_mrad
    assert est.shape == (144, 2)
    rms_y = np.sqrt(np.mean((est[:, 1] - ty) ** 2))
    rms_x = np.sqrt(np.mean((est[:, 0] - tx) ** 2))
    spread = np.sqrt(np.mean((ty - ty.mean()) ** 2))  # what a global tilt would miss (8.9 mrad)
    assert rms_y < 3.0 and rms_y < spread / 3
    assert rms_x < 1.5
    # the rows' tilt rises with y as the truth does
    rows = est[:, 1].reshape(12, 12).mean(axis=1)
    assert np.all(np.diff(rows) > 0)
    report = uniformity(state)
    assert report["non_uniform"] and report["determined"] == state.tilt_field.size
    assert state.thickness == pytest.approx(ds.thickness, rel=0.15)


def test_map_signal_axes_and_units(bent):
    ds, config, state = bent
    signal = tilt_map_to_signal(state, ds.geometry, scan_shape=(12, 12))
    assert signal.data.shape == (2, 12, 12)
    nav, (sx, sy) = signal.axes_manager.navigation_axes[0], signal.axes_manager.signal_axes
    assert nav.name == "component" and nav.size == 2
    assert (sx.name, sy.name) == ("x", "y")
    assert sx.units == sy.units == "Å"
    assert sx.scale == pytest.approx(1.0) and sy.scale == pytest.approx(1.0)
    assert sx.offset == 0 and sy.offset == 0
    assert signal.metadata.Signal.quantity == "Tilt (mrad)"
    assert list(signal.metadata.Tilt_map.components) == ["theta_x", "theta_y"]
    # row iy, column ix of component 1 is theta_y at the position (iy, ix)
    np.testing.assert_allclose(signal.data[1, 3, 7], state.tilt_mrad[3 * 12 + 7, 1], rtol=1e-5)
    assert signal.metadata.Tilt_map.non_uniform
    assert signal.metadata.Tilt_map.shape_held  # 16 iterations: held from 13 (the default)
    result = state_to_signal(state, config, ds.geometry, scan_shape=(12, 12))
    stored = result.metadata.Signal.Ptychography.tilt_map
    np.testing.assert_allclose(stored.data, signal.data)


def test_summary_png_draws_the_map(bent, tmp_path):
    from app_extension.report import save_summary

    ds, config, state = bent
    result = state_to_signal(state, config, ds.geometry, scan_shape=(12, 12))
    save_summary(result, tmp_path / "summary.png")
    assert (tmp_path / "summary.png").stat().st_size > 10_000


def _small_run():
    geometry = Geometry(
        energy=300e3, semiangle=20.0, reciprocal_sampling=0.1, scan_positions=Geometry.raster((10, 10), 1.0)
    )
    config = SolverConfig(
        num_slices=2, slice_thickness=10.0, tilt_map=True, tilt_map_grid=(4, 4), start_tilt=0
    )
    rng = np.random.default_rng(1)
    data = rng.uniform(0.5, 1.5, size=(100, 32, 32)).astype(np.float32)
    measured = MeasuredData(data, geometry, config, "cpu")
    state = initial_state(geometry, config, measured.window, measured.mean_intensity, "cpu")
    with torch.no_grad():
        state.phase.copy_(torch.as_tensor(rng.normal(0, 0.3, state.phase.shape), dtype=torch.float32))
    return geometry, state, measured, config


def test_sparse_update_leaves_untouched_control_points_unchanged():
    geometry, state, measured, config = _small_run()
    run = steps.Run.start(state, measured, config)
    steps.set_trainable(run, config.tilt_map_start)  # the map is active
    assert run.map_active and run.tilt_optimizer is not None
    # a batch of the 3 x 3 positions in the first corner touches only control points (0..1, 0..1)
    corner = torch.as_tensor([iy * 10 + ix for iy in range(3) for ix in range(3)])
    before = state.tilt_grid.detach().clone()
    steps.gradient_step(run, corner)
    after = state.tilt_grid.detach()
    moved = (after != before).any(dim=1).reshape(4, 4)
    touched = np.zeros((4, 4), dtype=bool)
    touched[:2, :2] = True
    assert moved[:2, :2].all()
    assert not moved.numpy()[~touched].any()
    moments = run.tilt_optimizer.state[state.tilt_grid]
    assert (moments["step"].reshape(4, 4)[~torch.as_tensor(touched)] == 0).all()
    # a second batch elsewhere: the corner keeps its value (no coasting on stale momentum)
    far = torch.as_tensor([iy * 10 + ix for iy in range(7, 10) for ix in range(7, 10)])
    kept = state.tilt_grid.detach().clone()
    steps.gradient_step(run, far)
    np.testing.assert_array_equal(state.tilt_grid.detach()[:2].numpy(), kept[:2].numpy())
    # the derived per-position tilts follow the grid
    index, weight = state.tilt_weights()
    expect = (state.tilt_grid.detach()[index] * weight[..., None]).sum(dim=1)
    torch.testing.assert_close(state.tilt, expect)


def test_dense_adam_would_coast():
    """The reason for SparseAdam: dense Adam moves rows whose gradient is zero."""
    dense = torch.zeros((2, 2), requires_grad=True)
    sparse = torch.zeros((2, 2), requires_grad=True)
    opt_d = torch.optim.Adam([dense], lr=0.1)
    opt_s = SparseAdam([sparse], lr=0.1)
    for grad in (torch.tensor([[1.0, 1.0], [1.0, 1.0]]), torch.tensor([[1.0, 1.0], [0.0, 0.0]])):
        dense.grad, sparse.grad = grad.clone(), grad.clone()
        opt_d.step()
        opt_s.step()
    assert float(dense.detach()[1, 0]) < -0.15  # moved twice
    assert float(sparse.detach()[1, 0]) == pytest.approx(-0.1)  # moved once, when it had a gradient


def test_grid_interpolation_and_options():
    grid = make_tilt_grid(Geometry.raster((9, 13), 1.0), 20.0, 0.0, 40.0, spacing=4.0)
    assert grid.shape == (3, 4)
    np.testing.assert_allclose(grid.spacing, (4.0, 4.0))
    nodes = grid.nodes()
    values = np.stack(
        [1 + 0.5 * nodes[:, 0] - 0.2 * nodes[:, 1], 2 + 0.1 * nodes[:, 0] * nodes[:, 1]], axis=1
    )
    pts = np.array([[1.3, 2.7], [7.9, 11.2], [0.0, 0.0], [8.0, 12.0]])
    index, weight = grid.weights(pts)
    np.testing.assert_allclose(weight.sum(axis=1), 1.0)
    got = (values[index] * weight[..., None]).sum(axis=1)
    want = np.stack([1 + 0.5 * pts[:, 0] - 0.2 * pts[:, 1], 2 + 0.1 * pts[:, 0] * pts[:, 1]], axis=1)
    np.testing.assert_allclose(got, want, atol=1e-12)  # bilinear functions are exact
    assert make_tilt_grid(Geometry.raster((9, 13), 1.0), 20.0, 0.0, 40.0, grid=(2, 5)).shape == (2, 5)
    assert SolverConfig(tilt_map_resolution="2 nm").tilt_map_resolution == pytest.approx(20.0)
    with pytest.raises(OptionError, match="tilt_map_grid"):
        SolverConfig(tilt_map_grid=(0, 3))
    back = TiltGrid.from_tree(grid.to_tree())
    assert back.shape == grid.shape and back.spacing == grid.spacing


def test_regularizers():
    shape = (5, 6)
    iy, ix = np.meshgrid(np.arange(5), np.arange(6), indexing="ij")
    linear = np.stack([2.0 * iy.ravel() - ix.ravel(), 0.5 * ix.ravel()], axis=1)
    np.testing.assert_allclose(regularize(linear, shape, 10.0, "smooth"), linear, atol=1e-8)
    step = np.stack([np.where(ix.ravel() < 3, 20.0, -20.0), np.zeros(30)], axis=1)
    smooth = regularize(step, shape, 2.0, "smooth")
    tv = regularize(step, shape, 2.0, "tv")
    # TV keeps the step's height across the boundary; the curvature penalty spreads it
    jump = lambda t: t.reshape(5, 6, 2)[:, 2, 0].mean() - t.reshape(5, 6, 2)[:, 3, 0].mean()  # noqa: E731
    assert jump(tv) > 0.9 * 40 and jump(smooth) < jump(tv)
    # undetermined points are filled from their neighbours
    confidence = np.ones(30)
    confidence[0] = 1e-3
    filled = regularize(np.where(np.arange(30)[:, None] == 0, 99.0, linear), shape, 1.0, "smooth", confidence)
    assert abs(filled[0, 0] - linear[0, 0]) < 1.0


def test_vacuum_is_undetermined():
    geometry, state, measured, config = _small_run()
    with torch.no_grad():
        state.phase[:, :, : state.phase.shape[-1] // 2] = 0.0  # the left half is empty
    found = measure_local_drift(state, state.tilt_field, measured.window, vacuum=0.2)
    nodes = state.tilt_field.nodes()
    ys, xs = state.coordinates()
    left = nodes[:, 1] < xs[state.phase.shape[-1] // 2] - 3.0
    assert found["undetermined"][left].all()
    assert not found["undetermined"][nodes[:, 1] > xs[state.phase.shape[-1] // 2] + 3.0].any()


def test_factorised_propagators_equal_eq3():
    from app_extension.physics.optics import fourier_grid
    from app_extension.physics.propagator import propagator
    from app_extension.physics.tilted_propagators import tilted_propagators

    ky, kx = fourier_grid((24, 20), 0.2)
    tilt = torch.tensor([[3.0, -5.0], [-20.0, 8.0], [0.0, 0.0]])
    dz = torch.tensor(17.0)
    torch.testing.assert_close(
        tilted_propagators(ky, kx, 0.0197, dz, tilt), propagator(ky, kx, 0.0197, dz, tilt), atol=2e-5, rtol=0
    )
