"""The thickness companion: the slice thickness learned at the depth the data resolve.

The data fix the object's depth structure only to about the probe's depth of
field, ``lambda / alpha^2`` (40.7 Å at 300 kV and 22 mrad). Slices much
thinner than that add unknowns the data cannot tell apart, and at a realistic
dose those unknowns bias the learned slice thickness: on ``sto_tilt_8_-3.h5``
as Poisson counts at 1e5 e/Å^2 (validation/dose.py), 10 slices of 10 Å end
+6.9 % thick while 5 slices of 20 Å end +0.2 % from the same start, and
neither the depth prior, the loss, the probe, the positions nor the tilt
moves the 10-slice optimum below +5 % (validation/analysis.md).

So when the requested slices are thin, the thickness is learned on a
*companion*: the same object merged ``k`` slices at a time (phases added,
amplitudes multiplied), with ``k`` the largest divisor of the slice count
for which ``k dz`` is at most ``lambda / alpha^2`` and at least
:data:`MIN_SLICES` slices remain. The companion has its own slices and Adam
moments and its own probe (a copy of the starting probe, learned as the
requested model's is; sharing that probe, fitted for the thin slices, pulled
the companion as thick as the thin slices), and is fitted to every batch
beside the requested slices, at the requested model's tilt and positions
(held: detached); its
propagator is ``p(k; k dz, theta)``, and the slice-thickness gradient comes
from it alone (the requested slices use ``dz`` detached). The requested
slices take its thickness, ``dz = (companion thickness) / k``. Every step
that moves the slices with depth (drift-to-tilt, a tilt map's local step and
hold) moves the companion's alike, and the depth prior smooths it as it does
the requested slices. The companion is internal: results show the requested
slices.

It costs one more forward and backward pass per batch through ``S / k``
slices (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import torch

__all__ = ["MIN_SLICES", "depth_of_field", "companion_factor", "factor_for", "merge"]

#: The fewest slices a companion keeps: with fewer the thickness is not a depth measurement.
MIN_SLICES = 3


def depth_of_field(wavelength: float, semiangle_mrad: float) -> float:
    """``lambda / alpha^2`` in Å (``wavelength`` in Å, the probe semi-angle in mrad)."""
    alpha = semiangle_mrad * 1e-3
    return wavelength / alpha**2


def companion_factor(
    num_slices: int, slice_thickness: float, wavelength: float, semiangle_mrad: float
) -> int:
    """Slices merged per companion slice: the largest divisor ``k`` of ``num_slices`` with
    ``k * slice_thickness <= lambda / alpha^2`` and ``num_slices / k >= MIN_SLICES``; 1 means none.

    Examples
    --------
    300 kV, 22 mrad (``lambda / alpha^2`` = 40.7 Å): 10 slices of 13 Å -> 2;
    5 slices of 26 Å -> 1; 20 slices of 6.5 Å -> 5.
    """
    if semiangle_mrad <= 0 or slice_thickness <= 0:
        return 1
    limit = depth_of_field(wavelength, semiangle_mrad)
    best = 1
    for k in range(2, num_slices + 1):
        if num_slices % k == 0 and k * slice_thickness <= limit and num_slices // k >= MIN_SLICES:
            best = k
    return best


def factor_for(config, wavelength: float, semiangle_mrad: float) -> int:
    """:func:`companion_factor` for a run with options ``config``: 1 (no companion) unless APP learns dz."""
    if not (config.dz_companion and config.learns_geometry and config.lr_dz > 0):
        return 1
    return companion_factor(config.num_slices, config.slice_thickness, wavelength, semiangle_mrad)


@torch.no_grad()
def merge(phase: torch.Tensor, amplitude: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Slices merged ``factor`` at a time: phases summed, amplitudes multiplied, (S / factor, H, W) each."""
    s, h, w = phase.shape
    phase = phase.detach().reshape(s // factor, factor, h, w).sum(dim=1)
    amplitude = amplitude.detach().reshape(s // factor, factor, h, w).prod(dim=1)
    return phase.contiguous(), amplitude.contiguous()
