"""Extended APP (tilt map) on the abTEM bent crystal, the uniform tilt, at dose, and two grains.

Cases (all from tilt (0, 0), default options but ``tilt_map=True``):

* ``bent``: ../shared/data/sto_bent_y.h5 (theta_x = 3 mrad, theta_y = -5 + 10 clip(y / 12.1055 Å, 0, 1)
  mrad, 101.53 Å), the map against the truth at the probe positions, and global APP on the same data;
* ``uniform``: ../shared/data/sto_tilt_8_-3.h5: the map must be uniform, within 0.5 mrad of (8, -3), and
  say that it was not needed;
* ``dose``: Poisson counts from sto_bent_y.h5 at 2e4 e/Å² (3050 electrons per pattern, seed 0);
* ``grains``: two grains tilted +28 / -28 mrad (theta_x), vacuum around, made with the project's own
  forward model (``app_extension.simulate.simulate_tilt_field``), ``tilt_map_regularizer="tv"``;
* ``bent_polish`` (diagnostic): the bent map with the local drift-to-tilt step stopped after two
  thirds of the iterations, the rest by gradient with the map learned or held;
* ``bent_crystal_prior`` (diagnostic): the map held in the slices (one propagator tilt, the map
  measured as the slices' local drift), with the depth prior taken in the crystal's frame;
* ``bent_x``: a bend along x (theta_x +6 to -4 mrad, theta_y -2) from the project's own forward model,
  the map and global APP (the held-out abTEM twin's question, on other values); ``bent_x_strong``:
  the same with theta_x from -10 to +12 mrad and theta_y +4;
* ``real``: the realistic scan sto_real_H.h5 (uniform tilt, scan distortions, Poisson counts) through
  the calibration stage, the default map with 10 slices: it must say that it was not needed;
* ``large_tilt``: uniform 12 and 28 mrad on the own forward model at 1 Å steps (low overlap), with and
  without position refinement, 28 mrad also from the true tilt;
* ``cost``: seconds per iteration of global APP, the free and the held map on sto_bent_y.h5, interleaved.

The default tilt map holds its shape from ``tilt_map_hold`` (13) on: the map's bend is then carried
by the slices (``app_extension.solver.crystal_frame``); ``--hold 0`` gives the map learned locally
to the end (the solver before that option).

Usage::

    python validation/tilt_map.py [--cases bent uniform dose grains cost] [--iterations 20]
        [--threads 2] [--hold N] [--out validation/results] [--states /tmp/tilt_map_states]

Writes ``tilt_map.json`` and small PNGs under ``--out``; the solver states go to ``--states``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from shared_data import recorded_geometry

from app_extension.solver.config import Geometry, SolverConfig
from app_extension.solver.engine import reconstruct
from app_extension.solver.state import ReconstructionState
from app_extension.solver.tilt_field import measure_local_drift, position_undetermined, uniformity

HERE = Path(__file__).resolve().parent
DATA = next(
    (
        p
        for p in (HERE.parent.parent / "shared" / "data", HERE.parent.parent.parent / "shared" / "data")
        if p.is_dir()
    ),
    HERE.parent.parent / "shared" / "data",
)
BENT_SPAN = 12.1055  # Å, first to last scan row


def load_recorded(path: Path):
    """Data and the geometry from the recorded calibration only (no truth)."""
    import h5py

    with h5py.File(path, "r") as f:
        data = f["data"][()]
        attrs = dict(f.attrs)
    return data, recorded_geometry(attrs, data.shape[:2])


def bent_truth(positions: np.ndarray) -> np.ndarray:
    """(P, 2) true (theta_x, theta_y) in mrad of sto_bent_y.h5 at the probe positions."""
    y = positions[:, 0]
    return np.stack([np.full_like(y, 3.0), -5 + 10 * np.clip(y / BENT_SPAN, 0, 1)], axis=1)


def inside(geometry: Geometry, radius: float) -> np.ndarray:
    """Positions whose probe (radius in Å) lies inside the scanned area."""
    pos = geometry.scan_positions
    lo, hi = pos.min(axis=0), pos.max(axis=0)
    return np.all((pos - lo >= radius - 1e-9) & (hi - pos >= radius - 1e-9), axis=1)


def probe_radius(geometry: Geometry, thickness: float) -> float:
    """The probe's radius at mid-depth (Å): |defocus - t/2| tan(semiangle)."""
    return abs(geometry.defocus - thickness / 2) * np.tan(geometry.semiangle * 1e-3)


