"""Reading images and slice stacks, with their calibration in Å, out of HyperSpy signals.

The analysis tools accept three kinds of input:

* a ptycho_app result: a :class:`~hyperspy.signals.ComplexSignal2D` with the
  slices on the navigation axis ``z`` (its phase is used, unwrapped with the
  stored ``phase_turns`` when present);
* a phase image, e.g. the mean phase over slices, as a Signal2D;
* any calibrated Signal2D (axes in Å, nm, pm, ...), read through pint.
"""

from __future__ import annotations

import numpy as np

from ..units import parse_units as _parse_units
from ..units import ureg

__all__ = ["axis_in_angstrom", "image_from_signal", "stack_from_signal", "as_image"]

_RESULT = "Signal.Ptychography"


def axis_in_angstrom(axis) -> np.ndarray:
    """Pixel-centre coordinates of a HyperSpy axis in Å (its units read with pint)."""
    units = _parse_units(getattr(axis, "units", None))
    name = getattr(axis, "name", "") or "axis"
    if units is None:
        raise ValueError(
            f"The axis '{name}' is not calibrated (units {axis.units!r}); set its scale and units in a "
            "length (e.g. s.axes_manager['x'].units = 'Å'), or pass a numpy array with sampling=."
        )
    q = ureg.Quantity(1.0, units)
    if q.dimensionality != ureg.meter.dimensionality:
        raise ValueError(f"The axis '{name}' has units {axis.units!r}, which are not a length.")
    factor = float(q.to("Å").magnitude)
    return (axis.offset + axis.scale * np.arange(axis.size)) * factor


def _signal_axes(signal):
    sig = signal.axes_manager.signal_axes
    if len(sig) != 2:
        raise ValueError(f"Expected a 2D signal (an image or a stack of slices), got {len(sig)} signal axes.")
    return axis_in_angstrom(sig[0]), axis_in_angstrom(sig[1])  # x, y


def stack_from_signal(signal) -> tuple[np.ndarray, np.ndarray, np.ndarray, float | None]:
    """(phase (S, H, W), x (W,), y (H,) in Å, dz in Å or None) of a result or an image.

    A complex signal gives its (unwrapped) phase; a real one its data. A
    signal without a navigation axis gives a stack of one.
    """
    data = np.asarray(signal.data)
    x, y = _signal_axes(signal)
    if np.iscomplexobj(data):
        phase = np.angle(data).astype(np.float64)
        md = signal.metadata
        if md.has_item(f"{_RESULT}.phase_turns"):
            turns = np.asarray(md.get_item(f"{_RESULT}.phase_turns"), dtype=np.float64)
            if turns.shape == phase.shape:
                phase = phase + 2 * np.pi * turns
    else:
        phase = data.astype(np.float64)
    nav = signal.axes_manager.navigation_axes
    if len(nav) > 1:
        raise ValueError(
            f"Expected at most one navigation axis (the slices), got {len(nav)}; pick one image "
            "with s.inav[...] first."
        )
    if phase.ndim == 2:
        phase = phase[None]
    dz = None
    if nav and nav[0].size > 1:
        z = axis_in_angstrom(nav[0])
        dz = float(z[1] - z[0])
    elif signal.metadata.has_item(f"{_RESULT}.slice_thickness"):
        dz = float(signal.metadata.get_item(f"{_RESULT}.slice_thickness"))
    return phase, x, y, dz


def image_from_signal(signal, use_post_alignment: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image (H, W), x (W,), y (H,) in Å): the phase image an analysis works on.

    A ptycho_app result gives the mean phase over its slices, or, for an FPP
    result with ``use_post_alignment``, the mean of its post-aligned slices
    (``metadata.Signal.Ptychography.Post_alignment.mean_phase``). A Signal2D
    gives its data (a stack of them their mean).
    """
    key = f"{_RESULT}.Post_alignment.mean_phase"
    if use_post_alignment and signal.metadata.has_item(key):
        signal = signal.metadata.get_item(key)
    phase, x, y, _ = stack_from_signal(signal)
    return phase.mean(axis=0), x, y


def as_image(image, sampling=None, origin=(0.0, 0.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, x, y in Å) from a HyperSpy signal or from a numpy array with ``sampling`` (Å/px).

    ``origin`` is the (y, x) in Å of pixel [0, 0] for an array.
    """
    if hasattr(image, "axes_manager"):
        return image_from_signal(image)
    array = np.asarray(image, dtype=np.float64)
    if array.ndim == 3:
        array = array.mean(axis=0)
    if array.ndim != 2:
        raise ValueError(f"Expected a 2D image, got an array of shape {array.shape}.")
    if sampling is None:
        raise ValueError("A numpy image needs its pixel size: pass sampling= (Å per pixel).")
    y = origin[0] + float(sampling) * np.arange(array.shape[0])
    x = origin[1] + float(sampling) * np.arange(array.shape[1])
    return array, x, y
