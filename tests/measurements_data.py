"""Small simulated scans with known imperfections for the tests of app_extension.measurements.

One simulation (about 4 s on one core) is shared by all measurement tests in a session.
"""

from __future__ import annotations

import functools

import numpy as np

# What the "microscope" did. The detector-frame values are the simulation's.
ROTATION = 15.0  # deg, fast scan axis at +15° in the detector frame
DEFOCUS = 150.0  # Å, underfocus
C12, PHI12 = 20.0, 0.4  # Å, rad (detector frame)
UNIT_CELLS = 4
THICKNESS = UNIT_CELLS * 3.905
SCAN = (24, 24)
N = 48
SAMPLING = 0.06  # 1/Å per pixel
AXIS = (25.3, 22.6)  # (row, col) at the scan centre, recorded frame
DESCAN = np.array([[0.04, -0.02], [0.01, 0.03]])  # d(row, col)/d(y, x) px/Å
HOT = [(5, 30), (40, 12), (24, 20)]  # far dark field, dark field, inside the bright-field disk
DEAD = [(24, 10), (2, 40), (30, 25)]
ELECTRONS = 5e4


@functools.cache
def ideal():
    """The SimulatedDataset: rotated scan, defocus and astigmatism, optic axis at N // 2."""
    import torch

    from app_extension.simulate import simulate_tilted_crystal

    torch.set_num_threads(1)
    return simulate_tilted_crystal(
        tilt=(5.0, -3.0),
        unit_cells_z=UNIT_CELLS,
        scan_shape=SCAN,
        pattern_size=N,
        reciprocal_sampling=SAMPLING,
        defocus=DEFOCUS,
        scan_rotation=ROTATION,
        aberrations={"C12": C12, "phi12": PHI12},
    )


def scan_positions():
    """Nominal raster (y, x) in Å in the scan frame."""
    from app_extension.solver.config import Geometry

    return Geometry.raster(SCAN, ideal().scan_step)


@functools.cache
def recorded_data(transpose: bool = False, electrons: float | None = ELECTRONS) -> np.ndarray:
    """The ideal patterns with an off-centre axis, descan, bad pixels and shot noise."""
    from app_extension.measurements.synthetic import corrupt_patterns

    return corrupt_patterns(
        ideal().data,
        scan_positions(),
        axis=AXIS,
        descan=DESCAN,
        transpose=transpose,
        hot=HOT,
        dead=DEAD,
        electrons=electrons,
    )


def recorded_calibration(defocus: float = DEFOCUS):
    from app_extension.measurements import RecordedCalibration

    return RecordedCalibration(300e3, 22.0, ideal().scan_step, SAMPLING, defocus)
