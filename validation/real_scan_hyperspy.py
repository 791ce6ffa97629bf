"""Issue 11's test on the realistic scan, through the HyperSpy front end, as a user would run it.

``s = load_4dstem(sto_real_H.h5)``, the nominal calibration the microscope recorded, then
``s.ptycho_app(num_slices=10, slice_thickness=<truth x 1.3 / 10>)`` with default options
(the calibration stage on), and the negative control with ``calibrate=False``. The truth
(``/truth`` in the file) is read only to score. Writes results/real_scan_hyperspy.json.

Usage::

    python validation/real_scan_hyperspy.py [--data ../shared/data/sto_real_H.h5] [--iterations 20]
        [--threads 2] [--transposed]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from app_extension.load import load_4dstem

HERE = Path(__file__).resolve().parent
DEFAULT = HERE.parent.parent / "shared" / "data" / "sto_real_H.h5"


def truth(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        t = f["truth"]
        out = {k: t.attrs[k].tolist() if hasattr(t.attrs[k], "tolist") else t.attrs[k] for k in t.attrs}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(DEFAULT))
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--transposed", action="store_true", help="also run the transposed twin")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = Path(args.data)
    true = truth(path)
    print("truth attributes:", sorted(true))
    thickness = 93.72
    results = {"settings": vars(args), "runs": []}
    variants = [("calibrated", {}), ("calibration off", {"calibrate": False})]
    for name, options in variants + (
        [("transposed, calibrated", {"transposed": True})] if args.transposed else []
    ):
        s = load_4dstem(path)
        if options.pop("transposed", False):
            s.data = np.ascontiguousarray(np.swapaxes(s.data, 2, 3))
        s.set_signal_type("ptychography")
        # what the microscope recorded: 300 kV, nominal 22 mrad, nominal 0.3905 Å step, 1 mrad pixels
        s.set_experimental_parameters(
            beam_energy=300, convergence_angle=22, scan_step="0.3905 Å", detector_sampling="1 mrad"
        )
        t0 = time.perf_counter()
        obj = s.ptycho_app(
            num_slices=10,
            slice_thickness=thickness * 1.3 / 10,
            iterations=args.iterations,
            show_progressbar=False,
            **options,
        )
        wall = time.perf_counter() - t0
        p = obj.metadata.Signal.Ptychography
        entry = {
            "run": name,
            "wall_s": wall,
            "tilt_mrad_scan_frame": [float(p.tilt_x), float(p.tilt_y)],
            "thickness_A": float(p.thickness),
            "thickness_error": float(p.thickness) / thickness - 1,
            "final_loss": float(p.loss),
        }
        if p.has_item("Calibration"):
            c = p.Calibration.as_dictionary()
            entry["calibration"] = {
                k: (v.tolist() if hasattr(v, "tolist") else v)
                for k, v in c.items()
                if k
                in (
                    "centre_px",
                    "rotation_deg",
                    "transposed",
                    "bad_pixels",
                    "defocus_A",
                    "C12_A",
                    "phi12_rad",
                    "semiangle_mrad",
                    "descan_px_per_A",
                )
            }
            # the tilt in the detector frame: rotate the scan-frame tilt by the measured scan rotation
            a = np.deg2rad(float(c["rotation_deg"]))
            tx, ty = entry["tilt_mrad_scan_frame"]
            entry["tilt_mrad_detector_frame"] = [
                tx * np.cos(a) - ty * np.sin(a),
                tx * np.sin(a) + ty * np.cos(a),
            ]
        print(json.dumps(entry), flush=True)
        results["runs"].append(entry)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "real_scan_hyperspy.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
