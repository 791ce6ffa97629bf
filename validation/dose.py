"""Thickness at a realistic dose (issue 13): APP on Poisson counts at 1e5 e/Å^2.

``sto_tilt_8_-3.h5`` with Poisson counts at 1e5 e/Å^2 (15,249 electrons per
pattern for a vacuum probe sum of 0.995, numpy ``default_rng(seed)``, as in
``validation/depth_prior.py``) and the noiseless file, each with 5 and 10
slices, default APP settings from tilt (0, 0) and a slice thickness 30 % too
large, 20 iterations. A *candidate* is a set of option changes on top of the
defaults (``--candidates``; ``default`` is today's defaults). Each run records,
per iteration, the thickness, the loss and the whole pass's dz gradient (the
sign Rprop follows), and appends a row to ``validation/results/dose.json``.

``dopants`` (``sto_dopants_K.h5``) adds the Bi depth errors of
``depth_prior.bi_depths``. ``holdout10`` is a diagnostic made by wrapping two
steps (the dz gradient from 10 % held-out positions only), not an option.

Usage::

    python validation/dose.py --datasets poisson tilt dopants --slices 5 10 --candidates rprop default
    python validation/dose.py --datasets poisson --slices 10 --candidates anscombe prior025 holdout10
    python validation/dose.py --datasets poisson --slices 10 --threads 2 --candidates tilt_true_fixed \
        prior0 prior_x4 phase_only mask_2alpha coarse_split lowpass05 lowpass10
    python validation/dose.py --datasets tilt --slices 10 --threads 2 --candidates lowpass05
    python validation/dose.py --datasets poisson --slices 10 --threads 2 --candidates prior_A devlp05 \
        prior_A_devlp05 devlp10 coarse14 coarse14_hold dzk1 dzk2 lr_decay lr_decay_all
    python validation/dose.py --datasets poisson --slices 10 --threads 2 --candidates discrepancy
    python validation/dose.py --datasets poisson tilt --slices 10 --candidates companion
    python validation/dose.py --table        # the table of all recorded runs

Every candidate but ``default`` runs with ``dz_companion=False`` unless it sets it (they were
measured before the thickness companion existed); ``default`` is today's defaults.
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, os.fspath(HERE))

from depth_prior import BI_DEPTHS, DATA, THICKNESS, TRUTH, bi_depths  # noqa: E402
from depth_prior import load as load_dataset  # noqa: E402

import app_extension.solver.steps as steps  # noqa: E402
from app_extension.solver.config import SolverConfig  # noqa: E402
from app_extension.solver.engine import reconstruct  # noqa: E402

RESULTS = HERE / "results" / "dose.json"

#: Candidate name -> option changes on top of ``SolverConfig()`` defaults.
CANDIDATES: dict[str, dict] = {
    "default": {},
    "companion": {"dz_companion": True},  # the thickness companion (default since 2026-12-03)
    "no_companion": {"dz_companion": False},  # dz on the requested slices (the default before)
    "rprop": {"dz_confirm_flips": False},
    "poisson_loss": {"loss": "poisson", "dz_confirm_flips": False},
    "anscombe_rprop": {"loss": "anscombe", "dz_confirm_flips": False},
    "anscombe": {"loss": "anscombe"},
    "poisson": {"loss": "poisson"},
    "prior025": {"depth_regularization": 0.25},
    "no_positions": {"refine_positions": False},
    "lr_object_half": {"lr_object": 1e-2},
    "probe_fixed": {"lr_probe": 0.0},  # diagnostic: does the learned probe trade with the thickness?
    # diagnostic: the true tilt, held (does a tilt error trade with the thickness?)
    "tilt_true_fixed": {"tilt": (8.0, -3.0), "lr_tilt": 0.0, "drift_to_tilt_every": 0},
    "prior0": {"depth_regularization": 0.0},
}


#: Diagnostic candidates, made by wrapping steps (not options): name -> fraction of positions held out.
HOLDOUT = {"holdout10": 0.1}
CANDIDATES.update({name: {} for name in HOLDOUT})
#: Further diagnostics made by wrapping steps: ``prior_x4`` applies the depth prior four times per
#: iteration (the smoothing length in Å of 20 Å slices, for 10 Å slices); ``phase_only`` never learns
#: the amplitude; ``mask_2alpha`` fits only the detector pixels within twice the convergence angle;
#: ``coarse_split`` runs the first half of the iterations with half the slices (twice as thick), then
#: splits each slice into (itself, vacuum), an exact change of the model, and continues with all.
#: ``lowpass05`` / ``lowpass10``: after the depth prior, every slice is low-passed laterally by a Gaussian
#: of sigma 0.5 / 1 px (0.077 / 0.154 Å here), which suppresses the noise the slices hold.
LOWPASS = {"lowpass05": 0.5, "lowpass10": 1.0}
#: ``prior_A``: the depth prior's smoothing as a length in Å (the variance of weight 0.5 on 20 Å
#: slices, spread over as many applications as the slices need); ``devlp05``: the lateral Gaussian of
#: ``lowpass05`` on each slice's deviation from the slices' mean only (the mean phase is kept).
DEVLP = {"devlp05": 0.5, "devlp10": 1.0, "prior_A_devlp05": 0.5}
WRAPPED = ("prior_x4", "phase_only", "mask_2alpha", "coarse_split", "prior_A", *LOWPASS, *DEVLP)
CANDIDATES.update({name: {} for name in WRAPPED})


#: ``lr_decay`` / ``lr_decay_all``: the object's (and the probe's) Adam step decays geometrically
#: from iteration 5 to 0.1 of its value at the last iteration (the optimiser's own jitter shrinks).
DECAY = {"lr_decay": ("object",), "lr_decay_all": ("object", "probe")}
CANDIDATES.update({name: {} for name in DECAY})


def _decaying_rates(groups: tuple[str, ...], start: int = 5, final: float = 0.1):
    original = steps.set_trainable

    def set_trainable(run, iteration):
        original(run, iteration)
        span = max(1, run.config.iterations - 1 - start)
        factor = final ** (min(max(iteration - start, 0), span) / span)
        for group in run.adam.param_groups:
            if group.get("name") in groups:
                group["lr"] = factor * getattr(run.config, f"lr_{group['name']}")

    steps.set_trainable = set_trainable
    return lambda: setattr(steps, "set_trainable", original)


def _lateral_gaussian(field: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each slice of ``field`` (S, H, W) convolved laterally with a Gaussian of ``sigma`` pixels (periodic)."""
    ky = torch.fft.fftfreq(field.shape[-2], dtype=torch.float64)
    kx = torch.fft.fftfreq(field.shape[-1], dtype=torch.float64)
    gauss = torch.exp(-2 * np.pi**2 * sigma**2 * (ky[:, None] ** 2 + kx[None, :] ** 2))
    return torch.fft.ifft2(torch.fft.fft2(field) * gauss.to(field.dtype)).real


