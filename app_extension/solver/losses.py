"""Data-fidelity losses between modelled and measured diffraction intensities."""

from __future__ import annotations

import torch

__all__ = ["amplitude_loss", "poisson_loss", "LOSSES"]

_EPS = 1e-8


def amplitude_loss(
    model: torch.Tensor, measured_sqrt: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 1: ``sum_k (|F psi| - sqrt(I))^2``, summed over the batch.

    ``measured_sqrt`` is the square root of the measured intensities (computed
    once, outside the loop).
    """
    diff = torch.sqrt(model + _EPS) - measured_sqrt
    if mask is not None:
        diff = diff * mask
    return (diff * diff).sum()


def poisson_loss(
    model: torch.Tensor, measured: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Negative Poisson log-likelihood ``sum_k (I_model - I log I_model)`` (constant dropped)."""
    nll = model - measured * torch.log(model + _EPS)
    if mask is not None:
        nll = nll * mask
    return nll.sum()


LOSSES = {"amplitude": amplitude_loss, "poisson": poisson_loss}
