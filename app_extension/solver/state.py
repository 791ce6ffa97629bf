"""Everything a reconstruction has learned, in one serialisable place.

A :class:`ReconstructionState` holds the object slices, probe modes, tilt, slice
thickness, the probe windows on the object grid, the optimisers' moments and
the per-iteration history. :meth:`ReconstructionState.to_tree` gives the one
serialised form (see :mod:`.serialize`) that checkpoints, HyperSpy results and
py4DSTEM files all store, so a run resumed from any of them continues exactly
as if it had never stopped.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from .positions import PositionModel
from .serialize import FORMAT, NotAStateError, read_h5, write_h5
from .tilt_field import TiltGrid

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
        (T, 2) tilt (theta_x, theta_y) in mrad; T = 1 (global) or P (tilt map:
        the per-position tilts, derived from ``tilt_grid``, not learned).
    slice_thickness
        dz in Å (0-d tensor).
    window_corners
        (P, 2) top-left corners (row, col) of each scan position's probe
        window on the object grid, in pixels (float; the probe centre is at
        the corner plus half the window).
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
    post_alignment
        FPP only: the post-alignment result (see :func:`.alignment.post_align`).
    optimizer
        The optimisers' state dicts (``{"adam": ..., "rprop": ...}``), so a
        resumed run takes the same steps as an uninterrupted one.
    lowest_loss
        Lowest loss per position of any batch so far (the divergence test's
        reference).
    memory_estimate
        The memory preflight's estimate for the last run (:mod:`.memory`).
    positions
        The learned scan-position model (:class:`.positions.PositionModel`)
        once position refinement has started; ``window_corners`` follows it.
    tilt_grid
        Tilt map only: the learned control-point tilts (K, 2) mrad, row-major
        on the grid ``tilt_field`` describes (see :mod:`.tilt_field`).
    tilt_field
        Tilt map only: the :class:`~.tilt_field.TiltGrid` (where the control
        points sit, which are undetermined, their uncertainties).
    companion_phase, companion_amplitude, companion_probe
        The thickness companion's slices (S / k, H, W) and probe modes when
        the slice thickness is learned on merged slices
        (:mod:`.thickness_companion`); None otherwise.
    """

    phase: torch.Tensor
    amplitude: torch.Tensor
    probe: torch.Tensor
    tilt: torch.Tensor
    slice_thickness: torch.Tensor
    window_corners: torch.Tensor
    sampling: float
    origin: tuple[float, float]
    wavelength: float
    intensity_scale: float = 1.0
    iteration: int = 0
    history: dict = field(default_factory=lambda: {k: [] for k in HISTORY_KEYS})
    status: str = "ok"
    post_alignment: dict | None = None
    optimizer: dict | None = None
    lowest_loss: float = math.inf
    positions: PositionModel | None = None
    memory_estimate: dict | None = None
    tilt_grid: torch.Tensor | None = None
    tilt_field: TiltGrid | None = None
    companion_phase: torch.Tensor | None = None
    companion_amplitude: torch.Tensor | None = None
    companion_probe: torch.Tensor | None = None

    _TENSORS = ("phase", "amplitude", "probe", "tilt", "slice_thickness", "window_corners")
    _COMPANION = ("companion_phase", "companion_amplitude", "companion_probe")

    @property
    def num_slices(self) -> int:
        return int(self.phase.shape[0])

    @property
    def has_companion(self) -> bool:
        """True when the slice thickness is learned on a thickness companion (:mod:`.thickness_companion`)."""
        return self.companion_phase is not None

    @property
    def companion_factor(self) -> int:
        """Requested slices per companion slice (1 without a companion)."""
        return self.num_slices // int(self.companion_phase.shape[0]) if self.has_companion else 1

    def slice_sets(self) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
        """(phase, amplitude, slice thickness in Å) of the slices and of the companion, if any.

        Every step that moves slices with depth moves each set alike.
        """
        sets = [(self.phase, self.amplitude, self.dz)]
        if self.has_companion:
            sets.append((self.companion_phase, self.companion_amplitude, self.dz * self.companion_factor))
        return sets

    @property
    def object(self) -> np.ndarray:
        """Complex object slices (S, H, W) as numpy, as a user sees them (:meth:`slices`)."""
        phase, amplitude = self.slices()
        return (amplitude * np.exp(1j * phase)).astype(np.complex64)

    def slices(self) -> tuple[np.ndarray, np.ndarray]:
        """Phase and amplitude (S, H, W) as numpy in the entrance frame.

        Each column at its entrance position in every slice: for a held tilt
        map the bend the slices carry is taken out
        (:func:`.crystal_frame.entrance_frame`); otherwise the slices as learned.
        """
        from .crystal_frame import entrance_frame

        return entrance_frame(self)

    @property
    def tilt_mrad(self) -> np.ndarray:
        """Tilt (theta_x, theta_y) in mrad: (2,) global, or (P, 2) for a tilt map."""
        t = self.tilt.detach().cpu().numpy().astype(np.float64)
        return t[0] if t.shape[0] == 1 else t

    @property
    def has_tilt_map(self) -> bool:
        """True when the tilt is a field over the scan (``tilt_grid``)."""
        return self.tilt_grid is not None

    def tilt_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Bilinear (index, weight), (P, 4) each, from the control grid to the probe positions."""
        key = (self.tilt_field.shape, self.tilt_field.origin, self.tilt_field.spacing, self.tilt.device)
        cached = getattr(self, "_weights", None)
        if cached is None or cached[0] != key:
            index, weight = self.tilt_field.weights(self.probe_positions())
            device = self.tilt.device
            cached = (key, torch.as_tensor(index, device=device), torch.as_tensor(weight, device=device))
            self._weights = cached
        return cached[1], cached[2].to(self.tilt.dtype)

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
        if self.positions is not None:
            self.positions = self.positions.to(device)
        if self.tilt_grid is not None:
            self.tilt_grid = self.tilt_grid.detach().to(device)
        if self.has_companion:
            for name in self._COMPANION:
                setattr(self, name, getattr(self, name).detach().to(device))
        return self

    def clone(self) -> ReconstructionState:
        """A deep copy detached from any graph."""
        return ReconstructionState(
            **{name: getattr(self, name).detach().clone() for name in self._TENSORS},
            sampling=self.sampling,
            origin=tuple(self.origin),
            wavelength=self.wavelength,
            intensity_scale=self.intensity_scale,
            iteration=self.iteration,
            history={k: list(v) for k, v in self.history.items()},
            status=self.status,
            post_alignment=None if self.post_alignment is None else dict(self.post_alignment),
            optimizer=copy.deepcopy(self.optimizer),
            lowest_loss=self.lowest_loss,
            positions=None if self.positions is None else self.positions.clone(),
            memory_estimate=copy.deepcopy(self.memory_estimate),
            tilt_grid=None if self.tilt_grid is None else self.tilt_grid.detach().clone(),
            tilt_field=None if self.tilt_field is None else self.tilt_field.copy(),
            **{
                name: None if getattr(self, name) is None else getattr(self, name).detach().clone()
                for name in self._COMPANION
            },
        )

    # -- the one serialised form ------------------------------------------------------------

    def to_tree(self, extra: dict | None = None) -> dict:
        """The state as a tree of arrays and plain values (see :mod:`.serialize`).

        ``extra`` (JSON-like: the options and the geometry of the run) is
        stored beside it.
        """
        d = {name: getattr(self, name).detach().cpu().numpy() for name in self._TENSORS}
        d.update(
            sampling=float(self.sampling),
            origin=[float(o) for o in self.origin],
            wavelength=float(self.wavelength),
            intensity_scale=float(self.intensity_scale),
            iteration=int(self.iteration),
            history={k: [float(x) for x in v] for k, v in self.history.items()},
            status=self.status,
            post_alignment=None
            if self.post_alignment is None
            else {k: np.asarray(v) for k, v in self.post_alignment.items()},
            optimizer=_optimizer_tree(self.optimizer),
            lowest_loss=float(self.lowest_loss),
            positions=None if self.positions is None else self.positions.to_tree(),
            memory_estimate=self.memory_estimate,
        )
        if self.tilt_grid is not None:
            d["tilt_grid"] = self.tilt_grid.detach().cpu().numpy()
            d["tilt_field"] = self.tilt_field.to_tree()
        if self.has_companion:
            d.update({name: getattr(self, name).detach().cpu().numpy() for name in self._COMPANION})
        return {"format": FORMAT, "state": d, "extra": extra or {}}

    @classmethod
    def from_tree(cls, tree: dict, with_extra: bool = False):
        """Inverse of :meth:`to_tree`."""
        if not isinstance(tree, dict) or tree.get("format") != FORMAT:
            raise NotAStateError(f"Not an app_extension state (expected format {FORMAT!r}).")
        d = dict(tree["state"])
        for name in cls._TENSORS:
            d[name] = torch.as_tensor(np.array(d[name]))
        d["origin"] = tuple(d["origin"])
        if d.get("post_alignment") is not None:
            d["post_alignment"] = {k: np.asarray(v) for k, v in d["post_alignment"].items()}
        d["optimizer"] = _optimizer_from_tree(d.get("optimizer"))
        if d.get("positions") is not None:
            d["positions"] = PositionModel.from_tree(d["positions"])
        if d.get("tilt_grid") is not None:
            d["tilt_grid"] = torch.as_tensor(np.array(d["tilt_grid"]))
            d["tilt_field"] = TiltGrid.from_tree(d["tilt_field"])
        for name in cls._COMPANION:
            if d.get(name) is not None:
                d[name] = torch.as_tensor(np.array(d[name]))
        state = cls(**d)
        return (state, tree.get("extra", {})) if with_extra else state

    def save(self, path: str | os.PathLike, extra: dict | None = None) -> None:
        """Write a checkpoint (an HDF5 file, no pickle); ``extra`` holds JSON-like metadata."""
        write_h5(path, self.to_tree(extra))

    @classmethod
    def load(cls, path: str | os.PathLike, with_extra: bool = False):
        """Read a checkpoint written by :meth:`save`.

        Raises
        ------
        NotAStateError
            When the file is not an app_extension checkpoint.
        """
        return cls.from_tree(read_h5(path), with_extra=with_extra)

    # -- bookkeeping --------------------------------------------------------------------

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

    def probe_positions(self) -> np.ndarray:
        """Probe centres (y, x) in Å in the scan frame, (P, 2)."""
        window = self.probe.shape[-1]
        corners = self.window_corners.detach().cpu().numpy().astype(np.float64)
        return (corners + window // 2) * self.sampling + np.asarray(self.origin)

    def scan_window(self, window: int) -> tuple[slice, slice]:
        """Object-pixel slices covering the probe centres' area (the scanned field)."""
        pos = self.window_corners.detach().cpu().numpy() + window / 2
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


def _optimizer_tree(optimizer: dict | None):
    """torch optimiser state dicts -> arrays and plain values (integer keys become strings)."""
    if optimizer is None:
        return None

    def walk(node):
        if isinstance(node, torch.Tensor):
            return node.detach().cpu().numpy()
        if isinstance(node, dict):
            return {str(k): walk(v) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return [walk(v) for v in node]
        return node

    return walk(optimizer)


def _optimizer_from_tree(tree):
    """Inverse of :func:`_optimizer_tree`: tensors back, per-parameter keys back to int."""
    if tree is None:
        return None
    out = {}
    for name, sd in tree.items():
        per_param = {
            int(k): {key: torch.as_tensor(np.array(v)) for key, v in entry.items()}
            for k, entry in sd["state"].items()
        }
        out[name] = {"state": per_param, "param_groups": [dict(g) for g in sd["param_groups"]]}
    return out
