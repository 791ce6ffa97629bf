"""Memory preflight: the peak memory of a run, estimated from the shapes before anything is allocated.

:func:`preflight` is called by :func:`.engine.reconstruct` before the data are
read and before the state is made. It refuses

* absurd geometry (:class:`ObjectTooLargeError`): an object of more than
  :data:`MAX_OBJECT_PIXELS` pixels on a side, which is what a scan step in the
  wrong unit gives (``"1 um"`` instead of ``"1 Å"``);
* a run whose estimate does not fit in the free memory
  (:class:`MemoryPreflightError`), with the estimate and the changes that would
  make it fit (smaller batch, streaming the data, fewer modes, no padding,
  float32 data, more processes).

The estimate counts what the solver allocates, term by term (``U`` = one
float32 array of the object's size, S x H x W; ``Wv`` = one complex64 wave
array of a batch, B x M x W x W):

* object: phase and amplitude (2U), their gradients (2U), Adam's two moments
  each (4U); per step the complex transmission, its gradient and the polar
  backward's temporaries (6U); the last good state (2U, 4U while a new copy is
  made) and the optimiser snapshots on the host (state and last good, 8U, 12U
  while one is replaced);
* probe modes: the same counts for (M, W, W) complex;
* a batch: the multislice forward keeps, for the hand-written backward
  (physics/multislice.py), the S incident waves of every slice, the S - 1
  spectra when the propagator is learned (APP), the far field and the S
  object patches (B x W x W); the backward adds the adjoint wave, its
  transform, the propagator accumulator and one temporary (4 Wv); the probe
  shift and the loss add a few (B, W, W) arrays;
* data: eager targets (P x W x W float32 on the device) or, streaming, the
  cached units of two groups of the chunk-aware order, two prepared batches
  and the reader's temporaries; the data already held in memory by the
  caller are reported but not counted as new;
* the runtime: :data:`RUNTIME_BYTES` for torch's kernels and FFT plans paged in
  by the first run of a process (measured).

``APP_EXTENSION_MEMORY_CHECK=0`` skips the free-memory refusal (never the
geometry check). Validated against the measured peak RSS in
benchmarks/bench_memory.py (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from ..physics.optics import electron_wavelength
from .config import Geometry, SolverConfig
from .thickness_companion import factor_for

__all__ = [
    "MemoryEstimate",
    "MemoryPreflightError",
    "ObjectTooLargeError",
    "MAX_OBJECT_PIXELS",
    "available_memory",
    "object_shape",
    "estimate_memory",
    "preflight",
]

#: Largest object side (pixels) accepted.
MAX_OBJECT_PIXELS = 16384
#: Host memory the first run in a process adds beyond its arrays: torch's kernels and
#: FFT plans paged in, the allocator's pools (measured: 150 MB, benchmarks/bench_memory.py).
RUNTIME_BYTES = 150 * 10**6

_GB = 1e9


class MemoryPreflightError(MemoryError):
    """The run would not fit in the free memory; the message gives the estimate and what would fit."""

    def __init__(self, message: str, estimate: MemoryEstimate | None = None):
        super().__init__(message)
        self.estimate = estimate


class ObjectTooLargeError(MemoryPreflightError, ValueError):
    """The object grid is absurdly large (a scan step or a pixel size in the wrong unit)."""


def _fmt(n: float) -> str:
    if n >= 1e12:
        return f"{n / 1e12:.1f} TB"
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    return f"{n / 1e6:.0f} MB"


@dataclass
class MemoryEstimate:
    """Estimated peak memory of a run, in bytes.

    Attributes
    ----------
    host, device
        The new allocations by part (name -> bytes). On a CPU device
        everything is in ``host`` and ``device`` is empty.
    held
        The data already in host memory (the caller's array), not counted as new.
    host_available, device_available
        Free memory when estimated (None: not measured).
    object_shape
        (S, H, W) of the object slices.
    streaming
        Whether the targets are streamed per batch.
    """

    host: dict = field(default_factory=dict)
    device: dict = field(default_factory=dict)
    held: int = 0
    host_available: int | None = None
    device_available: int | None = None
    object_shape: tuple = ()
    streaming: bool = False
    device_name: str = "cpu"

    @property
    def host_bytes(self) -> int:
        """New host memory at the peak."""
        return int(sum(self.host.values()))

    @property
    def device_bytes(self) -> int:
        """New device memory at the peak (0 for a CPU device)."""
        return int(sum(self.device.values()))

    @property
    def peak_host(self) -> int:
        """Host memory of the run at its peak, the held data included (imports excluded)."""
        return self.host_bytes + self.held

    def fits(self) -> bool:
        """Whether the new allocations fit in the free memory (True where it was not measured)."""
        ok = self.host_available is None or self.host_bytes <= self.host_available
        if self.device:
            ok = ok and (self.device_available is None or self.device_bytes <= self.device_available)
        return ok

    def summary(self) -> str:
        """One line per memory, largest parts first."""

        def line(name, parts, total, available):
            top = sorted(parts.items(), key=lambda kv: -kv[1])[:4]
            free = "" if available is None else f" of {_fmt(available)} free"
            return f"{name} {_fmt(total)}{free} (" + ", ".join(f"{k} {_fmt(v)}" for k, v in top) + ")"

        out = "memory estimate: " + line("host", self.host, self.host_bytes, self.host_available)
        if self.held:
            out += f" + data held {_fmt(self.held)}"
        if self.device:
            out += "; " + line(self.device_name, self.device, self.device_bytes, self.device_available)
        return (
            out
            + f"; object {' x '.join(map(str, self.object_shape))} px; "
            + ("data streamed per batch" if self.streaming else "data held on the device")
        )

    def brief(self) -> str:
        """The totals only, in a few words (the command line's default report)."""
        free = "" if self.host_available is None else f" ({_fmt(self.host_available)} free)"
        out = f"host {_fmt(self.host_bytes)}{free}"
        if self.held:
            out += f" + data held {_fmt(self.held)}"
        if self.device:
            free = "" if self.device_available is None else f" ({_fmt(self.device_available)} free)"
            out += f", {self.device_name} {_fmt(self.device_bytes)}{free}"
        return out + (", data streamed per batch" if self.streaming else ", data held on the device")

    @classmethod
    def from_dict(cls, d) -> MemoryEstimate:
        """The estimate back from :meth:`to_dict`'s form (e.g. a result's ``Memory_estimate`` metadata)."""
        d = dict(d)

        def parts(key):
            return {str(k): int(v) for k, v in dict(d.get(key) or {}).items()}

        def maybe(key):
            value = d.get(key)
            return None if value is None or value == "None" else int(value)

        return cls(
            host=parts("host_parts"),
            device=parts("device_parts"),
            held=int(d.get("held_bytes", 0)),
            host_available=maybe("host_available"),
            device_available=maybe("device_available"),
            object_shape=tuple(int(v) for v in d.get("object_shape", ())),
            streaming=bool(d.get("streaming", False)),
            device_name=str(d.get("device", "cpu")),
        )

    def to_dict(self) -> dict:
        """JSON-like form (for metadata)."""
        return {
            "host_bytes": self.host_bytes,
            "device_bytes": self.device_bytes,
            "held_bytes": int(self.held),
            "host_available": self.host_available,
            "device_available": self.device_available,
            "host_parts": {k: int(v) for k, v in self.host.items()},
            "device_parts": {k: int(v) for k, v in self.device.items()},
            "object_shape": list(self.object_shape),
            "streaming": bool(self.streaming),
            "device": self.device_name,
        }


# -- what is free ---------------------------------------------------------------------------


def _host_available() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for row in f:
                if row.startswith("MemAvailable:"):
                    return int(row.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_memory(device) -> int | None:
    """Free memory of a torch device in bytes: host for the CPU, the GPU's for CUDA (None: unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    if device.type == "cpu":
        return _host_available()
    return None


# -- the shapes ---------------------------------------------------------------------------


def object_shape(geometry: Geometry, window: int, num_slices: int) -> tuple[int, int, int]:
    """(S, H, W) of the object slices :func:`.engine.initial_state` makes for this geometry."""
    sampling = 1.0 / (window * geometry.reciprocal_sampling)
    pos_px = np.asarray(geometry.scan_positions, dtype=np.float64) / sampling
    margin = 4
    corners = pos_px - pos_px.min(axis=0) + margin
    height, width = (np.ceil(corners.max(axis=0)).astype(np.int64) + window + margin + 1).tolist()
    return int(num_slices), int(height), int(width)


def estimate_memory(
    num_positions: int,
    pattern_size: int,
    dtype,
    geometry: Geometry,
    config: SolverConfig,
    device="cpu",
    streaming: bool = False,
    in_memory: bool = True,
    world_size: int = 1,
    unit_bytes: int | None = None,
    group_units: int = 1,
) -> MemoryEstimate:
    """The peak memory of a run from the shapes alone (see the module docstring for the terms).

    Parameters
    ----------
    num_positions, pattern_size, dtype
        The data's shape (P, N, N) and storage dtype.
    geometry, config
        The run.
    device
        The torch device.
    streaming
        Targets streamed per batch (else eager on the device).
    in_memory
        The data are already in host memory (counted as held, not new).
    world_size
        Processes sharing the positions (each holds P / world_size).
    unit_bytes, group_units
        Streaming from chunked data: bytes of a read unit and units per group.
    """
    device = torch.device(device)
    n = int(pattern_size)
    w = int(config.padded_size or n)
    s, m, p = int(config.num_slices), int(config.probe_modes), int(num_positions)
    b = min(int(config.batch_size), p)
    itemsize = np.dtype(dtype).itemsize
    shape = object_shape(geometry, w, s)
    u = 4 * shape[0] * shape[1] * shape[2]  # one float32 object array
    wave = 8 * b * m * w * w  # one complex64 batch wave array
    plane = 4 * b * w * w  # one float32 (B, W, W) array
    need_prop = config.learns_geometry
    p_local = math.ceil(p / max(1, world_size))

    dev: dict[str, int] = {}
    host: dict[str, int] = {}
    dev["object (phase, amplitude, gradients, Adam moments)"] = 8 * u
    dev["object step temporaries (transmission and its gradient)"] = 6 * u
    dev["last good state (object copy)"] = 4 * u
    host["optimiser snapshots (state and last good)"] = 12 * u
    probe = 8 * m * w * w
    dev["probe modes (with gradient and moments)"] = 6 * probe
    host["probe snapshots"] = 6 * probe
    kept = s + (s - 1 if need_prop else 0) + 1  # incident waves, spectra, far field
    dev["batch waves kept for the backward"] = kept * wave + s * wave // m
    dev["batch backward and probe-shift temporaries"] = 4 * wave + (wave if need_prop else 0)
    dev["batch loss terms"] = 6 * plane
    factor = factor_for(config, electron_wavelength(geometry.energy), geometry.semiangle)
    if factor > 1:  # the thickness companion: S / k slices, their own probe (its batch waves come after ours)
        dev["thickness companion (object, probe, gradients, moments, last good)"] = (
            12 * u // factor + 6 * probe
        )
        host["thickness companion snapshots"] = 12 * u // factor + 6 * probe
    if config.tilt_map:
        dev["tilt map"] = 4 * 2 * p * 8
    # window row starts; off the CPU the backward also builds a flat patch index (B*W*W int64)
    dev["scan positions and index"] = 8 * p * 4 + 8 * b * w * w

    held = p * n * n * itemsize if in_memory else 0
    position = n * n * itemsize
    if unit_bytes is None:  # a read block: a unit of chunks, or a run of in-memory positions
        unit_bytes = min(p_local * position, max(position, 16 * 2**20))
    block = max(1, unit_bytes // position)  # positions read at once
    # reading a block: the raw copy (twice for lazy data: the reader's result and the copy kept)
    # and three float32 (k, W, W) arrays (cast, padded, shifted)
    reading = unit_bytes * (1 if in_memory else 2) + 3 * 4 * block * w * w
    if streaming:
        cache = (2 * group_units + 1) * unit_bytes if not in_memory else 0
        host["streaming: cached units"] = cache
        # one batch gathered and prepared in the worker while one is in use
        host["streaming: prepared batches and temporaries"] = 2 * b * position + 4 * plane
        host["checking pass (one block)"] = reading
        if device.type != "cpu":
            dev["streaming: batches on the device"] = 3 * plane
    else:
        dev["eager targets (float32 on the device)"] = 4 * p_local * w * w
        host["reading temporaries (one block)"] = reading
    host["runtime (kernels, FFT plans, allocator pools)"] = RUNTIME_BYTES
    if device.type == "cpu":
        host.update(dev)
        dev = {}
    return MemoryEstimate(
        host=host,
        device=dev,
        held=held,
        object_shape=shape,
        streaming=streaming,
        device_name=str(device),
    )


# -- the check ----------------------------------------------------------------------------


def preflight(
    patterns,
    geometry: Geometry,
    config: SolverConfig,
    device="cpu",
    stream: bool | None = None,
    world_size: int = 1,
    host_available: int | None = None,
    device_available: int | None = None,
) -> MemoryEstimate:
    """Estimate a run's peak memory and refuse what cannot run; returns the estimate.

    Parameters
    ----------
    patterns
        A :class:`.data.Patterns` (or any array it reads; nothing is read).
    geometry, config, device
        The run.
    stream
        Force streaming (True) or eager targets (False); None decides as
        :class:`.data.MeasuredData` will.
    world_size
        Processes sharing the positions.
    host_available, device_available
        Free memory to test against (default: measured now).

    Raises
    ------
    ObjectTooLargeError
        The object would be larger than :data:`MAX_OBJECT_PIXELS` on a side.
    MemoryPreflightError
        The estimate exceeds the free memory.
    """
    from .data import UNIT_BYTES, Patterns, decide_streaming, group_size

    if not isinstance(patterns, Patterns):
        patterns = Patterns(patterns, geometry.scan_positions.shape[0])
    device = torch.device(device)
    window = config.padded_size or patterns.n
    shape = object_shape(geometry, window, config.num_slices)
    if max(shape[1:]) > MAX_OBJECT_PIXELS:
        _refuse_geometry(geometry, config, patterns, window, shape)
    if host_available is None:
        host_available = available_memory("cpu")
    if device.type != "cpu" and device_available is None:
        device_available = available_memory(device)
    free = host_available if device.type == "cpu" else device_available
    p_local = math.ceil(patterns.num_positions / max(1, world_size))
    if stream is None:
        stream = decide_streaming(patterns, window, device, p_local, available=free or None)
    if patterns.chunked:
        unit = max(patterns.bytes_per_position, patterns.nbytes // patterns.num_units)
    else:
        unit = min(p_local, max(1, UNIT_BYTES // patterns.bytes_per_position)) * patterns.bytes_per_position

    def estimate(cfg: SolverConfig, streaming: bool, itemsize_dtype=patterns.dtype, ranks=world_size):
        est = estimate_memory(
            patterns.num_positions,
            patterns.n,
            itemsize_dtype,
            geometry,
            cfg,
            device,
            streaming=streaming,
            in_memory=patterns.in_memory,
            world_size=ranks,
            unit_bytes=unit,
            group_units=group_size(patterns, cfg.batch_size) if patterns.chunked else 1,
        )
        est.host_available, est.device_available = host_available, device_available
        return est

    result = estimate(config, stream)
    if result.fits() or os.environ.get("APP_EXTENSION_MEMORY_CHECK", "1") == "0":
        return result
    hints = []
    batch = config.batch_size // 2
    while batch >= 1:
        alt = estimate(config.replace(batch_size=batch), stream)
        if alt.fits():
            hints.append(f"batch_size={batch} ({_need(alt)})")
            break
        batch //= 2
    if not stream:
        alt = estimate(config, True)
        if alt.fits():
            hints.append(f"stream the data instead of holding them on the device (lazy input) ({_need(alt)})")
    if config.probe_modes > 1:
        for modes in range(config.probe_modes - 1, 0, -1):
            alt = estimate(config.replace(probe_modes=modes), stream)
            if alt.fits():
                hints.append(f"probe_modes={modes} ({_need(alt)})")
                break
    if config.padded_size is not None and config.padded_size > patterns.n:
        alt = estimate(config.replace(padded_size=None), stream)
        hints.append(f"no padding, padded_size=None ({_need(alt)})")
    if patterns.dtype.itemsize > 4:
        alt = estimate(config, stream, np.float32)
        hints.append(f"float32 data instead of {patterns.dtype} ({_need(alt)})")
    if not hints:
        hints.append("a machine with more memory: even batch_size=1 does not fit")
    raise MemoryPreflightError(
        f"The run does not fit in memory: {_need(result)}.\n{result.summary()}\n"
        "Changes that would make it fit (each alone): " + "; ".join(hints) + ". "
        "Set APP_EXTENSION_MEMORY_CHECK=0 to run anyway.",
        result,
    )


def _need(est: MemoryEstimate) -> str:
    text = f"needs {_fmt(est.host_bytes)} of host memory"
    if est.host_available is not None:
        text += f" ({_fmt(est.host_available)} free)"
    if est.device:
        text += f" and {_fmt(est.device_bytes)} on {est.device_name}"
        if est.device_available is not None:
            text += f" ({_fmt(est.device_available)} free)"
    return text


def _refuse_geometry(geometry: Geometry, config: SolverConfig, patterns, window: int, shape) -> None:
    sampling = 1.0 / (window * geometry.reciprocal_sampling)
    pos = np.asarray(geometry.scan_positions)
    extent = pos.max(axis=0) - pos.min(axis=0)
    est = estimate_memory(
        patterns.num_positions,
        patterns.n,
        patterns.dtype,
        geometry,
        config,
        "cpu",
        in_memory=patterns.in_memory,
    )
    steps = np.abs(np.diff(pos, axis=0))
    step = float(np.median(steps[steps.max(axis=1) > 0].max(axis=1))) if len(pos) > 1 and steps.any() else 0.0
    raise ObjectTooLargeError(
        f"The object would be {shape[1]} x {shape[2]} pixels per slice (limit {MAX_OBJECT_PIXELS}), "
        f"{_fmt(est.host_bytes)} of memory ({est.summary()}): the scan positions span "
        f"{extent[0]:.4g} x {extent[1]:.4g} Å (scan step about {step:.4g} Å) at {sampling:.4g} Å per pixel. "
        "Check the scan step's unit (1 µm = 10,000 Å; ptychography steps are typically 0.1-2 Å) "
        "and the detector sampling (reciprocal_sampling in 1/Å).",
        est,
    )
