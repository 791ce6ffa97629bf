"""Benchmark worker: app_extension's default APP reconstruction (run by run.py in /work/venv).

Speed mode runs ``--iterations`` iterations and records the wall-clock time of
each (from one iteration's end to the next, what a user waits). Accuracy mode
(``--accuracy``) starts from tilt (0, 0) and dz 30 % high and stops
``--extra-iterations`` after the tilt is within 0.5 mrad in both components and
the thickness within 10 % (or at ``--max-iterations``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    IterationClock,
    emit,
    initial_dz,
    load_dataset,
    new_record,
    set_threads,
    worker_args,
)


def app_inputs(ds, args, iterations: int):
    """Geometry and the default APP SolverConfig for the benchmark: tilt (0, 0), dz 30 % high."""
    from app_extension.solver.config import Geometry, SolverConfig

    geom = Geometry(
        energy=ds.energy_eV,
        semiangle=ds.semiangle_mrad,
        reciprocal_sampling=ds.reciprocal_A,
        scan_positions=ds.positions_A,
        defocus=ds.defocus_A,
    )
    cfg = SolverConfig(
        mode="app",
        num_slices=args.slices,
        slice_thickness=initial_dz(ds, args.slices),
        tilt=(0.0, 0.0),
        iterations=iterations,
        batch_size=args.batch_size,
        probe_modes=args.probe_modes,
        seed=0,
    )
    return geom, cfg


def main(argv=None) -> None:
    args = worker_args(__doc__).parse_args(argv)
    set_threads(args.threads)

    import torch

    import app_extension
    from app_extension.solver.engine import reconstruct

    ds = load_dataset(args.data)
    n_iter = args.max_iterations if args.accuracy else args.iterations
    rec = new_record(
        "app_extension",
        "accuracy" if args.accuracy else "speed",
        args,
        ds,
        versions={"app_extension": getattr(app_extension, "__version__", "?"), "torch": torch.__version__},
    )
    t_setup = time.perf_counter()
    geom, cfg = app_inputs(ds, args, n_iter)
    rec.extra["config"] = cfg.to_dict()
    clock = IterationClock(rec)

    def on_iteration(state) -> None:
        elapsed = clock.tick()
        tilt = state.tilt_mrad.reshape(-1, 2).mean(axis=0)
        done = rec.observe(tilt, state.thickness, state.iteration, elapsed, ds, args.extra_iterations)
        if args.accuracy and done:
            raise KeyboardInterrupt  # reconstruct() returns the state reached so far

    rec.setup_seconds = time.perf_counter() - t_setup
    clock.restart()
    state = reconstruct(ds.intensities, geom, cfg, show_progressbar=False, callback=on_iteration)
    rec.extra["status"] = state.status
    rec.extra["solver_iteration_seconds"] = list(state.history.get("time", []))
    rec.extra["final_loss"] = float(state.history["loss"][-1]) if state.history.get("loss") else None
    if torch.cuda.is_available():
        rec.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20
    emit(rec)


if __name__ == "__main__":
    main()
