"""The 4D-STEM signal for multislice ptychography (placeholder, being written)."""

from __future__ import annotations

from hyperspy._signals.lazy_signal2d import LazySignal2D
from hyperspy._signals.signal2d import Signal2D

__all__ = ["AppPtychography2D", "LazyAppPtychography2D"]


class AppPtychography2D(Signal2D):
    """4D-STEM data (scan y, x; detector ky, kx) for APP/FPP multislice ptychography."""

    _signal_type = "ptychography"


class LazyAppPtychography2D(AppPtychography2D, LazySignal2D):
    """Lazy (dask) version of :class:`AppPtychography2D`."""

    _lazy = True
