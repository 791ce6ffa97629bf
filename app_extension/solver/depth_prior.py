"""Depth priors: what the slices are pulled towards between iterations.

The prior of :func:`app_extension.solver.constraints.smooth_depth` moves every
slice a fraction ``weight`` of the way to the mean of its neighbours. That keeps
a crystal's slices alike, which is what makes tilt and thickness well defined,
but it also smears anything that is not the same in every slice (a dopant, a
vacancy, an interface). The candidates here keep the first effect and lose less
of the second. Each is a callable with the signature of ``smooth_depth``,
``prior(field, weight)``, acting in place on a (S, H, W) tensor, so that it can
stand in for it.

* :func:`neighbour_mean`: the target of every prior (end slices: their single neighbour).
* :class:`SpectralPrior`: smooth only some lateral frequencies of the slices,
  either the lattice-periodic part (``"periodic"``: the strong spots of the
  slices' mean spectrum, i.e. what all slices share) or the low frequencies
  (``"lowpass"``, a Gaussian of the given width in cycles per pixel).
* :class:`AnnealedPrior`: a prior whose weight goes to zero once the geometry
  has settled (after a fixed iteration, or once the tilt and slice thickness
  change by less than a threshold per iteration); it learns the iteration and
  the geometry from :meth:`AnnealedPrior.update`, to be called with the state
  after each iteration (e.g. ``reconstruct(callback=prior.update)``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["neighbour_mean", "plain_prior", "SpectralPrior", "AnnealedPrior", "periodic_mask"]


def neighbour_mean(field: torch.Tensor) -> torch.Tensor:
    """Mean of each slice's neighbours along axis 0 (the end slices take their single neighbour)."""
    out = torch.empty_like(field)
    out[1:-1] = 0.5 * (field[:-2] + field[2:])
    out[0] = field[1]
    out[-1] = field[-2]
    return out


@torch.no_grad()
def plain_prior(field: torch.Tensor, weight: float) -> None:
    """Today's prior (same as ``constraints.smooth_depth``): every slice ``weight`` of the way to its neighbours."""
    if weight <= 0 or field.shape[0] < 2:
        return
    neighbours = neighbour_mean(field)  # before field changes
    field.mul_(1 - weight).add_(neighbours, alpha=weight)


@torch.no_grad()
def periodic_mask(mean_slice: torch.Tensor, factor: float = 30.0, dilate: int = 2) -> torch.Tensor:
    """The lateral frequencies (FFT order) where ``mean_slice`` has a spectral spot.

    A spot is a local maximum (5 x 5 neighbourhood) of the power spectrum that
    exceeds ``factor`` times its median; each spot is widened by ``dilate``
    pixels (the finite field broadens the lattice spots). The zero frequency
    is always included. For a crystal these are its lattice spots: the
    lattice-periodic part of the image.
    """
    centred = mean_slice - mean_slice.mean()
    power = torch.fft.fft2(centred).abs().square()
    power[0, 0] = 0
    median = power.median()
    p = power[None, None]
    padded = F.pad(p, (2, 2, 2, 2), mode="circular")
    local_max = F.max_pool2d(padded, 5, stride=1)[0, 0]
    spots = (power >= local_max) & (power > factor * median)
    spots[0, 0] = True
    if dilate > 0:
        k = 2 * dilate + 1
        s = F.pad(spots[None, None].float(), (dilate,) * 4, mode="circular")
        spots = F.max_pool2d(s, k, stride=1)[0, 0] > 0
    return spots


