"""Electron optics: wavelength, reciprocal-space grids and the probe.

Conventions (used everywhere in app_extension)
----------------------------------------------
* Lengths in Å, angles in mrad, energies in eV.
* Fourier transforms follow numpy: ``Psi(k) = sum_r psi(r) exp(-2 pi i k.r)``,
  so ``+kx`` is scattering towards ``+x``.
* Aberration phase ``chi(k) = pi * lambda * |k|^2 * C10 + ...`` and the probe in
  reciprocal space is ``A(k) exp(-i chi(k))`` with ``defocus = -C10`` (abTEM and
  py4DSTEM convention): positive defocus is underfocus, the beam crossover lies
  below the entrance surface.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

__all__ = [
    "electron_wavelength",
    "fourier_grid",
    "aberration_phase",
    "make_probe",
    "orthogonalize_modes",
    "probe_modes",
]

_ME_C2_EV = 510998.95  # electron rest energy, eV
_HC_EV_A = 12398.419843320026  # h c in eV Å


def electron_wavelength(energy_ev: float) -> float:
    """Relativistic electron wavelength in Å for a beam energy in eV.

    Parameters
    ----------
    energy_ev
        Kinetic energy of the electrons in eV (for example ``300e3``).

    Returns
    -------
    float
        Wavelength in Å (0.019687 Å at 300 keV).
    """
    if not np.isfinite(energy_ev) or energy_ev <= 0:
        raise ValueError(f"Beam energy must be a positive number of eV, got {energy_ev!r}.")
    return _HC_EV_A / math.sqrt(energy_ev * (2 * _ME_C2_EV + energy_ev))


def fourier_grid(
    shape: tuple[int, int], sampling: float, device=None, dtype=torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial frequencies (ky, kx) in 1/Å in numpy's unshifted FFT order.

    Parameters
    ----------
    shape
        Real-space grid shape (ny, nx).
    sampling
        Real-space pixel size in Å.
    """
    ky = torch.fft.fftfreq(shape[0], d=sampling, device=device, dtype=torch.float64)
    kx = torch.fft.fftfreq(shape[1], d=sampling, device=device, dtype=torch.float64)
    ky, kx = torch.meshgrid(ky, kx, indexing="ij")
    return ky.to(dtype), kx.to(dtype)


# Polar aberration coefficients accepted by :func:`aberration_phase`:
# name -> (order n, azimuthal symmetry m). Angle keys are named phiNM (radians).
_POLAR = {
    "C10": (1, 0),
    "C12": (1, 2),
    "C21": (2, 1),
    "C23": (2, 3),
    "C30": (3, 0),
    "C32": (3, 2),
    "C34": (3, 4),
    "C50": (5, 0),
}


def aberration_phase(
    ky: torch.Tensor, kx: torch.Tensor, wavelength: float, aberrations: Mapping[str, float]
) -> torch.Tensor:
    """Aberration function chi(k) in radians (Krivanek polar notation).

    ``chi = 2 pi / lambda * sum_nm C_nm alpha^(n+1) / (n+1) cos(m (phi - phi_nm))``
    with ``alpha = lambda |k|`` and coefficients in Å. ``C10`` is -defocus.
    """
    unknown = set(aberrations) - set(_POLAR) - {f"phi{k[1:]}" for k in _POLAR}
    if unknown:
        raise ValueError(
            f"Unknown aberration coefficient(s) {sorted(unknown)}; "
            f"use polar names {sorted(_POLAR)} (Å) and angles 'phi12', ... (rad)."
        )
    alpha = wavelength * torch.sqrt(kx**2 + ky**2)
    phi = torch.atan2(ky, kx)
    chi = torch.zeros_like(alpha)
    for name, (n, m) in _POLAR.items():
        c = float(aberrations.get(name, 0.0))
        if c == 0.0:
            continue
        angle = float(aberrations.get(f"phi{name[1:]}", 0.0))
        chi = chi + c * alpha ** (n + 1) / (n + 1) * torch.cos(m * (phi - angle))
    return 2 * math.pi / wavelength * chi