def held(args) -> dict:
    """``tilt_map_hold`` from ``--hold`` (none given: the solver's default)."""
    return {} if getattr(args, "hold", None) is None else {"tilt_map_hold": args.hold}


def solve(data, geometry, config, name: str, states: Path) -> tuple[ReconstructionState, dict]:
    t0 = time.perf_counter()
    state = reconstruct(data, geometry, config, show_progressbar=False)
    wall = time.perf_counter() - t0
    state.save(states / f"{name}.h5", extra={"config": config.to_dict(), "geometry": geometry.to_dict()})
    per_it = np.diff([0.0, *state.history["time"]])
    return state, {
        "wall_s": wall,
        "seconds_per_iteration": per_it.tolist(),
        "final_loss": state.history["loss"][-1],
        "thickness_A": state.thickness,
        "mean_tilt_mrad": state.tilt_mrad.reshape(-1, 2).mean(axis=0).tolist(),
        "iterations": int(state.iteration),
    }


def map_metrics(state: ReconstructionState, geometry: Geometry, truth: np.ndarray, radius: float) -> dict:
    est = state.tilt_mrad
    ok = ~position_undetermined(state)
    sets = {"all": ok, "probe_inside": ok & inside(geometry, radius)}
    out = {
        "probe_radius_A": radius,
        "grid": list(state.tilt_field.shape),
        "spacing_A": list(state.tilt_field.spacing),
    }
    for key, sel in sets.items():
        err = est[sel] - truth[sel]
        out[key] = {
            "positions": int(sel.sum()),
            "rms_theta_x": float(np.sqrt(np.mean(err[:, 0] ** 2))),
            "rms_theta_y": float(np.sqrt(np.mean(err[:, 1] ** 2))),
            "rms": float(np.sqrt(np.mean((err**2).sum(axis=1)))),
        }
    out["uniformity"] = uniformity(state)
    out["grid_mrad"] = state.tilt_grid.numpy().reshape(*state.tilt_field.shape, 2).tolist()
    return out


def column_sharpness(state: ReconstructionState, geometry: Geometry, window: int) -> dict:
    """Width of the columns in the slice-averaged phase, in the top, middle and bottom rows of the scan.

    Columns are the local maxima of the averaged phase (Sr and Ti-O sites), each measured by the
    phase-weighted second moments within 0.6 Å (above the local minimum): ``sigma_y``, ``sigma_x`` in
    Å. A tilt the propagator does not take up smears the columns along it (here along y).
    """
    from scipy import ndimage

    image = state.slices()[0].mean(axis=0).astype(np.float64)  # entrance frame, as a user sees it
    ys, xs = state.coordinates()
    rows, cols = state.scan_window(window)
    peaks = (image == ndimage.maximum_filter(image, size=9)) & (image > np.percentile(image, 90))
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    span = geometry.scan_positions[:, 0].max()
    bands = {"top": (-1, span / 4), "middle": (span / 4, 3 * span / 4), "bottom": (3 * span / 4, span + 1)}
    result = {k: {"sigma_y": [], "sigma_x": []} for k in bands}
    for iy, ix in zip(*np.nonzero(peaks), strict=True):
        if not (rows.start <= iy < rows.stop and cols.start <= ix < cols.stop):
            continue
        m = (yy - ys[iy]) ** 2 + (xx - xs[ix]) ** 2 < 0.6**2
        wgt = image[m] - image[m].min()
        if wgt.sum() <= 0:
            continue
        cy, cx = (wgt * yy[m]).sum() / wgt.sum(), (wgt * xx[m]).sum() / wgt.sum()
        sy = np.sqrt((wgt * (yy[m] - cy) ** 2).sum() / wgt.sum())
        sx = np.sqrt((wgt * (xx[m] - cx) ** 2).sum() / wgt.sum())
        for name, (lo, hi) in bands.items():
            if lo <= ys[iy] < hi:
                result[name]["sigma_y"].append(sy)
                result[name]["sigma_x"].append(sx)
    return {
        k: {
            "columns": len(v["sigma_y"]),
            "sigma_y_A": float(np.mean(v["sigma_y"])) if v["sigma_y"] else None,
            "sigma_x_A": float(np.mean(v["sigma_x"])) if v["sigma_x"] else None,
        }
        for k, v in result.items()
    }


