"""Bi depths in ``sto_dopants_K.h5`` with the package's depth tool alone (issue 13).

Default APP (``SolverConfig()``, 20 iterations) from tilt (0, 0) and a total
thickness 30 % too large, with 5 and with 10 slices. Then, with nothing but
:mod:`app_extension.analysis` and the scan geometry (no truth):

* the lattice is found from the mean phase (``perovskite_metrology``: FFT,
  then the perovskite cell, origin on the A column nearest the field centre);
* at each Bi site (given, as a user would click it) ``depth_profile`` returns
  the depth of the strongest excess, once over the column's own mean
  (``reference=None``) and once over the median of its lattice-equivalent
  columns inside the scanned field (``reference="lattice"``).

Truth (../shared/data/README.md): 15.62, 50.77, 82.01, 35.15 Å; target: each
within 20 Å and in the right order. Writes ``results/dopant_depths.json``.

Usage::

    python validation/dopant_depths.py [--slices 5 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, os.fspath(HERE))

from depth_prior import BI_DEPTHS, BI_SITES, DATA, THICKNESS, TRUTH, load  # noqa: E402

from app_extension.analysis import depth_profile, perovskite_metrology  # noqa: E402
from app_extension.results import state_to_signal  # noqa: E402
from app_extension.solver.config import SolverConfig  # noqa: E402
from app_extension.solver.engine import reconstruct  # noqa: E402

SCAN = 31 * 0.3905  # the scanned field, Å (32 x 32 positions at 0.3905 Å)


def depths(signal) -> dict:
    field = ((0.0, SCAN), (0.0, SCAN))
    metrology = perovskite_metrology(signal, roi=((-0.5, SCAN + 0.5), (-0.5, SCAN + 0.5)))
    lattice = metrology["lattice"]
    out = {"lattice_A": {"a1": np.round(lattice.a1, 4).tolist(), "a2": np.round(lattice.a2, 4).tolist()}}
    for name, kwargs in (
        ("own mean", {}),
        ("lattice reference", {"reference": "lattice", "lattice": lattice, "reference_roi": field}),
    ):
        profile, found = depth_profile(signal, BI_SITES, refine=0.4, **kwargs)
        found = np.asarray(found, dtype=float)
        errors = np.abs(found - BI_DEPTHS)
        out[name] = {
            "found_A": found.round(2).tolist(),
            "errors_A": errors.round(2).tolist(),
            "max_error_A": round(float(errors.max()), 2),
            "order_right": bool(np.all(np.argsort(found) == np.argsort(BI_DEPTHS))),
            "within_20_A": bool(errors.max() <= 20.0),
        }
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slices", type=int, nargs="+", default=[5, 10])
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=os.fspath(HERE / "results" / "dopant_depths.json"))
    args = p.parse_args(argv)
    if not (DATA / "sto_dopants_K.h5").exists():
        print(f"Reference data not found in {DATA}; nothing to validate.", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    data, geometry = load("dopants")
    rows = []
    for s in args.slices:
        config = SolverConfig(num_slices=s, slice_thickness=1.3 * THICKNESS / s, iterations=args.iterations)
        t0 = time.perf_counter()
        state = reconstruct(data, geometry, config, show_progressbar=False)
        row = {
            "num_slices": s,
            "iterations": args.iterations,
            "wall_s": round(time.perf_counter() - t0, 1),
            "tilt_mrad": np.round(state.tilt_mrad, 3).tolist(),
            "tilt_error_mrad": round(float(np.abs(np.asarray(state.tilt_mrad) - TRUTH["dopants"]).max()), 3),
            "thickness_A": round(state.thickness, 2),
            "thickness_error": round(state.thickness / THICKNESS - 1, 4),
            **depths(state_to_signal(state, config, geometry)),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps({"truth_A": BI_DEPTHS, "sites": BI_SITES, "runs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
