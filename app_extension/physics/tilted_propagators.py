"""One APP propagator per scan position (extended APP), computed in factorised form.

Eq. 3 factorises into a fixed Fresnel part and two one-dimensional tilt ramps::

    p_j(k) = exp(-i pi dz lambda |k|^2) * exp(2 pi i dz kx tan(theta_x,j)) * exp(2 pi i dz ky tan(theta_y,j))

so a batch of B propagators costs one (N, N) exponential, 2 B N small ones and
two complex products per element, instead of an exponential per element
(the same numbers as :func:`.propagator.propagator` with a (B, 2) tilt, and
a cheaper backward).
"""

from __future__ import annotations

import math

import torch

from .propagator import propagator

__all__ = ["tilted_propagators"]


def tilted_propagators(
    ky: torch.Tensor, kx: torch.Tensor, wavelength: float, dz: torch.Tensor | float, tilt_mrad: torch.Tensor
) -> torch.Tensor:
    """Propagators (B, N, N) for tilts (B, 2) (theta_x, theta_y) in mrad.

    ``ky``, ``kx`` are the (N, N) frequency grids of :func:`.optics.fourier_grid`
    (ky along rows, kx along columns), in 1/Å.
    """
    base = propagator(ky, kx, wavelength, dz)
    tan = torch.tan(tilt_mrad * 1e-3)
    arg_x = (2 * math.pi) * dz * tan[:, 0, None] * kx[0][None, :]
    arg_y = (2 * math.pi) * dz * tan[:, 1, None] * ky[:, 0][None, :]
    ramp_x = torch.polar(torch.ones_like(arg_x), arg_x)
    ramp_y = torch.polar(torch.ones_like(arg_y), arg_y)
    return base[None] * (ramp_y[:, :, None] * ramp_x[:, None, :])
