"""Benchmark worker: PtyRAD 1.0.0 (run by run.py in /work/venv-ptyrad, numpy 2).

The settings are those of ``shared/PEERS.md``'s accuracy run: global tilt from
(0, 0) learned with lr 2e-2, slice thickness 30 % high learned with lr 5e-3,
both from iteration 1, PtyRAD's default 1-slice z-blur, Adam. Scan positions
are not refined (app_extension does not refine them either). Each iteration is
timed around PtyRAD's own ``recon_step`` (the whole pass over the batches,
constraints included), with the load average recorded after it.
"""

from __future__ import annotations

import sys
import tempfile
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


def ptyrad_params(ds, slices: int, batch_size: int, probe_modes: int, niter: int, out_dir: str) -> dict:
    """PtyRAD's parameter tree for the benchmark dataset (conventions checked in PEERS.md)."""
    return {
        "init_params": {
            "probe_illum_type": "electron",
            "probe_kv": ds.energy_eV / 1e3,
            "probe_conv_angle": ds.semiangle_mrad,
            "probe_aberrations": {"C10": -ds.defocus_A},  # abTEM defocus +200 Å = C10 -200 Å
            "meas_Npix": int(ds.intensities.shape[-1]),
            "pos_N_scans": int(ds.intensities.shape[0]),
            "pos_N_scan_slow": int(ds.scan_shape[0]),
            "pos_N_scan_fast": int(ds.scan_shape[1]),
            "pos_scan_step_size": ds.step_A,
            "pos_scan_rand_std": 0.0,
            "meas_calibration": {"mode": "dk", "value": ds.reciprocal_A},
            "probe_pmode_max": probe_modes,
            "obj_Nlayer": slices,
            "obj_slice_thickness": initial_dz(ds, slices),
            "meas_flipT": [0, 0, 0],
            "meas_source": "custom",
            "meas_params": ds.intensities,  # (N, ky, kx), scan y slow, no flip (PEERS.md)
            "tilt_source": "simu",
            "tilt_params": {"tilt_type": "all", "init_tilts": [[0.0, 0.0]]},  # (tilt_y, tilt_x)
        },
        "model_params": {
            "update_params": {
                "obj_tilts": {"start_iter": 1, "lr": 2e-2},
                "slice_thickness": {"start_iter": 1, "lr": 5e-3},
                "probe_pos_shifts": {"start_iter": None, "lr": 0.0},
            },
        },
        "recon_params": {
            "NITER": niter,
            "BATCH_SIZE": {"size": batch_size, "grad_accumulation": 1},
            "GROUP_MODE": "random",
            "SAVE_ITERS": None,
            "output_dir": out_dir,
            "copy_params": False,
            "convergence_monitor": None,
            "selected_figs": [],
        },
    }


def main(argv=None) -> None:
    args = worker_args(__doc__).parse_args(argv)
    set_threads(args.threads)

    import ptyrad_compat

    ptyrad_compat.install()
    import numpy as np
    import ptyrad
    import ptyrad.solver.reconstruction as recon_mod
    import torch
    from ptyrad.params.ptyrad_params import PtyRADParams
    from ptyrad.solver import PtyRADSolver

    ds = load_dataset(args.data)
    n_iter = args.max_iterations if args.accuracy else args.iterations
    rec = new_record(
        "PtyRAD",
        "accuracy" if args.accuracy else "speed",
        args,
        ds,
        versions={"ptyrad": ptyrad.__version__, "torch": torch.__version__, "numpy": np.__version__},
    )
    clock = IterationClock(rec)
    original_step = recon_mod.recon_step

    def timed_step(batches, grad_accumulation, model, *a, **kw):
        out = original_step(batches, grad_accumulation, model, *a, **kw)
        elapsed = clock.tick()
        m = model.module if hasattr(model, "module") else model
        ty, tx = m.opt_obj_tilts.detach().reshape(-1, 2).mean(dim=0).tolist()
        thickness = float(m.opt_slice_thickness.detach()) * args.slices
        done = rec.observe((tx, ty), thickness, rec.iterations + 1, elapsed, ds, args.extra_iterations)
        if args.accuracy and done:
            raise StopIteration
        return out

    recon_mod.recon_step = timed_step
    with tempfile.TemporaryDirectory(prefix="ptyrad_bench_") as out_dir:
        t_setup = time.perf_counter()
        params = ptyrad_params(ds, args.slices, args.batch_size, args.probe_modes, n_iter, out_dir)
        params = PtyRADParams(**params).model_dump()
        solver = PtyRADSolver(params, device="cpu", seed=0)
        rec.setup_seconds = time.perf_counter() - t_setup
        rec.extra["params"] = {k: params[k] for k in ("model_params", "recon_params") if k in params}
        clock.restart()
        try:
            solver.reconstruct()
        except StopIteration:
            rec.extra["status"] = "stopped after convergence"
    if torch.cuda.is_available():
        rec.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20
    emit(rec)


if __name__ == "__main__":
    main()