def entrance_state(state: ReconstructionState) -> ReconstructionState:
    """A copy whose slices are in the entrance frame (a held map's bend taken out), map not held."""
    from app_extension.solver.crystal_frame import map_held

    copy = state.clone()
    if map_held(copy):
        phase, amplitude = state.slices()
        copy.phase, copy.amplitude = torch.as_tensor(phase), torch.as_tensor(amplitude)
        copy.tilt_field.held = False
    return copy


def residual_local_tilt(state: ReconstructionState, window: int) -> dict:
    """The drift with depth left in the slices, measured locally on a 3 x 3 grid (mrad)."""
    from app_extension.solver.tilt_field import make_tilt_grid

    pos = state.probe_positions()
    grid = make_tilt_grid(pos, 22.0, 0.0, 0.0, grid=(3, 3))
    found = measure_local_drift(entrance_state(state), grid, window)
    slope = np.arctan(found["slope"]) * 1e3
    return {"theta_x": slope[:, 0].reshape(3, 3).tolist(), "theta_y": slope[:, 1].reshape(3, 3).tolist()}


def boundary_width(
    state: ReconstructionState, geometry: Geometry, boundary_x: float, tilt: float, rows: tuple[float, float]
) -> dict:
    """10-90 % width (Å) of the theta_x step across the grain boundary, from the map at the positions.

    The profile is the mean over the scan rows with y in ``rows`` (inside the grains, clear of the vacuum).
    """
    est = state.tilt_mrad[:, 0]
    y = geometry.scan_positions[:, 0]
    ok = ~position_undetermined(state) & (y >= rows[0]) & (y <= rows[1])
    x = geometry.scan_positions[:, 1]
    xs = np.unique(np.round(x[ok], 6))
    profile = np.array([est[ok & (np.abs(x - v) < 1e-6)].mean() for v in xs])
    # the step's own plateaus (medians over the grains, 3 Å clear of the boundary and the vacuum), and
    # the distance over which the profile falls from 90 % to 10 % of the step between them
    left = profile[(xs < boundary_x - 3.0) & (xs > rows[0])]
    right = profile[(xs > boundary_x + 3.0) & (xs < 2 * boundary_x - rows[0])]
    top, bottom = float(np.median(left)), float(np.median(right))
    near = np.abs(xs - boundary_x) <= 6.0
    fine = np.linspace(xs[near][0], xs[near][-1], 4001)
    p = np.interp(fine, xs[near], profile[near])
    level = (p - bottom) / (top - bottom)
    try:
        x_hi = fine[np.flatnonzero(level >= 0.9)[-1]]
        x_lo = fine[np.flatnonzero(level <= 0.1)[0]]
        width = float(x_lo - x_hi)
    except IndexError:
        width = None
    return {
        "x_A": xs.tolist(),
        "theta_x_mrad": profile.tolist(),
        "width_10_90_A": width,
        "plateaus_mrad": [top, bottom],
        "boundary_x_A": boundary_x,
    }


def case_bent(args, states: Path) -> dict:
    data, geometry = load_recorded(DATA / "sto_bent_y.h5")
    truth = bent_truth(geometry.scan_positions)

    def details(state):
        return {
            "columns": column_sharpness(state, geometry, data.shape[-1]),
            "residual_local_tilt_mrad": residual_local_tilt(state, data.shape[-1]),
        }

    return map_and_global("bent", data, geometry, truth, 101.53, args, states, details)


def map_and_global(prefix, data, geometry, truth, thickness, args, states: Path, details=None) -> dict:
    """Default APP with the tilt map (``<prefix>_map``) and without (``<prefix>_global``), from tilt (0, 0)."""
    out = {}
    for name, tilt_map in ((f"{prefix}_map", True), (f"{prefix}_global", False)):
        config = SolverConfig(iterations=args.iterations, tilt_map=tilt_map, **held(args))
        state, info = solve(data, geometry, config, name, states)
        info["thickness_error"] = state.thickness / thickness - 1
        if details is not None:
            info.update(details(state))
        if tilt_map:
            info["map"] = map_metrics(state, geometry, truth, probe_radius(geometry, state.thickness))
        else:
            err = state.tilt_mrad[None] - truth
            info["global_vs_truth_rms"] = float(np.sqrt(np.mean((err**2).sum(axis=1))))
        out[name] = info
        print(
            name,
            json.dumps({k: v for k, v in info.items() if k != "seconds_per_iteration"})[:1500],
            flush=True,
        )
    return out


