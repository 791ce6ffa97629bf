"""Where app_extension's iteration time goes: torch.profiler over one iteration.

Runs one warm-up iteration of the default APP reconstruction on the benchmark
dataset, then profiles the next one and sorts every torch operator's *self*
CPU time into FFT, elementwise, gather/scatter, optimizer (Adam) and other.
Time spent outside torch operators (numpy in the tilt/drift step, Python) is
the iteration's wall time minus the operators' self time. The per-step timers
wrap the engine's helpers without changing them.

Usage (in /work/venv)::

    OMP_NUM_THREADS=2 python benchmarks/profile_app.py --slices 10 --threads 2
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_app import app_inputs
from common import emit, load_dataset, new_record, set_threads, worker_args

CATEGORIES = {
    "FFT": ("aten::_fft_",),
    "gather/scatter": (
        "aten::index",
        "aten::_index_put",
        "aten::index_put",
        "aten::scatter",
        "aten::gather",
        "aten::index_add",
        "aten::take",
        "aten::index_select",
        "aten::_unsafe_index",
    ),
    "optimizer (Adam)": ("aten::_foreach_", "aten::lerp", "aten::addcmul", "aten::addcdiv"),
}
ELEMENTWISE = (
    "mul",
    "add",
    "sub",
    "div",
    "polar",
    "abs",
    "sqrt",
    "pow",
    "exp",
    "cos",
    "sin",
    "complex",
    "view_as_real",
    "view_as_complex",
    "real",
    "imag",
    "sum",
    "copy_",
    "clamp",
    "where",
    "neg",
    "conj",
    "resolve_conj",
    "fill_",
    "zero_",
    "mean",
    "reciprocal",
    "atan2",
    "angle",
    "square",
    "_conj",
    "tan",
    "floor",
    "sgn",
    "rsub",
    "ones_like",
    "zeros_like",
    "empty_like",
    "clone",
    "_to_copy",
)


def categorize(name: str) -> str:
    for cat, prefixes in CATEGORIES.items():
        if any(name.startswith(p) for p in prefixes):
            return cat
    base = name.split("::")[-1]
    if base.rstrip("_") in ELEMENTWISE or base in ELEMENTWISE:
        return "elementwise"
    return "other"


def main(argv=None) -> None:
    p = worker_args(__doc__)
    p.add_argument("--table", type=int, default=25, help="print the top N operators")
    args = p.parse_args(argv)
    set_threads(args.threads)
    import torch
    from torch.profiler import ProfilerActivity, profile

    import app_extension.solver.engine as engine
    import app_extension.solver.steps as steps_mod
    from app_extension.solver.state import ReconstructionState

    ds = load_dataset(args.data)
    geom, cfg = app_inputs(ds, args, iterations=1)

    # Step timers: wrap helpers the engine looks up at call time.
    steps: dict[str, float] = defaultdict(float)

    def timed(name, fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                steps[name] += time.perf_counter() - t0

        return wrapper

    steps_mod.move_drift_into_tilt = timed("drift-to-tilt step (numpy)", steps_mod.move_drift_into_tilt)
    steps_mod.smooth_depth = timed("depth prior", steps_mod.smooth_depth)
    steps_mod.forward = timed("forward model (call)", steps_mod.forward)
    ReconstructionState.clone = timed("state.clone (last good)", ReconstructionState.clone)
    engine.MeasuredData = timed("MeasuredData setup (per call)", engine.MeasuredData)

    state = engine.reconstruct(ds.intensities, geom, cfg, show_progressbar=False)  # warm-up, iteration 0
    steps.clear()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        state = engine.reconstruct(
            ds.intensities, geom, cfg, state=state, iterations=1, show_progressbar=False
        )
        wall = time.perf_counter() - t0

    by_cat: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    ops = []
    for ev in prof.key_averages():
        self_s = ev.self_cpu_time_total / 1e6
        if ev.key.startswith("aten::") or ev.key.startswith("prim::"):
            cat = categorize(ev.key)
            by_cat[cat] += self_s
            counts[cat] += ev.count
            ops.append((self_s, ev.count, ev.key, cat))
    ops.sort(reverse=True)
    adam = sum(ev.cpu_time_total for ev in prof.key_averages() if "Adam.step" in ev.key) / 1e6
    backward = sum(
        ev.cpu_time_total for ev in prof.key_averages() if ev.key.startswith("autograd::engine::evaluate")
    )
    fft_calls = sum(ev.count for ev in prof.key_averages() if "_fft_" in ev.key)
    total_ops = sum(by_cat.values())

    print(f"\nOne APP iteration, {args.slices} slices, {args.threads} threads, wall {wall:.2f} s")
    print(f"{'category':<26}{'self s':>9}{'share':>8}{'calls':>9}")
    for cat, s in sorted(by_cat.items(), key=lambda kv: -kv[1]):
        print(f"{cat:<26}{s:9.2f}{s / wall:8.1%}{counts[cat]:9d}")
    outside = wall - total_ops
    print(f"{'outside torch ops':<26}{outside:9.2f}{outside / wall:8.1%}")
    print(f"\nAdam.step total (incl. children): {adam:.2f} s; FFT calls: {fft_calls}")
    print(f"autograd backward ops (incl. children, summed over nodes): {backward / 1e6:.2f} s")
    print("\nStep timers (wall):")
    for name, s in sorted(steps.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<32}{s:8.2f} s")
    print(f"\nTop {args.table} operators by self time:")
    for s, c, k, cat in ops[: args.table]:
        print(f"  {k:<40}{s:8.3f} s {c:7d} calls  [{cat}]")

    print(f"\nTop {args.table} (operator, input shapes) by self time:")
    shaped = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
    for ev in shaped[: args.table]:
        shapes = str(ev.input_shapes)[:70]
        print(f"  {ev.key:<24}{ev.self_cpu_time_total / 1e6:8.3f} s {ev.count:6d} calls  {shapes}")

    rec = new_record(
        "app_extension",
        "profile",
        args,
        ds,
        iterations=1,
        iter_seconds=[wall],
        versions={"torch": torch.__version__},
    )
    rec.extra = {
        "categories_s": dict(by_cat),
        "category_calls": dict(counts),
        "outside_ops_s": outside,
        "adam_step_total_s": adam,
        "fft_calls": fft_calls,
        "steps_s": dict(steps),
        "top_ops": [[k, s, c, cat] for s, c, k, cat in ops[: args.table]],
    }
    emit(rec)


if __name__ == "__main__":
    main()
