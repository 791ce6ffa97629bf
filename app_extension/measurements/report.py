"""The calibration report: what the data-preparation stage measured and used.

All values are plain Python numbers, lists and strings, so the report goes
into JSON and into HyperSpy metadata (``metadata.Signal.Ptychography.Calibration``)
as it is. Frames and units:

* detector pixels ``(row, col)`` refer to the *raw* patterns as given
  (before any transpose or rotation);
* scan positions ``(y, x)`` are in Å in the scan frame (x along the fast axis);
* ``rotation_deg`` is the scan rotation: the fast scan axis points along
  ``(cos φ, sin φ)`` in the detector's ``(x = col, y = row)`` frame, as in
  :meth:`app_extension.solver.config.Geometry.raster`;
* ``transposed`` is True when the raw detector rows run along the detector x
  axis (the raw pattern is the transpose of the true one);
* ``defocus_A`` is ``-C10`` (positive = underfocus); ``phi12_rad`` is in the
  frame the solver sees (the scan frame after resampling), ``phi12_detector_rad``
  in the detector's own frame (the frame a simulation of the microscope would use).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import numpy as np

__all__ = ["CalibrationReport"]


def _plain(value):
    """Convert numpy scalars/arrays (also nested) into JSON-able Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        value = float(value)
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


@dataclass
class CalibrationReport:
    """What :func:`app_extension.measurements.prepare` measured, and what it used.

    ``None`` means "not measured" (step switched off, or it failed; the reason
    is then in ``warnings``). See the module docstring for frames and units.
    """

    steps: dict = field(default_factory=dict)
    # detector centre and descan
    centre_px: tuple[float, float] | None = None
    centre_source: str = "off"
    descan_px_per_A: list | None = None
    centre_scatter_px: float | None = None
    # orientation
    rotation_deg: float = 0.0
    rotation_source: str = "off"
    rotation_com_deg: float | None = None
    rotation_parallax_deg: float | None = None
    transposed: bool = False
    transposed_source: str = "off"
    com_curl_fraction: dict | None = None
    # convergence angle
    semiangle_nominal_mrad: float | None = None
    semiangle_mrad: float | None = None
    semiangle_used_mrad: float | None = None
    disk_radius_px: float | None = None
    semiangle_warning: str = ""
    # bad pixels
    bad_pixels: list = field(default_factory=list)
    # aberrations
    defocus_nominal_A: float | None = None
    defocus_parallax_A: float | None = None
    defocus_A: float | None = None
    defocus_source: str = "nominal"
    C12_A: float | None = None
    phi12_rad: float | None = None
    phi12_detector_rad: float | None = None
    C30_A: float | None = None
    parallax_rms_px: float | None = None
    parallax_pixels: int | None = None
    # bookkeeping
    frame: str = "detector"
    masked_pixels: int = 0
    timings_s: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    # --------------------------------------------------------------- I/O
    def to_dict(self) -> dict:
        """JSON-able dictionary (for ``metadata.Signal.Ptychography.Calibration``)."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> CalibrationReport:
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in dict(d).items() if k in names}
        if kwargs.get("centre_px") is not None:
            kwargs["centre_px"] = tuple(float(v) for v in kwargs["centre_px"])
        if "bad_pixels" in kwargs:
            kwargs["bad_pixels"] = [(int(r), int(c), str(k)) for r, c, k in kwargs["bad_pixels"]]
        return cls(**kwargs)

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    # ----------------------------------------------------------- summary
    def __str__(self) -> str:
        lines = ["Calibration measured from the data:"]
        if self.centre_px is not None:
            line = f"  optic axis    ({self.centre_px[0]:.2f}, {self.centre_px[1]:.2f}) px (row, col) at scan centre"
            lines.append(line + f" [{self.centre_source}]")
        if self.descan_px_per_A is not None:
            d = np.asarray(self.descan_px_per_A)
            lines.append(
                "  descan        d(row,col)/d(y,x) = "
                f"[[{d[0, 0]:+.4f}, {d[0, 1]:+.4f}], [{d[1, 0]:+.4f}, {d[1, 1]:+.4f}]] px/Å"
            )
        rot = f"  scan rotation {self.rotation_deg:+.2f}° [{self.rotation_source}]"
        extra = []
        if self.rotation_parallax_deg is not None:
            extra.append(f"parallax {self.rotation_parallax_deg:+.2f}°")
        if self.rotation_com_deg is not None:
            extra.append(f"COM {self.rotation_com_deg:+.2f}°")
        lines.append(rot + (" (" + ", ".join(extra) + ")" if extra else ""))
        lines.append(f"  transposed    {self.transposed} [{self.transposed_source}]")
        if self.semiangle_mrad is not None:
            lines.append(
                f"  semi-angle    {self.semiangle_mrad:.2f} mrad measured (disk radius "
                f"{self.disk_radius_px:.2f} px), {self.semiangle_nominal_mrad:.2f} nominal, "
                f"{self.semiangle_used_mrad:.2f} used"
            )
        if self.bad_pixels or self.steps.get("bad_pixels"):
            kinds = {}
            for _, _, kind in self.bad_pixels:
                kinds[kind] = kinds.get(kind, 0) + 1
            listing = ", ".join(f"({r}, {c}) {k}" for r, c, k in self.bad_pixels[:8])
            more = f", ... ({len(self.bad_pixels) - 8} more)" if len(self.bad_pixels) > 8 else ""
            lines.append(f"  bad pixels    {len(self.bad_pixels)} {kinds or ''}: {listing}{more}")
        if self.defocus_A is not None:
            line = f"  defocus       {self.defocus_A:.1f} Å [{self.defocus_source}]"
            if self.defocus_nominal_A is not None:
                line += f" (nominal {self.defocus_nominal_A:.1f} Å)"
            lines.append(line)
        if self.C12_A is not None:
            lines.append(
                f"  astigmatism   C12 = {self.C12_A:.1f} Å at phi12 = {self.phi12_rad:+.3f} rad "
                f"(scan frame; {self.phi12_detector_rad:+.3f} rad in the detector frame)"
            )
        if self.timings_s:
            lines.append(f"  time          {sum(self.timings_s.values()):.2f} s")
        for w in self.warnings:
            lines.append(f"  WARNING: {w}")
        for n in self.notes:
            lines.append(f"  note: {n}")
        return "\n".join(lines)