def case_bent_polish(args, states: Path) -> dict:
    """Diagnostic: why the map's loss stays above global APP's on the bent crystal.

    The local drift-to-tilt step (and its regulariser) stops after two thirds of the iterations;
    the rest refines by gradient only, with the map either learned (``free``) or held (``held``).
    The step's warps are not exact for a field that varies within one probe footprint, so this shows
    how much of the loss gap they cost and where the loss would take the map.
    """
    import app_extension.solver.steps as steps

    data, geometry = load_recorded(DATA / "sto_bent_y.h5")
    truth = bent_truth(geometry.scan_positions)
    stop = (2 * args.iterations) // 3
    drift, trainable = steps.drift_to_tilt, steps.set_trainable
    out = {}
    for hold in (False, True):

        def drift_to_tilt(run, iteration):
            return None if iteration >= stop else drift(run, iteration)

        def set_trainable(run, iteration, hold=hold):
            trainable(run, iteration)
            if hold and iteration >= stop:
                run.state.tilt_grid.requires_grad_(False)

        steps.drift_to_tilt, steps.set_trainable = drift_to_tilt, set_trainable
        try:
            name = f"bent_polish_{'held' if hold else 'free'}"
            config = SolverConfig(iterations=args.iterations, tilt_map=True)
            state, info = solve(data, geometry, config, name, states)
        finally:
            steps.drift_to_tilt, steps.set_trainable = drift, trainable
        info["local_step_stops_at"] = stop
        info["map"] = map_metrics(state, geometry, truth, probe_radius(geometry, state.thickness))
        out[name] = info
        print(name, info["final_loss"], info["map"]["probe_inside"]["rms"], flush=True)
    return out


def _with_crystal_frame_prior(run, slope, constraints, smooth) -> None:
    """``constraints(run)`` with the depth prior taken after shifting each slice's neighbours onto it.

    ``slope`` (K, 2): the local drift with depth at the control points, as tan(theta) (x, y),
    relative to the propagator's tilt; None gives the plain prior.
    """
    import app_extension.solver.steps as steps
    from app_extension.solver.crystal_frame import neighbours_along
    from app_extension.solver.tilt_field import pixel_field

    state = run.state
    if slope is None:
        constraints(run)
        return
    step = pixel_field(state, state.tilt_field, slope) * state.dz / state.sampling  # px between slices

    def crystal_frame(field, weight):
        if weight <= 0:
            return smooth(field, weight)
        near = neighbours_along(field, step)  # before field changes
        field.mul_(1 - weight).add_(near, alpha=weight)

    steps.smooth_depth = crystal_frame
    try:
        constraints(run)
    finally:
        steps.smooth_depth = smooth


