"""Shared pieces of the benchmark workers: dataset, settings, clocks and the result record.

This module is imported by every worker, in both virtual environments
(``/work/venv`` with numpy 1 and ``/work/venv-ptyrad`` with numpy 2), so it uses
only numpy, h5py and the standard library, and never imports app_extension.

Each worker is started by ``run.py`` as its own process, with the thread count
fixed through the environment *before* numpy or torch load, and prints one JSON
record on its last stdout line (see :func:`emit`).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

RESULT_PREFIX = "BENCH_RESULT "
REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "sto_tilt_8_-3.h5"

# Convergence tolerances for the time-to-answer rows.
TILT_TOL_MRAD = 0.5
THICKNESS_TOL = 0.10
# Initial slice thickness: 30 % above the truth, for every code.
DZ_FACTOR = 1.3


@dataclass
class Dataset:
    """The 4D-STEM file as every code needs it."""

    path: str
    intensities: np.ndarray  # (P, N, N) float32, slow axis y first, optic axis at N // 2
    scan_shape: tuple[int, int]
    step_A: float
    energy_eV: float
    semiangle_mrad: float
    defocus_A: float  # -C10, positive = underfocus
    reciprocal_A: float  # 1/Å per detector pixel
    mrad_per_px: float
    tilt_mrad: tuple[float, float]  # truth (theta_x, theta_y)
    thickness_A: float  # truth

    @property
    def positions_A(self) -> np.ndarray:
        """(P, 2) raster positions (y, x) in Å, first position at (0, 0)."""
        iy, ix = np.meshgrid(np.arange(self.scan_shape[0]), np.arange(self.scan_shape[1]), indexing="ij")
        return np.stack([iy.ravel(), ix.ravel()], axis=1).astype(np.float64) * self.step_A


def load_dataset(path: str | os.PathLike = DEFAULT_DATA) -> Dataset:
    """Read one of the reference files in ``shared/data`` (README there)."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"Benchmark data {path} not found; pass --data with the path of sto_tilt_8_-3.h5 "
            "(it lives in ../shared/data next to the repository)."
        )
    with h5py.File(path, "r") as f:
        data = f["data"][()]
        attrs = dict(f.attrs)
    sy, sx, ny, nx = data.shape
    tilt = tuple(float(t) for t in np.ravel(attrs["tilt_mrad"]))
    return Dataset(
        path=str(path),
        intensities=np.ascontiguousarray(data.reshape(sy * sx, ny, nx), dtype=np.float32),
        scan_shape=(sy, sx),
        step_A=float(attrs["scan_step_A"]),
        energy_eV=float(attrs["energy_eV"]),
        semiangle_mrad=float(attrs["semiangle_mrad"]),
        defocus_A=float(attrs["defocus_A"]),
        reciprocal_A=float(attrs["reciprocal_pixel_A-1"]),
        mrad_per_px=float(attrs["reciprocal_pixel_mrad"]),
        tilt_mrad=(tilt[0], tilt[1]),
        thickness_A=float(attrs["thickness_A"]),
    )


def initial_dz(ds: Dataset, slices: int) -> float:
    """Starting slice thickness in Å: the true thickness / S, 30 % high."""
    return DZ_FACTOR * ds.thickness_A / slices


def converged(tilt_xy, thickness_A: float, ds: Dataset) -> bool:
    """Tilt within 0.5 mrad in both components and thickness within 10 %."""
    tx, ty = tilt_xy
    return (
        abs(tx - ds.tilt_mrad[0]) < TILT_TOL_MRAD
        and abs(ty - ds.tilt_mrad[1]) < TILT_TOL_MRAD
        and abs(thickness_A - ds.thickness_A) < THICKNESS_TOL * ds.thickness_A
    )


def set_threads(n: int) -> None:
    """Pin the native thread pools; call before numpy/torch do any work."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(n)
    if "torch" in sys.modules or _has_torch():
        import torch

        torch.set_num_threads(n)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # already set in this process


def _has_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@dataclass
class Record:
    """One worker's result; the JSON that run.py collects."""

    code: str
    kind: str  # "speed", "accuracy" or "floor"
    slices: int
    threads: int
    batch_size: int
    probe_modes: int
    positions: int
    pattern: int
    padded: int
    iterations: int
    iter_seconds: list = field(default_factory=list)
    iter_load: list = field(default_factory=list)  # os.getloadavg() after each iteration
    setup_seconds: float = float("nan")
    peak_rss_mb: float = float("nan")
    peak_gpu_mb: float | None = None
    tilt_history: list = field(default_factory=list)  # (theta_x, theta_y) mrad per iteration
    thickness_history: list = field(default_factory=list)  # total thickness Å per iteration
    converged_iteration: int | None = None
    converged_seconds: float | None = None
    extra: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    started_utc: str = ""
    host: str = ""
    python: str = ""
    load_start: list = field(default_factory=list)
    load_end: list = field(default_factory=list)

    def observe(
        self, tilt_xy, thickness_A: float, iteration: int, elapsed: float, ds: Dataset, extra: int
    ) -> bool:
        """Log one iteration's tilt and thickness; True once ``extra`` iterations past convergence."""
        self.tilt_history.append([float(tilt_xy[0]), float(tilt_xy[1])])
        self.thickness_history.append(float(thickness_A))
        self.iterations = iteration
        if self.converged_iteration is None and converged(tilt_xy, thickness_A, ds):
            self.converged_iteration = iteration
            self.converged_seconds = elapsed
        return self.converged_iteration is not None and iteration >= self.converged_iteration + extra

    def __post_init__(self):
        self.started_utc = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        self.host = platform.node()
        self.python = platform.python_version()
        self.load_start = loadavg()


class IterationClock:
    """Wall-clock time and load average of each iteration, from one tick to the next."""

    def __init__(self, record: Record):
        self.record = record
        self.t_last = time.perf_counter()
        self.t0 = self.t_last

    def restart(self) -> None:
        self.t_last = time.perf_counter()
        self.t0 = self.t_last

    def tick(self) -> float:
        now = time.perf_counter()
        self.record.iter_seconds.append(now - self.t_last)
        self.record.iter_load.append(loadavg())
        self.t_last = now
        return now - self.t0


def emit(record: Record) -> None:
    """Print the record as the last stdout line, where run.py looks for it."""
    record.peak_rss_mb = peak_rss_mb()
    record.load_end = loadavg()
    sys.stdout.flush()
    print(RESULT_PREFIX + json.dumps(asdict(record), default=_jsonable), flush=True)


def _jsonable(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def new_record(code: str, kind: str, args, ds: Dataset, **fields) -> Record:
    """A :class:`Record` with the settings every worker shares filled in from its arguments."""
    n = ds.intensities.shape[-1]
    base = {
        "slices": args.slices,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "probe_modes": args.probe_modes,
        "positions": ds.intensities.shape[0],
        "pattern": n,
        "padded": n,
        "iterations": 0,
    }
    base.update(fields)
    return Record(code=code, kind=kind, **base)


def worker_args(description: str):
    """The command line every worker understands."""
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--slices", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--probe-modes", type=int, default=1)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--accuracy", action="store_true", help="run until the tilt/thickness tolerance is met")
    p.add_argument("--max-iterations", type=int, default=40, help="cap of an --accuracy run")
    p.add_argument("--extra-iterations", type=int, default=2, help="iterations run after convergence")
    return p
