"""Independent check of APP and FPP on the abTEM reference data (../shared/data).

The data were simulated by abTEM with the tilt sheared into the atoms, frozen
phonons and a different slicing, so nothing here shares the reconstruction's
model. For 5 and 10 slices, APP starts from tilt (0, 0) and a slice thickness
30 % too large; FPP runs with the propagator fixed at tilt 0 and the true
slice thickness, and is post-aligned. The script reports, per run: the recovered tilt and thickness,
the first iteration from which the tilt stays within 0.5 mrad and the
thickness within 10 % of the truth, the wall time to get there, and the
column-site accuracy and O-column elongation of the slice-averaged phase.

Usage::

    python validation/shared_data.py [--data ../shared/data/sto_tilt_8_-3.h5]
        [--slices 5 10] [--iterations 12] [--threads 2] [--out validation/results]
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

from app_extension.physics.optics import electron_wavelength
from app_extension.solver.config import Geometry, SolverConfig
from app_extension.solver.engine import reconstruct

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "sto_tilt_8_-3.h5"


def recorded_geometry(attrs: dict, scan_shape: tuple[int, int]) -> Geometry:
    """The Geometry a shared file's recorded calibration gives (its attributes; no truth)."""
    energy = float(attrs["energy_eV"])
    if "reciprocal_pixel_A-1" in attrs:
        reciprocal = float(attrs["reciprocal_pixel_A-1"])
    else:
        reciprocal = float(attrs["reciprocal_pixel_mrad"]) * 1e-3 / electron_wavelength(energy)
    return Geometry(
        energy=energy,
        semiangle=float(attrs["semiangle_mrad"]),
        reciprocal_sampling=reciprocal,
        scan_positions=Geometry.raster(tuple(scan_shape), float(attrs["scan_step_A"])),
        defocus=float(attrs["defocus_A"]),
    )


def load(path: Path):
    import h5py

    with h5py.File(path, "r") as f:
        data = f["data"][()]
        attrs = dict(f.attrs)
        columns = f["columns"][()]
    geometry = recorded_geometry(attrs, tuple(int(n) for n in attrs["scan_shape"]))
    truth = {
        "tilt": [float(t) for t in attrs["tilt_mrad"]],
        "thickness": float(attrs["thickness_A"]),
    }
    return data, geometry, truth, columns


def converged_at(history: dict, num_slices: int, truth: dict, tol_tilt=0.5, tol_thick=0.10):
    """First iteration (1-based) from which tilt and thickness stay within tolerance."""
    tx = np.array(history["tilt_x"])
    ty = np.array(history["tilt_y"])
    th = np.array(history["slice_thickness"]) * num_slices
    ok = (
        (np.abs(tx - truth["tilt"][0]) < tol_tilt)
        & (np.abs(ty - truth["tilt"][1]) < tol_tilt)
        & (np.abs(th / truth["thickness"] - 1) < tol_thick)
    )
    for i in range(len(ok)):
        if ok[i:].all():
            return i + 1
    return None


def column_metrics(
    image: np.ndarray, ys: np.ndarray, xs: np.ndarray, columns, kind: bytes, direction, radius=0.6
):
    """Peak position error (pm) and shape of the columns of one kind.

    Each column's centre is the phase-weighted centroid (phase above the local
    minimum) within ``radius`` Å of the true entrance-plane site. ``elongation``
    is the ratio of the major to the minor axis of the phase's second moments;
    ``stretch`` the ratio of its widths along and across ``direction`` (the
    tilt's (y, x) direction), which is where a mistilt smears a column.
    """
    u = np.asarray(direction, dtype=float)
    u = u / np.linalg.norm(u)
    sel = columns[columns["type"] == kind]
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    errors, ratios, stretches = [], [], []
    for c in sel:
        y0, x0 = float(c["y"]), float(c["x"])
        m = (yy - y0) ** 2 + (xx - x0) ** 2 < radius**2
        if m.sum() < 5:
            continue
        w = image[m] - image[m].min()
        if w.sum() <= 0:
            continue
        cy, cx = (w * yy[m]).sum() / w.sum(), (w * xx[m]).sum() / w.sum()
        errors.append(np.hypot(cy - y0, cx - x0))
        dy, dx = yy[m] - cy, xx[m] - cx
        cov = np.array(
            [[(w * dy * dy).sum(), (w * dy * dx).sum()], [(w * dy * dx).sum(), (w * dx * dx).sum()]]
        )
        ev = np.linalg.eigvalsh(cov / w.sum())
        ratios.append(float(np.sqrt(ev[1] / max(ev[0], 1e-12))))
        along = u @ cov @ u
        across = np.array([-u[1], u[0]]) @ cov @ np.array([-u[1], u[0]])
        stretches.append(float(np.sqrt(along / max(across, 1e-12))))
    return {
        "count": len(errors),
        "rms_error_pm": float(np.sqrt(np.mean(np.square(errors))) * 100) if errors else None,
        "elongation": float(np.mean(ratios)) if ratios else None,
        "stretch": float(np.mean(stretches)) if stretches else None,
    }


