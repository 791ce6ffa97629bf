"""The thickness companion: dz learned on merged slices (app_extension.solver.thickness_companion)."""

import numpy as np
import pytest
import torch

from app_extension.physics.multislice import forward
from app_extension.physics.optics import electron_wavelength
from app_extension.physics.propagator import propagator
from app_extension.solver import steps
from app_extension.solver.config import SolverConfig
from app_extension.solver.engine import reconstruct
from app_extension.solver.state import ReconstructionState
from app_extension.solver.thickness_companion import companion_factor, depth_of_field, merge
from app_extension.solver.tilt_field import shift_slices_with_depth

WAVELENGTH = electron_wavelength(300e3)

# six slices of 4 Å at 300 kV and 22 mrad: merged in pairs, a companion of three 8 Å slices
OPTIONS = dict(num_slices=6, slice_thickness=4.0, batch_size=16, start_dz=1, seed=1)


def _run(dataset, iterations: int) -> ReconstructionState:
    config = SolverConfig(iterations=iterations, **OPTIONS)
    return reconstruct(dataset.data, dataset.geometry, config, show_progressbar=False)


def test_depth_of_field_and_factor_rule():
    assert depth_of_field(WAVELENGTH, 22.0) == pytest.approx(40.7, abs=0.1)
    assert companion_factor(10, 13.0, WAVELENGTH, 22.0) == 2
    assert companion_factor(10, 10.0, WAVELENGTH, 22.0) == 2  # 5 slices of 50 Å would be too thick
    assert companion_factor(5, 26.0, WAVELENGTH, 22.0) == 1  # 5 is prime, and 1 slice is no depth model
    assert companion_factor(20, 6.5, WAVELENGTH, 22.0) == 5
    assert companion_factor(4, 5.0, WAVELENGTH, 22.0) == 1  # 2 slices are fewer than MIN_SLICES
    assert companion_factor(6, 4.0, WAVELENGTH, 22.0) == 2
    assert companion_factor(10, 13.0, WAVELENGTH, 0.0) == 1


def test_merged_slices_model_pairs_exactly():
    """Slices (a_s, vacuum) propagated by dz give the patterns of the a_s propagated by 2 dz."""
    g = torch.Generator().manual_seed(0)
    n, h = 24, 40
    content = 0.3 * torch.rand(3, h, h, generator=g)
    amp = 1 - 0.1 * torch.rand(3, h, h, generator=g)
    phase = torch.zeros(6, h, h)
    amplitude = torch.ones(6, h, h)
    phase[0::2], amplitude[0::2] = content, amp
    merged_phase, merged_amplitude = merge(phase, amplitude, 2)
    torch.testing.assert_close(merged_phase, content)
    torch.testing.assert_close(merged_amplitude, amp)
    k = torch.fft.fftfreq(n, d=0.2)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    probe = torch.polar(torch.ones(1, n, n), 0.5 * (ky**2 + kx**2)).to(torch.complex64)
    corners = torch.tensor([[3.0, 4.0], [10.5, 7.25]])
    tilt = torch.tensor([4.0, -2.0])
    fine = forward(probe, phase, amplitude, corners, propagator(ky, kx, WAVELENGTH, torch.tensor(5.0), tilt))
    coarse = forward(
        probe,
        merged_phase,
        merged_amplitude,
        corners,
        propagator(ky, kx, WAVELENGTH, torch.tensor(10.0), tilt),
    )
    torch.testing.assert_close(fine, coarse, rtol=1e-4, atol=1e-5)


def test_companion_made_only_when_the_slices_are_thin(small_dataset):
    data, geometry = small_dataset.data, small_dataset.geometry
    state = reconstruct(data, geometry, SolverConfig(iterations=1, **OPTIONS), show_progressbar=False)
    assert state.has_companion and state.companion_factor == 2
    assert tuple(state.companion_phase.shape) == (3, *state.phase.shape[1:])
    for config in (
        SolverConfig(iterations=1, **{**OPTIONS, "dz_companion": False}),
        SolverConfig(iterations=1, **{**OPTIONS, "mode": "fpp"}),
        SolverConfig(iterations=1, **{**OPTIONS, "num_slices": 3, "slice_thickness": 8.0}),
    ):
        assert not reconstruct(data, geometry, config, show_progressbar=False).has_companion


def test_dz_gradient_comes_from_the_companion_alone(small_dataset):
    """One batch: dz's gradient is the companion's (its slices and probe), the slices' pass gives it none."""
    data, geometry = small_dataset.data, small_dataset.geometry
    config = SolverConfig(iterations=2, **OPTIONS)
    state = reconstruct(data, geometry, config, show_progressbar=False)
    from app_extension.solver.data import MeasuredData, Patterns

    measured = MeasuredData(Patterns(data, geometry.scan_positions.shape[0]), geometry, config, "cpu")
    run = steps.Run.start(state, measured, config)
    steps.set_trainable(run, 2)
    batch = torch.arange(16)
    targets = measured.targets(batch)
    # the companion's loss alone, by hand
    dz = state.slice_thickness.detach().clone().requires_grad_(True)
    prop = propagator(run.ky, run.kx, state.wavelength, 2 * dz, state.tilt[0].detach())
    model = forward(
        state.companion_probe.detach(),
        state.companion_phase.detach(),
        state.companion_amplitude.detach(),
        steps.batch_corners(run, batch).detach(),
        prop,
    )
    steps.LOSSES[config.loss](model, targets, measured.mask).backward()
    expected = float(dz.grad)
    steps.gradient_step(run, batch)
    assert expected != 0.0
    assert float(state.slice_thickness.grad) == pytest.approx(expected, rel=1e-4)


def test_resume_with_companion_is_exact(small_dataset, tmp_path):
    data, geometry = small_dataset.data, small_dataset.geometry
    straight = reconstruct(data, geometry, SolverConfig(iterations=4, **OPTIONS), show_progressbar=False)
    config = SolverConfig(iterations=2, **OPTIONS)
    path = tmp_path / "half.h5"
    half = reconstruct(data, geometry, config, show_progressbar=False, checkpoint=path)
    loaded = ReconstructionState.load(path)
    torch.testing.assert_close(loaded.companion_phase, half.companion_phase)
    again = reconstruct(data, geometry, config, state=loaded, show_progressbar=False)
    for name in ("phase", "companion_phase", "companion_amplitude", "slice_thickness", "tilt"):
        torch.testing.assert_close(getattr(again, name), getattr(straight, name), atol=1e-6, rtol=1e-5)
    assert straight.dz != pytest.approx(OPTIONS["slice_thickness"])  # dz was learned


def test_slices_moved_with_depth_move_the_companion_at_its_depths(small_dataset):
    state = _run(small_dataset, 1)
    h, w = state.phase.shape[1:]
    rng = np.random.default_rng(0)
    state.companion_phase = torch.as_tensor(rng.random((3, h, w)), dtype=torch.float32)
    before = state.companion_phase.clone()
    slope = np.zeros((h, w, 2))
    slope[..., 1] = 1.0 / (2 * state.dz)  # one pixel along x per companion slice
    shift_slices_with_depth(state, slope)
    for s in range(3):  # companion slice s lies at depth 2 s dz: moved by s px
        torch.testing.assert_close(
            state.companion_phase[s], torch.roll(before[s], s, dims=1), atol=1e-4, rtol=0
        )


def test_returned_companion_needs_no_gradient(small_dataset):
    state = _run(small_dataset, 2)
    assert not any(getattr(state, name).requires_grad for name in state._COMPANION)
