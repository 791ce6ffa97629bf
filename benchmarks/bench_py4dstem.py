"""Benchmark worker: py4DSTEM 0.14.18 MultislicePtychography (run by run.py in /work/venv).

py4DSTEM cannot learn tilt or thickness (``shared/PEERS.md``): both are fixed
in ``preprocess``. For the timing it gets the same start as the other codes
(dz 30 % high); the tilt is given as the *truth*, with py4DSTEM's opposite sign
(PEERS.md), i.e. the most favourable case for it; its accuracy row is
therefore "fixed, not learned". It runs its default gradient-descent update
with ``max_batch_size`` = the batch size, one ``reconstruct(num_iter=1)`` call
per timed iteration (continuing, ``reset=False``), on numpy (CPU).
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import IterationClock, emit, initial_dz, load_dataset, new_record, set_threads, worker_args


def main(argv=None) -> None:
    args = worker_args(__doc__).parse_args(argv)
    set_threads(args.threads)
    if args.accuracy:
        raise SystemExit("py4DSTEM learns neither tilt nor thickness: there is no accuracy run (PEERS.md).")
    if args.probe_modes != 1:
        raise SystemExit("This worker runs MultislicePtychography (one probe mode); use --probe-modes 1.")

    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    import py4DSTEM
    from py4DSTEM.process.phase import MultislicePtychography

    warnings.filterwarnings("ignore")
    ds = load_dataset(args.data)
    rec = new_record(
        "py4DSTEM",
        "speed",
        args,
        ds,
        probe_modes=1,
        versions={"py4DSTEM": py4DSTEM.__version__, "numpy": np.__version__},
    )
    t_setup = time.perf_counter()
    n = ds.intensities.shape[-1]
    cube = py4DSTEM.DataCube(data=ds.intensities.reshape(*ds.scan_shape, n, n))
    ptycho = MultislicePtychography(
        datacube=cube,
        energy=ds.energy_eV,
        num_slices=args.slices,
        slice_thicknesses=initial_dz(ds, args.slices),
        semiangle_cutoff=ds.semiangle_mrad,
        polar_parameters={"C10": -ds.defocus_A},
        theta_x=-ds.tilt_mrad[0],  # py4DSTEM's tilt sign is opposite to Eq. 3 (PEERS.md)
        theta_y=-ds.tilt_mrad[1],
        device="cpu",
        verbose=False,
    ).preprocess(
        force_com_rotation=0.0,
        force_com_transpose=False,
        force_scan_sampling=ds.step_A,
        force_angular_sampling=ds.mrad_per_px,
        fit_function="constant",
        plot_center_of_mass=False,
        plot_rotation=False,
        plot_probe_overlaps=False,
    )
    rec.setup_seconds = time.perf_counter() - t_setup
    clock = IterationClock(rec)
    for i in range(args.iterations):
        ptycho.reconstruct(
            num_iter=1,
            max_batch_size=args.batch_size,
            seed_random=0,
            progress_bar=False,
            reset=True if i == 0 else False,
        )
        clock.tick()
        rec.iterations += 1
        rec.tilt_history.append([ds.tilt_mrad[0], ds.tilt_mrad[1]])  # fixed (given)
        rec.thickness_history.append(initial_dz(ds, args.slices) * args.slices)  # fixed
    rec.extra["error"] = [float(e) for e in np.ravel(getattr(ptycho, "error_iterations", []))]
    rec.extra["tilt_note"] = "tilt fixed at the truth (given), thickness fixed at 1.3x truth: not learned"
    emit(rec)


if __name__ == "__main__":
    main()
