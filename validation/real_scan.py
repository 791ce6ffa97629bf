"""Calibration stage on the realistic abTEM scan ``sto_real_H.h5``, scored against its truth.

Reads only the recorded attributes for the run (energy, nominal semi-angle,
scan step, detector pixel, nominal defocus); the ``/truth`` group is read
only to score. Runs :func:`app_extension.measurements.prepare` on the data and
on its transposed twin (``data.swapaxes(2, 3)``), then the APP solver (10
slices, thickness guess truth x 1.3, default options otherwise) on the
prepared data and, as the negative control, on the raw data with the
recorded calibration only. Writes ``validation/results/real_scan.json`` and
``validation/results/real_scan.png``.

    PYTHONPATH=. python validation/real_scan.py --threads 2 --iterations 20 [--data PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import h5py
import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sto_real_H.h5"
OUT = Path(__file__).resolve().parent / "results"


def load(path: Path):
    with h5py.File(path) as f:
        data = f["data"][()]
        a = dict(f.attrs)
        truth = {k: f["truth"].attrs[k] for k in f["truth"].attrs}
        truth["x_A"] = f["truth/x_A"][()]
        truth["y_A"] = f["truth/y_A"][()]
    return data, a, truth


def recorded_calibration(attrs):
    """What the microscope recorded (the file's attributes) as a ``RecordedCalibration``."""
    from app_extension.measurements import RecordedCalibration

    return RecordedCalibration.from_mrad(
        float(attrs["energy_eV"]),
        float(attrs["semiangle_mrad"]),
        float(attrs["scan_step_A"]),
        float(attrs["reciprocal_pixel_mrad"]),
        float(attrs["defocus_A"]),
    )


def score(report, truth, transposed_truth: bool) -> dict:
    """Compare a report with the truth (the truth is in the untransposed detector frame)."""
    axis = np.array(truth["axis_px"], dtype=float)
    if transposed_truth:
        axis = axis[::-1]
    centre = np.array(report.centre_px)
    hot = {tuple(int(v) for v in p) for p in truth["hot"]}
    dead = {tuple(int(v) for v in p) for p in truth["dead"]}
    if transposed_truth:
        hot = {p[::-1] for p in hot}
        dead = {p[::-1] for p in dead}
    found = {(r, c): k for r, c, k in report.bad_pixels}
    # the scan grid's own rotation (with the drift, fast and slow axes differ)
    x, y = truth["x_A"], truth["y_A"]
    fast = np.degrees(np.arctan2(np.diff(y, axis=1).mean(), np.diff(x, axis=1).mean()))
    slow = np.degrees(np.arctan2(-np.diff(x, axis=0).mean(), np.diff(y, axis=0).mean()))
    return {
        "centre_px": centre.tolist(),
        "centre_error_px": float(np.hypot(*(centre - axis))),
        "rotation_deg": report.rotation_deg,
        "rotation_error_deg": float(report.rotation_deg - truth["rotation_deg"]),
        "scan_grid_rotation_fast_slow_deg": [float(fast), float(slow)],
        "transposed": report.transposed,
        "transposed_right": bool(report.transposed == transposed_truth),
        "hot_found": sorted(p for p in hot if found.get(p) == "hot"),
        "dead_found": sorted(p for p in dead if found.get(p) == "dead"),
        "all_bad_found": bool(all(p in found for p in hot | dead)),
        "false_positives": sorted(p for p in found if p not in hot | dead),
        "defocus_A": report.defocus_A,
        "defocus_error_A": float(report.defocus_A - truth["defocus"]),
        "defocus_parallax_A": report.defocus_parallax_A,
        "C12_A": report.C12_A,
        "phi12_detector_rad": report.phi12_detector_rad,
        "semiangle_mrad": report.semiangle_mrad,
        "descan_px_per_A": report.descan_px_per_A,
        "prepare_time_s": float(sum(report.timings_s.values())),
    }


def descan_truth_scan_frame(truth) -> list:
    """The truth's descan (detector-frame probe y, x) expressed per Å of scan-frame (y, x)."""
    from app_extension.measurements.orientation import scan_to_detector

    dc_dx, dr_dy = truth["descan_px_per_A"]  # stored as (x: cols, y: rows)
    return (np.diag([dr_dy, dc_dx]) @ scan_to_detector(float(truth["rotation_deg"]))).tolist()


def run_solver(patterns, geometry, thickness, iterations, threads):
    import torch

    from app_extension.solver.config import SolverConfig
    from app_extension.solver.engine import reconstruct

    torch.set_num_threads(threads)
    config = SolverConfig(num_slices=10, slice_thickness=thickness * 1.3 / 10, iterations=iterations)
    t0 = time.perf_counter()
    state = reconstruct(patterns, geometry, config, show_progressbar=False)
    wall = time.perf_counter() - t0
    return state, wall


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DATA, help="path of sto_real_H.h5 [%(default)s]")
    parser.add_argument("--no-solver", action="store_true", help="only the calibration stage")
    args = parser.parse_args(argv)

    from app_extension.measurements import PrepareOptions, prepare
    from app_extension.measurements.orientation import scan_to_detector
    from app_extension.solver.config import Geometry

    data, attrs, truth = load(args.data)
    recorded = recorded_calibration(attrs)
    thickness_guess = float(truth["thickness_A"]) * 1.3  # what the user gives the solver
    results = {
        "settings": {
            "iterations": args.iterations,
            "threads": args.threads,
            "thickness_guess_A": thickness_guess,
        }
    }

    t0 = time.perf_counter()
    prepared = prepare(data, recorded, thickness=thickness_guess)
    prepare_wall = time.perf_counter() - t0
    print(prepared.report)
    results["H"] = score(prepared.report, truth, False)
    results["H"]["prepare_wall_s"] = prepare_wall
    results["H"]["descan_truth_scan_frame"] = descan_truth_scan_frame(truth)
    results["H"]["report"] = prepared.report.to_dict()

    twin = prepare(np.ascontiguousarray(data.swapaxes(2, 3)), recorded, thickness=thickness_guess)
    print("\nTransposed twin:\n" + str(twin.report))
    results["H_transposed"] = score(twin.report, truth, True)
    results["H_transposed"]["max_pattern_difference"] = float(
        np.abs(twin.patterns - prepared.patterns).max() / prepared.patterns.max()
    )

    off = prepare(data, recorded, PrepareOptions.all_off())
    results["negative_control_passthrough"] = bool(
        np.array_equal(off.patterns, data.reshape(-1, 128, 128).astype(np.float32))
    )

    if not args.no_solver:
        truth_tilt = np.array(truth["tilt_mrad"], dtype=float)  # (x, y), detector frame
        runs = {}
        for name, prep in (("calibrated", prepared), ("negative_control", off)):
            state, wall = run_solver(
                prep.filled_patterns(),
                prep.geometry,
                float(truth["thickness_A"]),
                args.iterations,
                args.threads,
            )
            tilt = state.tilt_mrad.reshape(-1, 2).mean(axis=0)  # (x, y) in the solver's frame
            # to the detector frame with the rotation the stage used: (y, x) vectors, J @ v
            j = scan_to_detector(prep.report.rotation_deg)
            tilt_det = (j @ tilt[::-1])[::-1]  # the transpose, if any, is already undone
            runs[name] = {
                "tilt_solver_frame_mrad": tilt.tolist(),
                "tilt_detector_frame_mrad": tilt_det.tolist(),
                "tilt_error_mrad": float(np.hypot(*(tilt_det - truth_tilt))),
                "thickness_A": float(state.thickness),
                "thickness_error_pct": float(100 * (state.thickness / truth["thickness_A"] - 1)),
                "final_loss": float(state.history["loss"][-1]),
                "wall_s": wall,
                "history": {
                    k: [float(v) for v in state.history[k]] for k in ("tilt_x", "tilt_y", "slice_thickness")
                },
            }
            runs[name]["_phase"] = state.phase.cpu().numpy().sum(axis=0)
            print(
                f"{name}: tilt (detector frame) {tilt_det.round(2)} mrad, thickness {state.thickness:.1f} Å, "
                f"{wall:.0f} s"
            )
        j = scan_to_detector(float(truth["rotation_deg"]))
        results["truth_tilt_scan_frame_mrad"] = (j.T @ truth_tilt[::-1])[::-1].tolist()
        results["prepare_vs_run_pct"] = 100 * prepare_wall / runs["calibrated"]["wall_s"]
        phases = {k: v.pop("_phase") for k, v in runs.items()}
        results["runs"] = runs
        figure(prepared, phases, runs, truth, OUT / "real_scan.png")
    OUT.mkdir(exist_ok=True)
    (OUT / "real_scan.json").write_text(json.dumps(results, indent=1, default=_json))
    print(json.dumps({k: v for k, v in results.items() if k != "H"}, indent=1, default=_json)[:3000])
    _ = Geometry  # imported for readers of this script: prepared.geometry is a Geometry


