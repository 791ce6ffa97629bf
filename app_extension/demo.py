"""The built-in demonstration: a simulated tilted crystal, reconstructed with APP and FPP.

:func:`run_demo` is what ``app-ptycho demo`` runs, and what the notebooks and
tests reuse. It simulates SrTiO3 [001], 20 unit cells (78.1 Å) thick and tilted
by (8, -3) mrad (:func:`app_extension.simulate.simulate_tilted_crystal`), then
reconstructs it twice from the same poor start (no tilt, 28 % too thick):

* APP learns tilt and slice thickness;
* FPP keeps the start's tilt (0) and thickness and estimates the tilt
  afterwards from the lateral drift of its slices (post-alignment).

:func:`tilt_versus_slices` repeats both for several slice counts at the true
thickness: the paper's Fig. 5B (FPP's post-alignment tilt depends on the slice
count, APP's does not).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .simulate import SimulatedDataset, simulate_tilted_crystal
from .solver.config import SolverConfig
from .solver.engine import reconstruct
from .solver.state import ReconstructionState

__all__ = [
    "DEMO_ITERATIONS",
    "QUICK_ITERATIONS",
    "DEMO_NUM_SLICES",
    "DEMO_START_THICKNESS",
    "demo_dataset",
    "demo_config",
    "run_demo",
    "format_demo",
    "tilt_versus_slices",
]

#: Iterations of each reconstruction in ``app-ptycho demo``.
DEMO_ITERATIONS = 30
#: Iterations with ``--quick`` (a smoke test; not converged).
QUICK_ITERATIONS = 3
#: Object slices in the demo.
DEMO_NUM_SLICES = 5
#: The demo's initial total thickness in Å (the truth is 78.1 Å).
DEMO_START_THICKNESS = 100.0


def demo_dataset(**overrides) -> SimulatedDataset:
    """The demo's simulated data: :func:`simulate_tilted_crystal` with its defaults.

    16 x 16 scan at a/8 = 0.49 Å, 64 x 64 patterns of 0.05 1/Å, 300 kV,
    22 mrad, 10 nm defocus, tilt (8, -3) mrad, 78.1 Å thick, noiseless.
    Keyword arguments override any of these.
    """
    return simulate_tilted_crystal(**overrides)


def demo_config(
    mode: str,
    num_slices: int = DEMO_NUM_SLICES,
    thickness: float = DEMO_START_THICKNESS,
    iterations: int = DEMO_ITERATIONS,
    device: str = "cpu",
    seed: int = 0,
    **options,
) -> SolverConfig:
    """The solver options of the demo: start at zero tilt with ``thickness`` (Å) split into slices."""
    defaults = {"batch_size": 32}
    defaults.update(options)
    return SolverConfig(
        mode=mode,
        num_slices=num_slices,
        slice_thickness=thickness / num_slices,
        tilt=(0.0, 0.0),
        iterations=iterations,
        device=device,
        seed=seed,
        **defaults,
    )


def _summary(state: ReconstructionState, seconds: float) -> dict:
    tilt = np.asarray(state.tilt_mrad, dtype=np.float64).reshape(-1, 2).mean(axis=0)
    out = {
        "tilt": (float(tilt[0]), float(tilt[1])),
        "slice_thickness": state.dz,
        "thickness": state.thickness,
        "num_slices": state.num_slices,
        "iterations": state.iteration,
        "loss": float(state.history["loss"][-1]) if state.history["loss"] else float("nan"),
        "seconds": float(seconds),
        "status": state.status,
    }
    if state.post_alignment is not None:
        implied = np.asarray(state.post_alignment["tilt_mrad"], dtype=np.float64)
        out["post_alignment_tilt"] = (float(tilt[0] + implied[0]), float(tilt[1] + implied[1]))
    return out


def run_demo(
    iterations: int = DEMO_ITERATIONS,
    num_slices: int = DEMO_NUM_SLICES,
    start_thickness: float = DEMO_START_THICKNESS,
    device: str = "cpu",
    show_progressbar: bool = False,
    output_dir: str | Path | None = None,
    dataset: SimulatedDataset | None = None,
    modes: tuple[str, ...] = ("app", "fpp"),
    seed: int = 0,
) -> dict:
    """Simulate the tilted crystal and reconstruct it with APP and FPP.

    Parameters
    ----------
    iterations, num_slices, start_thickness
        Iterations of each run, object slices, initial total thickness (Å).
    device
        Torch device.
    show_progressbar
        Show the solver's progress bars.
    output_dir
        If given, write ``demo_app.hspy``, ``demo_fpp.hspy`` and their PNG
        summaries there.
    dataset
        Data to use instead of :func:`demo_dataset` (e.g. a smaller one).
    modes
        Which reconstructions to run.
    seed
        Random seed of the solver.

    Returns
    -------
    dict
        ``true_tilt`` (mrad), ``true_thickness`` (Å), ``scan_shape``,
        ``pattern_size``, ``simulation_seconds``, and per mode (``"app"``,
        ``"fpp"``) a dict with ``tilt`` (the propagator's, mrad),
        ``slice_thickness``, ``thickness`` (Å), ``num_slices``,
        ``iterations``, ``loss``, ``seconds``, ``status`` and, for FPP,
        ``post_alignment_tilt`` (mrad). ``total_seconds`` is the wall time.
    """
    t_start = time.perf_counter()
    if dataset is None:
        dataset = demo_dataset()
    t_sim = time.perf_counter() - t_start
    numbers = {
        "true_tilt": tuple(float(t) for t in dataset.tilt),
        "true_thickness": float(dataset.thickness),
        "scan_shape": tuple(int(v) for v in dataset.scan_shape),
        "pattern_size": int(dataset.data.shape[-1]),
        "simulation_seconds": float(t_sim),
        "start_thickness": float(start_thickness),
    }
    for mode in modes:
        config = demo_config(mode, num_slices, start_thickness, iterations, device, seed)
        t0 = time.perf_counter()
        state = reconstruct(dataset.data, dataset.geometry, config, show_progressbar=show_progressbar)
        numbers[mode] = _summary(state, time.perf_counter() - t0)
        if output_dir is not None:
            _write(state, config, dataset, Path(output_dir), mode)
    numbers["total_seconds"] = float(time.perf_counter() - t_start)
    return numbers


def _write(state, config, dataset: SimulatedDataset, outdir: Path, mode: str) -> None:
    from .report import save_summary
    from .results import state_to_signal

    signal = state_to_signal(state, config, dataset.geometry, scan_shape=dataset.scan_shape)
    signal.save(outdir / f"demo_{mode}.hspy", overwrite=True)
    truth = {
        "tilt_x": dataset.tilt[0],
        "tilt_y": dataset.tilt[1],
        "slice_thickness": dataset.thickness / state.num_slices,
    }
    save_summary(signal, outdir / f"demo_{mode}.png", truth=truth)


def format_demo(numbers: dict) -> str:
    """The demo's numbers as a small table."""
    tx, ty = numbers["true_tilt"]
    lines = [
        f"Simulated SrTiO3 [001]: scan {numbers['scan_shape'][0]} x {numbers['scan_shape'][1]}, "
        f"{numbers['pattern_size']} x {numbers['pattern_size']} patterns "
        f"(simulated in {numbers['simulation_seconds']:.1f} s)",
        f"Start of both runs: tilt (0, 0) mrad, thickness {numbers['start_thickness'] / 10:.2f} nm",
        "",
        f"{'':28s}{'tilt (theta_x, theta_y) mrad':>30s}{'thickness nm':>15s}{'time s':>9s}",
        f"{'truth':28s}{f'({tx:.2f}, {ty:.2f})':>30s}{numbers['true_thickness'] / 10:>15.2f}{'':>9s}",
    ]
    if "app" in numbers:
        a = numbers["app"]
        tilt = f"({a['tilt'][0]:.2f}, {a['tilt'][1]:.2f})"
        lines.append(f"{'APP (learned)':28s}{tilt:>30s}{a['thickness'] / 10:>15.2f}{a['seconds']:>9.1f}")
    if "fpp" in numbers:
        f = numbers["fpp"]
        pa = f.get("post_alignment_tilt")
        tilt = f"({pa[0]:.2f}, {pa[1]:.2f})" if pa is not None else "n/a"
        lines.append(
            f"{'FPP (post-alignment)':28s}{tilt:>30s}{f['thickness'] / 10:>15.2f}{f['seconds']:>9.1f}"
            "  (thickness fixed)"
        )
    lines.append(f"Total {numbers['total_seconds']:.1f} s")
    return "\n".join(lines)


def tilt_versus_slices(
    dataset: SimulatedDataset,
    slice_counts: tuple[int, ...] = (2, 4, 8),
    iterations: int = 20,
    modes: tuple[str, ...] = ("fpp", "app"),
    device: str = "cpu",
    show_progressbar: bool = False,
    keep_states: bool = False,
    **options,
) -> list[dict]:
    """Recovered tilt against the number of slices (the paper's Fig. 5B).

    Each run splits the true thickness into ``S`` slices and starts at zero
    tilt. FPP's tilt is its post-alignment estimate; APP's is the learned
    propagator tilt.

    Returns
    -------
    list of dict
        One per (mode, S): ``mode``, ``num_slices``, ``slice_thickness`` (Å),
        ``tilt`` (mrad, for FPP the post-alignment tilt), ``seconds`` and,
        with ``keep_states``, ``state``.
    """
    rows = []
    for mode in modes:
        for s in slice_counts:
            config = demo_config(mode, s, dataset.thickness, iterations, device, **options)
            t0 = time.perf_counter()
            state = reconstruct(dataset.data, dataset.geometry, config, show_progressbar=show_progressbar)
            summary = _summary(state, time.perf_counter() - t0)
            row = {
                "mode": mode,
                "num_slices": s,
                "slice_thickness": summary["slice_thickness"],
                "tilt": summary.get("post_alignment_tilt", summary["tilt"]),
                "seconds": summary["seconds"],
            }
            if keep_states:
                row["state"] = state
            rows.append(row)
    return rows
