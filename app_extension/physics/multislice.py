"""Multislice forward model of mixed-state ptychography.

For a batch of B scan positions, M probe modes and S object slices::

    psi_1   = P_m(r - r_j) * O_1(r)
    psi_s+1 = IFFT[FFT[psi_s] p(k; dz, theta)] * O_s+1(r)
    I_j(k)  = sum_m |FFT[psi_S]|^2

All FFTs are unitary (``norm="ortho"``), so ``sum_k I_j(k) = sum_r |psi|^2``.
Everything is batched: no Python loop runs over scan positions or modes.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "shift_probes",
    "extract_patches",
    "transmission",
    "multislice",
    "farfield_intensity",
    "forward",
    "patch_index",
]


def _fft2(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.fft2(x, norm="ortho")


def _ifft2(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.ifft2(x, norm="ortho")


def shift_probes(probe: torch.Tensor, shifts_px: torch.Tensor) -> torch.Tensor:
    """Probe modes shifted by sub-pixel amounts, one shift per scan position.

    Parameters
    ----------
    probe
        Probe modes, complex (M, N, N), real space.
    shifts_px
        Shifts (dy, dx) in pixels, shape (B, 2); the content moves towards
        ``+y``/``+x``.

    Returns
    -------
    torch.Tensor
        Complex (B, M, N, N).
    """
    n_y, n_x = probe.shape[-2:]
    fy = torch.fft.fftfreq(n_y, device=probe.device, dtype=shifts_px.dtype)
    fx = torch.fft.fftfreq(n_x, device=probe.device, dtype=shifts_px.dtype)
    # The phase ramp is separable: two (B, N) exponentials and one outer product.
    arg_y = -2 * math.pi * shifts_px[:, 0, None] * fy[None, :]
    arg_x = -2 * math.pi * shifts_px[:, 1, None] * fx[None, :]
    ramp_y = torch.polar(torch.ones_like(arg_y), arg_y)
    ramp_x = torch.polar(torch.ones_like(arg_x), arg_x)
    ramp = ramp_y[:, :, None] * ramp_x[:, None, :]  # (B, N, N)
    return _ifft2(_fft2(probe)[None] * ramp[:, None])


def extract_patches(field: torch.Tensor, corners: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Cut (B) windows of ``size`` from every slice of ``field``.

    Parameters
    ----------
    field
        (S, H, W) real or complex object array.
    corners
        Integer top-left corners (row, col), shape (B, 2).
    size
        Window shape (N_y, N_x).

    Returns
    -------
    torch.Tensor
        (S, B, N_y, N_x).
    """
    rows = corners[:, 0, None] + torch.arange(size[0], device=field.device)[None]
    cols = corners[:, 1, None] + torch.arange(size[1], device=field.device)[None]
    return field[:, rows[:, :, None], cols[:, None, :]]


def transmission(phase: torch.Tensor, amplitude: torch.Tensor) -> torch.Tensor:
    """Complex transmission function ``amplitude * exp(i phase)``."""
    return torch.polar(amplitude, phase)


def multislice(probes: torch.Tensor, slices: torch.Tensor, prop: torch.Tensor) -> torch.Tensor:
    """Exit waves of a batch through S slices.

    Parameters
    ----------
    probes
        Incident waves, complex (B, M, N, N).
    slices
        Transmission functions, complex (S, B, N, N).
    prop
        Propagator, complex (N, N) or (B, N, N) (one per position: extended APP).

    Returns
    -------
    torch.Tensor
        Exit waves (B, M, N, N), before the last propagation (which does not
        change the far-field intensity).
    """
    if prop.ndim == 3:
        prop = prop[:, None]
    psi = probes * slices[0][:, None]
    for s in range(1, slices.shape[0]):
        psi = _ifft2(_fft2(psi) * prop) * slices[s][:, None]
    return psi


def farfield_intensity(exit_waves: torch.Tensor) -> torch.Tensor:
    """Far-field intensity summed over modes, (B, N, N), numpy FFT order (DC at 0)."""
    far = _fft2(exit_waves)
    return (far.real**2 + far.imag**2).sum(dim=1)


