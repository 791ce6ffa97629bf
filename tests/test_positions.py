"""Scan-position refinement: the model, its constraints, and recovery of a mis-calibrated scan."""

import numpy as np
import pytest
import torch

from app_extension.simulate import simulate_tilted_crystal
from app_extension.solver.config import Geometry, SolverConfig
from app_extension.solver.engine import reconstruct
from app_extension.solver.positions import PositionModel


def raster_corners(n=6):
    iy, ix = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return torch.as_tensor(np.stack([iy.ravel(), ix.ravel()], axis=1) * 3.0 + 5.0, dtype=torch.float32)


def test_identity_model_gives_the_nominal_corners():
    nominal = raster_corners()
    model = PositionModel(nominal)
    torch.testing.assert_close(model.corners(), nominal)
    batch = torch.tensor([3, 0, 7])
    torch.testing.assert_close(model.corners(batch), nominal[batch])


def test_constrain_moves_no_linear_part_into_the_offsets():
    nominal = raster_corners()
    model = PositionModel(nominal)
    rng = np.random.default_rng(1)
    jitter = torch.as_tensor(rng.normal(0, 0.3, nominal.shape), dtype=torch.float32)
    linear = 0.02 * (nominal - nominal.mean(0)) @ torch.tensor([[1.0, 0.5], [-0.3, 2.0]]) + 1.5
    with torch.no_grad():
        model.offsets.copy_(jitter + linear)
    model.constrain(shrink=0.0, max_offset=10.0)
    o = model.offsets.double()
    design = torch.cat(
        [torch.ones((o.shape[0], 1)), (nominal - nominal.mean(0)).double(), model.time[:, None].double()], 1
    )
    # what is left is orthogonal to the mean, the linear terms and the time ramp
    assert (design.T @ o).abs().max() < 1e-3
    # and the jitter's non-linear part survives (the constraint is a projection, not a reset)
    assert o.std() > 0.2
    model.constrain(shrink=0.5, max_offset=0.1)
    assert model.offsets.abs().max() <= 0.1 + 1e-6


def test_affine_summary_reads_scale_and_rotation():
    model = PositionModel(raster_corners())
    a = np.deg2rad(3.0)
    m = 1.02 * np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    with torch.no_grad():
        model.affine.copy_(torch.as_tensor(m - np.eye(2), dtype=torch.float32))
    s = model.summary(sampling=0.5)
    assert s["scale_x"] == pytest.approx(1.02, abs=1e-4) and s["scale_y"] == pytest.approx(1.02, abs=1e-4)
    assert s["rotation_deg"] == pytest.approx(3.0, abs=1e-3)  # Geometry.raster's sense of rotation


def test_refinement_recovers_a_miscalibrated_jittered_scan():
    """A 3 % scale error, a 2 degree rotation and 0.05 Å jitter: the refined positions get closer."""
    ds = simulate_tilted_crystal(scan_shape=(12, 12), pattern_size=32, unit_cells_z=6, tilt=(0, 0))
    true = ds.geometry.scan_positions
    rng = np.random.default_rng(0)
    centre = true.mean(axis=0)
    a = np.deg2rad(2.0)
    wrong = 1.03 * np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    given = centre + (true - centre) @ wrong.T + rng.normal(0, 0.05, true.shape)
    geometry = Geometry(**{**ds.geometry.__dict__, "scan_positions": given})

    def error(p):
        d = p - true
        d -= d.mean(axis=0)  # a common shift is only a shift of the object
        return float(np.sqrt((d**2).sum(axis=1).mean()))

    config = SolverConfig(
        mode="fpp",
        num_slices=2,
        slice_thickness=11.7,
        iterations=15,
        batch_size=16,
        lr_positions=0.05,
        positions_start=2,
        positions_global=True,
    )
    state = reconstruct(ds.data, geometry, config, show_progressbar=False)
    fixed = reconstruct(ds.data, geometry, config.replace(refine_positions=False), show_progressbar=False)
    # measured: 0.130 Å -> 0.083 Å, loss 0.0067 (fixed) -> 0.0055
    assert error(state.probe_positions()) < 0.75 * error(given)
    np.testing.assert_allclose(
        fixed.probe_positions() - fixed.probe_positions().mean(0), given - given.mean(0), atol=1e-4
    )
    assert state.history["loss"][-1] < fixed.history["loss"][-1]
    summary = state.positions.summary(state.sampling)
    assert summary["rotation_deg"] < -0.5  # undoing the +2 degrees
    assert summary["scale_x"] < 0.99 and summary["scale_y"] < 0.99  # undoing the 3 % stretch


def test_offsets_at_their_bound_are_given_up_and_stay_given_up(tmp_path, caplog):
    from app_extension.solver import steps
    from app_extension.solver.data import MeasuredData
    from app_extension.solver.engine import initial_state
    from app_extension.solver.positions import RUNAWAY_FRACTION
    from app_extension.solver.state import ReconstructionState

    geometry = Geometry(
        energy=300e3, semiangle=20.0, reciprocal_sampling=0.1, scan_positions=Geometry.raster((8, 8), 1.0)
    )
    config = SolverConfig(num_slices=2, slice_thickness=10.0, positions_start=0)
    data = np.random.default_rng(0).uniform(0.5, 1.5, size=(64, 32, 32)).astype(np.float32)
    measured = MeasuredData(data, geometry, config, "cpu")
    state = initial_state(geometry, config, measured.window, measured.mean_intensity, "cpu")
    run = steps.Run.start(state, measured, config)
    steps.set_trainable(run, 0)
    model = state.positions
    bound = config.positions_max_offset / state.sampling
    # 40 % of the positions pushed far past the bound (signs alternating, so no mean or linear part)
    far = np.zeros((64, 2), dtype=np.float32)
    picked = np.random.default_rng(1).permutation(64)[:26]
    far[picked] = 3 * bound * np.where(np.arange(26) % 2, 1.0, -1.0)[:, None]
    with torch.no_grad():
        model.offsets.copy_(torch.as_tensor(far))
    model.offsets.grad = torch.zeros_like(model.offsets)
    with caplog.at_level("WARNING"):
        steps.positions_step(run)
    assert model.given_up and "ran into their bound" in caplog.text
    assert float(model.offsets.abs().max()) == 0.0
    torch.testing.assert_close(state.window_corners, model.corners())
    assert 26 / 64 > RUNAWAY_FRACTION
    # never learned again in this run, nor after a save and a resume
    steps.set_trainable(run, 5)
    assert not model.offsets.requires_grad
    path = tmp_path / "state.h5"
    state.save(path)
    back = ReconstructionState.load(path)
    assert back.positions.given_up and back.positions.clone().given_up
    assert not steps.positions_learned(config, 5, back.positions)
    assert steps.positions_learned(config, 5, PositionModel(model.nominal))


def test_low_overlap_scan_keeps_its_tilt():
    """1 Å steps for a 2 Å probe: the offsets run away and pulled a 12 mrad tilt to 7.4 mrad."""
    from app_extension.simulate import simulate_tilt_field

    def field(y, x):
        y = np.asarray(y, dtype=np.float64)
        return np.full_like(y, 12.0), np.zeros_like(y)

    ds = simulate_tilt_field(field, unit_cells_z=12, scan_shape=(20, 20), scan_step=1.0)
    config = SolverConfig(iterations=20, num_slices=4, slice_thickness=12.0)
    state = reconstruct(ds.data, ds.geometry, config, show_progressbar=False)
    assert state.positions.given_up
    assert state.tilt_mrad[0] > 10.0  # refine_positions=False: 11.1
