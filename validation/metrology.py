"""Column metrology of APP and FPP on the abTEM data sto_tilt_8_-3.h5 (issue 13).

APP runs with default options from tilt (0, 0) and a slice thickness 30 % too
large; FPP with the propagator fixed at tilt 0 and the true slice thickness,
post-aligned (the standard misorientation fix). Both 20 iterations. On the
slice-averaged phase (APP) or the post-aligned mean phase (FPP; also its slice
mean as reconstructed, without the post-alignment), cropped to the
scanned field plus ``--margin`` Å, the tools of :mod:`app_extension.analysis`
find the lattice from the FFT (origin at a Sr column), fit every column and
report |d_Sr-TiO| and |d_O-TiO| (mean and standard deviation over the cells, pm),
the RMS distance of the fitted columns from the true entrance-plane sites
(after removing the mean offset, a free translation in ptychography), and the
information limit from the diffractogram.

Reconstructions are cached as checkpoints in ``--runs`` (shared with
``validation/depth_prior.py``: the APP runs are its ``tilt_<S>_plain_20``).

Usage::

    python validation/metrology.py [--slices 5 10] [--iterations 20] [--threads 1]
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

from depth_prior import DATA, RUNS, THICKNESS  # noqa: E402
from shared_data import load  # noqa: E402

from app_extension.analysis import information_limit, perovskite_metrology  # noqa: E402
from app_extension.analysis._signals import image_from_signal  # noqa: E402
from app_extension.results import state_to_signal  # noqa: E402
from app_extension.solver.config import SolverConfig  # noqa: E402
from app_extension.solver.engine import reconstruct  # noqa: E402
from app_extension.solver.state import ReconstructionState  # noqa: E402

FIELD = 31 * 0.3905  # scanned field, Å


def reconstruction(mode: str, s: int, iterations: int, runs: Path, data, geometry):
    name = "plain" if mode == "app" else "fpp"
    path = runs / f"tilt_{s}_{name}_{iterations}.ckpt"
    dz = THICKNESS / s * (1.3 if mode == "app" else 1.0)
    config = SolverConfig(mode=mode, num_slices=s, slice_thickness=dz, iterations=iterations)
    if path.exists():
        return ReconstructionState.load(path), config
    t0 = time.perf_counter()
    state = reconstruct(data, geometry, config, show_progressbar=False)
    state.save(path, extra={"wall_s": time.perf_counter() - t0, "dataset": "tilt", "candidate": name})
    return state, config


def site_errors(columns, truth) -> dict:
    """RMS distance (pm) of fitted columns from the true entrance-plane sites, per kind, mean offset removed."""
    kinds = {"A": b"Sr", "B": b"TiO", "O1": b"O", "O2": b"O"}
    pairs = []
    for row in columns[columns["success"]]:
        sel = truth[truth["type"] == kinds[str(row["site"])]]
        d = np.hypot(sel["x"] - row["x"], sel["y"] - row["y"])
        k = int(np.argmin(d))
        if d[k] < 0.5:
            pairs.append((str(row["site"]), row["x"] - sel["x"][k], row["y"] - sel["y"][k]))
    if not pairs:
        return {}
    offset = np.mean([[p[1], p[2]] for p in pairs], axis=0)
    out = {"offset_pm": (offset * 100).round(2).tolist(), "n": len(pairs)}
    for kind in ("A", "B", "O"):
        e = [np.hypot(p[1] - offset[0], p[2] - offset[1]) for p in pairs if p[0].startswith(kind)]
        out[f"rms_{kind}_pm"] = round(float(np.sqrt(np.mean(np.square(e))) * 100), 2) if e else None
    return out


def analyse(signal, truth, margin: float, post_aligned: bool = True) -> dict:
    img, x, y = image_from_signal(signal, use_post_alignment=post_aligned)
    keep_x = (x >= -margin) & (x <= FIELD + margin)
    keep_y = (y >= -margin) & (y <= FIELD + margin)
    img = img[np.ix_(keep_y, keep_x)]
    x, y = x[keep_x], y[keep_y]
    step = float(x[1] - x[0])
    sr = truth[truth["type"] == b"Sr"]
    centre = np.argmin(np.hypot(sr["x"] - FIELD / 2, sr["y"] - FIELD / 2))
    a_site = (float(sr["x"][centre]), float(sr["y"][centre]))
    result = perovskite_metrology(img, sampling=step, origin=(y[0], x[0]), a_site=a_site)
    limit = information_limit(img, step, lattice=result["lattice"])
    summary = result["summary"]
    return {
        "margin_A": margin,
        "n_cells": summary["n_cells"],
        "d_Sr_TiO_pm": {
            k: round(v, 2) if np.isscalar(v) else np.round(v, 2).tolist() for k, v in summary["dA"].items()
        },
        "d_O_TiO_pm": {
            k: round(v, 2) if np.isscalar(v) else np.round(v, 2).tolist() for k, v in summary["dO"].items()
        },
        "cells": [{n: round(float(c[n]), 2) for n in c.dtype.names} for c in result["cells"]],
        "lattice_A": {
            "a1": np.round(result["lattice"].a1, 4).tolist(),
            "a2": np.round(result["lattice"].a2, 4).tolist(),
        },
        "site_errors": site_errors(result["columns"], truth),
        "information_limit_A": round(limit["limit"], 3),
        "information_limit_spot": list(limit["spot"]),
        "information_limit_snr": round(limit["snr"], 1),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slices", type=int, nargs="+", default=[5, 10])
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--margins", type=float, nargs="+", default=[0.5, 3.0])
    p.add_argument("--runs", default=os.fspath(RUNS))
    p.add_argument("--out", default=os.fspath(HERE / "results" / "metrology.json"))
    args = p.parse_args(argv)
    path = DATA / "sto_tilt_8_-3.h5"
    if not path.exists():
        print(f"Reference data not found at {path}; nothing to validate.", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    data, geometry, truth, columns = load(path)
    rows = []
    for s in args.slices:
        for mode in ("app", "fpp"):
            state, config = reconstruction(mode, s, args.iterations, runs, data, geometry)
            signal = state_to_signal(state, config, geometry)
            images = (True, False) if mode == "fpp" else (True,)  # FPP also as reconstructed
            for margin, post_aligned in ((m, a) for m in args.margins for a in images):
                row = {
                    "mode": mode,
                    "image": "slice mean"
                    if mode == "app"
                    else ("post-aligned" if post_aligned else "slice mean"),
                    "num_slices": s,
                    "iterations": args.iterations,
                    "tilt_mrad": np.round(state.tilt_mrad, 3).tolist(),
                    "thickness_A": round(state.thickness, 2),
                }
                if state.post_alignment is not None:
                    row["post_alignment_tilt_mrad"] = np.round(state.post_alignment["tilt_mrad"], 3).tolist()
                row.update(analyse(signal, columns, margin, post_aligned))
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "cells"}), flush=True)
    with open(args.out, "w") as f:
        json.dump({"truth": truth, "runs": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
