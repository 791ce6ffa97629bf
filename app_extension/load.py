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
    "EMPAD (.xml + .raw), Quantum Detectors (.mib), NanoMegas blockfile (.blo), DECTRIS ARINA "
    "(_master.h5), HyperSpy (.hspy, .zspy), py4DSTEM/EMD (.h5, .emd), or a plain HDF5 file with one 4D "
    "dataset"
)

_HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".emd")


class LoadError(ValueError):
    """The file is missing, unreadable, or holds no 4D-STEM data."""


class _Failure(Exception):
    """Why one way of reading the file failed (the reason shown to the user)."""


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
        A file RosettaSciIO reads (for EMPAD, the .xml file; for DECTRIS
        ARINA, the _master.h5 file).
    scan_shape
        (scan_y, scan_x), to reshape a stack of patterns (positions, ky, kx),
        as some .mib files load, into a scan.
    index
        Which signal to take when the file holds several 4D signals.
    lazy
        Load lazily (dask) instead of into memory (readers that cannot,
        such as ARINA's, load into memory).

    Returns
    -------
    hyperspy.signals.BaseSignal
        Navigation axes (scan_x, scan_y), signal axes (kx, ky); array order
        (scan_y, scan_x, ky, kx).

    Raises
    ------
    LoadError
        With the reason and what to do about it (one reason: the reader the
        file's extension and content point to, not every reader's failure).
    """
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
    if path.is_file() and path.stat().st_size == 0:
        raise LoadError(f"{path} is empty (0 bytes); the copy or the acquisition did not finish.")
    with _quiet_rosettasciio():
        try:
            loaded = _read(path, lazy)
        except _Failure as failure:
            raise LoadError(
                f"Could not read {path}: {failure}. app-ptycho reads what RosettaSciIO reads: "
                f"{SUPPORTED_FORMATS}."
            ) from None
    signal = _pick(loaded, path, index)
    return _as_scan(signal, path, scan_shape)


class _quiet_rosettasciio:
    """Drop HyperSpy's "please report this error to the RosettaSciIO developers" log lines.

    HyperSpy logs them whenever a reader fails, also when the failure is
    expected (a reader tried on a file of another kind) or reported here.
    """

    def __enter__(self):
        import logging

        self._logger = logging.getLogger("hyperspy.io")
        self._logger.addFilter(self._filter)
        return self

    def __exit__(self, *exc):
        self._logger.removeFilter(self._filter)
        return False

    @staticmethod
    def _filter(record) -> bool:
        return "report this error to the RosettaSciIO developers" not in record.getMessage()


def _hs_load(path: Path, lazy: bool, reader: str | None = None):
    """hyperspy.api.load with one reader; a reader that cannot load lazily loads into memory."""
    import hyperspy.api as hs

    kwargs = {} if reader is None else {"file_format": reader}
    try:
        return hs.load(path, lazy=lazy, **kwargs)
    except NotImplementedError:
        if not lazy:
            raise
        return hs.load(path, lazy=False, **kwargs)


def _reason(error: Exception, reader: str | None = None) -> str:
    text = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
    who = f"RosettaSciIO's {reader} reader" if reader else "RosettaSciIO"
    return f"{who} failed ({type(error).__name__}: {text}); the file may be truncated or corrupt"


def _read(path: Path, lazy: bool):
    """The file's signal(s), with the reader its extension and content point to."""
    suffix = path.suffix.lower()
    if suffix in _HDF5_SUFFIXES:
        return _read_hdf5(path, lazy)
    if suffix == ".xml":
        if not _is_empad_xml(path):
            raise _Failure(
                "it is not an EMPAD .xml file (no <raw_file> entry naming the .raw data); give the .xml "
                "file written with the EMPAD .raw file"
            )
        try:
            return _hs_load(path, lazy, "EMPAD")
        except Exception as error:  # noqa: BLE001 - reported as the one reason
            raise _Failure(_reason(error, "EMPAD")) from None
    try:
        return _hs_load(path, lazy)
    except ValueError as error:
        if "multiple file readers" not in str(error):
            raise _Failure(_reason(error)) from None
        readers = _readers_in(str(error))
    except Exception as error:  # noqa: BLE001
        raise _Failure(_reason(error)) from None
    first = None
    for reader in readers:
        try:
            return _hs_load(path, lazy, reader)
        except Exception as error:  # noqa: BLE001
            first = first or _reason(error, reader)
    raise _Failure(first or "no RosettaSciIO reader reads it")


def _readers_in(message: str) -> list[str]:
    import re

    found = re.search(r"\[(.*)\]", message)
    return re.findall(r"'([^']+)'", found.group(1)) if found else []


def _is_empad_xml(path: Path) -> bool:
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError):
        return False
    return root.find("raw_file") is not None


