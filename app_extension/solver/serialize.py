"""One serialisation of a reconstruction, shared by every file that holds one.

A run is written as a flat *tree*: a JSON document (numbers, strings, lists,
dicts) plus named numpy arrays that the document points to with
``{"__array__": name}``. The same tree goes into

* a checkpoint: an HDF5 file (:func:`write_h5` / :func:`read_h5`);
* a HyperSpy result: ``metadata.Signal.Ptychography.State`` (``json`` and
  ``arrays``), which .hspy and .zspy store as they store any metadata;
* a py4DSTEM file: an HDF5 group inside the emd file (:func:`write_h5`).

No pickle is involved anywhere, so reading a file never runs code from it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np
import torch

__all__ = ["FORMAT", "flatten", "unflatten", "write_h5", "read_h5", "NotAStateError"]

#: Format tag written into every tree; bumped when the layout changes.
FORMAT = "app_extension-state-2"


class NotAStateError(ValueError):
    """The file or node does not hold an app_extension reconstruction state."""


def flatten(tree) -> tuple[str, dict[str, np.ndarray]]:
    """Split a nested structure into a JSON string and a dict of arrays.

    Tensors and arrays become entries of the dict; everything else must be
    JSON-representable (``inf`` and ``nan`` are allowed).
    """
    arrays: dict[str, np.ndarray] = {}

    def walk(node, path: str):
        if isinstance(node, torch.Tensor):
            node = node.detach().cpu().numpy()
        if isinstance(node, np.ndarray):
            name = path or "root"
            arrays[name] = np.array(node, copy=True)  # (ascontiguousarray would make 0-d arrays 1-d)
            return {"__array__": name}
        if isinstance(node, Mapping):
            return {str(k): walk(v, f"{path}__{k}" if path else str(k)) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return [walk(v, f"{path}__{i}") for i, v in enumerate(node)]
        if isinstance(node, np.generic):
            return node.item()
        if node is None or isinstance(node, bool | int | float | str):
            return node
        raise TypeError(f"cannot serialise {type(node).__name__} at {path!r}")

    document = walk(tree, "")
    return json.dumps(document), arrays


def unflatten(document: str, arrays: Mapping[str, np.ndarray]):
    """Inverse of :func:`flatten` (arrays come back as numpy arrays)."""

    def walk(node):
        if isinstance(node, dict):
            if set(node) == {"__array__"}:
                return np.asarray(arrays[node["__array__"]])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(json.loads(document))


def write_h5(target, tree) -> None:
    """Write a tree into an HDF5 file path or an open h5py group."""
    import h5py

    document, arrays = flatten(tree)
    if isinstance(target, str | os.PathLike):
        tmp = f"{os.fspath(target)}.tmp"
        with h5py.File(tmp, "w") as f:
            _write_group(f, document, arrays)
        os.replace(tmp, target)
    else:
        _write_group(target, document, arrays)


def _write_group(group, document: str, arrays: dict) -> None:
    group.attrs["format"] = FORMAT
    group.attrs["json"] = document
    for name, array in arrays.items():
        group.create_dataset(name, data=array)


def read_h5(source):
    """Read a tree from an HDF5 file path or an open h5py group.

    Raises
    ------
    NotAStateError
        When the file is not HDF5 or holds no app_extension state.
    """
    import h5py

    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No such checkpoint: {path}")
        if not h5py.is_hdf5(path):
            raise NotAStateError(
                f"{path} is not an app_extension checkpoint (not an HDF5 file). Give a file written "
                "with checkpoint= or --checkpoint, or a saved result (.hspy/.zspy)."
            )
        with h5py.File(path, "r") as f:
            return _read_group(f, path)
    return _read_group(source, getattr(source, "name", "group"))


def _read_group(group, where: str):
    import h5py

    if group.attrs.get("format") != FORMAT or "json" not in group.attrs:
        raise NotAStateError(
            f"{where} holds no app_extension state (format {group.attrs.get('format')!r}, "
            f"expected {FORMAT!r}). Give a file written with checkpoint= or --checkpoint."
        )
    arrays = {name: group[name][()] for name in group.keys() if isinstance(group[name], h5py.Dataset)}
    return unflatten(str(group.attrs["json"]), arrays)
