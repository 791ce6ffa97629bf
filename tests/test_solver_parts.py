"""Losses, constraints and the state container, one at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app_extension.solver.constraints import clamp_amplitude, orthogonalize_probe, smooth_depth
from app_extension.solver.losses import LOSSES, amplitude_loss, poisson_loss
from app_extension.solver.state import ReconstructionState


def _model_and_data(seed=0):
    rng = np.random.default_rng(seed)
    model = rng.uniform(0.0, 2.0, (3, 6, 6))
    measured = rng.poisson(model * 5.0) / 5.0
    return model, measured


def test_amplitude_loss_is_eq1():
    model, measured = _model_and_data()
    got = amplitude_loss(torch.as_tensor(model), torch.as_tensor(np.sqrt(measured))).item()
    np.testing.assert_allclose(got, np.sum((np.sqrt(model) - np.sqrt(measured)) ** 2), rtol=1e-6)
    assert amplitude_loss(torch.as_tensor(measured), torch.as_tensor(np.sqrt(measured))).item() < 1e-5


def test_poisson_loss_is_negative_log_likelihood():
    model, measured = _model_and_data(1)
    got = poisson_loss(torch.as_tensor(model), torch.as_tensor(measured)).item()
    # half the Poisson deviance: the negative log-likelihood minus its value at model == measured
    saturated = np.sum(measured * np.log(np.where(measured > 0, measured, 1.0)) - measured)
    np.testing.assert_allclose(got, np.sum(model - measured * np.log(model + 1e-8)) + saturated, rtol=1e-10)
    # minimal at model == measured (for the pixels with counts)
    m = torch.tensor(measured + 0.1, requires_grad=True)
    poisson_loss(m, torch.as_tensor(measured + 0.1)).backward()
    assert m.grad.abs().max() < 1e-6


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_mask_ignores_pixels(name):
    model, measured = _model_and_data(2)
    target = np.sqrt(measured) if name == "amplitude" else measured
    mask = np.zeros((6, 6))
    mask[1:4, 2:5] = 1
    fn = LOSSES[name]
    masked = fn(torch.as_tensor(model), torch.as_tensor(target), torch.as_tensor(mask)).item()
    changed = model.copy()
    changed[:, 0, 0] += 10.0  # outside the mask
    again = fn(torch.as_tensor(changed), torch.as_tensor(target), torch.as_tensor(mask)).item()
    assert masked == pytest.approx(again)
    assert masked != pytest.approx(fn(torch.as_tensor(model), torch.as_tensor(target)).item())


def test_smooth_depth():
    field = torch.tensor([[0.0], [3.0], [6.0], [0.0]]).reshape(4, 1, 1).repeat(1, 2, 2)
    smooth_depth(field, 0.5)
    # interior: half-way to the neighbours' mean; ends: half-way to their one neighbour
    np.testing.assert_allclose(field[:, 0, 0].numpy(), [1.5, 3.0, 3.75, 3.0])
    same = torch.ones((3, 4, 4))
    smooth_depth(same, 0.3)
    np.testing.assert_allclose(same.numpy(), 1.0)  # identical slices are a fixed point
    single = torch.arange(4.0).reshape(1, 2, 2)
    smooth_depth(single, 0.5)
    np.testing.assert_allclose(single.numpy(), np.arange(4.0).reshape(1, 2, 2))


def test_clamp_amplitude_and_orthogonalize_probe_in_place():
    amp = torch.tensor([-0.5, 0.3, 1.7])
    clamp_amplitude(amp, 1.0)
    np.testing.assert_allclose(amp.numpy(), [0.0, 0.3, 1.0])
    rng = np.random.default_rng(0)
    probe = torch.as_tensor(rng.normal(size=(2, 5, 5)) + 1j * rng.normal(size=(2, 5, 5)))
    total = (probe.abs() ** 2).sum().item()
    orthogonalize_probe(probe)
    assert abs((probe[0].conj() * probe[1]).sum().item()) < 1e-10
    np.testing.assert_allclose((probe.abs() ** 2).sum().item(), total, rtol=1e-10)


def _state(num_tilts=1) -> ReconstructionState:
    return ReconstructionState(
        phase=torch.zeros((3, 20, 24)),
        amplitude=torch.ones((3, 20, 24)),
        probe=torch.ones((2, 8, 8), dtype=torch.complex64),
        tilt=torch.tensor([[1.5, -2.0]] * num_tilts),
        slice_thickness=torch.tensor(12.5),
        window_corners=torch.tensor([[4.0, 4.0], [4.0, 10.5], [9.0, 4.0]]),
        sampling=0.25,
        origin=(-2.0, -3.0),
        wavelength=0.0196875,
    )


def test_state_properties():
    state = _state()
    assert state.num_slices == 3
    assert state.dz == 12.5 and state.thickness == 37.5
    np.testing.assert_allclose(state.tilt_mrad, [1.5, -2.0])
    assert _state(3).tilt_mrad.shape == (3, 2)
    yy, xx = state.coordinates()
    np.testing.assert_allclose(yy[:2], [-2.0, -1.75])
    np.testing.assert_allclose(xx[-1], -3.0 + 23 * 0.25)
    rows, cols = state.scan_window(8)
    assert (rows.start, rows.stop) == (8, 14)
    assert (cols.start, cols.stop) == (8, 16)
    assert "3 slices" in repr(state) and "map of 3" in repr(_state(3))


def test_state_clone_is_independent_and_record():
    state = _state()
    copy = state.clone()
    with torch.no_grad():
        state.phase += 1.0
        state.tilt[0, 0] = 9.0
    assert copy.phase.abs().max() == 0 and copy.tilt_mrad[0] == 1.5
    state.record(0.5, 1.0)
    state.record(0.25, 2.0)
    assert state.history["loss"] == [0.5, 0.25]
    assert state.history["time"] == [1.0, 3.0]  # cumulative
    assert state.history["tilt_x"] == [9.0, 9.0]
    assert copy.history["loss"] == []


def test_state_to_dict_round_trip(tmp_path):
    state = _state(3)
    state.record(0.1, 0.5)
    state.post_alignment = {"tilt_mrad": np.array([1.0, 2.0]), "mean_phase": np.ones((4, 4))}
    path = tmp_path / "state.pt"
    state.save(path, extra={"note": "x"})
    loaded, extra = ReconstructionState.load(path, with_extra=True)
    assert extra == {"note": "x"}
    for name in ReconstructionState._TENSORS:
        assert torch.equal(getattr(loaded, name), getattr(state, name)), name
    assert loaded.history == state.history
    assert loaded.origin == state.origin and loaded.sampling == state.sampling
    np.testing.assert_array_equal(loaded.post_alignment["mean_phase"], np.ones((4, 4)))
