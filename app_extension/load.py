"""Read a 4D-STEM file into a HyperSpy signal, whatever format RosettaSciIO reads.

:func:`load_4dstem` wraps :func:`hyperspy.api.load` with what a command line
needs: a clear error for a missing or unreadable file, the reader choice for
``.h5`` files that several readers claim (py4DSTEM/EMD 1.0 files), a 4D
signal picked out of a multi-signal file, a plain HDF5 file with one 4D
dataset, and a (positions, ky, kx) stack reshaped to the scan when the scan
shape is given. It returns the signal with navigation (scan_y, scan_x) and
signal (ky, kx) axes; the calibration is whatever the file had.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["LoadError", "load_4dstem", "SUPPORTED_FORMATS"]

#: The formats named in error messages (all of RosettaSciIO's 4D-STEM readers work).
SUPPORTED_FORMATS = (
    "EMPAD (.xml + .raw), Quantum Detectors (.mib), NanoMegas blockfile (.blo), "
    "HyperSpy (.hspy, .zspy), py4DSTEM/EMD (.h5, .emd), or a plain HDF5 file with one 4D dataset"
)

# h5 readers to try, in order, when several RosettaSciIO readers claim a file.
_H5_READERS = ("EMD", "HSPY", "USID", "Arina")


class LoadError(ValueError):
    """The file is missing, unreadable, or holds no 4D-STEM data."""


def load_4dstem(
    path: str | os.PathLike,
    scan_shape: tuple[int, int] | None = None,
    index: int | None = None,
    lazy: bool = False,
):
    """Load a 4D-STEM data set as a HyperSpy signal with 2 navigation and 2 signal axes.

    Parameters
    ----------
    path
        A file RosettaSciIO reads (for EMPAD, the .xml file).
    scan_shape
        (scan_y, scan_x), to reshape a stack of patterns (positions, ky, kx),
        as some .mib files load, into a scan.
    index
        Which signal to take when the file holds several 4D signals.
    lazy
        Load lazily (dask) instead of into memory.

    Returns
    -------
    hyperspy.signals.BaseSignal
        Navigation axes (scan_x, scan_y), signal axes (kx, ky); array order
        (scan_y, scan_x, ky, kx).

    Raises
    ------
    LoadError
        With the reason and what to do about it.
    """
    import hyperspy.api as hs

    path = Path(path)
    if not path.exists():
        raise LoadError(
            f"{path}: no such file or directory. Check the path (current directory: {Path.cwd()})."
        )
    if path.is_dir() and path.suffix.lower() != ".zspy":
        raise LoadError(f"{path} is a directory; give the data file inside it (for EMPAD, the .xml file).")
    if path.suffix.lower() == ".raw":
        raise LoadError(
            f"{path}: for EMPAD data give the .xml file next to the .raw file, not the .raw file."
        )
    errors = []
    loaded = _load_py4dstem(path, lazy, errors) if _is_emd1(path) else None
    if loaded is None:
        try:
            loaded = hs.load(path, lazy=lazy)
        except Exception as error:  # noqa: BLE001 - any reader failure is reported below
            errors.append(f"{type(error).__name__}: {error}")
    if loaded is None and path.suffix.lower() in (".h5", ".hdf5", ".emd"):
        for reader in _H5_READERS:
            try:
                loaded = hs.load(path, lazy=lazy, file_format=reader)
                break
            except Exception as error:  # noqa: BLE001
                errors.append(f"{reader} reader: {type(error).__name__}: {error}")
        if loaded is None:
            loaded = _load_plain_hdf5(path, errors)
    if loaded is None:
        detail = "; ".join(e.splitlines()[0][:300] for e in errors)
        raise LoadError(
            f"Could not read {path} ({detail}). app-ptycho reads what RosettaSciIO reads: {SUPPORTED_FORMATS}."
        )
    signal = _pick(loaded, path, index)
    return _as_scan(signal, path, scan_shape)


def _is_emd1(path: Path) -> bool:
    """True for an EMD 1.0 file (what py4DSTEM 0.14 writes)."""
    if path.suffix.lower() not in (".h5", ".hdf5", ".emd") or not path.is_file():
        return False
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("emd_group_type") == "file" and int(f.attrs.get("version_major", 0)) == 1
    except (OSError, ValueError, TypeError):
        return False


def _load_py4dstem(path: Path, lazy: bool, errors: list):
    """A py4DSTEM DataCube file through py4DSTEM itself, keeping its full calibration.

    Returns ``None`` (and lets RosettaSciIO's EMD reader try) when py4DSTEM is
    not installed or the file holds no single DataCube.
    """
    try:
        from .py4dstem import datacube_to_signal, require_py4dstem

        py4dstem = require_py4dstem()
    except ImportError:
        return None
    try:
        cube = py4dstem.read(str(path))
    except Exception as error:  # noqa: BLE001
        errors.append(f"py4DSTEM.read: {type(error).__name__}: {error}")
        return None
    if not isinstance(cube, py4dstem.DataCube):
        errors.append(f"py4DSTEM.read: the file holds a {type(cube).__name__}, not one DataCube")
        return None
    signal = datacube_to_signal(cube, lazy=lazy)
    if signal.metadata.get_item("Acquisition_instrument.TEM.detector_transposed", False):
        # py4DSTEM's QR_flip: the detector axes are swapped with respect to the scan.
        names = [axis.name for axis in signal.axes_manager.signal_axes]
        signal = signal.swap_axes(2, 3)
        for axis, name in zip(signal.axes_manager.signal_axes, names, strict=True):
            axis.name = name
        signal.metadata.set_item("Acquisition_instrument.TEM.detector_transposed", False)
    return signal


def _load_plain_hdf5(path: Path, errors: list):
    """A plain HDF5 file with exactly one 4D dataset (and calibration attributes, if any)."""
    import h5py
    import hyperspy.api as hs

    try:
        with h5py.File(path, "r") as f:
            found = []
            f.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
            four = [n for n in found if f[n].ndim == 4]
            if len(four) != 1:
                errors.append(f"plain HDF5: {len(four)} 4D datasets found ({four[:5]})")
                return None
            data = f[four[0]][()]
            attrs = {k: _plain(v) for k, v in f.attrs.items()}
    except OSError as error:
        errors.append(f"h5py: {error}")
        return None
    signal = hs.signals.Signal2D(data)
    signal.metadata.General.title = path.stem
    signal.metadata.General.original_filename = path.name
    # Calibration attributes named as in the project's reference files (../shared/data).
    step = attrs.get("scan_step_A")
    if step is not None:
        for axis in signal.axes_manager.navigation_axes:
            axis.scale, axis.units = float(step), "Å"
    dk = attrs.get("reciprocal_pixel_A-1")
    if dk is not None:
        for axis in signal.axes_manager.signal_axes:
            axis.scale, axis.units = float(dk), "1 / Å"
            axis.offset = -(axis.size // 2) * float(dk)
    if "energy_eV" in attrs:
        signal.metadata.set_item("Acquisition_instrument.TEM.beam_energy", float(attrs["energy_eV"]) / 1e3)
    if "semiangle_mrad" in attrs:
        signal.metadata.set_item(
            "Acquisition_instrument.TEM.convergence_angle", float(attrs["semiangle_mrad"])
        )
    if "defocus_A" in attrs:
        signal.metadata.set_item("Acquisition_instrument.TEM.defocus", float(attrs["defocus_A"]))
    signal.original_metadata.add_dictionary({"hdf5_attributes": attrs})
    return signal


def _plain(value):
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _dims(signal) -> int:
    return len(signal.data.shape)


def _pick(loaded, path: Path, index: int | None):
    if not isinstance(loaded, list):
        return loaded
    candidates = [s for s in loaded if _dims(s) in (3, 4)]
    if index is not None:
        if not 0 <= index < len(loaded):
            raise LoadError(
                f"{path} holds {len(loaded)} signals; --signal-index must be 0 to {len(loaded) - 1}."
            )
        return loaded[index]
    four = [s for s in loaded if _dims(s) == 4]
    if len(four) == 1:
        return four[0]
    if not candidates:
        shapes = ", ".join(f"{i}: {s.data.shape}" for i, s in enumerate(loaded))
        raise LoadError(f"{path} holds {len(loaded)} signals but none is 4D-STEM data ({shapes}).")
    listing = ", ".join(f"{i}: {s.metadata.General.title!r} {s.data.shape}" for i, s in enumerate(loaded))
    raise LoadError(f"{path} holds several data sets ({listing}); choose one with --signal-index.")


def _as_scan(signal, path: Path, scan_shape: tuple[int, int] | None):
    shape = tuple(signal.data.shape)
    if len(shape) == 3:
        if scan_shape is None:
            raise LoadError(
                f"{path} holds a 3D array {shape}, but ptychography needs 4D-STEM data "
                "(scan_y, scan_x, ky, kx). If it is a stack of patterns from a raster scan, give the scan "
                "shape with --scan-shape NY NX (NY * NX must equal "
                f"{shape[0]})."
            )
        ny, nx = (int(v) for v in scan_shape)
        if ny * nx != shape[0]:
            raise LoadError(
                f"--scan-shape {ny} {nx} gives {ny * nx} positions but {path} holds {shape[0]} patterns."
            )
        import hyperspy.api as hs

        data = signal.data.reshape(ny, nx, *shape[1:])
        calibrated = hs.signals.Signal2D(
            data,
            metadata=signal.metadata.as_dictionary(),
            original_metadata=signal.original_metadata.as_dictionary(),
        )
        for new, old in zip(
            calibrated.axes_manager.signal_axes, signal.axes_manager.signal_axes, strict=True
        ):
            new.scale, new.offset, new.units, new.name = old.scale, old.offset, old.units, old.name
        signal = calibrated
    elif len(shape) != 4:
        raise LoadError(
            f"{path} holds a {len(shape)}D array {shape}; ptychography needs 4D-STEM data (scan_y, scan_x, ky, kx)."
        )
    elif scan_shape is not None and tuple(int(v) for v in scan_shape) != shape[:2]:
        raise LoadError(f"--scan-shape {tuple(scan_shape)} does not match the file's scan {shape[:2]}.")
    if signal.axes_manager.signal_dimension != 2 or signal.axes_manager.navigation_dimension != 2:
        # e.g. py4DSTEM files load with all four axes as signal axes
        signal = signal.transpose(signal_axes=2)
    return signal