def _wrap(name: str):
    """Install the wrapped step of diagnostic ``name``; returns the function that restores it."""
    if name == "prior_x4":
        original = steps.smooth_depth

        def smooth(field, weight):
            for _ in range(4):
                original(field, weight)

        steps.smooth_depth = smooth
        return lambda: setattr(steps, "smooth_depth", original)
    if name in LOWPASS:
        original, sigma = steps.smooth_depth, LOWPASS[name]

        def smooth_and_lowpass(field, weight):
            original(field, weight)
            field.copy_(_lateral_gaussian(field, sigma))

        steps.smooth_depth = smooth_and_lowpass
        return lambda: setattr(steps, "smooth_depth", original)
    if name == "prior_A" or name in DEVLP:
        original_c = steps.apply_constraints
        sigma = DEVLP.get(name, 0.0)

        @torch.no_grad()
        def constraints(run):
            state = run.state
            if name.startswith("prior_A"):
                dz = float(state.slice_thickness)
                variance = 0.5 * 20.0**2  # Å^2 per iteration
                reps = max(1, int(np.ceil(variance / (0.5 * dz**2))))
                weight = min(0.5, variance / (reps * dz**2))
                for _ in range(reps - 1):
                    steps.smooth_depth(state.phase, weight)
                    steps.smooth_depth(state.amplitude, weight)
                saved = run.config
                run.config = saved.replace(depth_regularization=weight)
                try:
                    original_c(run)
                finally:
                    run.config = saved
            else:
                original_c(run)
            if sigma > 0:
                for field in (state.phase, state.amplitude):
                    mean = field.mean(dim=0, keepdim=True)
                    field.copy_(mean + _lateral_gaussian(field - mean, sigma))

        steps.apply_constraints = constraints
        return lambda: setattr(steps, "apply_constraints", original_c)
    if name == "phase_only":
        original = steps.set_trainable

        def set_trainable(run, iteration):
            original(run, iteration)
            run.state.amplitude.requires_grad_(False)

        steps.set_trainable = set_trainable
        return lambda: setattr(steps, "set_trainable", original)
    return lambda: None


