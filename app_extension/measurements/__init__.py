"""Calibration measured from the data: the data-preparation stage before the solver.

:func:`prepare` is the entry point; the modules hold the single steps
(centre and descan, bad pixels, orientation, convergence angle, aberrations).
"""

from .report import CalibrationReport
from .stage import DetectorTransform, PreparedData, PrepareOptions, RecordedCalibration, prepare

__all__ = [
    "CalibrationReport",
    "DetectorTransform",
    "PreparedData",
    "PrepareOptions",
    "RecordedCalibration",
    "prepare",
]