def case_bent_crystal_prior(args, states: Path) -> dict:
    """Diagnostic: a tilt map held in the slices, with the depth prior taken in the crystal's frame.

    The propagator keeps one (global, learned) tilt; the slices keep the bend (as in global APP),
    and the map is the global tilt plus the slices' local drift with depth, measured around each
    control point when the drift-to-tilt step is due (no warp back). The depth prior averages each
    slice with its neighbours *after* shifting them by the local drift between adjacent slices, so
    it no longer pulls a bent crystal's slices straight. If global APP's lower loss comes from its
    slices holding the bend's stretch, this model should reach a loss at or below global APP's
    while its map stays on the true field.
    """
    import app_extension.solver.steps as steps
    from app_extension.solver.tilt_field import refresh_position_tilts

    data, geometry = load_recorded(DATA / "sto_bent_y.h5")
    truth = bent_truth(geometry.scan_positions)
    trainable, drift, constraints, smooth = (
        steps.set_trainable,
        steps.drift_to_tilt,
        steps.apply_constraints,
        steps.smooth_depth,
    )
    local: dict = {"slope": None}

    def set_trainable(run, iteration):
        trainable(run, iteration)
        run.map_active = False  # the propagator: the grid's mean tilt only

    def drift_to_tilt(run, iteration):
        state = run.state
        if not steps.drift_due(run.config, iteration, state.num_slices):
            return None
        change = steps.move_drift_into_tilt(state, run.data.window)
        if iteration >= run.config.tilt_map_start:
            found = measure_local_drift(state, state.tilt_field, run.data.window, run.config.tilt_map_vacuum)
            slope = np.where(found["undetermined"][:, None], 0.0, found["slope"])
            local["slope"] = slope - slope[~found["undetermined"]].mean(axis=0)
        return change

    def apply_constraints(run):
        _with_crystal_frame_prior(run, local["slope"], constraints, smooth)

    steps.set_trainable, steps.drift_to_tilt, steps.apply_constraints = (
        set_trainable,
        drift_to_tilt,
        apply_constraints,
    )
    try:
        config = SolverConfig(iterations=args.iterations, tilt_map=True)
        state, info = solve(data, geometry, config, "bent_crystal_prior", states)
    finally:
        steps.set_trainable, steps.drift_to_tilt, steps.apply_constraints = trainable, drift, constraints
    with torch.no_grad():  # the map: the global tilt plus the measured local drift
        mean = torch.tan(state.tilt_grid.double().mean(dim=0) * 1e-3)
        slope = torch.as_tensor(local["slope"] if local["slope"] is not None else 0.0, dtype=torch.float64)
        state.tilt_grid.copy_((torch.atan(mean + slope) * 1e3).to(state.tilt_grid.dtype))
        refresh_position_tilts(state)
    info["thickness_error"] = state.thickness / 101.53 - 1
    info["map"] = map_metrics(state, geometry, truth, probe_radius(geometry, state.thickness))
    info["columns"] = column_sharpness(state, geometry, data.shape[-1])
    print(
        "bent_crystal_prior",
        json.dumps({k: v for k, v in info.items() if k != "seconds_per_iteration"})[:1500],
    )
    return {"bent_crystal_prior": info}


BENT_X_SPAN = 11.5  # Å, first to last scan column of the bent_x case


def bent_x_field(y, x):
    """theta_x from +6 to -4 mrad across the scan's columns, theta_y = -2 mrad (the bent_x case)."""
    x = np.asarray(x, dtype=np.float64)
    return 6.0 - 10.0 * np.clip(x / BENT_X_SPAN, 0, 1), np.full_like(x, -2.0)


def bent_x_strong_field(y, x):
    """theta_x from -10 to +12 mrad across the scan's columns, theta_y = +4 mrad (the bent_x_strong case)."""
    x = np.asarray(x, dtype=np.float64)
    return -10.0 + 22.0 * np.clip(x / BENT_X_SPAN, 0, 1), np.full_like(x, 4.0)


def case_bent_x_strong(args, states: Path) -> dict:
    """``bent_x`` with the bend reversed and more than twice as strong (22 mrad over 11.5 Å), theta_y +4."""
    data, geometry, truth, thickness = bent_x_data(bent_x_strong_field)
    return map_and_global("bent_x_strong", data, geometry, truth, thickness, args, states)


def case_real(args, states: Path) -> dict:
    """The realistic scan ``sto_real_H.h5`` (uniform tilt (6, 4) mrad in the detector frame, scan rotation,
    jitter, drift, Poisson counts): found from the recorded calibration by the calibration stage, then the
    default tilt map with 10 slices (thickness guess 1.3x, as ``real_scan.py``). Nothing varies over this
    scan, so the map must say that it was not needed."""
    from real_scan import DATA as REAL
    from real_scan import load, recorded_calibration

    from app_extension.measurements import prepare
    from app_extension.measurements.orientation import scan_to_detector

    data, attrs, truth = load(REAL)
    recorded = recorded_calibration(attrs)
    thickness = float(truth["thickness_A"])
    prepared = prepare(data, recorded, thickness=1.3 * thickness)
    config = SolverConfig(
        iterations=args.iterations,
        tilt_map=True,
        num_slices=10,
        slice_thickness=1.3 * thickness / 10,
        **held(args),
    )
    state, info = solve(prepared.filled_patterns(), prepared.geometry, config, "real_map", states)
    j = scan_to_detector(prepared.report.rotation_deg)  # solver (scan) frame -> detector frame
    per_position = np.array([(j @ t[::-1])[::-1] for t in state.tilt_mrad])
    truth_tilt = np.asarray(truth["tilt_mrad"], dtype=float)
    err = per_position - truth_tilt
    info["thickness_error"] = state.thickness / thickness - 1
    info["tilt_detector_frame_mrad"] = per_position.mean(axis=0).tolist()
    info["rms_vs_truth_mrad"] = float(np.sqrt(np.mean((err**2).sum(axis=1))))
    info["max_vs_truth_mrad"] = float(np.sqrt((err**2).sum(axis=1)).max())
    info["uniformity"] = uniformity(state)
    print(
        "real", json.dumps({k: v for k, v in info.items() if k != "seconds_per_iteration"})[:1500], flush=True
    )
    return {"real_map": info}


