"""Scan-position refinement: a global affine map and a linear drift of the raster, plus small offsets.

A real scan is not the raster the microscope reports: the scan coils' gain and
angle differ a little from their calibration, the specimen drifts during the
acquisition, and each position jitters. The probe windows' corners are modelled
as::

    c_j = m + (I + A) (c0_j - m) + d * t_j + o_j

with ``c0`` the nominal corners (pixels), ``m`` their mean, ``A`` a 2 x 2
affine correction (scale, rotation, shear), ``d`` a linear drift over the
acquisition time ``t_j`` (scan order, -0.5 .. 0.5) and ``o_j`` per-position
offsets. The offsets are kept free of any mean or linear part (those belong to
``A`` and ``d``; a common shift of every position is only a shift of the
object) and are pulled back toward zero each step (regularised toward the
raster), and each is limited to ``max_offset`` pixels. When most offsets end a
step at that bound (:data:`RUNAWAY_FRACTION`), the data do not determine them
(too little overlap between neighbouring probe positions: each position's object
patch and its offset then trade freely), and they are given up for the rest of
the run (:meth:`PositionModel.give_up`): back to the raster, no longer learned.

All of them are learned with Rprop on the gradient of the whole pass, one step
per iteration: every position is in exactly one batch of a pass, so the
gradient is complete, and no position moves on stale momentum. By default
only the offsets are learned (``SolverConfig.positions_global`` adds ``A`` and
``d``): on ideal abTEM data (validation/) the global terms moved by 0.1-0.16 Å,
trading off against the learned thickness and the probe's defocus, and raised
the column-site error from 3.7 to 5.5-7 pm, while the offsets stayed below
0.01 Å RMS.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["PositionModel", "RUNAWAY_FRACTION"]

#: Fraction of the positions whose offset sits at ``max_offset`` (in either axis) after a step above
#: which the offsets count as undetermined and are given up (:meth:`PositionModel.give_up`). On
#: ideal and realistic scans none reaches the bound (offsets 0.006-0.06 Å RMS); with too little
#: overlap (own forward model, 1 Å steps for a 2 Å probe) 12 % did after 8 steps and 58 % after 9.
RUNAWAY_FRACTION = 0.25


class PositionModel:
    """Learnable scan positions (see the module docstring).

    Parameters
    ----------
    nominal
        (P, 2) nominal window corners (row, col) in pixels, in scan order.
    """

    _TENSORS = ("nominal", "affine", "drift", "offsets")

    def __init__(self, nominal: torch.Tensor, affine=None, drift=None, offsets=None, given_up: bool = False):
        self.given_up = bool(given_up)
        self.nominal = nominal.detach().clone().float()
        device = self.nominal.device
        p = self.nominal.shape[0]
        self.affine = torch.zeros((2, 2), device=device) if affine is None else affine.float()
        self.drift = torch.zeros(2, device=device) if drift is None else drift.float()
        self.offsets = torch.zeros((p, 2), device=device) if offsets is None else offsets.float()
        self.centre = self.nominal.mean(dim=0)
        self.time = torch.linspace(-0.5, 0.5, p, device=device) if p > 1 else torch.zeros(1, device=device)
        # the design matrix of the offsets' linear part: 1, rows, cols, time
        rel = self.nominal - self.centre
        self._design = torch.cat([torch.ones((p, 1), device=device), rel, self.time[:, None]], dim=1).double()
        self._gram = self._design.T @ self._design

    def parameters(self) -> list[torch.Tensor]:
        return [self.affine, self.drift, self.offsets]

    def requires_grad_(self, flag: bool) -> PositionModel:
        for t in self.parameters():
            t.requires_grad_(flag)
        return self

    def corners(self, batch: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 2) corners of the positions in ``batch`` (all when None), differentiable."""
        nominal = self.nominal if batch is None else self.nominal[batch]
        time = self.time if batch is None else self.time[batch]
        offsets = self.offsets if batch is None else self.offsets[batch]
        rel = nominal - self.centre
        eye = torch.eye(2, device=rel.device, dtype=rel.dtype)
        return self.centre + rel @ (eye + self.affine).T + time[:, None] * self.drift + offsets

    @torch.no_grad()
    def constrain(self, shrink: float, max_offset: float) -> None:
        """Keep the offsets free of mean and linear parts, pull them toward zero, limit their size."""
        # least squares by the 4 x 4 normal equations (the design is well conditioned)
        coef = torch.linalg.solve(self._gram, self._design.T @ self.offsets.double())
        self.offsets.sub_((self._design @ coef).float())
        self.offsets.mul_(1.0 - shrink)
        self.offsets.clamp_(-max_offset, max_offset)

    def at_bound(self, max_offset: float) -> float:
        """Fraction of the positions whose offset is at ``max_offset`` (pixels) in either axis."""
        return float((self.offsets.detach().abs().max(dim=1).values >= 0.99 * max_offset).float().mean())

    @torch.no_grad()
    def give_up(self) -> None:
        """Offsets back to zero (the affine-corrected raster) and never learned again in this run."""
        self.offsets.zero_()
        self.given_up = True

    def summary(self, sampling: float) -> dict:
        """Scale, rotation, shear, drift (Å) and offset RMS (Å) of the current model."""
        m = np.eye(2) + self.affine.detach().cpu().double().numpy()
        # m acts on (row, col) = (y, x); its polar decomposition m = R S gives rotation and stretch
        u, s, vt = np.linalg.svd(m)
        rot = u @ vt
        stretch = vt.T @ np.diag(s) @ vt
        # rotation from x toward y (counter-clockwise with y up) in the (y, x) basis
        angle = float(np.degrees(np.arctan2(rot[0, 1], rot[0, 0])))
        offsets = self.offsets.detach().cpu().double().numpy() * sampling
        return {
            "scale_y": float(stretch[0, 0]),
            "scale_x": float(stretch[1, 1]),
            "shear": float(stretch[0, 1]),
            "rotation_deg": angle,
            "drift_A": (self.drift.detach().cpu().double().numpy() * sampling).tolist(),
            "offset_rms_A": float(np.sqrt((offsets**2).sum(axis=1).mean())),
            "offsets_given_up": bool(self.given_up),
        }

    def to_tree(self) -> dict:
        tree = {name: getattr(self, name).detach().cpu().numpy() for name in self._TENSORS}
        tree["given_up"] = bool(self.given_up)
        return tree

    @classmethod
    def from_tree(cls, tree: dict, device="cpu") -> PositionModel:
        t = {k: torch.as_tensor(np.array(tree[k])).to(device) for k in cls._TENSORS}
        given_up = bool(np.asarray(tree.get("given_up", False)))
        return cls(t["nominal"], t["affine"], t["drift"], t["offsets"], given_up=given_up)

    def to(self, device) -> PositionModel:
        tensors = (getattr(self, n).detach().to(device) for n in self._TENSORS)
        return PositionModel(*tensors, given_up=self.given_up)

    def clone(self) -> PositionModel:
        tensors = (getattr(self, n).detach().clone() for n in self._TENSORS)
        return PositionModel(*tensors, given_up=self.given_up)
