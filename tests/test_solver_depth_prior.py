"""Depth-prior candidates: same as today's prior where they should be, sparing what is not periodic."""

from types import SimpleNamespace

import numpy as np
import torch

from app_extension.solver.constraints import smooth_depth
from app_extension.solver.depth_prior import AnnealedPrior, SpectralPrior, plain_prior


def test_plain_prior_is_todays_smooth_depth():
    field = torch.rand(5, 16, 16, generator=torch.Generator().manual_seed(0))
    a, b = field.clone(), field.clone()
    smooth_depth(a, 0.5)
    plain_prior(b, 0.5)
    assert torch.allclose(a, b)


def _lattice_stack(n=96, s=5, period=8):
    y, x = np.mgrid[:n, :n]
    lattice = np.cos(2 * np.pi * x / period) + np.cos(2 * np.pi * y / period)
    amp = np.linspace(0.5, 1.5, s)[:, None, None]  # lattice strength changes with depth
    stack = amp * lattice[None]
    feature = np.exp(-((x - 40.3) ** 2 + (y - 52.7) ** 2) / (2 * 1.5**2))
    stack[2] += 0.5 * feature
    return torch.tensor(stack, dtype=torch.float32), lattice, feature


def test_periodic_prior_smooths_the_lattice_and_spares_a_dopant():
    stack, lattice, feature = _lattice_stack()
    plain = stack.clone()
    plain_prior(plain, 0.5)
    periodic = stack.clone()
    prior = SpectralPrior("periodic")
    prior(periodic, 0.5)
    assert 0 < prior.last_mask_fraction < 0.05

    def lattice_part(t, k):
        return float((t[k].numpy() * lattice).sum() / (lattice * lattice).sum())

    def feature_part(t):
        return float(((t[2] - t[1]).numpy() * feature).sum() / (feature * feature).sum())

    # The lattice-periodic part is smoothed like today's prior (end slices pulled in).
    assert abs(lattice_part(periodic, 0) - lattice_part(plain, 0)) < 0.02
    assert lattice_part(periodic, 0) > 0.6  # was 0.5, its neighbour 0.75
    # The dopant in slice 2 keeps most of its contrast; today's prior halves it.
    assert feature_part(periodic) > 0.45
    assert feature_part(plain) < 0.3


def test_lowpass_prior_spares_high_frequencies():
    _, lattice, _ = _lattice_stack()
    stack = torch.tensor(np.linspace(0.5, 1.5, 5)[:, None, None] * lattice[None], dtype=torch.float32)
    out = stack.clone()
    SpectralPrior("lowpass", cutoff=0.02)(out, 0.5)  # the lattice (1/8 cycles/px) is far above
    assert torch.allclose(out, stack, atol=1e-3)


def test_annealed_prior_switches_off():
    prior = AnnealedPrior(plain_prior, stop_iteration=3)
    field = torch.rand(4, 8, 8)
    for it in range(1, 6):
        before = field.clone()
        prior(field, 0.5)
        changed = not torch.allclose(before, field)
        assert changed == (it <= 3), it
        prior.update(SimpleNamespace(iteration=it, tilt_mrad=np.zeros(2), dz=10.0))
    settle = AnnealedPrior(plain_prior, stop_iteration=None, tilt_tol=0.1, dz_tol=0.01, min_iteration=0)
    for it, tilt in enumerate([0.0, 2.0, 2.05, 2.06, 2.07], start=1):
        settle.update(SimpleNamespace(iteration=it, tilt_mrad=np.array([tilt, 0.0]), dz=10.0))
    assert settle.off_at == 4  # calm at iterations 3 and 4