def case_large_tilt(args, states: Path) -> dict:
    """Uniform tilts of 12 and 28 mrad (22 mrad aperture), own forward model, low overlap (1 Å steps).

    ``simulate_tilt_field`` with 12 unit cells (46.9 Å), a 20 x 20 scan at 1 Å, global APP with 4
    slices from tilt 0 (and, for 28 mrad, from the true tilt), ``--iterations`` iterations: the
    position offsets' give-up and the slow approach beyond the convergence angle.
    """
    from app_extension.simulate import simulate_tilt_field

    out = {}
    for tilt, start in ((12.0, 0.0), (28.0, 0.0), (28.0, 28.0)):

        def field(y, x, tilt=tilt):
            y = np.asarray(y, dtype=np.float64)
            return np.full_like(y, tilt), np.zeros_like(y)

        ds = simulate_tilt_field(field, unit_cells_z=12, scan_shape=(20, 20), scan_step=1.0)
        for positions in (True, False):
            config = SolverConfig(
                iterations=args.iterations,
                num_slices=4,
                slice_thickness=12.0,
                tilt=(start, 0.0),
                refine_positions=positions,
            )
            name = f"large_tilt_{tilt:g}_from_{start:g}" + ("" if positions else "_no_positions")
            state, info = solve(ds.data, ds.geometry, config, name, states)
            info["tilt_history_x"] = state.history["tilt_x"]
            info["thickness_error"] = state.thickness / ds.thickness - 1
            info["positions_given_up"] = bool(state.positions is not None and state.positions.given_up)
            out[name] = info
            print(
                name,
                info["mean_tilt_mrad"],
                round(info["thickness_error"], 3),
                info["positions_given_up"],
                flush=True,
            )
    return out


def case_bent_x(args, states: Path) -> dict:
    """A bend along the other axis, with another range, from the project's own forward model.

    Not the held-out abTEM twin (which is not available here), but the same question on other
    values: ``simulate_tilt_field`` (tilt in the atoms, 24 x 24 scan at 0.5 Å, 64 px patterns,
    26 unit cells = 101.53 Å), default options from tilt (0, 0), the map and global APP.
    """
    data, geometry, truth, thickness = bent_x_data()
    return map_and_global("bent_x", data, geometry, truth, thickness, args, states)


def bent_x_data(field=bent_x_field):
    """The bent_x crystal: data, geometry, the true field at the positions (P, 2) mrad, thickness (Å)."""
    from app_extension.simulate import simulate_tilt_field

    ds = simulate_tilt_field(
        field,
        unit_cells_z=26,
        scan_shape=(24, 24),
        scan_step=0.5,
        pattern_size=64,
        reciprocal_sampling=0.1,
    )
    pos = ds.geometry.scan_positions
    truth = np.stack(field(pos[:, 0], pos[:, 1]), axis=1)
    return ds.data, ds.geometry, truth, ds.thickness


def case_uniform(args, states: Path) -> dict:
    data, geometry = load_recorded(DATA / "sto_tilt_8_-3.h5")
    config = SolverConfig(iterations=args.iterations, tilt_map=True, **held(args))
    state, info = solve(data, geometry, config, "uniform_map", states)
    truth = np.broadcast_to([8.0, -3.0], (geometry.scan_positions.shape[0], 2))
    info["map"] = map_metrics(state, geometry, truth, probe_radius(geometry, state.thickness))
    est = state.tilt_mrad
    info["max_deviation_from_truth_mrad"] = float(np.abs(est - truth).max())
    info["thickness_error"] = state.thickness / 101.53 - 1
    print("uniform", json.dumps(info["map"]["uniformity"]), info["max_deviation_from_truth_mrad"], flush=True)
    return {"uniform_map": info}


