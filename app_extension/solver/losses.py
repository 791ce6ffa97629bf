"""Data-fidelity losses between modelled and measured diffraction intensities."""

from __future__ import annotations

import torch

__all__ = ["amplitude_loss", "anscombe_loss", "poisson_loss", "LOSSES", "ANSCOMBE_OFFSET"]

_EPS = 1e-8

#: The offset (in counts) of the Anscombe transform 2 sqrt(n + 3/8), which makes Poisson counts'
#: square roots nearly unbiased and of constant variance down to about one count.
ANSCOMBE_OFFSET = 3.0 / 8.0


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
    """Negative Poisson log-likelihood relative to its minimum: ``sum_k (I_m - I + I log(I / I_m))``.

    This is half the Poisson deviance: the same gradient as ``I_m - I log I_m``
    but never negative, so that the divergence test (a batch's loss against
    a multiple of the lowest seen) works; without the constant ``I log I - I``
    the loss of bright patterns is negative and the first later batch with a
    larger value stopped the run as 'diverged'.
    """
    nll = model - measured + torch.xlogy(measured, measured) - measured * torch.log(model + _EPS)
    if mask is not None:
        nll = nll * mask
    return nll.sum()


def anscombe_loss(
    model: torch.Tensor,
    measured_root: torch.Tensor,
    mask: torch.Tensor | None = None,
    offset: float = ANSCOMBE_OFFSET,
) -> torch.Tensor:
    """Variance-stabilised amplitude loss ``sum_k (sqrt(I_model + c) - sqrt(I + c))^2``, c = 3/8 count.

    ``measured_root`` is ``sqrt(I + offset)``, computed once outside the loop;
    ``offset`` is 3/8 of a count in the units of ``model``. For counts the
    plain amplitude loss is biased where a pixel gets about one electron or
    fewer: E[sqrt(n)] is about lambda, not sqrt(lambda), for lambda << 1, so its
    minimum puts nearly no intensity in the dark field (lambda^2 for lambda
    counts). With the offset, E[sqrt(n + 3/8)] is within about 0.08 of
    sqrt(lambda + 3/8) for every lambda.
    """
    diff = torch.sqrt(model + offset) - measured_root
    if mask is not None:
        diff = diff * mask
    return (diff * diff).sum()


LOSSES = {"amplitude": amplitude_loss, "anscombe": anscombe_loss, "poisson": poisson_loss}
