"""The slice thickness's step rule and the count-aware losses (thickness at a realistic dose, issue 13).

* :class:`ConfirmedRprop`: a single sign change of the pass's gradient (the
  object lagging a dz step) holds dz but does not shrink the step; a sign
  change confirmed by the next pass reverses and halves it, as plain Rprop.
* ``loss="poisson"`` is never negative (the divergence test depends on it).
* ``loss="anscombe"`` is far less biased than the amplitude loss for counts
  of about one electron per pixel and fewer.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app_extension.solver.config import SolverConfig
from app_extension.solver.engine import reconstruct
from app_extension.solver.losses import ANSCOMBE_OFFSET, amplitude_loss, anscombe_loss, poisson_loss
from app_extension.solver.sign_step import ConfirmedRprop
from app_extension.solver.state import ReconstructionState
from app_extension.solver.steps import make_optimizers


def _walk(optimizer_class, gradients, lr=0.5):
    """Positions of a scalar parameter stepped by the optimiser with the given gradients."""
    x = torch.tensor(10.0, requires_grad=True)
    opt = optimizer_class([x], lr=lr, etas=(0.5, 1.2), step_sizes=(1e-3, 2.0))
    out = []
    for g in gradients:
        x.grad = torch.tensor(float(g))
        opt.step()
        out.append(round(float(x.detach()), 4))
    return out, opt, x


def test_unconfirmed_flip_holds_without_shrinking_the_step():
    # the gradient flips for one pass, then points the old way again (the object lagged)
    grads = [1, 1, -1, 1, 1]
    confirmed, _, _ = _walk(ConfirmedRprop, grads)
    assert confirmed == [9.5, 8.9, 8.9, 8.3, 7.58]  # held once, then the same 0.6 step, then grown
    plain, _, _ = _walk(torch.optim.Rprop, grads)
    assert plain == [9.5, 8.9, 8.9, 8.6, 8.24]  # Rprop halved the step at the flip
    assert confirmed[-1] < plain[-1] - 0.5


def test_confirmed_flip_reverses_and_halves():
    # a real overshoot: the new sign holds for two passes
    positions, opt, x = _walk(ConfirmedRprop, [1, 1, -1, -1, -1])
    assert positions == [9.5, 8.9, 8.9, 9.2, 9.56]  # held, then back by 0.6 / 2, then grown
    assert float(opt.state[x]["step_size"]) == pytest.approx(0.36)


def test_converges_to_a_minimum():
    x = torch.tensor(13.2, requires_grad=True)
    opt = ConfirmedRprop([x], lr=0.5, etas=(0.5, 1.2), step_sizes=(1e-3, 2.0))
    for _ in range(40):
        x.grad = 2 * (x.detach() - 10.15)
        opt.step()
    assert float(x.detach()) == pytest.approx(10.15, abs=0.02)


def test_state_round_trip_and_rprop_state_loads():
    _, opt, x = _walk(ConfirmedRprop, [1, -1])
    state = opt.state_dict()
    assert float(state["state"][0]["held"]) == 1.0
    y = torch.tensor(8.9, requires_grad=True)
    again = ConfirmedRprop([y], lr=0.5, etas=(0.5, 1.2), step_sizes=(1e-3, 2.0))
    again.load_state_dict(state)
    y.grad = torch.tensor(1.0)
    again.step()  # the flip is not confirmed: step on with the kept 0.5
    assert float(y.detach()) == pytest.approx(8.4)
    # a state written by torch.optim.Rprop (no 'held') is accepted
    _, rprop, _ = _walk(torch.optim.Rprop, [1, 1])
    z = torch.tensor(9.0, requires_grad=True)
    loaded = ConfirmedRprop([z], lr=0.5, etas=(0.5, 1.2), step_sizes=(1e-3, 2.0))
    loaded.load_state_dict(rprop.state_dict())
    z.grad = torch.tensor(1.0)
    loaded.step()
    assert float(z.detach()) == pytest.approx(9.0 - 0.72)


def _state() -> ReconstructionState:
    return ReconstructionState(
        phase=torch.zeros((2, 8, 8)),
        amplitude=torch.ones((2, 8, 8)),
        probe=torch.ones((1, 4, 4), dtype=torch.complex64),
        tilt=torch.zeros((1, 2)),
        slice_thickness=torch.tensor(10.0),
        window_corners=torch.zeros((1, 2)),
        sampling=0.5,
        origin=(0.0, 0.0),
        wavelength=0.0197,
    )


def test_default_uses_confirmed_rprop():
    _, rprop = make_optimizers(_state(), SolverConfig())
    assert isinstance(rprop, ConfirmedRprop)
    _, plain = make_optimizers(_state(), SolverConfig(dz_confirm_flips=False))
    assert type(plain) is torch.optim.Rprop


def test_poisson_loss_is_not_negative_and_zero_at_the_data():
    measured = torch.tensor([[0.0, 3.0, 50.0, 1000.0]])
    assert float(poisson_loss(measured.clone(), measured)) == pytest.approx(0.0, abs=1e-3)
    model = torch.tensor([[0.5, 2.0, 60.0, 900.0]], requires_grad=True)
    value = poisson_loss(model, measured)
    assert float(value.detach()) > 0
    value.backward()
    expected = 1 - measured / model.detach()  # the gradient of I_m - I log I_m
    assert torch.allclose(model.grad, expected, atol=1e-5)


def test_anscombe_is_nearly_unbiased_for_low_counts():
    """The constant model intensity that minimises each loss over Poisson counts of mean lam."""
    rng = np.random.default_rng(1)
    candidates = torch.linspace(0.001, 3.0, 3000)[:, None]
    for lam in (0.1, 0.5, 2.0):
        counts = torch.as_tensor(rng.poisson(lam, 20000), dtype=torch.float32)[None]
        amp = torch.stack([amplitude_loss(c.expand_as(counts), counts.sqrt()) for c in candidates])
        ans = torch.stack(
            [anscombe_loss(c.expand_as(counts), (counts + ANSCOMBE_OFFSET).sqrt()) for c in candidates]
        )
        best_amp = float(candidates[int(torch.argmin(amp))])
        best_ans = float(candidates[int(torch.argmin(ans))])
        assert abs(best_ans / lam - 1) < 0.35, (lam, best_ans)
        assert abs(best_amp / lam - 1) > 0.15, (lam, best_amp)
        assert abs(best_ans - lam) < abs(best_amp - lam)


def test_anscombe_loss_runs_on_counts():
    from app_extension.simulate import simulate_tilted_crystal

    ds = simulate_tilted_crystal(scan_shape=(6, 6), pattern_size=24, unit_cells_z=4, dose=2e3)
    config = SolverConfig(num_slices=2, slice_thickness=ds.thickness / 2, iterations=3, loss="anscombe")
    state = reconstruct(ds.data, ds.geometry, config, show_progressbar=False)
    assert state.status == "ok"
    loss = np.array(state.history["loss"])
    assert np.all(np.isfinite(loss)) and loss[-1] < loss[0]