class _MultisliceIntensity(torch.autograd.Function):
    """Far-field intensities of a batch, with a hand-written backward.

    Same mathematics as :func:`multislice` followed by :func:`farfield_intensity`
    (tests check one against the other), but the object patches are cut from
    the full object one slice at a time, the gradient of each patch is added
    straight back into the object gradient, and only the waves the backward
    needs are kept. Each step of the backward is the adjoint of one step of
    the forward: ``FFT^H = IFFT`` for the unitary transforms, and
    ``d(a b) -> conj(a) g`` for products.
    """

    @staticmethod
    def forward(ctx, probes, obj, corners, prop):
        n_slices = obj.shape[0]
        b, n_y, n_x = probes.shape[0], probes.shape[-2], probes.shape[-1]
        flat = obj.reshape(n_slices, -1)
        starts = _row_starts(corners, n_y, obj.shape[-1])
        h = prop[:, None] if prop.ndim == 3 else prop
        need_prop = ctx.needs_input_grad[3]
        psis, spectra, patches = [], [], []
        psi = probes
        far = None
        for s in range(n_slices):
            # Each window row is n_x contiguous pixels: gather whole rows from a view in
            # which row i starts at pixel i (6x faster on a CPU than pixel by pixel).
            rows = flat[s].as_strided((flat.shape[1] - n_x + 1, n_x), (1, 1))
            t = rows.index_select(0, starts).view(b, 1, n_y, n_x)
            patches.append(t)
            psis.append(psi)
            u = psi * t
            if s < n_slices - 1:
                spectrum = _fft2(u)
                if need_prop:
                    spectra.append(spectrum)
                    psi = _ifft2(spectrum * h)
                else:
                    psi = _ifft2(spectrum.mul_(h))
            else:
                far = _fft2(u)
        intensity = _sum_modes(far.real.square() + far.imag.square())
        ctx.save_for_backward(prop, far, *psis, *spectra, *patches)
        ctx.n_slices = n_slices
        ctx.obj_shape = obj.shape
        ctx.corners = corners
        return intensity

    @staticmethod
    def backward(ctx, grad_intensity):
        # The adjoint chain is run on gamma = conj(gradient): for the unitary
        # transforms conj(IFFT(x)) = FFT(conj(x)), so every step becomes a plain
        # product or transform, without conjugate copies of the big arrays. The
        # small object and propagator gradients are conjugated once at the end.
        prop, far, *rest = ctx.saved_tensors
        n_slices = ctx.n_slices
        need_probe, need_obj, _, need_prop = ctx.needs_input_grad
        psis = rest[:n_slices]
        spectra = rest[n_slices : len(rest) - n_slices]
        patches = rest[len(rest) - n_slices :]
        h = prop[:, None] if prop.ndim == 3 else prop
        grad_obj = torch.zeros(ctx.obj_shape, dtype=far.dtype, device=far.device) if need_obj else None
        add_windows = _window_adder(ctx.corners, far.shape[-2:], ctx.obj_shape[-1]) if need_obj else None
        prop_acc = torch.zeros_like(spectra[0]) if need_prop and n_slices > 1 else None
        gamma = _fft2(far.conj() * (2 * grad_intensity[:, None]))
        for s in range(n_slices - 1, -1, -1):
            if need_obj:
                add_windows(grad_obj[s], _sum_modes(psis[s] * gamma))
            if s == 0 and not need_probe:
                break
            gamma = gamma.mul_(patches[s])
            if s > 0:
                sigma = _ifft2(gamma)
                if prop_acc is not None:
                    prop_acc.addcmul_(spectra[s - 1], sigma)
                gamma = _fft2(sigma.mul_(h))
        grad_probes = gamma.conj() if need_probe else None
        if grad_obj is not None:
            grad_obj = grad_obj.conj()
        grad_prop = None
        if need_prop:
            if prop_acc is None:
                grad_prop = torch.zeros_like(prop)
            else:
                grad_prop = (prop_acc.sum(dim=1) if prop.ndim == 3 else prop_acc.sum(dim=(0, 1))).conj()
        return grad_probes, grad_obj, None, grad_prop


def _sum_modes(x: torch.Tensor) -> torch.Tensor:
    """Sum over the mode axis (1) of (B, M, N, N); a view when M == 1."""
    return x[:, 0] if x.shape[1] == 1 else x.sum(dim=1)


def _row_starts(corners: torch.Tensor, n_y: int, width: int) -> torch.Tensor:
    """Flat index of the first pixel of every window row, (B*n_y,), window by window."""
    rows = corners[:, 0, None] + torch.arange(n_y, device=corners.device)[None]
    return (rows * width + corners[:, 1, None]).reshape(-1)


def _window_adder(corners: torch.Tensor, size: tuple[int, int], width: int, loop: bool | None = None):
    """A function ``add(target, windows)`` that adds (B, N_y, N_x) ``windows`` into the
    (H, width) ``target`` at ``corners``, summing where windows overlap.

    On a CPU, torch's ``index_add_`` runs on one thread, pixel by pixel; adding each
    window to a view of the target is about twice as fast (measured for 64 windows of
    128 x 128). On other devices one ``index_add_`` kernel is the fast way. ``loop``
    forces one way (tests).
    """
    n_y, n_x = size
    if corners.device.type == "cpu" if loop is None else loop:
        places = corners.tolist()

        def add(target, windows):
            for k, (r, c) in enumerate(places):
                target[r : r + n_y, c : c + n_x].add_(windows[k])

        return add
    index = patch_index(corners, size, width)

    def add_flat(target, windows):
        target.view(-1).index_add_(0, index, windows.reshape(-1))

    return add_flat


def patch_index(corners: torch.Tensor, size: tuple[int, int], width: int) -> torch.Tensor:
    """Flat indices into an (H, width) slice of the windows at integer ``corners``, (B*N*N,)."""
    starts = _row_starts(corners, size[0], width)
    return (starts[:, None] + torch.arange(size[1], device=corners.device)[None]).reshape(-1)


def forward(
    probe: torch.Tensor,
    phase: torch.Tensor,
    amplitude: torch.Tensor,
    window_corners: torch.Tensor,
    prop: torch.Tensor,
    reference: bool = False,
) -> torch.Tensor:
    """Diffraction intensities for a batch of scan positions.

    Parameters
    ----------
    probe
        Probe modes, complex (M, N, N), centred in the window.
    phase, amplitude
        Object slices, real (S, H, W).
    window_corners
        Top-left corner of each probe window in object pixels (row, col),
        float (B, 2); the integer part selects the patch, the fraction shifts
        the probe.
    prop
        Propagator (N, N) or (B, N, N).
    reference
        Use plain autograd through :func:`multislice` instead of the
        hand-written backward (slower; for testing).

    Returns
    -------
    torch.Tensor
        Intensities (B, N, N) with DC at pixel [0, 0] (apply ``fftshift`` to
        compare with a detector image).
    """
    size = probe.shape[-2:]
    corners = torch.floor(window_corners).long()
    frac = window_corners - corners
    probes = shift_probes(probe, frac.to(probe.real.dtype))
    if reference:
        obj = transmission(extract_patches(phase, corners, size), extract_patches(amplitude, corners, size))
        return farfield_intensity(multislice(probes, obj, prop))
    obj = transmission(phase, amplitude)
    return _MultisliceIntensity.apply(probes, obj, corners, prop)
