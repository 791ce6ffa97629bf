"""Validate the HyperSpy front end on the abTEM reference data (tilted SrTiO3).

Loads ``../shared/data/sto_tilt_8_-3.h5`` (relative to the repository; see its
README) into a calibrated HyperSpy signal, runs ``s.ptycho_app(defocus=200)``
with the default options, and prints the recovered tilt and thickness from
``metadata.Signal.Ptychography`` against the truth stored in the file
((8, -3) mrad, 101.53 Å).

Run from the repository root::

    python validation/hyperspy_shared_data.py            # lazy (dask) input, default
    python validation/hyperspy_shared_data.py --eager    # load the data first
    python validation/hyperspy_shared_data.py --save result.hspy

It takes a few minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import dask.array as da
import h5py
import hyperspy.api as hs
import numpy as np

DEFAULT_FILE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sto_tilt_8_-3.h5"


def load_signal(path: Path, lazy: bool = True):
    """The reference file as a calibrated "ptychography" signal, and the file's attributes.

    Navigation axes (scan x, y) in Å; signal axes (kx, ky) in 1/Å with k = 0
    at the optic-axis pixel 64; beam energy (keV) and convergence angle (mrad)
    in ``metadata.Acquisition_instrument.TEM``. With ``lazy`` the patterns
    stay in the file (dask) until the reconstruction copies them in.
    """
    f = h5py.File(path, "r")
    attrs = dict(f.attrs)
    data = da.from_array(f["data"], chunks=(4, -1, -1, -1)) if lazy else f["data"][()]
    step = float(attrs["scan_step_A"])
    dk = float(attrs["reciprocal_pixel_A-1"])
    centre = np.asarray(attrs["optic_axis_pixel"], dtype=float)  # (ky, kx)
    specs = (  # name, units, scale, offset, navigate; in array order
        ("scan_y", "Å", step, 0.0, True),
        ("scan_x", "Å", step, 0.0, True),
        ("ky", "1 / Å", dk, -centre[0] * dk, False),
        ("kx", "1 / Å", dk, -centre[1] * dk, False),
    )
    axes = [
        {"name": name, "units": units, "scale": scale, "offset": offset, "size": size, "navigate": navigate}
        for (name, units, scale, offset, navigate), size in zip(specs, data.shape, strict=True)
    ]
    metadata = {
        "General": {"title": path.stem},
        "Signal": {"signal_type": "ptychography"},
        "Acquisition_instrument": {
            "TEM": {
                "beam_energy": float(attrs["energy_eV"]) / 1e3,
                "convergence_angle": float(attrs["semiangle_mrad"]),
            }
        },
    }
    s = hs.signals.Signal2D(data, axes=axes, metadata=metadata)
    if lazy:
        s = s.as_lazy()
    s.set_signal_type("ptychography")
    return s, attrs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--eager", action="store_true", help="load the data before reconstructing")
    parser.add_argument("--save", type=Path, default=None, help="save the result (.hspy or .zspy)")
    args = parser.parse_args(argv)
    if not args.file.exists():
        raise SystemExit(f"{args.file} not found; this script needs the shared reference data.")

    s, attrs = load_signal(args.file, lazy=not args.eager)
    print(s)
    print(s.axes_manager)
    t0 = time.perf_counter()
    result = s.ptycho_app(defocus=float(attrs["defocus_A"]))
    elapsed = time.perf_counter() - t0
    p = result.metadata.Signal.Ptychography

    true_tilt = np.asarray(attrs["tilt_mrad"], dtype=float)
    true_thickness = float(attrs["thickness_A"])
    print(result)
    print(
        f"status {p.status}, {p.method}, {p.iterations} iterations, {p.num_slices} slices, "
        f"final loss {p.loss:.4g}, {elapsed:.0f} s"
    )
    print(f"{'':18s}{'recovered':>12s}{'truth':>10s}{'error':>10s}")
    rows = (
        (f"tilt_x ({p.tilt_x_units})", p.tilt_x, true_tilt[0]),
        (f"tilt_y ({p.tilt_y_units})", p.tilt_y, true_tilt[1]),
        (f"thickness ({p.thickness_units})", p.thickness, true_thickness),
    )
    for name, value, truth in rows:
        print(f"{name:18s}{value:12.2f}{truth:10.2f}{value - truth:+10.2f}")
    print(
        f"slice thickness {p.slice_thickness:.2f} {p.slice_thickness_units} "
        f"(depth axis scale {result.axes_manager.navigation_axes[0].scale:.2f} "
        f"{result.axes_manager.navigation_axes[0].units})"
    )
    if args.save is not None:
        result.save(args.save, overwrite=True)
        print(f"saved to {args.save}")


if __name__ == "__main__":
    main()
