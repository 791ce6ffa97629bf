"""Fresnel propagators: fixed (FPP) and adaptive with specimen tilt (APP).

Eq. 3 of Sha, Cui & Yu (Sci. Adv. 8, eabn2275, 2022)::

    p(k; dz, theta) = exp[-i pi dz (lambda |k|^2 - 2 kx tan(theta_x) - 2 ky tan(theta_y))]

applied as ``psi(z + dz) = IFFT[FFT[psi(z)] p]`` with numpy's FFT convention.
With ``theta = 0`` it is the fixed propagator of standard multislice (Eq. 2).

Tilt sign: ``theta_x > 0`` means the crystal columns lean toward ``+x`` with
depth (a column entering at ``x0`` sits at ``x0 + z tan(theta_x)`` at depth
``z``). The object slices are the crystal seen along its own zone axis, so in
their frame the wave drifts by ``-dz tan(theta)`` per slice, which is exactly the
``exp(+2 pi i dz kx tan(theta_x))`` factor of Eq. 3.
"""

from __future__ import annotations

import math

import torch

__all__ = ["propagator"]


def propagator(
    ky: torch.Tensor,
    kx: torch.Tensor,
    wavelength: float,
    dz: torch.Tensor | float,
    tilt_mrad: torch.Tensor | None = None,
) -> torch.Tensor:
    """Adaptive Fresnel propagator of Eq. 3.

    Parameters
    ----------
    ky, kx
        Spatial frequencies in 1/Å, shape (ny, nx), numpy FFT order.
    wavelength
        Electron wavelength in Å.
    dz
        Slice thickness in Å (a 0-d tensor to learn it).
    tilt_mrad
        Tilt ``(theta_x, theta_y)`` in mrad, shape (2,) or (T, 2) for T tilts
        (one per scan position: extended APP). ``None`` gives the fixed
        propagator of Eq. 2.

    Returns
    -------
    torch.Tensor
        Complex propagator of shape (ny, nx), or (T, ny, nx) for a (T, 2) tilt.
    """
    k2 = kx**2 + ky**2
    phase = wavelength * k2
    if tilt_mrad is not None:
        tan = torch.tan(tilt_mrad * 1e-3)
        if tan.ndim == 2:
            tan = tan[:, :, None, None]
            phase = phase - 2 * (kx * tan[:, 0] + ky * tan[:, 1])
        else:
            phase = phase - 2 * (kx * tan[0] + ky * tan[1])
    return torch.polar(torch.ones_like(phase), -math.pi * dz * phase)