def _json(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return str(value)


def figure(prepared, phases, runs, truth, path):
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(13, 3.4))
    mean = prepared.patterns.mean(axis=0)
    ax[0].imshow(np.log1p(mean), cmap="gray")
    ax[0].contour(~prepared.mask, levels=[0.5], colors="r", linewidths=0.5)
    ax[0].set_title("prepared mean pattern (log)\nred: masked pixels", fontsize=8)
    for a, name in zip(ax[1:3], ("calibrated", "negative_control"), strict=True):
        p = phases[name]
        h, w = p.shape
        a.imshow(p[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4], cmap="magma")
        r = runs[name]
        t = r["tilt_detector_frame_mrad"]
        a.set_title(
            f"{name}: phase (sum of slices)\ntilt ({t[0]:.2f}, {t[1]:.2f}) mrad, "
            f"t = {r['thickness_A']:.1f} Å",
            fontsize=8,
        )
        a.axis("off")
    for name, style in (("calibrated", "-"), ("negative_control", "--")):
        h = runs[name]["history"]
        ax[3].plot(h["tilt_x"], "C0" + style, label=f"θx solver frame ({name})")
        ax[3].plot(h["tilt_y"], "C1" + style, label=f"θy ({name})")
    ax[3].set_xlabel("iteration")
    ax[3].set_ylabel("mrad")
    ax[3].legend(fontsize=6)
    ax[3].set_title("tilt history; truth (6, 4) det. frame", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=70)


if __name__ == "__main__":
    main()