#: ``discrepancy``: the lateral Gaussian of ``lowpass*`` with a strength that follows the noise (Morozov's
#: discrepancy principle): after each pass the amplitude loss is compared with what Poisson noise alone
#: would leave at the model's own intensities, sum f(lambda) with f(lambda) = E(sqrt(N) - sqrt(lambda))^2
#: for N ~ Poisson(lambda) (1/4 for bright pixels, about 2 lambda for dark ones); while the loss is below
#: that floor the slices fit noise and sigma grows by 1.25x (from 0.25 px), above it it shrinks.
DISCREPANCY = ("discrepancy",)
CANDIDATES.update({name: {} for name in DISCREPANCY})


def _poisson_sqrt_residual_table(low: float = -5.0, high: float = 4.0, step: float = 0.01) -> np.ndarray:
    """f(lambda) = E(sqrt(N) - sqrt(lambda))^2, N ~ Poisson(lambda), on log10(lambda) from ``low`` to ``high``."""
    from scipy.stats import poisson

    lam = 10.0 ** np.arange(low, high + step / 2, step)
    out = np.empty_like(lam)
    for i, v in enumerate(lam):
        n = np.arange(int(v + 12 * np.sqrt(v) + 30))
        out[i] = (poisson.pmf(n, v) * (np.sqrt(n) - np.sqrt(v)) ** 2).sum()
    return out


def _discrepancy():
    from app_extension.solver import losses

    table = torch.as_tensor(_poisson_sqrt_residual_table())
    original_loss = losses.LOSSES["amplitude"]
    original_trainable, original_constraints = steps.set_trainable, steps.apply_constraints
    book = {"scale": 1.0, "loss": 0.0, "floor": 0.0, "sigma": 0.0, "history": []}

    def floor_of(model, mask):
        lam = (model.detach().double() / book["scale"]).clamp(min=1e-5, max=1e4)
        u = (torch.log10(lam) + 5.0) / 0.01
        i0 = u.floor().long().clamp(max=table.numel() - 2)
        frac = u - i0
        f = table[i0] * (1 - frac) + table[i0 + 1] * frac
        if mask is not None:
            f = f * mask
        return float(f.sum()) * book["scale"]

    def amplitude(model, measured_sqrt, mask=None):
        value = original_loss(model, measured_sqrt, mask)
        book["loss"] += float(value.detach())
        book["floor"] += floor_of(model, mask)
        return value

    def set_trainable(run, iteration):
        original_trainable(run, iteration)
        book["scale"] = float(run.data.intensity_scale)
        book["loss"], book["floor"] = 0.0, 0.0

    @torch.no_grad()
    def constraints(run):
        original_constraints(run)
        ratio = book["loss"] / max(book["floor"], 1e-30)
        sigma = book["sigma"]
        sigma = max(0.25, 1.25 * sigma) if ratio < 1.0 else (sigma / 1.25 if sigma / 1.25 >= 0.2 else 0.0)
        book["sigma"] = sigma
        book["history"].append((round(ratio, 4), round(sigma, 3)))
        if sigma > 0:
            for field in (run.state.phase, run.state.amplitude):
                field.copy_(_lateral_gaussian(field, sigma))

    losses.LOSSES["amplitude"] = amplitude  # the one dict steps.gradient_step reads
    steps.set_trainable, steps.apply_constraints = set_trainable, constraints

    def restore():
        losses.LOSSES["amplitude"] = original_loss
        steps.set_trainable, steps.apply_constraints = original_trainable, original_constraints
        print("  discrepancy (loss / floor, sigma px) per iteration:", book["history"], flush=True)

    return restore


