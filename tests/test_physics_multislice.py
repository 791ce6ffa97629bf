"""The batched forward model against a plain numpy multislice, and its gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app_extension.physics.multislice import forward, shift_probes
from app_extension.physics.optics import fourier_grid
from app_extension.physics.propagator import propagator
from app_extension.solver.losses import amplitude_loss, poisson_loss

WAVELENGTH = 0.0196875  # Å
SAMPLING = 0.35  # Å per pixel


def numpy_forward(probe, obj, window_corners, dz, tilts_mrad):
    """Reference multislice, one scan position and one probe mode at a time.

    probe (M, N, N); obj complex (S, H, W); window_corners (B, 2) top-left corners
    (row, col); tilts_mrad None or (B, 2). Returns (B, N, N) intensities, DC at [0, 0].
    """
    n = probe.shape[-1]
    f = np.fft.fftfreq(n)  # cycles per pixel
    k = f / SAMPLING  # 1/Å
    out = np.zeros((len(window_corners), n, n))
    for j, pos in enumerate(window_corners):
        row, col = int(np.floor(pos[0])), int(np.floor(pos[1]))
        dy, dx = pos[0] - row, pos[1] - col
        ramp = np.exp(-2j * np.pi * (f[:, None] * dy + f[None, :] * dx))
        tx, ty = (0.0, 0.0) if tilts_mrad is None else np.tan(np.asarray(tilts_mrad[j]) * 1e-3)
        chi = WAVELENGTH * (k[:, None] ** 2 + k[None, :] ** 2) - 2 * k[None, :] * tx - 2 * k[:, None] * ty
        prop = np.exp(-1j * np.pi * dz * chi)
        patch = obj[:, row : row + n, col : col + n]
        for mode in probe:
            psi = np.fft.ifft2(np.fft.fft2(mode, norm="ortho") * ramp, norm="ortho")
            psi = psi * patch[0]
            for s in range(1, obj.shape[0]):
                psi = np.fft.ifft2(np.fft.fft2(psi, norm="ortho") * prop, norm="ortho") * patch[s]
            out[j] += np.abs(np.fft.fft2(psi, norm="ortho")) ** 2
    return out


def _random_problem(seed, n=16, num_slices=3, num_modes=2, num_pos=5):
    rng = np.random.default_rng(seed)
    probe = rng.normal(size=(num_modes, n, n)) + 1j * rng.normal(size=(num_modes, n, n))
    phase = rng.uniform(-np.pi, np.pi, (num_slices, 2 * n, 2 * n))
    amp = rng.uniform(0.5, 1.0, (num_slices, 2 * n, 2 * n))
    positions = rng.uniform(0, n - 1, (num_pos, 2))
    positions[0] = (3.0, 7.0)  # one integer position
    return probe, phase, amp, positions


@pytest.mark.parametrize(
    "tilt", [None, "global", "per-position"], ids=["fixed", "global-tilt", "per-position-tilt"]
)
def test_forward_matches_numpy_multislice(tilt):
    probe, phase, amp, positions = _random_problem(0)
    dz = 12.0
    rng = np.random.default_rng(1)
    if tilt is None:
        tilts = None
    elif tilt == "global":
        tilts = np.tile([[9.0, -5.0]], (len(positions), 1))
    else:
        tilts = rng.uniform(-20, 20, (len(positions), 2))
    ky, kx = fourier_grid(probe.shape[-2:], SAMPLING, dtype=torch.float64)
    if tilts is None:
        prop = propagator(ky, kx, WAVELENGTH, dz)
    elif tilt == "global":
        prop = propagator(ky, kx, WAVELENGTH, dz, torch.as_tensor(tilts[0]))
    else:
        prop = propagator(ky, kx, WAVELENGTH, dz, torch.as_tensor(tilts))
    got = forward(
        torch.as_tensor(probe),
        torch.as_tensor(phase),
        torch.as_tensor(amp),
        torch.as_tensor(positions),
        prop,
    ).numpy()
    want = numpy_forward(probe, amp * np.exp(1j * phase), positions, dz, tilts)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * want.max())


def test_forward_float32_close_to_float64():
    probe, phase, amp, positions = _random_problem(2)
    ky, kx = fourier_grid(probe.shape[-2:], SAMPLING)
    prop = propagator(ky, kx, WAVELENGTH, 12.0, torch.tensor([4.0, 3.0]))
    got = forward(
        torch.as_tensor(probe, dtype=torch.complex64),
        torch.as_tensor(phase, dtype=torch.float32),
        torch.as_tensor(amp, dtype=torch.float32),
        torch.as_tensor(positions, dtype=torch.float32),
        prop,
    ).numpy()
    want = numpy_forward(probe, amp * np.exp(1j * phase), positions, 12.0, np.tile([[4.0, 3.0]], (5, 1)))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * want.max())


def test_forward_conserves_intensity():
    """A pure-phase object: each pattern sums to the total probe intensity."""
    probe, phase, _, positions = _random_problem(3)
    ky, kx = fourier_grid(probe.shape[-2:], SAMPLING, dtype=torch.float64)
    prop = propagator(ky, kx, WAVELENGTH, 20.0, torch.tensor([5.0, -5.0], dtype=torch.float64))
    out = forward(
        torch.as_tensor(probe),
        torch.as_tensor(phase),
        torch.ones(phase.shape, dtype=torch.float64),
        torch.as_tensor(positions),
        prop,
    ).numpy()
    np.testing.assert_allclose(
        out.sum(axis=(1, 2)), np.full(len(positions), (np.abs(probe) ** 2).sum()), rtol=1e-10
    )


def test_shift_probes_direction():
    """A positive shift moves the probe content towards +y/+x."""
    n = 16
    probe = torch.zeros((1, n, n), dtype=torch.complex128)
    probe[0, 5, 6] = 1.0
    out = shift_probes(probe, torch.tensor([[2.0, 3.0]], dtype=torch.float64))
    peak = np.unravel_index(np.argmax(np.abs(out[0, 0].numpy())), (n, n))
    assert peak == (7, 9)


# ---------------------------------------------------------------------------
# Gradients with respect to tilt and slice thickness (float64 gradcheck)
# ---------------------------------------------------------------------------


def _loss_of_geometry(loss_name, per_position_tilt):
    """Loss(tilt, dz) of a tiny problem built from the physics functions in float64."""
    probe, phase, amp, positions = _random_problem(4, n=16, num_slices=3, num_modes=2, num_pos=2)
    probe_t = torch.as_tensor(probe) * 0.2
    phase_t = torch.as_tensor(phase) * 0.3
    amp_t = torch.as_tensor(amp)
    pos_t = torch.as_tensor(positions)
    ky, kx = fourier_grid((16, 16), SAMPLING, dtype=torch.float64)
    # measured data: the model at another geometry, so the loss is not at a minimum
    truth = torch.tensor(
        [[6.0, -4.0], [5.0, -3.0]] if per_position_tilt else [6.0, -4.0], dtype=torch.float64
    )
    measured = forward(probe_t, phase_t, amp_t, pos_t, propagator(ky, kx, WAVELENGTH, 15.0, truth))
    target = torch.sqrt(measured) if loss_name == "amplitude" else measured
    fn = amplitude_loss if loss_name == "amplitude" else poisson_loss

    def loss(tilt, dz):
        prop = propagator(ky, kx, WAVELENGTH, dz, tilt)
        return fn(forward(probe_t, phase_t, amp_t, pos_t, prop), target)

    return loss


@pytest.mark.parametrize("loss_name", ["amplitude", "poisson"])
@pytest.mark.parametrize("per_position_tilt", [False, True], ids=["global", "per-position"])
def test_gradcheck_tilt_and_dz(loss_name, per_position_tilt):
    loss = _loss_of_geometry(loss_name, per_position_tilt)
    tilt0 = [[2.0, 1.0], [-1.0, 3.0]] if per_position_tilt else [2.0, 1.0]
    tilt = torch.tensor(tilt0, dtype=torch.float64, requires_grad=True)
    dz = torch.tensor(12.0, dtype=torch.float64, requires_grad=True)
    assert loss(tilt, dz).dtype == torch.float64
    assert torch.autograd.gradcheck(loss, (tilt, dz), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradcheck_object_and_probe():
    """The object and probe gradients too (the same tiny problem)."""
    probe, phase, amp, positions = _random_problem(5, n=8, num_slices=2, num_modes=2, num_pos=2)
    ky, kx = fourier_grid((8, 8), SAMPLING, dtype=torch.float64)
    prop = propagator(ky, kx, WAVELENGTH, 10.0, torch.tensor([3.0, -2.0], dtype=torch.float64))
    pos = torch.as_tensor(positions) * 0.5
    target = torch.rand((2, 8, 8), dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def loss(probe_t, phase_t, amp_t):
        return amplitude_loss(forward(probe_t, phase_t, amp_t, pos, prop), target)

    args = (
        torch.as_tensor(probe * 0.3).requires_grad_(),
        torch.as_tensor(phase[:, :12, :12] * 0.3).requires_grad_(),
        torch.as_tensor(amp[:, :12, :12]).requires_grad_(),
    )
    assert torch.autograd.gradcheck(loss, args, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("num_modes", [1, 2])
@pytest.mark.parametrize("tilt", [None, "global", "per-position"])
def test_fast_backward_matches_autograd_reference(dtype, num_modes, tilt):
    """The hand-written backward of ``forward`` gives autograd's gradients, also when called twice."""
    probe, phase, amp, positions = _random_problem(6, n=16, num_slices=3, num_modes=num_modes, num_pos=4)
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    ky, kx = fourier_grid((16, 16), SAMPLING, dtype=dtype)
    target = torch.rand((4, 16, 16), dtype=dtype, generator=torch.Generator().manual_seed(1))
    tilt0 = {
        None: None,
        "global": [4.0, -2.0],
        "per-position": [[4.0, -2.0], [1.0, 0.0], [-3.0, 5.0], [0.0, 2.0]],
    }

    def gradients(reference):
        leaves = [
            torch.as_tensor(probe * 0.3, dtype=cdtype).requires_grad_(),
            torch.as_tensor(phase * 0.3, dtype=dtype).requires_grad_(),
            torch.as_tensor(amp, dtype=dtype).requires_grad_(),
            torch.tensor(14.0, dtype=dtype, requires_grad=True),
        ]
        tilt_t = None
        if tilt is not None:
            tilt_t = torch.tensor(tilt0[tilt], dtype=dtype, requires_grad=True)
            leaves.append(tilt_t)
        prop = propagator(ky, kx, WAVELENGTH, leaves[3], tilt_t)
        model = forward(
            leaves[0],
            leaves[1],
            leaves[2],
            torch.as_tensor(positions, dtype=dtype),
            prop,
            reference=reference,
        )
        loss = amplitude_loss(model, target)
        first = torch.autograd.grad(loss, leaves, retain_graph=True)
        second = torch.autograd.grad(loss, leaves)
        return model.detach(), first, second

    model_ref, grads_ref, _ = gradients(reference=True)
    model, grads, grads_again = gradients(reference=False)
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-4, atol=1e-5)
    torch.testing.assert_close(model, model_ref, **tol)
    for got, again, want in zip(grads, grads_again, grads_ref, strict=True):
        scale = want.abs().max()
        torch.testing.assert_close(got / scale, want / scale, **tol)
        torch.testing.assert_close(again, got, rtol=0, atol=0)


