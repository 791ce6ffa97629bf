"""The measured patterns as the solver uses them: checked, scaled, on the model grid.

:class:`MeasuredData` is the only place the optimisation loop reads data from:
``targets(batch)`` gives the values the loss compares with for a batch of scan
positions, in numpy FFT order (DC at pixel [0, 0]) on the model window, and
``mask`` the detector pixels the loss uses (padding and bad pixels excluded).

Where the patterns live
-----------------------
The patterns are left where they are (:class:`Patterns`): a numpy array in its
own dtype (uint16 stays uint16), a numpy memmap, a dask array (e.g. a lazy
HyperSpy signal's ``.data`` over .zspy/.hspy chunks), an h5py or zarr dataset,
or a torch tensor; (P, N, N) or (scan_y, scan_x, N, N). They are read in
*units*: blocks of whole storage chunks (about :data:`UNIT_BYTES` each) for
file-backed and dask data, single positions for in-memory arrays. Nothing ever
makes a float copy of the whole scan on the host.

Two ways to hold the targets (decided by :func:`decide_streaming`):

* **eager** (today's speed): the float32 targets of all positions are built
  once, unit by unit, on the device, and a batch is an index into them. Used
  when that tensor is small beside the free memory of the device
  (:data:`EAGER_FRACTION`), and for lazy or file-backed data only when it is
  also at most :data:`LAZY_EAGER_BYTES` (a lazy input says "do not load me").
* **streaming**: each mini-batch is gathered when it is needed, cast, masked,
  scaled, shifted and square-rooted per batch; the next batch is prepared in a
  background thread while the current one is computed, in pinned host memory
  when the device is a GPU. Units read from a chunked file are cached from the
  first batch that needs them to the last, so each chunk is read once per pass.

The batch order (:meth:`MeasuredData.permutation`) is chunk-aware for chunked
data: the units are shuffled, then the positions within each group of
:func:`group_size` units, so a pass reads every chunk once and only a few are
resident at a time. It depends only on the seed, the iteration, the batch size
and the storage layout (never on free memory or on eager/streaming), so a
resumed run draws the same batches, and every process of a distributed run
draws the same global batches. In-memory data and data in a single group keep
the plain random permutation.

Several processes (``comm``, see :mod:`.distributed`): the units are dealt out
to the ranks (unit ``u`` to rank ``u % world_size``); each rank reads, checks
and holds only its own positions, and :meth:`MeasuredData.local` gives its
share of a global batch. The sums behind the scale and the checks' results are
reduced over the ranks, so every rank scales exactly as one process would.
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from ..physics.optics import fourier_grid
from .config import Geometry, SolverConfig
from .losses import ANSCOMBE_OFFSET

__all__ = [
    "check_intensities",
    "MeasuredData",
    "Patterns",
    "decide_streaming",
    "group_size",
    "EAGER_FRACTION",
    "LAZY_EAGER_BYTES",
    "UNIT_BYTES",
]

#: Eager targets are used when they take at most this fraction of the device's free memory.
EAGER_FRACTION = 0.25
#: ... and, for lazy or file-backed input, at most this many bytes.
LAZY_EAGER_BYTES = 512 * 2**20
#: Target size of a read unit (whole storage chunks are merged up to it).
UNIT_BYTES = 16 * 2**20
#: A group of units for the chunk-aware order holds at least this many batches ...
GROUP_BATCHES = 4
#: ... and at most this many bytes (at least one unit).
GROUP_BYTES = 128 * 2**20

# dtypes torch's kernels take as they are (others travel as float32)
_TORCH_OK = {np.dtype(t) for t in ("uint8", "int8", "int16", "uint16", "int32", "float16", "float32")}


def check_intensities(intensities, num_positions: int | None = None) -> np.ndarray:
    """Check the measured patterns and return them as float32 (P, N, N).

    Accepts (P, N, N) or (scan_y, scan_x, N, N) arrays (numpy, dask, torch).
    This makes a float32 copy of everything; the solver itself checks the
    data unit by unit (:meth:`Patterns.check`) and never does.
    """
    patterns = Patterns(intensities, num_positions)
    patterns.check()
    out = np.empty((patterns.num_positions, patterns.n, patterns.n), dtype=np.float32)
    for rows, block in patterns.blocks(np.arange(patterns.num_positions)):
        out[rows] = block
    return out


# -- the patterns where they are ------------------------------------------------------------


class Patterns:
    """Read-only access to the measured patterns without loading them.

    Parameters
    ----------
    intensities
        (P, N, N) or (scan_y, scan_x, N, N): numpy (memmap too), dask, h5py
        or zarr dataset, torch tensor.
    num_positions
        Expected number of patterns (the scan positions), checked.

    Attributes
    ----------
    num_positions, n, dtype
        Number of patterns, pixels per side, storage dtype.
    in_memory
        True for numpy arrays (not memmaps) and torch tensors.
    chunked
        True when the data are read in units of storage chunks (everything
        that is not in memory).
    unit_of, row_in_unit
        (P,) the read unit of each position and its row in that unit.
    """

    def __init__(self, intensities, num_positions: int | None = None):
        data = intensities
        if isinstance(data, Patterns):
            raise TypeError("already a Patterns object")
        if isinstance(data, torch.Tensor):
            data = data.detach()
            if data.dtype == torch.bfloat16:
                data = data.float()
            data = data.cpu().numpy()
        if not hasattr(data, "shape") or not hasattr(data, "dtype") or not hasattr(data, "__getitem__"):
            data = np.asarray(data)
        shape = tuple(int(s) for s in data.shape)
        if len(shape) not in (3, 4):
            raise ValueError(
                f"Expected 4D-STEM data of shape (scan_y, scan_x, ky, kx) or (positions, ky, kx); "
                f"got an array of {len(shape)} dimension(s) {shape}."
            )
        if shape[-1] != shape[-2]:
            raise ValueError(
                f"Diffraction patterns must be square, got {shape[-2]} x {shape[-1]} pixels; "
                "crop or pad the detector axes first."
            )
        self.dtype = np.dtype(data.dtype)
        if not np.issubdtype(self.dtype, np.number) or np.issubdtype(self.dtype, np.complexfloating):
            raise TypeError(f"Intensities must be real numbers, got dtype {self.dtype}.")
        self.array = data
        self.four_d = len(shape) == 4
        self.grid = shape[:2] if self.four_d else (1, shape[0])
        self.n = shape[-1]
        self.num_positions = self.grid[0] * self.grid[1]
        if num_positions is not None and self.num_positions != num_positions:
            raise ValueError(f"{self.num_positions} patterns but {num_positions} scan positions were given.")
        self.bytes_per_position = self.n * self.n * self.dtype.itemsize
        self.in_memory = isinstance(data, np.ndarray) and not isinstance(data, np.memmap)
        self.lazy = not self.in_memory
        self.chunked = self.lazy
        if self.chunked:
            self.units = _units(self._native_chunks(), self.grid, self.bytes_per_position)
            self.unit_of = np.empty(self.num_positions, dtype=np.int64)
            self.row_in_unit = np.empty(self.num_positions, dtype=np.int64)
            sx = self.grid[1]
            for u, (y0, y1, x0, x1) in enumerate(self.units):
                iy, ix = np.meshgrid(np.arange(y0, y1), np.arange(x0, x1), indexing="ij")
                flat = (iy * sx + ix).ravel()
                self.unit_of[flat] = u
                self.row_in_unit[flat] = np.arange(flat.size)
        else:
            self.units = None
            self.unit_of = np.arange(self.num_positions, dtype=np.int64)
            self.row_in_unit = np.zeros(self.num_positions, dtype=np.int64)

    @property
    def num_units(self) -> int:
        return len(self.units) if self.chunked else self.num_positions

    @property
    def nbytes(self) -> int:
        return self.num_positions * self.bytes_per_position

    def describe(self) -> str:
        kind = type(self.array).__module__.split(".")[0] + "." + type(self.array).__name__
        where = "in memory" if self.in_memory else f"read in {self.num_units} unit(s)"
        return f"{self.num_positions} patterns of {self.n}x{self.n} {self.dtype} ({kind}, {where})"

    def _native_chunks(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Storage chunk sizes along the scan axes (y, x) of the grid."""
        chunks = getattr(self.array, "chunks", None)
        sy, sx = self.grid
        if chunks is not None and len(chunks) == len(self.array.shape):
            if isinstance(chunks[0], tuple):  # dask: explicit sizes
                sizes = [tuple(int(c) for c in ax) for ax in chunks]
            else:  # h5py, zarr: regular
                sizes = [
                    _regular(int(length), int(c)) for length, c in zip(self.array.shape, chunks, strict=True)
                ]
            return (sizes[0], sizes[1]) if self.four_d else ((1,), sizes[0])
        return (1,) * sy, (1,) * sx  # memmap, no chunks: any block reads as cheaply

    def read_unit(self, unit: int) -> np.ndarray:
        """The patterns of one unit, (k, N, N) in the storage dtype."""
        y0, y1, x0, x1 = self.units[unit]
        block = self.array[y0:y1, x0:x1] if self.four_d else self.array[x0:x1]
        if hasattr(block, "compute"):
            block = block.compute(scheduler="synchronous")
        # a copy only where the block is a view (of a memmap, or of a larger buffer)
        owns = isinstance(block, np.ndarray) and block.base is None and not isinstance(block, np.memmap)
        block = np.asarray(block) if owns else np.array(block, copy=True)
        return block.reshape(-1, self.n, self.n)

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """In-memory data: the patterns at ``positions``, (k, N, N), a copy in the storage dtype."""
        if self.four_d:
            iy, ix = np.divmod(positions, self.grid[1])
            return self.array[iy, ix]
        return self.array[positions]

    def blocks(self, positions: np.ndarray):
        """Yield (indices into ``positions``, patterns as float32) in blocks of about a unit.

        Reads each needed unit once (chunked data) or gathers runs of
        positions (in memory); used for the one full pass of the checks and
        of the eager targets.
        """
        positions = np.asarray(positions, dtype=np.int64)
        for index, raw in self.raw_blocks(positions):
            yield index, raw.astype(np.float32, copy=False)

    def raw_blocks(self, positions: np.ndarray):
        """As :meth:`blocks`, in the storage dtype."""
        positions = np.asarray(positions, dtype=np.int64)
        if self.chunked:
            units = self.unit_of[positions]
            for u in np.unique(units):
                index = np.flatnonzero(units == u)
                raw = self.read_unit(int(u))
                yield index, raw[self.row_in_unit[positions[index]]]
        else:
            step = max(1, UNIT_BYTES // self.bytes_per_position)
            for start in range(0, positions.size, step):
                index = np.arange(start, min(start + step, positions.size))
                yield index, self.gather(positions[index])

    def check(
        self, positions: np.ndarray | None = None, mask: np.ndarray | None = None, comm=None, visit=None
    ) -> np.ndarray:
        """Check the patterns block by block; returns their (masked) sums, float64 (k,).

        Refuses NaN or infinite values, negative intensities and all-zero
        data with the same messages as always. With ``comm``, each rank
        checks its own ``positions`` and the verdicts are reduced, so all
        ranks raise (or not) together. ``visit(index, raw)`` is called with
        every block read (the eager targets are built in the same pass).
        """
        positions = np.arange(self.num_positions) if positions is None else np.asarray(positions)
        sums = np.zeros(positions.size, dtype=np.float64)
        n_bad, first_bad, n_neg, minimum = 0, math.inf, 0, math.inf
        floating = np.issubdtype(self.dtype, np.floating)
        signed = not np.issubdtype(self.dtype, np.unsignedinteger)
        flat_mask = None if mask is None else mask.ravel()
        for index, raw in self.raw_blocks(positions):
            flat = raw.reshape(raw.shape[0], -1)
            if floating:
                bad = ~np.isfinite(flat)
                if bad.any():
                    rows = np.flatnonzero(bad.any(axis=1))
                    n_bad += int(bad.sum())
                    first_bad = min(first_bad, int(positions[index[rows[0]]]))
                    continue
            if signed:
                low = flat.min()
                if low < 0:
                    n_neg += int((flat < 0).sum())
                    minimum = min(minimum, float(low))
            used = flat if flat_mask is None else flat[:, flat_mask]
            sums[index] = used.sum(axis=1, dtype=np.float64)
            if visit is not None and not (n_bad or n_neg):
                visit(index, raw)
        total = float(sums.sum())
        if comm is not None:
            n_bad, n_neg, total = comm.sum_numbers([n_bad, n_neg, total])
            first_bad, minimum = comm.min_numbers([first_bad, minimum])
        if n_bad:
            raise ValueError(
                f"The data contain {int(n_bad)} NaN or infinite value(s) "
                f"(first at pattern {int(first_bad)}); replace them, e.g. with 0 or "
                "the mean of their neighbours, before reconstructing."
            )
        if n_neg:
            raise ValueError(
                f"The data contain negative intensities (minimum {minimum:.3g}, "
                f"{int(n_neg)} pixels); subtract the dark reference and clip at zero, "
                "e.g. numpy.clip(data, 0, None)."
            )
        if total <= 0:
            raise ValueError("The data are all zero.")
        return sums


def _regular(length: int, chunk: int) -> tuple[int, ...]:
    chunk = max(1, min(chunk, length))
    return (chunk,) * (length // chunk) + ((length % chunk,) if length % chunk else ())


def _merge(sizes: tuple[int, ...], limit: int) -> list[tuple[int, int]]:
    """Consecutive chunks merged into (start, stop) ranges of at most ``limit`` (at least one chunk)."""
    out, start, width = [], 0, 0
    for size in sizes:
        if width and width + size > limit:
            out.append((start, start + width))
            start, width = start + width, 0
        width += size
    out.append((start, start + width))
    return out


def _units(chunks, grid, bytes_per_position: int) -> list[tuple[int, int, int, int]]:
    """Read units (y0, y1, x0, x1): whole native chunks merged up to :data:`UNIT_BYTES`."""
    ys, xs = chunks
    per_unit = max(1, UNIT_BYTES // bytes_per_position)  # positions per unit
    tallest = max(ys)
    x_ranges = _merge(xs, max(1, per_unit // tallest))
    if len(x_ranges) == 1:  # whole rows fit: stack rows too
        y_ranges = _merge(ys, max(1, per_unit // grid[1]))
    else:
        y_ranges = _merge(ys, 0)  # one native chunk row each
    return [(y0, y1, x0, x1) for y0, y1 in y_ranges for x0, x1 in x_ranges]


def group_size(patterns: Patterns, batch_size: int) -> int:
    """Units per group of the chunk-aware order (see the module docstring)."""
    per_unit = patterns.num_positions / patterns.num_units
    wanted = math.ceil(GROUP_BATCHES * batch_size / per_unit)
    cap = max(1, int(GROUP_BYTES // (per_unit * patterns.bytes_per_position)))
    return max(1, min(wanted, cap))


def decide_streaming(
    patterns: Patterns, window: int, device, positions: int | None = None, available: int | None = None
) -> bool:
    """True when the targets are streamed per batch, False when held eagerly on the device.

    Parameters
    ----------
    patterns
        The data.
    window
        Model window (``padded_size`` or N).
    device
        The torch device.
    positions
        Positions this process holds (default all).
    available
        Free memory of the device in bytes (default: measured, see
        :func:`.memory.available_memory`).
    """
    from .memory import available_memory

    count = patterns.num_positions if positions is None else positions
    eager_bytes = count * window * window * 4
    free = available_memory(device) if available is None else available
    if eager_bytes > EAGER_FRACTION * free:
        return True
    return patterns.lazy and eager_bytes > LAZY_EAGER_BYTES


def _check_mask(mask, n: int) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != (n, n) or mask.dtype != bool:
        raise ValueError(
            f"detector_mask must be a boolean ({n}, {n}) array (True = use the pixel), "
            f"got {mask.dtype} {mask.shape}."
        )
    if not mask.any():
        raise ValueError("detector_mask excludes every pixel.")
    return mask


# -- what the loss compares with ----------------------------------------------------------------


class MeasuredData:
    """Measured patterns on the model grid, plus the precomputed frequency grids.

    Parameters
    ----------
    intensities
        (P, N, N) or (scan_y, scan_x, N, N), optic axis at pixel N // 2; any
        array :class:`Patterns` reads, or a :class:`Patterns`.
    geometry, config
        The scan positions (their number must match) and the options
        (``padded_size``, ``loss``, ``batch_size``).
    device
        Where the targets live.
    detector_mask
        Optional boolean (N, N) array, True for the pixels the loss uses
        (False for hot, dead or otherwise bad pixels).
    stream
        True: stream per batch; False: hold all targets on the device; None:
        :func:`decide_streaming`.
    comm
        A :class:`.distributed.Communicator` when several processes share the
        positions (each holds only its own); None for one process.
    """

    def __init__(
        self,
        intensities,
        geometry: Geometry,
        config: SolverConfig,
        device,
        detector_mask: np.ndarray | None = None,
        stream: bool | None = None,
        comm=None,
    ):
        p_total = geometry.scan_positions.shape[0]
        if isinstance(intensities, Patterns):
            patterns = intensities
            if patterns.num_positions != p_total:
                raise ValueError(
                    f"{patterns.num_positions} patterns but {p_total} scan positions were given."
                )
        else:
            patterns = Patterns(intensities, p_total)
        n = patterns.n
        detector_mask = _check_mask(detector_mask, n)
        window = config.padded_size or n
        if window < n:
            raise ValueError(f"padded_size ({window}) must be >= the pattern size ({n}).")
        self.patterns = patterns
        self.window = window
        self.pattern_size = n
        self.device = torch.device(device)
        self.num_positions = patterns.num_positions
        self.batch_size = config.batch_size
        self.comm = comm
        world = 1 if comm is None else comm.world_size
        rank = 0 if comm is None else comm.rank
        #: the global indices of the positions this process holds (all of them for one process)
        self.positions = np.flatnonzero(patterns.unit_of % world == rank) if world > 1 else np.arange(p_total)
        self._owned = None
        if world > 1:
            owned = torch.zeros(p_total, dtype=torch.bool)
            owned[torch.as_tensor(self.positions)] = True
            self._owned = owned.to(self.device)
        self.streaming = (
            decide_streaming(patterns, window, self.device, self.positions.size)
            if stream is None
            else bool(stream)
        )
        self.loss = config.loss
        self._start = window // 2 - n // 2

        # Patterns are scaled so that their mean pixel value is 1 (the probe's mean
        # intensity per pixel is then 1 too): learning rates do not depend on the
        # detector's units (counts, electrons, normalised). Masked pixels are
        # counted at the mean of the used ones. The sums come from one checking
        # pass over this process's positions (reduced over the processes).
        self._pixel_mask = (
            None if detector_mask is None else torch.as_tensor(detector_mask, dtype=torch.float32)
        )
        self._pixel_mask = None if self._pixel_mask is None else self._pixel_mask.to(self.device)
        # Eager targets are placed (cast, masked, padded, shifted) in the same
        # pass that checks the data and sums them; they are scaled at the end.
        self._row = None  # global index -> row of the eager tensor (several processes)
        self._target = None
        self._loader = None
        visit = None
        if not self.streaming:
            self._target = torch.empty(
                (self.positions.size, window, window), dtype=torch.float32, device=self.device
            )

            def visit(index, raw):
                self._target[torch.as_tensor(index, device=self.device)] = self._placed(
                    self._host_tensor(raw)
                )

        sums = patterns.check(self.positions, detector_mask, comm, visit=visit)
        total = float(sums.sum())
        if comm is not None:
            (total,) = comm.sum_numbers([total])
        used = 1.0 if detector_mask is None else detector_mask.mean()
        self.intensity_scale = float(n * n * used / (total / p_total))
        # The mean pattern sum after scaling: the probe's total intensity. With
        # padding it is still n * n, since the measured pixels hold (nearly) all of it.
        self.mean_intensity = float(n * n)
        # Targets are in numpy FFT order (DC at [0, 0]) on the model grid, so the
        # loop never shifts arrays. Unmeasured (padding) and masked pixels are
        # left out of the loss.
        mask = (
            np.ones((n, n), dtype=np.float32) if detector_mask is None else detector_mask.astype(np.float32)
        )
        full = np.zeros((window, window), dtype=np.float32)
        full[self._start : self._start + n, self._start : self._start + n] = mask
        self.mask = None if full.all() else torch.as_tensor(np.fft.ifftshift(full)).to(self.device)
        # The loss normaliser of the history: the sum of the scaled intensities
        # (amplitude loss, Eq. 1) or the number of positions (Poisson).
        self.norm = (
            float(np.float32(self.intensity_scale)) * total
            if config.loss in ("amplitude", "anscombe")
            else float(p_total)
        )

        if self.streaming:
            self._loader = _Loader(self)
        else:
            self._finish(self._target)
            if comm is not None:
                row = torch.full((self.num_positions,), -1, dtype=torch.int64)
                row[torch.as_tensor(self.positions)] = torch.arange(self.positions.size)
                self._row = row.to(self.device)

    # -- per batch ----------------------------------------------------------------------

    def local(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's share of a global batch (the batch itself for one process)."""
        return batch if self._owned is None else batch[self._owned[batch]]

    def targets(self, batch: torch.Tensor) -> torch.Tensor:
        """What the loss compares with for these scan positions, (B, W, W) on the device.

        ``batch`` holds global position indices this process holds (see
        :meth:`local`).
        """
        if self._target is not None:
            return self._target[batch if self._row is None else self._row[batch]]
        return self._loader.targets(batch)

    def permutation(self, generator: torch.Generator, batch_size: int | None = None) -> torch.Tensor:
        """All positions in this iteration's order (CPU int64), chunk-aware for chunked data."""
        patterns = self.patterns
        batch_size = batch_size or self.batch_size
        if not patterns.chunked:
            return torch.randperm(self.num_positions, generator=generator)
        g = group_size(patterns, batch_size)
        if g >= patterns.num_units:
            return torch.randperm(self.num_positions, generator=generator)
        members = _unit_members(patterns)
        units = torch.randperm(patterns.num_units, generator=generator).numpy()
        parts = []
        for k in range(0, units.size, g):
            group = torch.as_tensor(np.concatenate([members[u] for u in units[k : k + g]]))
            parts.append(group[torch.randperm(group.numel(), generator=generator)])
        return torch.cat(parts)

    def schedule(self, batches: list[torch.Tensor]) -> None:
        """Tell the loader the coming pass's (global) batches, so it reads ahead."""
        if self._loader is not None:
            self._loader.schedule([self.local(b).cpu().numpy() for b in batches])

    def close(self) -> None:
        """Stop the background reader (streaming); the data stay usable (read synchronously)."""
        if self._loader is not None:
            self._loader.close()

    def grids(self, sampling: float):
        """(ky, kx) spatial-frequency grids of the model window, 1/Å."""
        return fourier_grid((self.window, self.window), sampling, device=self.device)

    def describe(self) -> str:
        """One line: the data and how they are held."""
        how = "streamed per batch" if self.streaming else "held on the device"
        share = "" if self.comm is None else f", {self.positions.size} on this rank"
        return f"{self.patterns.describe()}; targets {how}{share}"

    # -- building targets -------------------------------------------------------------------

    def _host_tensor(self, raw: np.ndarray, pin: bool = False) -> torch.Tensor:
        """A block of raw patterns as a CPU tensor torch can cast (pinned for a GPU when ``pin``)."""
        if raw.dtype not in _TORCH_OK or (self.device.type != "cpu" and raw.dtype == np.uint16):
            # float64 etc. travel as float32, uint16 as int32 to a GPU (its kernels lack uint16 arithmetic)
            raw = raw.astype(np.float32 if raw.dtype.itemsize > 2 or raw.dtype.kind == "f" else np.int32)
        t = torch.from_numpy(np.ascontiguousarray(raw))
        return t.pin_memory() if pin and self.device.type == "cuda" else t

    def _placed(self, raw: torch.Tensor) -> torch.Tensor:
        """Cast, mask, pad and shift one block of raw patterns: float32 (B, W, W), unscaled."""
        x = raw.to(device=self.device, non_blocking=raw.is_pinned()).to(torch.float32)
        if self._pixel_mask is not None:
            x = x * self._pixel_mask
        if self.window > self.pattern_size:
            s, n = self._start, self.pattern_size
            padded = torch.zeros(
                (x.shape[0], self.window, self.window), dtype=torch.float32, device=self.device
            )
            padded[:, s : s + n, s : s + n] = x
            x = padded
        return torch.fft.ifftshift(x, dim=(-2, -1))

    @property
    def count_offset(self) -> float:
        """The Anscombe offset (3/8 of a count) in the scaled units of the targets and the model."""
        return ANSCOMBE_OFFSET * float(np.float32(self.intensity_scale))

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        """Scale (and square-root for the amplitude losses, after the count offset for 'anscombe'), in place."""
        x.mul_(np.float32(self.intensity_scale).item())
        if self.loss == "anscombe":
            return x.add_(self.count_offset).sqrt_()
        return x.sqrt_() if self.loss == "amplitude" else x

    def prepare(self, raw: torch.Tensor) -> torch.Tensor:
        """Targets of one batch of raw patterns (the streaming path; equal to the eager values)."""
        return self._finish(self._placed(raw))


def _unit_members(patterns: Patterns) -> list[np.ndarray]:
    """The positions of each unit, in row order."""
    members = getattr(patterns, "_members", None)
    if members is None:
        order = np.argsort(patterns.unit_of, kind="stable")
        bounds = np.searchsorted(patterns.unit_of[order], np.arange(patterns.num_units + 1))
        members = [order[bounds[u] : bounds[u + 1]] for u in range(patterns.num_units)]
        patterns._members = members
    return members


class _Loader:
    """Streaming targets: the next batch is prepared in a background thread.

    The pass's batches are known in advance (:meth:`schedule`), so each unit
    of a chunked file is read when the first batch needs it and dropped after
    the last one; in-memory data are gathered per batch. Only one worker
    thread touches the cache, so no lock is needed.
    """

    def __init__(self, data: MeasuredData):
        self.data = data
        self.patterns = data.patterns
        self.pin = data.device.type == "cuda"
        self._pool: ThreadPoolExecutor | None = None
        self._batches: list[np.ndarray] = []
        self._last_use: dict[int, int] = {}
        self._cache: dict[int, np.ndarray] = {}
        self._pending: dict[int, Future] = {}
        self._next = 0

    def schedule(self, batches: list[np.ndarray]) -> None:
        self._drain()
        self._cache.clear()
        self._batches = batches
        self._next = 0
        self._last_use = {}
        if self.patterns.chunked:
            for i, batch in enumerate(batches):
                for u in np.unique(self.patterns.unit_of[batch]):
                    self._last_use[int(u)] = i
        if batches:
            self._submit(0)

    def _submit(self, i: int) -> None:
        if i < len(self._batches) and i not in self._pending:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="app_extension-prefetch")
            self._pending[i] = self._pool.submit(self._produce, i)

    def _produce(self, i: int):
        """Worker: batch i gathered in its storage dtype (pinned for a GPU).

        The cast, scaling and square root run in the calling thread on the
        device (:meth:`targets`; a few ms per batch on a CPU): the worker's
        allocations stay the size of the raw data, and a GPU gets the
        non-blocking copy of the compact raw block.
        """
        batch = self._batches[i]
        raw = self._gather(batch, cache=True)
        for u in [u for u, last in self._last_use.items() if last == i]:
            self._cache.pop(u, None)
        return self.data._host_tensor(raw, pin=self.pin)

    def _gather(self, batch: np.ndarray, cache: bool) -> np.ndarray:
        patterns = self.patterns
        if not patterns.chunked:
            return patterns.gather(batch)
        out = np.empty((batch.size, patterns.n, patterns.n), dtype=patterns.dtype)
        units = patterns.unit_of[batch]
        for u in np.unique(units):
            u = int(u)
            block = self._cache.get(u) if cache else None
            if block is None:
                block = patterns.read_unit(u)
                if cache:
                    self._cache[u] = block
            sel = np.flatnonzero(units == u)
            out[sel] = block[patterns.row_in_unit[batch[sel]]]
        return out

    def targets(self, batch: torch.Tensor) -> torch.Tensor:
        i = self._next
        wanted = batch.cpu().numpy()
        if i < len(self._batches) and np.array_equal(self._batches[i], wanted):
            future = self._pending.pop(i, None)
            if future is None:
                self._submit(i)
                future = self._pending.pop(i)
            self._next = i + 1
            self._submit(i + 1)  # read ahead while this batch is computed
            return self.data.prepare(future.result())
        # not the scheduled batch: read it now, outside the cache
        self._drain()
        raw = self._gather(wanted, cache=False)
        return self.data.prepare(self.data._host_tensor(raw))

    def _drain(self) -> None:
        for future in self._pending.values():
            future.cancel()
            try:
                future.result()
            except Exception:  # noqa: BLE001, S110 - a cancelled read-ahead's error is of no interest
                pass
        self._pending.clear()

    def close(self) -> None:
        self._drain()
        self._cache.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __del__(self):
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