def _h5_kind(path: Path) -> str:
    """What an HDF5 file holds: "emd1" (py4DSTEM), "hspy", "arina", "emd" or "plain"."""
    import h5py

    with h5py.File(path, "r") as f:
        attrs = f.attrs
        if attrs.get("emd_group_type") == "file" and int(attrs.get("version_major", 0)) == 1:
            return "emd1"
        if _text(attrs.get("file_format", "")).lower() == "hyperspy":
            return "hspy"
        data = f.get("entry/data")
        if (
            isinstance(data, h5py.Group)
            and len(data)
            and all(isinstance(v, h5py.Dataset) and v.ndim == 3 for v in data.values())
        ):
            return "arina"
        if "version_major" in attrs or "Version" in f or "Data" in f:
            return "emd"
    return "plain"


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _read_hdf5(path: Path, lazy: bool):
    import h5py

    if not h5py.is_hdf5(path):
        raise _Failure(
            "it is not an HDF5 file (its first bytes are not an HDF5 signature): the file is truncated or "
            "corrupt, or its extension is wrong"
        )
    try:
        kind = _h5_kind(path)
    except OSError as error:
        raise _Failure(f"h5py cannot open it ({error}); the file may be truncated or corrupt") from None
    if kind == "emd1":
        errors: list[str] = []
        loaded = _load_py4dstem(path, lazy, errors)
        if loaded is not None:
            return loaded
        try:
            return _hs_load(path, lazy, "EMD")
        except Exception as error:  # noqa: BLE001
            raise _Failure(errors[0] if errors else _reason(error, "EMD")) from None
    if kind == "plain":
        return _load_plain_hdf5(path)
    reader = {"hspy": "HSPY", "arina": "Arina", "emd": "EMD"}[kind]
    try:
        return _hs_load(path, lazy, reader)
    except Exception as error:  # noqa: BLE001
        if kind == "emd":  # not an EMD variant RosettaSciIO knows: perhaps plain data with a Data group
            try:
                return _load_plain_hdf5(path)
            except _Failure:
                pass
        raise _Failure(_reason(error, reader)) from None


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


def _load_plain_hdf5(path: Path):
    """A plain HDF5 file with one 4D dataset (or one 3D or higher one, for the messages that follow)."""
    import h5py
    import hyperspy.api as hs

    try:
        with h5py.File(path, "r") as f:
            found = []
            f.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
            four = [n for n in found if f[n].ndim == 4]
            more = [n for n in found if f[n].ndim >= 3]
            if len(four) == 1:
                name = four[0]
            elif not four and len(more) == 1:
                name = more[0]  # a stack (3D) or 5D+: _as_scan says what to do
            else:
                shapes = ", ".join(f"{n} {f[n].shape}" for n in found[:8]) or "no datasets"
                what = f"{len(four)} 4D datasets"
                raise _Failure(
                    f"it is a plain HDF5 file with {what} ({shapes}); app-ptycho needs exactly one "
                    "(scan_y, scan_x, ky, kx) dataset: save the one to use on its own"
                )
            data = f[name][()]
            attrs = {k: _plain(v) for k, v in f.attrs.items()}
    except OSError as error:
        raise _Failure(f"h5py cannot read it ({error}); the file may be truncated or corrupt") from None
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
    if isinstance(loaded, list) and len(loaded) == 1:
        loaded = loaded[0]
    if not isinstance(loaded, list):
        if index not in (None, 0):
            raise LoadError(
                f"{path} holds one signal, so --signal-index {index} is out of range (only 0); leave "
                "--signal-index out."
            )
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
        extra = ""
        if len(shape) > 4:
            ones = [i for i, n in enumerate(shape) if n == 1]
            extra = (
                f" Its axes {ones} have length 1: remove them (numpy.squeeze) and save the 4D array."
                if len(shape) - len(ones) == 4
                else " Select one 4D part of it (e.g. data[0] in Python) and save that."
            )
        else:
            extra = " A single image or spectrum cannot be reconstructed; give the 4D-STEM scan."
        raise LoadError(
            f"{path} holds a {len(shape)}D array {shape}; ptychography needs 4D-STEM data "
            f"(scan_y, scan_x, ky, kx).{extra}"
        )
    elif scan_shape is not None and tuple(int(v) for v in scan_shape) != shape[:2]:
        raise LoadError(f"--scan-shape {tuple(scan_shape)} does not match the file's scan {shape[:2]}.")
    if signal.axes_manager.signal_dimension != 2 or signal.axes_manager.navigation_dimension != 2:
        # e.g. py4DSTEM files load with all four axes as signal axes
        signal = signal.transpose(signal_axes=2)
    return signal