def _bright_field_mask(data, geometry, factor: float = 2.0) -> np.ndarray:
    from app_extension.physics.optics import electron_wavelength

    n = data.shape[-1]
    k = (np.arange(n) - n // 2) * geometry.reciprocal_sampling
    radius = factor * geometry.semiangle * 1e-3 / electron_wavelength(geometry.energy)
    return np.hypot(*np.meshgrid(k, k, indexing="ij")) <= radius


def _split_slices(state, factor: int = 2):
    """Each slice becomes (itself, factor - 1 vacuum slices), each 1/factor as thick: the same patterns."""
    out = state.clone()
    s, h, w = state.phase.shape
    phase = torch.zeros(s, factor, h, w, dtype=state.phase.dtype)
    amplitude = torch.ones(s, factor, h, w, dtype=state.amplitude.dtype)
    phase[:, 0], amplitude[:, 0] = state.phase, state.amplitude
    out.phase, out.amplitude = phase.reshape(s * factor, h, w), amplitude.reshape(s * factor, h, w)
    out.slice_thickness = state.slice_thickness / factor
    out.optimizer = None  # the moments are per slice
    return out


#: ``coarse14`` / ``coarse14_hold``: as ``coarse_split`` with 14 of the 20 iterations coarse; ``_hold``
#: keeps the coarse model's thickness after the split (dz no longer learned).
COARSE = {
    "coarse_split": (0.5, False),
    "coarse14": (0.7, False),
    "coarse14_hold": (0.7, True),
    "coarse15_hold": (0.75, True),
    "coarse16_hold": (0.8, True),
}
CANDIDATES.update({name: {} for name in COARSE})


#: ``dzk1`` / ``dzk2``: the forward model unchanged, but the slice thickness's gradient only through
#: the propagator's values at |k| <= 1 or 2 alpha / lambda (elsewhere the propagator uses dz detached).
DZK = {"dzk1": 1.0, "dzk2": 2.0}
CANDIDATES.update({name: {} for name in DZK})


def _dz_through_low_k(factor: float, semiangle_mrad: float):
    original = steps.batch_propagator

    def batch_propagator(run, batch):
        prop = original(run, batch)
        state = run.state
        dz = state.slice_thickness
        state.slice_thickness = dz.detach()
        try:
            fixed = original(run, batch)
        finally:
            state.slice_thickness = dz
        k = torch.sqrt(run.ky**2 + run.kx**2)  # (N, N) grids
        low = k <= factor * semiangle_mrad * 1e-3 / float(state.wavelength)
        return torch.where(low, prop, fixed)

    steps.batch_propagator = batch_propagator
    return lambda: setattr(steps, "batch_propagator", original)


def _coarse_split(data, geometry, config: SolverConfig, fraction: float = 0.5, hold: bool = False):
    first = int(round(config.iterations * fraction))
    coarse = config.replace(num_slices=config.num_slices // 2, slice_thickness=2 * config.slice_thickness)
    state = reconstruct(data, geometry, coarse, iterations=first, show_progressbar=False)
    state = _split_slices(state)
    if hold:
        config = config.replace(start_dz=10**6)
    return reconstruct(
        data, geometry, config, state=state, iterations=config.iterations - first, show_progressbar=False
    )


def _hold_out(fraction: float, num_positions: int, seed: int = 0):
    """Wrap ``steps.batch_order`` and ``steps.gradient_step``: the dz gradient from held-out positions only.

    A fixed random ``fraction`` of the positions never updates the object, probe or
    tilt; their batches (one after each ordinary batch) give the whole dz gradient,
    and the ordinary batches give none. If the thickness at dose is high because a
    larger dz lets the slices fit more of the noise, the held-out gradient is free of it.
    Returns a function that restores the steps.
    """
    held = np.zeros(num_positions, bool)
    held[np.random.default_rng(seed).permutation(num_positions)[: int(round(fraction * num_positions))]] = (
        True
    )
    held_t = torch.as_tensor(held)
    order, step = steps.batch_order, steps.gradient_step

    def batch_order(run, iteration):
        out = []
        for batch in order(run, iteration):
            mask = held_t[batch.cpu()]
            out += [b for b in (batch[~mask], batch[mask]) if b.numel()]
        return out

    def gradient_step(run, batch):
        dz = run.state.slice_thickness
        before = None if dz.grad is None else dz.grad.clone()
        if bool(held_t[batch.cpu()].all()):
            run.adam.zero_grad(set_to_none=True)
            prop = steps.batch_propagator(run, batch)
            model = steps.forward(
                run.state.probe, run.state.phase, run.state.amplitude, steps.batch_corners(run, batch), prop
            )
            loss = steps.LOSSES[run.config.loss](model, run.data.targets(batch), run.data.mask)
            loss.backward()
            run.adam.zero_grad(set_to_none=True)  # the object, probe and tilt learn nothing from them
            return float(loss.detach())
        value = step(run, batch)
        dz.grad = before  # the ordinary batches give no dz gradient
        return value

    steps.batch_order, steps.gradient_step = batch_order, gradient_step

    def restore():
        steps.batch_order, steps.gradient_step = order, step

    return restore


#: ``dzlp05`` / ``dzlp10``: errors in variables? The object, probe and tilt learn as usual, but the
#: slice thickness's gradient comes from a second forward pass through a laterally low-passed copy of
#: the object (Gaussian sigma 0.5 / 1 px), so the noise the slices have fitted does not reach dz.
DZLP = {"dzlp05": 0.5, "dzlp10": 1.0}
CANDIDATES.update({name: {} for name in DZLP})


def _dz_from_second_pass(view):
    """Wrap ``steps.gradient_step``: dz's gradient from a second pass through ``view(state)``.

    ``view`` returns (phase, amplitude, factor): a detached object and the factor on dz its
    propagator takes; probe, tilt and positions are held in that pass.
    """
    step = steps.gradient_step

    def gradient_step(run, batch):
        state = run.state
        dz = state.slice_thickness
        before = None if dz.grad is None else dz.grad.clone()
        value = step(run, batch)
        dz.grad = before
        if not dz.requires_grad:
            return value
        with torch.no_grad():
            phase, amplitude, factor = view(state)
        prop = steps.batch_propagator(run, batch, dz=dz * factor, detach_tilt=True)
        corners = steps.batch_corners(run, batch).detach()
        model = steps.forward(state.probe.detach(), phase, amplitude, corners, prop)
        steps.LOSSES[run.config.loss](model, run.data.targets(batch), run.data.mask).backward()
        return value

    steps.gradient_step = gradient_step
    return lambda: setattr(steps, "gradient_step", step)


def _dz_through_smoothed(sigma: float):
    return _dz_from_second_pass(
        lambda state: (_lateral_gaussian(state.phase, sigma), _lateral_gaussian(state.amplitude, sigma), 1)
    )


#: ``dzmerge``: the object, probe and tilt learn on the requested slices; the slice thickness's gradient
#: comes from a second forward pass through the slices merged in pairs (phases added, amplitudes
#: multiplied) and propagated by 2 dz: the thickness seen at half the depth sampling.
DZMERGE = ("dzmerge",)
CANDIDATES.update({name: {} for name in DZMERGE})


def _dz_through_merged(factor: int = 2):
    from app_extension.solver.thickness_companion import merge

    return _dz_from_second_pass(lambda state: (*merge(state.phase, state.amplitude, factor), factor))


def run_one(data, geometry, dataset: str, num_slices: int, candidate: str, iterations: int) -> dict:
    """One reconstruction; the per-pass dz gradient is recorded by wrapping ``steps.thickness_step``."""
    grads: list[float] = []
    original = steps.thickness_step

    def recording(run):
        g = run.state.slice_thickness.grad
        grads.append(float("nan") if g is None else float(g))
        original(run)

    options = dict(CANDIDATES[candidate])
    if candidate != "default":  # the candidates were measured before the thickness companion
        options.setdefault("dz_companion", False)
    config = SolverConfig(
        num_slices=num_slices,
        slice_thickness=1.3 * THICKNESS / num_slices,
        iterations=iterations,
        **options,
    )
    steps.thickness_step = recording
    restore = _wrap(candidate)
    if candidate in DECAY:
        restore = _decaying_rates(DECAY[candidate])
    if candidate in DZK:
        restore = _dz_through_low_k(DZK[candidate], geometry.semiangle)
    if candidate in HOLDOUT:
        restore = _hold_out(HOLDOUT[candidate], geometry.scan_positions.shape[0])
    if candidate in DISCREPANCY:
        restore = _discrepancy()
    if candidate in DZLP:
        restore = _dz_through_smoothed(DZLP[candidate])
    if candidate in DZMERGE:
        restore = _dz_through_merged()
    t0 = time.perf_counter()
    try:
        if candidate in COARSE:
            state = _coarse_split(data, geometry, config, *COARSE[candidate])
        else:
            mask = _bright_field_mask(data, geometry) if candidate == "mask_2alpha" else None
            state = reconstruct(data, geometry, config, show_progressbar=False, detector_mask=mask)
    finally:
        steps.thickness_step = original
        if restore is not None:
            restore()
    wall = time.perf_counter() - t0
    t = state.tilt_mrad
    truth = TRUTH[dataset]
    thick = np.asarray(state.history["slice_thickness"]) * num_slices
    row = {
        "dataset": dataset,
        "num_slices": num_slices,
        "candidate": candidate,
        "options": CANDIDATES[candidate],
        "iterations": iterations,
        "tilt_mrad": [round(float(v), 3) for v in t],
        "tilt_error_mrad": round(float(np.abs(np.asarray(t) - truth).max()), 3),
        "thickness_A": round(state.thickness, 2),
        "thickness_error": round(state.thickness / THICKNESS - 1, 4),
        "thickness_history_A": np.round(thick, 2).tolist(),
        "loss_history": [round(float(v), 6) for v in state.history["loss"]],
        "dz_gradient_history": [float(f"{g:.4g}") for g in grads],
        "wall_s": round(wall, 1),
    }
    if dataset == "dopants":
        found = bi_depths(state)
        err = np.abs(np.asarray(found["found_A"]) - BI_DEPTHS)
        row["bi_found_A"] = np.round(found["found_A"], 2).tolist()
        row["bi_error_A"] = err.round(2).tolist()
        row["bi_order_ok"] = bool(np.all(np.argsort(found["found_A"]) == np.argsort(BI_DEPTHS)))
        ref = np.abs(np.asarray(found["found_vs_sr_A"]) - BI_DEPTHS)
        row["bi_error_vs_sr_A"] = ref.round(2).tolist()
        row["bi_vs_sr_order_ok"] = bool(np.all(np.argsort(found["found_vs_sr_A"]) == np.argsort(BI_DEPTHS)))
    return row


def _save(row: dict) -> None:
    rows = json.loads(RESULTS.read_text())["runs"] if RESULTS.exists() else []
    key = (row["dataset"], row["num_slices"], row["candidate"], row["iterations"])
    rows = [r for r in rows if (r["dataset"], r["num_slices"], r["candidate"], r["iterations"]) != key]
    rows.append(row)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"truth_thickness_A": THICKNESS, "runs": rows}, indent=1))