@pytest.mark.parametrize("loop", [True, False])
def test_window_adder_sums_overlaps_like_index_add(loop):
    """Both ways of adding window gradients (CPU loop, one index_add_) give the
    pixel-by-pixel sum, with windows that overlap and touch the object's edges."""
    from app_extension.physics.multislice import _row_starts, _window_adder, patch_index

    g = torch.Generator().manual_seed(3)
    height, width, n = 23, 19, 8
    corners = torch.tensor([[0, 0], [15, 11], [3, 4], [3, 5], [15, 0], [0, 11]])
    windows = torch.randn(len(corners), n, n, dtype=torch.complex64, generator=g)
    expected = torch.zeros(height * width, dtype=torch.complex64)
    expected.index_add_(0, patch_index(corners, (n, n), width), windows.reshape(-1))
    target = torch.zeros(height, width, dtype=torch.complex64)
    _window_adder(corners, (n, n), width, loop=loop)(target, windows)
    torch.testing.assert_close(target.reshape(-1), expected)
    # the row gather of the forward cuts the same windows
    obj = torch.randn(height * width, dtype=torch.complex64, generator=g)
    rows = obj.as_strided((obj.numel() - n + 1, n), (1, 1))
    cut = rows.index_select(0, _row_starts(corners, n, width)).view(-1, n, n)
    torch.testing.assert_close(cut.reshape(-1), obj[patch_index(corners, (n, n), width)])
