"""Everything a reconstruction has learned, in one serialisable place.

A :class:`ReconstructionState` holds the object slices, probe modes, tilt, slice
thickness, the scan positions on the object grid and the per-iteration
history. ``save``/``load`` write it to one file, so a run can be checkpointed
and resumed with :func:`app_extension.solver.engine.reconstruct`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["ReconstructionState", "HISTORY_KEYS"]

HISTORY_KEYS = ("loss", "tilt_x", "tilt_y", "slice_thickness", "time")


@dataclass
class ReconstructionState:
    """Learned quantities and the grid they live on.

    Attributes
    ----------
    phase, amplitude
        Object slices, float32 (S, H, W); the transmission is
        ``amplitude * exp(i phase)``.
    probe
        Probe modes, complex64 (M, N, N), centred in the window.
    tilt
        (T, 2) tilt (theta_x, theta_y) in mrad; T = 1 (global) or P (tilt map).
    slice_thickness
        dz in Å (0-d tensor).
    positions_px
        (P, 2) top-left corners (row, col) of each probe window on the object
        grid, in pixels (float).
    sampling
        Real-space pixel size in Å.
    origin
        (y, x) in Å, in the scan frame, of object pixel [0, 0].
    wavelength
        Electron wavelength in Å.
    intensity_scale
        Factor the patterns were multiplied by inside the solver.
    iteration
        Iterations completed so far.
    history
        Per-iteration lists: loss, tilt_x, tilt_y (mrad), slice_thickness (Å),
        time (s, cumulative).
    status
        ``"ok"``, ``"interrupted"`` (Ctrl-C) or ``"diverged"`` (NaN; the
        state is the last good one).
    """

    phase: torch.Tensor
    amplitude: torch.Tensor
    probe: torch.Tensor
    tilt: torch.Tensor
    slice_thickness: torch.Tensor
    positions_px: torch.Tensor
    sampling: float
    origin: tuple[float, float]
    wavelength: float
    intensity_scale: float = 1.0
    iteration: int = 0
    history: dict = field(default_factory=lambda: {k: [] for k in HISTORY_KEYS})
    status: str = "ok"
    post_alignment: dict | None = None

    _TENSORS = ("phase", "amplitude", "probe", "tilt", "slice_thickness", "positions_px")

    @property
    def num_slices(self) -> int:
        return int(self.phase.shape[0])

    @property
    def object(self) -> np.ndarray:
        """Complex object slices (S, H, W) as numpy."""
        return (self.amplitude * torch.exp(1j * self.phase)).detach().cpu().numpy()

    @property
    def tilt_mrad(self) -> np.ndarray:
        """Tilt (theta_x, theta_y) in mrad: (2,) global, or (P, 2) for a tilt map."""
        t = self.tilt.detach().cpu().numpy().astype(np.float64)
        return t[0] if t.shape[0] == 1 else t

    @property
    def dz(self) -> float:
        """Slice thickness in Å."""
        return float(self.slice_thickness.detach())

    @property
    def thickness(self) -> float:
        """Total thickness S * dz in Å."""
        return self.dz * self.num_slices

    def to(self, device) -> ReconstructionState:
        """Move all tensors to ``device`` (in place); returns self."""
        for name in self._TENSORS:
            setattr(self, name, getattr(self, name).detach().to(device))
        return self

    def clone(self) -> ReconstructionState:
        """A deep copy detached from any graph."""
        copy = ReconstructionState(
            **{name: getattr(self, name).detach().clone() for name in self._TENSORS},
            sampling=self.sampling,
            origin=tuple(self.origin),
            wavelength=self.wavelength,
            intensity_scale=self.intensity_scale,
            iteration=self.iteration,
            history={k: list(v) for k, v in self.history.items()},
            status=self.status,
            post_alignment=None if self.post_alignment is None else dict(self.post_alignment),
        )
        return copy

    def to_dict(self) -> dict:
        """Plain dictionary of CPU tensors and Python values."""
        d = {name: getattr(self, name).detach().cpu() for name in self._TENSORS}
        d.update(
            sampling=float(self.sampling),
            origin=[float(o) for o in self.origin],
            wavelength=float(self.wavelength),
            intensity_scale=float(self.intensity_scale),
            iteration=int(self.iteration),
            history={k: [float(x) for x in v] for k, v in self.history.items()},
            status=self.status,
        )
        if self.post_alignment is not None:
            d["post_alignment"] = {
                k: torch.as_tensor(np.asarray(v)) if not np.isscalar(v) else v
                for k, v in self.post_alignment.items()
            }
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ReconstructionState:
        kwargs = dict(d)
        kwargs["origin"] = tuple(kwargs["origin"])
        pa = kwargs.pop("post_alignment", None)
        state = cls(**kwargs)
        if pa is not None:
            state.post_alignment = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in pa.items()}
        return state

    def save(self, path: str | os.PathLike, extra: dict | None = None) -> None:
        """Write a checkpoint (torch file); ``extra`` holds JSON-like metadata."""
        payload = {"state": self.to_dict(), "extra": extra or {}, "format": "app_extension-state-1"}
        tmp = f"{os.fspath(path)}.tmp"
        torch.save(payload, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, with_extra: bool = False):
        """Read a checkpoint written by :meth:`save`."""
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != "app_extension-state-1":
            raise ValueError(f"{path} is not an app_extension checkpoint.")
        state = cls.from_dict(payload["state"])
        return (state, payload["extra"]) if with_extra else state

    def record(self, loss: float, elapsed: float) -> None:
        """Append one iteration to the history."""
        t = self.tilt.detach().double()
        mean = t.mean(dim=0).cpu().numpy()
        self.history["loss"].append(float(loss))
        self.history["tilt_x"].append(float(mean[0]))
        self.history["tilt_y"].append(float(mean[1]))
        self.history["slice_thickness"].append(self.dz)
        previous = self.history["time"][-1] if self.history["time"] else 0.0
        self.history["time"].append(previous + float(elapsed))

    def coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        """Object pixel centres (y, x) in Å in the scan frame."""
        h, w = self.phase.shape[-2:]
        return (
            self.origin[0] + self.sampling * np.arange(h),
            self.origin[1] + self.sampling * np.arange(w),
        )

    def scan_window(self, window: int) -> tuple[slice, slice]:
        """Object-pixel slices covering the probe centres' area (the scanned field)."""
        pos = self.positions_px.detach().cpu().numpy() + window / 2
        lo = np.floor(pos.min(axis=0)).astype(int)
        hi = np.ceil(pos.max(axis=0)).astype(int) + 1
        return slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1]))

    def __repr__(self) -> str:
        tilt = self.tilt_mrad
        tilt_s = (
            f"({tilt[0]:.2f}, {tilt[1]:.2f}) mrad"
            if tilt.ndim == 1
            else f"map of {tilt.shape[0]}, mean ({tilt[:, 0].mean():.2f}, {tilt[:, 1].mean():.2f}) mrad"
        )
        return (
            f"<ReconstructionState: {self.num_slices} slices x {self.dz:.2f} Å "
            f"(thickness {self.thickness / 10:.2f} nm), tilt {tilt_s}, "
            f"{self.probe.shape[0]} probe mode(s), iteration {self.iteration}, {self.status}>"
        )