def table() -> str:
    rows = json.loads(RESULTS.read_text())["runs"]
    lines = [
        "| data | slices | candidate | iterations | tilt mrad | thickness Å | error | ok |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["candidate"], r["dataset"], r["num_slices"])):
        tol = 0.05
        ok = abs(r["thickness_error"]) < tol and r["tilt_error_mrad"] < 0.5
        t = r["tilt_mrad"]
        lines.append(
            f"| {r['dataset']} | {r['num_slices']} | {r['candidate']} | {r['iterations']} | "
            f"({t[0]:.2f}, {t[1]:.2f}) | {r['thickness_A']:.1f} | {100 * r['thickness_error']:+.1f} % | "
            f"{'yes' if ok else '**no**'} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--datasets",
        nargs="+",
        default=["poisson", "tilt"],
        choices=["poisson", "poisson1e6", "tilt", "dopants"],
    )
    p.add_argument("--slices", type=int, nargs="+", default=[5, 10])
    p.add_argument("--candidates", nargs="+", default=["default"], choices=sorted(CANDIDATES))
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--table", action="store_true", help="print the table of the recorded runs and stop")
    args = p.parse_args(argv)
    if args.table:
        print(table())
        return 0
    if not (DATA / "sto_tilt_8_-3.h5").exists():
        print(f"Reference data not found in {DATA}; nothing to do.", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    for dataset in args.datasets:
        data, geometry = load_dataset(dataset)
        for s in args.slices:
            for name in args.candidates:
                row = run_one(data, geometry, dataset, s, name, args.iterations)
                _save(row)
                print(
                    f"{dataset} {s} {name}: tilt {row['tilt_mrad']} thickness {row['thickness_A']} "
                    f"({100 * row['thickness_error']:+.1f} %) wall {row['wall_s']} s",
                    flush=True,
                )
                print("  thickness", row["thickness_history_A"], flush=True)
                print("  dz grad", row["dz_gradient_history"], flush=True)
                if "bi_error_A" in row:
                    print("  Bi errors", row["bi_error_A"], "vs Sr", row["bi_error_vs_sr_A"], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
