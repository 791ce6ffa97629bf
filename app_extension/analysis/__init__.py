"""Analysis of reconstructions: column metrology, information limit, depth profiles.

The tools take and return HyperSpy signals (a ptycho_app result, a mean-phase
image or any calibrated Signal2D); their numerical cores are plain numpy/scipy
functions of arrays with coordinates in Å.
"""

from .columns import (
    Lattice,
    find_lattice,
    fit_columns,
    perovskite_displacements,
    perovskite_metrology,
)
from .depth import column_profiles, depth_profile
from .information_limit import fourier_ring_correlation, information_limit

__all__ = [
    "Lattice",
    "find_lattice",
    "fit_columns",
    "perovskite_displacements",
    "perovskite_metrology",
    "column_profiles",
    "depth_profile",
    "information_limit",
    "fourier_ring_correlation",
]