def case_dose(args, states: Path) -> dict:
    data, geometry = load_recorded(DATA / "sto_bent_y.h5")
    electrons = 2e4 * 0.3905**2  # 3050 per pattern
    rng = np.random.default_rng(0)
    counts = rng.poisson(data.astype(np.float64) * (electrons / 0.995)).astype(np.float32)
    config = SolverConfig(
        iterations=args.iterations, tilt_map=True, **held(args)
    )  # the amplitude loss (Eq. 1)
    state, info = solve(counts, geometry, config, "dose_map", states)
    info["electrons_per_pattern"] = electrons
    info["thickness_error"] = state.thickness / 101.53 - 1
    info["map"] = map_metrics(
        state, geometry, bent_truth(geometry.scan_positions), probe_radius(geometry, state.thickness)
    )
    print("dose", json.dumps(info["map"]["probe_inside"]), json.dumps(info["map"]["all"]), flush=True)
    return {"dose_map": info}


def case_grains(args, states: Path) -> dict:
    from app_extension.simulate import simulate_tilt_field, two_grains

    # two grains of 11 x 22 Å, 5 Å of vacuum around; the boundary (x = 18 Å) lies between control points
    extent, vacuum, tilt, boundary = (32.0, 32.0), 5.0, 28.0, 2.0
    t0 = time.perf_counter()
    ds = simulate_tilt_field(
        two_grains(tilt=tilt, boundary=boundary, extent=extent, vacuum=vacuum),
        unit_cells_z=12,
        scan_shape=(33, 33),
        scan_step=1.0,
    )
    simulate_s = time.perf_counter() - t0
    config = SolverConfig(
        iterations=args.iterations,
        tilt_map=True,
        **held(args),
        tilt_map_regularizer="tv",
        num_slices=4,
        slice_thickness=12.0,
    )
    state, info = solve(ds.data, ds.geometry, config, "grains_map", states)
    info["simulate_s"] = simulate_s
    info["boundary"] = boundary_width(
        state, ds.geometry, extent[1] / 2 + boundary, tilt, (vacuum + 2.0, extent[0] - vacuum - 2.0)
    )
    grid = state.tilt_field
    nodes = grid.nodes()
    in_vacuum = np.any((nodes < vacuum - 2.0) | (nodes > np.array(extent) - vacuum + 2.0), axis=1)
    info["vacuum_nodes"] = int(in_vacuum.sum())
    info["vacuum_nodes_undetermined"] = int((grid.undetermined & in_vacuum).sum())
    info["crystal_nodes_undetermined"] = int((grid.undetermined & ~in_vacuum).sum())
    info["grid"] = list(grid.shape)
    info["grid_theta_x_mrad"] = (
        np.where(grid.undetermined, np.nan, state.tilt_grid.numpy()[:, 0]).reshape(grid.shape).tolist()
    )
    info["uniformity"] = uniformity(state)
    print(
        "grains",
        json.dumps({k: v for k, v in info.items() if k != "seconds_per_iteration"})[:1500],
        flush=True,
    )
    return {"grains_map": info}


def case_cost(args, states: Path) -> dict:
    """Seconds per iteration: global APP, the free map and the held map, interleaved, then a default run.

    ``global``: global APP; ``map``: the tilt map varying over the scan from iteration 0 (per-position
    propagators and the local drift step every iteration); ``held``: the map held from iteration 1
    (the crystal-frame depth prior), timed over its iterations 2 and 3 (iteration 1 also moves the map
    into the slices, once). ``schedule`` is the default
    schedule's mean cost per iteration relative to global APP: iterations before ``tilt_map_start``
    cost what global APP costs, then the map's until ``tilt_map_hold``, then the held map's.
    """
    data, geometry = load_recorded(DATA / "sto_bent_y.h5")
    times = {"global": [], "map": [], "held": []}
    for _ in range(2):
        for name in ("global", "map", "held"):
            config = SolverConfig(
                iterations=4 if name == "held" else 3,
                tilt_map=name != "global",
                tilt_map_start=0,
                tilt_map_hold={"map": 0, "held": 1}.get(name, 13),
                start_tilt=0,
            )
            state = reconstruct(data, geometry, config, show_progressbar=False)
            per_it = np.diff([0.0, *state.history["time"]]).tolist()
            times[name] += per_it[2:] if name == "held" else per_it
    med = {k: float(np.median(v)) for k, v in times.items()}
    default = SolverConfig()
    n_global = default.tilt_map_start
    n_map = default.tilt_map_hold - default.tilt_map_start
    n_held = default.iterations - default.tilt_map_hold
    schedule = (n_global * med["global"] + n_map * med["map"] + n_held * med["held"]) / default.iterations
    out = {
        "seconds_per_iteration": times,
        "median_s": med,
        "ratio": med["map"] / med["global"],
        "ratio_held": med["held"] / med["global"],
        "ratio_schedule": schedule / med["global"],
        "schedule_iterations": {"global": n_global, "map": n_map, "held": n_held},
    }
    out["settings"] = {"iterations": 3, "threads": args.threads}
    print("cost", json.dumps(out), flush=True)
    return {"cost": out}


