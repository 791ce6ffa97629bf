"""Out of core: a 128 x 128 scan of 128^2 uint16 patterns (537 MB) reconstructed lazily from a chunked .zspy.

The shared 32 x 32 scan (sto_tilt_8_-3.h5) is tiled with a period of 30 positions
(3 unit cells: the crystal repeats, so the tiled scan is a consistent measurement)
to 128 x 128 positions, converted to uint16 counts (1e6 electrons per pattern)
and saved as a .zspy with chunks of 16 x 16 positions (8 MB) in /tmp. Then, each
in its own process:

* ``bare``: the resident size of a Python process that imported hyperspy,
  torch and app_extension;
* ``lazy``: ``hs.load(..., lazy=True)``, the solver called on the signal's dask
  array ``.data`` (streamed per batch), 2 iterations;
* ``memory``: the same run with the patterns held in memory (uint16 numpy, eager
  float32 targets).

Checks: peak RSS of ``lazy`` < 537 MB + 300 MB + bare RSS; s/iteration of
``lazy`` within 1.25 x of ``memory``. Settings: 2 slices, batch 128, 1 probe
mode, 1 torch thread (``APP_OOC_BATCH`` changes the batch). Batch 128, not
256: a batch of 256 waves of 128^2 is 33.5 MB per array, above the 32 MB mmap
threshold the solver sets for glibc, so every wave array is a fresh mmap with
page faults (measured on the 32 x 32 file, streamed: 6.5 s/iteration at 256
against 1.6 s at 128), and its ~800 MB of working memory alone would exceed
the 300 MB margin (peak 1168 MB against 862 MB at 128).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_out_of_core.py

Writes benchmarks/results/out_of_core.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = next(
    (p for p in (HERE.parents[1] / "shared", Path("/work/shared")) if (p / "data").is_dir()),
    Path("/work/shared"),
)
SOURCE = SHARED / "data" / "sto_tilt_8_-3.h5"
#: the scan (APP_OOC_SCAN="32,32" for a quick check of the script)
SCAN = tuple(int(v) for v in os.environ.get("APP_OOC_SCAN", "128,128").split(","))
ZSPY = Path(f"/tmp/app_extension_ooc/scan_{SCAN[0]}x{SCAN[1]}_u16.zspy")
PERIOD = 30  # positions: 3 unit cells at a/10 steps
CHUNKS = (16, 16, 128, 128)
BATCH = int(os.environ.get("APP_OOC_BATCH", "128"))
SETTINGS = dict(num_slices=2, slice_thickness=66.0, batch_size=BATCH, probe_modes=1, iterations=2)


def _status(key: str) -> float:
    with open("/proc/self/status") as f:
        for row in f:
            if row.startswith(key + ":"):
                return int(row.split()[1]) * 1024 / 1e6
    raise KeyError(key)


def _attrs() -> dict:
    import h5py

    with h5py.File(SOURCE, "r") as f:
        return {
            k: (v.item() if hasattr(v, "item") and getattr(v, "size", 2) == 1 else v)
            for k, v in f.attrs.items()
        }


def make() -> dict:
    import h5py
    import hyperspy.api as hs
    import numpy as np

    with h5py.File(SOURCE, "r") as f:
        base = f["data"][:PERIOD, :PERIOD]
    iy = np.arange(SCAN[0]) % PERIOD
    ix = np.arange(SCAN[1]) % PERIOD
    counts = np.round(np.clip(base, 0, None) * 1e6).astype(np.uint16)
    tiled = counts[iy[:, None], ix[None, :]]
    s = hs.signals.Signal2D(tiled)
    ZSPY.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    s.save(ZSPY, chunks=CHUNKS, overwrite=True, show_progressbar=False)
    size = sum(p.stat().st_size for p in ZSPY.rglob("*") if p.is_file())
    return {
        "file": str(ZSPY),
        "shape": list(tiled.shape),
        "nbytes_MB": tiled.nbytes / 1e6,
        "on_disk_MB": size / 1e6,
        "max_count": int(tiled.max()),
        "write_s": time.perf_counter() - t0,
    }


def bare() -> dict:
    import hyperspy.api  # noqa: F401
    import torch  # noqa: F401

    import app_extension  # noqa: F401
    import app_extension.solver.engine  # noqa: F401

    return {"rss_MB": _status("VmRSS"), "peak_rss_MB": _status("VmHWM")}


def run(kind: str) -> dict:
    import hyperspy.api as hs
    import numpy as np
    import torch

    from app_extension.solver.config import Geometry, SolverConfig
    from app_extension.solver.engine import reconstruct

    torch.set_num_threads(1)
    a = _attrs()
    geometry = Geometry(
        energy=float(a["energy_eV"]),
        semiangle=float(a["semiangle_mrad"]),
        reciprocal_sampling=float(a["reciprocal_pixel_A-1"]),
        scan_positions=Geometry.raster(SCAN, float(a["scan_step_A"])),
        defocus=float(a["defocus_A"]),
    )
    t0 = time.perf_counter()
    s = hs.load(ZSPY, lazy=True)
    data = s.data  # the dask array over the .zspy chunks
    if kind == "memory":
        data = np.asarray(data.compute())
    load_s = time.perf_counter() - t0
    rss_loaded = _status("VmRSS")
    t0 = time.perf_counter()
    stream = {"1": True, "0": False}.get(os.environ.get("APP_OOC_STREAM", ""))  # default: the solver decides
    state = reconstruct(data, geometry, SolverConfig(**SETTINGS), show_progressbar=False, stream=stream)
    wall = time.perf_counter() - t0
    times = np.diff([0.0, *state.history["time"]])
    return {
        "kind": kind,
        "input": f"{type(data).__module__}.{type(data).__name__} {tuple(data.shape)} {data.dtype}",
        "chunks": str(getattr(data, "chunksize", None)),
        "load_s": load_s,
        "rss_after_load_MB": rss_loaded,
        "s_per_iteration": times.tolist(),
        "mean_s_per_iteration": float(times.mean()),
        "setup_s": wall - float(times.sum()),
        "wall_s": wall,
        "peak_rss_MB": _status("VmHWM"),
        "estimate_host_MB": state.memory_estimate["host_bytes"] / 1e6,
        "estimate_held_MB": state.memory_estimate["held_bytes"] / 1e6,
        "streaming": state.memory_estimate["streaming"],
        "loss": state.history["loss"],
        "load_1min": os.getloadavg()[0],
    }


def _child(step: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--step", step],
        capture_output=True,
        text=True,
        env=os.environ,
        check=False,
    )
    if out.returncode:
        sys.exit(f"step {step} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1].removeprefix("RESULT "))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--step", choices=("make", "bare", "lazy", "memory"), help="run one step in this process")
    p.add_argument("--remake", action="store_true", help="rewrite the .zspy even if it exists")
    args = p.parse_args()
    if args.step:
        result = {"make": make, "bare": bare}.get(args.step, lambda: run(args.step))()
        print("RESULT " + json.dumps(result))
        return
    record = {"settings": SETTINGS, "scan": SCAN, "chunks": CHUNKS, "threads": 1}
    if args.remake or not ZSPY.exists():
        record["make"] = _child("make")
    record["bare"] = _child("bare")
    record["lazy"] = _child("lazy")
    record["memory"] = _child("memory")
    data_mb = SCAN[0] * SCAN[1] * 128 * 128 * 2 / 1e6
    limit = data_mb + 300 + record["bare"]["rss_MB"]
    record["rss_limit_MB"] = limit
    record["rss_ok"] = record["lazy"]["peak_rss_MB"] < limit
    record["time_ratio"] = record["lazy"]["mean_s_per_iteration"] / record["memory"]["mean_s_per_iteration"]
    record["time_ok"] = record["time_ratio"] <= 1.25
    print(json.dumps(record, indent=1))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "out_of_core.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