def run(args) -> dict:
    data, geometry, truth, columns = load(Path(args.data))
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"truth": truth, "threads": args.threads, "runs": []}
    figures = []
    for s in args.slices:
        for mode in ("app", "fpp"):
            # APP starts 30 % off; FPP, which cannot learn it, is given the true slice thickness.
            dz0 = truth["thickness"] / s * (1.3 if mode == "app" else 1.0)
            config = SolverConfig(mode=mode, num_slices=s, slice_thickness=dz0, iterations=args.iterations)
            t0 = time.perf_counter()
            state = reconstruct(data, geometry, config, show_progressbar=False)
            wall = time.perf_counter() - t0
            ys, xs = state.coordinates()
            if mode == "app":
                image = state.phase.numpy().mean(axis=0)
            else:
                image = state.post_alignment["mean_phase"]
            entry = {
                "mode": mode,
                "num_slices": s,
                "initial_slice_thickness": dz0,
                "iterations": args.iterations,
                "wall_s": wall,
                "tilt_mrad": [float(t) for t in state.tilt_mrad],
                "thickness_A": state.thickness,
                "final_loss": state.history["loss"][-1],
                "columns": {
                    k.decode(): column_metrics(image, ys, xs, columns, k, truth["tilt"][::-1])
                    for k in (b"Sr", b"TiO", b"O")
                },
                "history": state.history,
            }
            if mode == "app":
                it = converged_at(state.history, s, truth)
                entry["converged_iteration"] = it
                entry["wall_to_tolerance_s"] = state.history["time"][it - 1] if it else None
            else:
                entry["post_alignment_tilt_mrad"] = [float(t) for t in state.post_alignment["tilt_mrad"]]
            results["runs"].append(entry)
            figures.append((s, mode, image, ys, xs, state.history))
            print(json.dumps({k: v for k, v in entry.items() if k != "history"}), flush=True)
    _plot(figures, truth, out)
    with open(out / "shared_data.json", "w") as f:
        json.dump(results, f, indent=1)
    return results


def _plot(figures, truth, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(figures)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4))
    for ax, (s, mode, image, ys, xs, _) in zip(np.atleast_1d(axes), figures, strict=True):
        ax.imshow(image, extent=(xs[0], xs[-1], ys[-1], ys[0]), cmap="magma")
        ax.set_xlim(0, 12.1)
        ax.set_ylim(12.1, 0)
        ax.set_title(f"{mode.upper()}, {s} slices\nslice-averaged phase")
        ax.set_xlabel("x (Å)")
    fig.tight_layout()
    fig.savefig(out / "phase.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for s, mode, _, _, _, h in figures:
        if mode != "app":
            continue
        it = np.arange(1, len(h["tilt_x"]) + 1)
        axes[0].plot(it, h["tilt_x"], "-o", ms=3, label=f"θx, {s} slices")
        axes[0].plot(it, h["tilt_y"], "-s", ms=3, label=f"θy, {s} slices")
        axes[1].plot(it, np.array(h["slice_thickness"]) * s / 10, "-o", ms=3, label=f"{s} slices")
    for v in truth["tilt"]:
        axes[0].axhline(v, color="k", lw=0.8, ls="--")
    axes[1].axhline(truth["thickness"] / 10, color="k", lw=0.8, ls="--", label="truth")
    axes[0].set(xlabel="iteration", ylabel="tilt (mrad)", title="APP tilt from (0, 0)")
    axes[1].set(xlabel="iteration", ylabel="thickness (nm)", title="APP thickness from +30 %")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "tilt_thickness.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.fspath(DEFAULT_DATA))
    p.add_argument("--slices", type=int, nargs="+", default=[5, 10])
    p.add_argument("--iterations", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=os.fspath(HERE / "results"))
    args = p.parse_args(argv)
    if not Path(args.data).exists():
        print(f"Reference data not found at {args.data}; nothing to validate.", file=sys.stderr)
        return 2
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