def figures(out: Path, states: Path) -> None:
    """theta_y along y (truth, map, map at dose, global APP) and the map pictures, from the saved states."""
    from matplotlib.figure import Figure

    from app_extension.report import draw_tilt_map
    from app_extension.results import tilt_map_to_signal

    def load(name):
        path = states / f"{name}.h5"
        if not path.exists():
            return None, None
        state, extra = ReconstructionState.load(path, with_extra=True)
        g = extra["geometry"]
        return state, Geometry(
            energy=g["energy"],
            semiangle=g["semiangle"],
            reciprocal_sampling=g["reciprocal_sampling"],
            scan_positions=np.asarray(g["scan_positions"]),
            defocus=g["defocus"],
        )

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    bent, geometry = load("bent_map")
    if bent is not None:
        y = geometry.scan_positions[:, 0].reshape(32, 32)[:, 0]
        ax.plot(y, bent_truth(geometry.scan_positions)[:, 1].reshape(32, 32)[:, 0], "k--", label="true θy")
        for name, style, label in (
            ("bent_map", "C0o-", "tilt map"),
            ("dose_map", "C1s-", "tilt map, 2e4 e/Å²"),
        ):
            state, _ = load(name)
            if state is None:
                continue
            ty = state.tilt_mrad[:, 1].reshape(32, 32)
            ax.errorbar(y, ty.mean(axis=1), yerr=ty.std(axis=1), fmt=style, ms=3, lw=1, label=label)
        glob, _ = load("bent_global")
        if glob is not None:
            ax.axhline(
                glob.tilt_mrad[1], color="C2", lw=1.5, label=f"global APP θy = {glob.tilt_mrad[1]:.2f}"
            )
    ax.set_xlabel("scan y (Å)")
    ax.set_ylabel("θy (mrad), mean ± spread over x")
    ax.set_title("sto_bent_y.h5: θy along y")
    ax.legend(fontsize=8)
    fig.savefig(out / "tilt_map_profile.png", dpi=80)

    for name, shape in (("bent_map", (32, 32)), ("grains_map", (33, 33)), ("uniform_map", (32, 32))):
        state, geometry = load(name)
        if state is None:
            continue
        fig = Figure(figsize=(5, 4.2), layout="constrained")
        draw_tilt_map(fig.subplots(), tilt_map_to_signal(state, geometry, scan_shape=shape))
        fig.savefig(out / f"tilt_map_{name.replace('_map', '')}.png", dpi=80)


CASES = {
    "bent": case_bent,
    "bent_polish": case_bent_polish,
    "bent_crystal_prior": case_bent_crystal_prior,
    "bent_x": case_bent_x,
    "bent_x_strong": case_bent_x_strong,
    "real": case_real,
    "large_tilt": case_large_tilt,
    "uniform": case_uniform,
    "dose": case_dose,
    "grains": case_grains,
    "cost": case_cost,
}


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--no-figures", action="store_true")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument(
        "--hold",
        type=int,
        default=None,
        help="tilt_map_hold for bent, uniform, dose and grains (0: never; default: the solver's)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--states", default="/tmp/tilt_map_states")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out, states = Path(args.out), Path(args.states)
    out.mkdir(parents=True, exist_ok=True)
    states.mkdir(parents=True, exist_ok=True)
    path = out / "tilt_map.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for case in args.cases:
        found = CASES[case](args, states)
        for info in found.values():  # each case's own settings (the cases are run at different times)
            info.setdefault("settings", {"iterations": args.iterations, "threads": args.threads})
        results.update(found)
        path.write_text(json.dumps(results, indent=1))
    if not args.no_figures:
        figures(out, states)


if __name__ == "__main__":
    main()
