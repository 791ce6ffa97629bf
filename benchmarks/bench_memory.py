"""Validate the memory preflight's estimate against the measured peak RSS.

Each case runs in its own process: the data are made or loaded first, the peak
RSS counter is reset (``/proc/self/clear_refs`` 5) at the current RSS, then
:func:`app_extension.solver.engine.reconstruct` runs; the estimate is the
preflight's new host memory (``state.memory_estimate["host_bytes"]``), the
measure the rise of the peak RSS (VmHWM) above the RSS before the call.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_memory.py            # all cases
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_memory.py --case small

Writes benchmarks/results/memory.json.
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
#: the shared reference scan (beside the repository, or in /work/shared)
DATA = (
    next(
        (p for p in (HERE.parents[1] / "shared", Path("/work/shared")) if (p / "data").is_dir()),
        Path("/work/shared"),
    )
    / "data"
    / "sto_tilt_8_-3.h5"
)

#: name -> settings; the shared 32 x 32 scan of 128 x 128 patterns
CASES = {
    "small": dict(num_slices=5, batch_size=64, probe_modes=1, iterations=2),
    "large": dict(num_slices=5, batch_size=256, probe_modes=4, iterations=2),
}


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for row in f:
            if row.startswith(key + ":"):
                return int(row.split()[1]) * 1024
    raise KeyError(key)


def run_case(name: str) -> dict:
    import h5py
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from app_extension.solver.config import Geometry, SolverConfig
    from app_extension.solver.engine import reconstruct

    with h5py.File(DATA, "r") as f:
        data = np.ascontiguousarray(f["data"][()])
        attrs = dict(f.attrs)
    scan = data.shape[:2]
    geometry = Geometry(
        energy=float(attrs["energy_eV"]),
        semiangle=float(attrs["semiangle_mrad"]),
        reciprocal_sampling=float(attrs["reciprocal_pixel_A-1"]),
        scan_positions=Geometry.raster(scan, float(attrs["scan_step_A"])),
        defocus=float(attrs["defocus_A"]),
    )
    config = SolverConfig(slice_thickness=13.2 * 10 / CASES[name]["num_slices"], **CASES[name])
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS to the current RSS
    before = _status("VmRSS")
    t0 = time.perf_counter()
    state = reconstruct(data, geometry, config, show_progressbar=False)
    wall = time.perf_counter() - t0
    peak = _status("VmHWM")
    est = state.memory_estimate
    measured = peak - before
    return {
        "case": name,
        "settings": CASES[name],
        "data": f"{DATA.name} {tuple(data.shape)} {data.dtype}",
        "rss_before_MB": before / 1e6,
        "peak_rss_MB": peak / 1e6,
        "measured_rise_MB": measured / 1e6,
        "estimated_MB": est["host_bytes"] / 1e6,
        "estimate_over_measured": est["host_bytes"] / measured,
        "parts_MB": {k: round(v / 1e6, 1) for k, v in est["host_parts"].items()},
        "wall_s": wall,
        "streaming": est["streaming"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=sorted(CASES), help="run one case in this process")
    args = p.parse_args()
    if args.case:
        print("RESULT " + json.dumps(run_case(args.case)))
        return
    results = []
    for name in CASES:
        out = subprocess.run(
            [sys.executable, __file__, "--case", name],
            capture_output=True,
            text=True,
            check=True,
            env=os.environ,
        ).stdout
        record = json.loads(out.strip().splitlines()[-1].removeprefix("RESULT "))
        print(json.dumps(record, indent=1))
        results.append(record)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "memory.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
