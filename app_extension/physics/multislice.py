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
    arg = shifts_px[:, 0, None, None] * fy[None, :, None] + shifts_px[:, 1, None, None] * fx[None, None, :]
    ramp = torch.polar(torch.ones_like(arg), -2 * math.pi * arg)  # (B, N, N)
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


def forward(
    probe: torch.Tensor,
    phase: torch.Tensor,
    amplitude: torch.Tensor,
    positions_px: torch.Tensor,
    prop: torch.Tensor,
) -> torch.Tensor:
    """Diffraction intensities for a batch of scan positions.

    Parameters
    ----------
    probe
        Probe modes, complex (M, N, N), centred in the window.
    phase, amplitude
        Object slices, real (S, H, W).
    positions_px
        Top-left corner of each probe window in object pixels (row, col),
        float (B, 2); the integer part selects the patch, the fraction shifts
        the probe.
    prop
        Propagator (N, N) or (B, N, N).

    Returns
    -------
    torch.Tensor
        Intensities (B, N, N) with DC at pixel [0, 0] (apply ``fftshift`` to
        compare with a detector image).
    """
    size = probe.shape[-2:]
    corners = torch.floor(positions_px).long()
    frac = positions_px - corners
    probes = shift_probes(probe, frac.to(probe.real.dtype))
    obj = transmission(extract_patches(phase, corners, size), extract_patches(amplitude, corners, size))
    return farfield_intensity(multislice(probes, obj, prop))
