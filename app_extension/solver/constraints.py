"""Projections applied between gradient steps: physical bounds and priors."""

from __future__ import annotations

import torch

from ..physics.optics import orthogonalize_modes

__all__ = ["clamp_amplitude", "smooth_depth", "orthogonalize_probe"]


@torch.no_grad()
def clamp_amplitude(amplitude: torch.Tensor, maximum: float = 1.0) -> None:
    """Keep the object amplitude in [0, maximum] (in place)."""
    amplitude.clamp_(0.0, maximum)


@torch.no_grad()
def smooth_depth(field: torch.Tensor, weight: float) -> None:
    """z-smoothness prior: move each slice ``weight`` of the way to its neighbours' mean (in place).

    The end slices use their single neighbour. This keeps the slices alike,
    a crystal seen along its own axis, so that the lateral drift with depth
    (tilt) and the depth scale (thickness) are carried by the propagator.
    """
    if weight <= 0 or field.shape[0] < 2:
        return
    neighbours = torch.empty_like(field)
    neighbours[1:-1] = 0.5 * (field[:-2] + field[2:])
    neighbours[0] = field[1]
    neighbours[-1] = field[-2]
    field.mul_(1 - weight).add_(neighbours, alpha=weight)


@torch.no_grad()
def orthogonalize_probe(probe: torch.Tensor) -> None:
    """Orthogonalise the mixed-state modes in place (strongest first)."""
    probe.copy_(orthogonalize_modes(probe))