def make_probe(
    shape: tuple[int, int],
    sampling: float,
    energy_ev: float,
    semiangle_mrad: float,
    defocus: float = 0.0,
    aberrations: Mapping[str, float] | None = None,
    intensity: float = 1.0,
    device=None,
) -> torch.Tensor:
    """Real-space probe centred in its window (pixel ``shape // 2``).

    Parameters
    ----------
    shape, sampling
        Window shape and real-space pixel size (Å).
    energy_ev, semiangle_mrad
        Beam energy (eV) and convergence semi-angle (mrad) of the hard aperture.
    defocus
        Defocus in Å, ``defocus = -C10``; positive is underfocus.
    aberrations
        Further polar coefficients (Å), e.g. ``{"C30": 1e4}``. A ``C10`` given
        here is added to ``-defocus``.
    intensity
        Total intensity ``sum |probe|^2`` (equal to the far-field sum with the
        unitary FFTs used by the forward model).

    Returns
    -------
    torch.Tensor
        complex64 tensor of ``shape``.
    """
    if semiangle_mrad <= 0:
        raise ValueError(f"Convergence semi-angle must be > 0 mrad, got {semiangle_mrad}.")
    wavelength = electron_wavelength(energy_ev)
    ky, kx = fourier_grid(shape, sampling, device=device, dtype=torch.float64)
    ab = dict(aberrations or {})
    ab["C10"] = ab.get("C10", 0.0) - defocus
    chi = aberration_phase(ky, kx, wavelength, ab)
    alpha = wavelength * torch.sqrt(kx**2 + ky**2)
    aperture = (alpha <= semiangle_mrad * 1e-3).to(torch.float64)
    if aperture.sum() < 9:
        raise ValueError(
            f"The {semiangle_mrad} mrad aperture covers only {int(aperture.sum())} pixel(s) of the "
            f"{shape[0]} x {shape[1]} grid ({sampling:.4g} Å per pixel): check the convergence angle "
            "and the detector calibration (reciprocal pixel size)."
        )
    probe_k = aperture * torch.exp(-1j * chi)
    probe = torch.fft.fftshift(torch.fft.ifft2(probe_k), dim=(-2, -1))
    probe = probe * math.sqrt(intensity / float((probe.abs() ** 2).sum()))
    return probe.to(torch.complex64)


def orthogonalize_modes(modes: torch.Tensor) -> torch.Tensor:
    """Orthogonalise mixed-state probe modes, strongest first.

    Diagonalises the modes' Gram matrix, so the total intensity
    ``sum_m |P_m|^2`` is unchanged while the modes become orthogonal.
    """
    m = modes.shape[0]
    if m == 1:
        return modes
    flat = modes.reshape(m, -1)
    gram = flat.conj() @ flat.T  # (m, m) Hermitian
    evals, evecs = torch.linalg.eigh(gram)
    order = torch.argsort(evals, descending=True)
    evecs = evecs[:, order]
    return (evecs.T @ flat).reshape(modes.shape)


def probe_modes(probe: torch.Tensor, num_modes: int, seed: int = 0, weight: float = 0.1) -> torch.Tensor:
    """Mixed-state probe: the main mode plus ``num_modes - 1`` weak modes.

    The extra modes are the probe times smooth random phase ramps of low order,
    each holding ``weight`` of the main mode's power before orthogonalisation; the
    total power is kept.
    """
    if num_modes < 1:
        raise ValueError(f"probe_modes must be >= 1, got {num_modes}.")
    if num_modes == 1:
        return probe[None].clone()
    gen = torch.Generator().manual_seed(seed)
    ny, nx = probe.shape
    y = torch.linspace(-1, 1, ny)[:, None]
    x = torch.linspace(-1, 1, nx)[None, :]
    modes = [probe]
    for i in range(1, num_modes):
        a, b = (torch.rand(2, generator=gen) - 0.5) * 2 * math.pi * i
        ramp = torch.exp(1j * (a * x + b * y)).to(probe.device)
        modes.append(probe * ramp * math.sqrt(weight))
    stack = torch.stack(modes)
    total = (probe.abs() ** 2).sum()
    stack = orthogonalize_modes(stack)
    return stack * torch.sqrt(total / (stack.abs() ** 2).sum())