class SpectralPrior:
    """The neighbour-mean prior applied to some lateral frequencies only.

    Parameters
    ----------
    kind
        ``"periodic"``: the spots of the slices' mean spectrum
        (:func:`periodic_mask`), recomputed at every call; ``"lowpass"``: a
        Gaussian ``exp(-k^2 / (2 cutoff^2))`` in cycles per pixel.
    cutoff
        Width of the low-pass in cycles per pixel (``"lowpass"`` only).
    factor, dilate
        Spot detection of :func:`periodic_mask` (``"periodic"`` only).

    Calling ``prior(field, weight)`` moves the selected frequencies of every
    slice ``weight`` of the way to its neighbours' mean, in place; the others
    are left alone.
    """

    def __init__(self, kind: str = "periodic", cutoff: float = 0.05, factor: float = 30.0, dilate: int = 2):
        if kind not in ("periodic", "lowpass"):
            raise ValueError(f"kind must be 'periodic' or 'lowpass', got {kind!r}.")
        self.kind = kind
        self.cutoff = float(cutoff)
        self.factor = float(factor)
        self.dilate = int(dilate)
        self.last_mask_fraction = None

    def weights(self, field: torch.Tensor) -> torch.Tensor:
        """The (H, W) per-frequency weight in [0, 1] (FFT order)."""
        h, w = field.shape[-2:]
        if self.kind == "lowpass":
            fy = torch.fft.fftfreq(h, device=field.device)
            fx = torch.fft.fftfreq(w, device=field.device)
            k2 = fy[:, None] ** 2 + fx[None, :] ** 2
            return torch.exp(-k2 / (2 * self.cutoff**2))
        return periodic_mask(field.mean(dim=0), self.factor, self.dilate).to(field.dtype)

    @torch.no_grad()
    def __call__(self, field: torch.Tensor, weight: float) -> None:
        if weight <= 0 or field.shape[0] < 2:
            return
        m = self.weights(field)
        self.last_mask_fraction = float(m.mean())
        step = torch.fft.ifft2(torch.fft.fft2(neighbour_mean(field) - field) * m).real
        field.add_(step, alpha=weight)


class AnnealedPrior:
    """A prior that switches itself off once the geometry has settled.

    Parameters
    ----------
    base
        The prior to apply while on (e.g. :func:`plain_prior`).
    stop_iteration
        Off from this iteration (0-based) on, whatever the geometry does;
        ``None`` for no fixed stop.
    tilt_tol, dz_tol
        Off once, for ``patience`` iterations in a row, the tilt changed by
        less than ``tilt_tol`` mrad and the slice thickness by less than
        ``dz_tol`` (relative) per iteration. ``None`` disables the test.
    min_iteration
        Never off before this iteration.
    patience
        Iterations in a row the geometry must be settled.

    Call :meth:`update` with the state after each iteration (the engine's
    ``callback``); ``prior(field, weight)`` then applies ``base`` until it is off.
    """

    def __init__(
        self,
        base=plain_prior,
        stop_iteration: int | None = 10,
        tilt_tol: float | None = None,
        dz_tol: float | None = None,
        min_iteration: int = 3,
        patience: int = 2,
    ):
        self.base = base
        self.stop_iteration = stop_iteration
        self.tilt_tol = tilt_tol
        self.dz_tol = dz_tol
        self.min_iteration = int(min_iteration)
        self.patience = int(patience)
        self.iteration = 0
        self.off_at: int | None = None
        self._settled = 0
        self._last = None

    def update(self, state) -> None:
        """Record the state after an iteration (its tilt and slice thickness)."""
        self.iteration = int(state.iteration)
        tilt = np.asarray(state.tilt_mrad, dtype=float).reshape(-1, 2).mean(axis=0)
        dz = float(state.dz)
        if self._last is not None and self.tilt_tol is not None and self.dz_tol is not None:
            t0, d0 = self._last
            calm = np.abs(tilt - t0).max() < self.tilt_tol and abs(dz / d0 - 1) < self.dz_tol
            self._settled = self._settled + 1 if calm else 0
        self._last = (tilt, dz)
        if self.off_at is None and self.iteration >= self.min_iteration:
            if (self.stop_iteration is not None and self.iteration >= self.stop_iteration) or (
                self.tilt_tol is not None and self._settled >= self.patience
            ):
                self.off_at = self.iteration

    @property
    def active(self) -> bool:
        return self.off_at is None

    @torch.no_grad()
    def __call__(self, field: torch.Tensor, weight: float) -> None:
        if self.active:
            self.base(field, weight)
