"""Cost of the calibration stage and of the scan-position refinement (issue 11: at most +25 %).

On the realistic abTEM scan (``sto_real_H.h5``, 1024 positions, 128² uint16), a 20-iteration APP
run with 10 slices through ``ptycho_app``:

* ``plain``: ``calibrate=False, refine_positions=False`` (the patterns as given);
* ``default``: the defaults (calibration stage on, position offsets learned from iteration 5).

Both runs are timed end to end (loading excluded); the calibration stage is also timed alone.
Writes ``benchmarks/results/calibration_cost.json``.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_calibration.py [--threads 2] [--iterations 20] [--slices 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "sto_real_H.h5"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--data", default=str(DATA if DATA.exists() else Path("/work/shared/data/sto_real_H.h5"))
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--slices", type=int, default=10)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from app_extension.load import load_4dstem
    from app_extension.preparation import prepare_data
    from app_extension.signals.calibration import geometry_from_signal
    from app_extension.solver.config import CalibrationOptions

    def signal():
        s = load_4dstem(args.data)
        s.set_signal_type("ptychography")
        s.set_experimental_parameters(
            beam_energy=300, convergence_angle=22, scan_step="0.3905 Å", detector_sampling="1 mrad"
        )
        return s

    dz = 93.72 * 1.3 / args.slices
    s = signal()
    t0 = time.perf_counter()
    prepare_data(
        s.data,
        geometry_from_signal(s, defocus=200.0),
        (32, 32),
        CalibrationOptions(),
        thickness=dz * args.slices,
    )
    stage = time.perf_counter() - t0
    runs = {}
    for name, options in (("plain", dict(calibrate=False, refine_positions=False)), ("default", {})):
        s = signal()
        t0 = time.perf_counter()
        obj = s.ptycho_app(
            num_slices=args.slices,
            slice_thickness=dz,
            iterations=args.iterations,
            show_progressbar=False,
            **options,
        )
        wall = time.perf_counter() - t0
        p = obj.metadata.Signal.Ptychography
        runs[name] = {
            "wall_s": wall,
            "tilt_mrad_scan_frame": [float(p.tilt_x), float(p.tilt_y)],
            "thickness_A": float(p.thickness),
            "loss": float(p.loss),
        }
        if p.has_item("Calibration.json"):
            c = json.loads(str(p.Calibration.json))
            a = np.deg2rad(float(c["rotation_deg"]))
            tx, ty = runs[name]["tilt_mrad_scan_frame"]
            runs[name]["tilt_mrad_detector_frame"] = [
                tx * np.cos(a) - ty * np.sin(a),
                tx * np.sin(a) + ty * np.cos(a),
            ]
            keys = ("centre_px", "rotation_deg", "transposed", "bad_pixels", "defocus_A")
            runs[name]["calibration"] = {k: c.get(k) for k in keys}
        print(name, json.dumps(runs[name]), flush=True)
    result = {
        "settings": vars(args),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "load": os.getloadavg()},
        "calibration_stage_s": stage,
        "runs": runs,
        "added_fraction": runs["default"]["wall_s"] / runs["plain"]["wall_s"] - 1,
    }
    out = HERE / "results" / "calibration_cost.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
