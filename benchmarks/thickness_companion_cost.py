"""Cost per iteration of the thickness companion (``dz_companion``) at 10 slices.

``sto_tilt_8_-3.h5`` as Poisson counts at 1e5 e/Å^2 (as validation/dose.py), 10 slices, default
options, two 4-iteration runs with and without the companion, interleaved; the median time of
iterations 2-4 (``state.history["time"]``). Needs ``../shared/data``.

Usage::

    python benchmarks/thickness_companion_cost.py --threads 2
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1] / "validation"))

from depth_prior import THICKNESS, load  # noqa: E402

from app_extension.solver.config import SolverConfig  # noqa: E402
from app_extension.solver.engine import reconstruct  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data, geometry = load("poisson")
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeats):
        for companion in (False, True):
            config = SolverConfig(
                num_slices=10, slice_thickness=1.3 * THICKNESS / 10, iterations=4, dz_companion=companion
            )
            state = reconstruct(data, geometry, config, show_progressbar=False)
            times[companion] += np.diff([0.0, *state.history["time"]])[1:].tolist()
    without, with_ = np.median(times[False]), np.median(times[True])
    print(f"dz_companion=False: {without:.2f} s/it, True: {with_:.2f} s/it, ratio {with_ / without:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
