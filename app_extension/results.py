"""Reconstruction results as calibrated HyperSpy signals.

:func:`state_to_signal` is the one conversion from a solver
:class:`~app_extension.solver.state.ReconstructionState` to HyperSpy; the
HyperSpy signal method, the py4DSTEM class and the command line all call it, so
a result looks the same whichever front end made it:

* a complex :class:`~hyperspy.signals.ComplexSignal2D` holding the object
  slices, navigation axis ``z`` = slice depth (scale = recovered slice
  thickness), signal axes ``x``, ``y`` in Å at the reconstruction pixel size,
  in the scan frame (scan position (0, 0) is the first probe position);
* ``metadata.Signal.Ptychography`` with the recovered tilt, slice thickness,
  total thickness, final loss, status, the full parameter set, the probe
  (:func:`probe_to_signal`), the history (:func:`history_to_signal`) and, for
  FPP, the post-alignment (:func:`post_alignment_to_metadata`).

:func:`signal_to_state` goes the other way, so a saved result can be
continued.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from hyperspy.misc.utils import DictionaryTreeBrowser
from hyperspy.signals import BaseSignal, ComplexSignal2D, Signal1D, Signal2D

from .solver.config import Geometry, SolverConfig
from .solver.serialize import FORMAT, flatten, unflatten
from .solver.state import HISTORY_KEYS, ReconstructionState
from .units import angstrom_in

__all__ = [
    "state_to_signal",
    "probe_to_signal",
    "history_to_signal",
    "post_alignment_to_metadata",
    "tilt_map_to_signal",
    "signal_to_state",
    "config_from_result",
    "config_from_dict",
    "load_resume",
    "geometry_from_result",
    "RESULT_NODE",
    "HISTORY_UNITS",
]

#: Where a result's ptychography metadata lives.
RESULT_NODE = "Signal.Ptychography"

#: Units of the history quantities, in the order of the history signal.
HISTORY_UNITS = {"loss": "", "tilt_x": "mrad", "tilt_y": "mrad", "slice_thickness": "Å", "time": "s"}


def _image_axes(shape: tuple[int, int], sampling: float, origin: tuple[float, float]) -> list[dict]:
    """Signal axes y, x (array order) in Å."""
    return [
        {
            "name": name,
            "units": "Å",
            "scale": float(sampling),
            "offset": float(offset),
            "size": int(size),
            "navigate": False,
        }
        for name, size, offset in zip(("y", "x"), tuple(shape), tuple(origin), strict=True)
    ]


def _depth_axis(num_slices: int, dz_A: float, depth_units: str) -> dict:
    factor = angstrom_in(depth_units, "depth_units")
    return {
        "name": "z",
        "units": depth_units,
        "scale": float(dz_A) * factor,
        "offset": 0.0,
        "size": int(num_slices),
        "navigate": True,
    }


def probe_to_signal(state: ReconstructionState) -> ComplexSignal2D:
    """The probe modes as a calibrated complex signal.

    Navigation axis ``mode`` (one index per mixed-state mode), signal axes
    ``x``, ``y`` in Å with the window centre (pixel N // 2) at 0.
    """
    probe = state.probe.detach().cpu().numpy()
    n = probe.shape[-2:]
    origin = (-(n[0] // 2) * state.sampling, -(n[1] // 2) * state.sampling)
    axes = [
        {"name": "mode", "units": "", "scale": 1.0, "offset": 0.0, "size": probe.shape[0], "navigate": True}
    ]
    axes += _image_axes(n, state.sampling, origin)
    signal = ComplexSignal2D(probe, axes=axes)
    signal.metadata.General.title = "Probe"
    return signal


def history_to_signal(history: dict) -> Signal1D:
    """Per-iteration history as one plottable signal.

    The signal axis is the iteration (1-based); the navigation axis runs over
    the quantities named in ``metadata.Signal.quantities`` (units in
    ``metadata.Signal.quantity_units``): loss, tilt_x, tilt_y (mrad),
    slice_thickness (Å) and time (s, cumulative). ``s.inav[k].plot()`` plots
    one; :func:`hyperspy.api.plot.plot_spectra` several.
    """
    keys = [k for k in HISTORY_KEYS if k in history] + [k for k in history if k not in HISTORY_KEYS]
    n = max((len(history[k]) for k in keys), default=0)
    data = np.full((len(keys), max(n, 1)), np.nan)
    for i, k in enumerate(keys):
        values = np.asarray(history[k], dtype=np.float64)
        data[i, : values.size] = values
    axes = [
        {"name": "quantity", "units": "", "scale": 1.0, "offset": 0.0, "size": len(keys), "navigate": True},
        {
            "name": "iteration",
            "units": "",
            "scale": 1.0,
            "offset": 1.0,
            "size": data.shape[1],
            "navigate": False,
        },
    ]
    signal = Signal1D(data, axes=axes)
    signal.metadata.General.title = "Reconstruction history"
    signal.metadata.set_item("Signal.quantities", list(keys))
    signal.metadata.set_item("Signal.quantity_units", [HISTORY_UNITS.get(k, "") for k in keys])
    signal.metadata.set_item("Signal.iterations", int(n))
    return signal


def _history_from_signal(signal: BaseSignal) -> dict:
    keys = list(signal.metadata.Signal.quantities)
    n = int(signal.metadata.Signal.iterations)
    return {k: [float(v) for v in np.asarray(signal.data[i, :n])] for i, k in enumerate(keys)}


def post_alignment_to_metadata(post_alignment: dict, state: ReconstructionState) -> dict:
    """FPP post-alignment results as a metadata dictionary.

    Keys: ``shifts`` ((S, 2) array of (dy, dx) in Å of each slice relative to
    the first), ``tilt_x``/``tilt_y`` (mrad) implied by the drift of the
    slices, ``total_tilt_x``/``total_tilt_y`` (propagator tilt plus implied
    tilt), and the signals ``mean_phase`` (average of the aligned slices) and
    ``aligned_phase`` (the aligned slices).
    """
    h, w = np.asarray(post_alignment["mean_phase"]).shape
    axes = _image_axes((h, w), state.sampling, state.origin)
    mean_phase = Signal2D(np.asarray(post_alignment["mean_phase"], dtype=np.float32), axes=axes)
    mean_phase.metadata.General.title = "Mean phase of the aligned slices"
    mean_phase.metadata.Signal.quantity = "Phase (rad)"
    aligned = np.asarray(post_alignment["aligned_phase"], dtype=np.float32)
    aligned_phase = Signal2D(
        aligned,
        axes=[
            _depth_axis(aligned.shape[0], state.dz, "Å"),
            *_image_axes((h, w), state.sampling, state.origin),
        ],
    )
    aligned_phase.metadata.General.title = "Aligned phase slices"
    aligned_phase.metadata.Signal.quantity = "Phase (rad)"
    implied = np.asarray(post_alignment["tilt_mrad"], dtype=np.float64)
    model_tilt = np.asarray(state.tilt_mrad, dtype=np.float64).reshape(-1, 2).mean(axis=0)
    return {
        "shifts": np.asarray(post_alignment["shifts"], dtype=np.float64),
        "shifts_units": "Å",
        "tilt_x": float(implied[0]),
        "tilt_y": float(implied[1]),
        "tilt_x_units": "mrad",
        "tilt_y_units": "mrad",
        "total_tilt_x": float(model_tilt[0] + implied[0]),
        "total_tilt_y": float(model_tilt[1] + implied[1]),
        "mean_phase": mean_phase,
        "aligned_phase": aligned_phase,
    }


def tilt_map_to_signal(
    state: ReconstructionState, geometry: Geometry, scan_shape: tuple[int, int] | None = None
) -> Signal2D:
    """A tilt map as a calibrated signal over the scan.

    Navigation axis ``component`` (0: theta_x, 1: theta_y), signal axes
    ``x``, ``y`` in Å, the scan axes: offset 0 at the first position, scale
    the scan step along each axis (as the input's navigation axes). Values
    in mrad; NaN where the tilt is undetermined (empty object). Without a
    ``scan_shape`` the map is given on the control grid instead (axes in Å
    of the scan frame). ``metadata.Tilt_map`` holds the
    global (mean) tilt, the control grid, and the uniformity test
    (:func:`app_extension.solver.tilt_field.uniformity`): ``non_uniform``
    tells whether the map was needed; ``shape_held`` whether the map's shape
    was held for the last iterations (``tilt_map_hold``, its bend in the slices).
    """
    from .solver.tilt_field import position_undetermined, uniformity

    field = state.tilt_field
    positions = np.asarray(geometry.scan_positions, dtype=np.float64)
    if scan_shape is not None and int(np.prod(scan_shape)) == positions.shape[0]:
        ny, nx = (int(n) for n in scan_shape)
        values = np.asarray(state.tilt_mrad, dtype=np.float64).copy()
        values[position_undetermined(state)] = np.nan
        grid = positions.reshape(ny, nx, 2)
        step_x = float(np.linalg.norm(grid[0, 1] - grid[0, 0])) if nx > 1 else 1.0
        step_y = float(np.linalg.norm(grid[1, 0] - grid[0, 0])) if ny > 1 else 1.0
        data = values.reshape(ny, nx, 2).transpose(2, 0, 1)
        offsets, steps, where = (0.0, 0.0), (step_y, step_x), "scan positions"
    else:
        ny, nx = field.shape
        values = state.tilt_grid.detach().cpu().numpy().astype(np.float64).copy()
        values[field.undetermined] = np.nan
        data = values.reshape(ny, nx, 2).transpose(2, 0, 1)
        offsets = field.origin
        steps = tuple(s if s > 0 else 1.0 for s in field.spacing)
        where = "control points"
    axes = [{"name": "component", "units": "", "scale": 1.0, "offset": 0.0, "size": 2, "navigate": True}]
    axes += [
        {
            "name": name,
            "units": "Å",
            "scale": float(step),
            "offset": float(offset),
            "size": int(size),
            "navigate": False,
        }
        for name, size, step, offset in zip(("y", "x"), data.shape[1:], steps, offsets, strict=True)
    ]
    signal = Signal2D(data.astype(np.float32), axes=axes)
    signal.metadata.General.title = "Tilt map"
    signal.metadata.Signal.quantity = "Tilt (mrad)"
    report = uniformity(state)
    signal.metadata.set_item(
        "Tilt_map",
        {
            "components": np.asarray(["theta_x", "theta_y"]),
            "units": "mrad",
            "sampled_at": where,
            "global_tilt": np.asarray(report.get("mean", state.tilt_mrad.reshape(-1, 2).mean(axis=0))),
            "grid_shape": np.asarray(field.shape),
            "grid_origin": np.asarray(field.origin),
            "grid_spacing": np.asarray(field.spacing),
            "grid_spacing_units": "Å",
            "undetermined_points": int(field.undetermined.sum()),
            "non_uniform": bool(report["non_uniform"]),
            "spread": float(report.get("spread_total", 0.0)),
            "uncertainty": float(report.get("uncertainty_total", np.nan)),
            "verdict": report["verdict"],
            "shape_held": bool(field.held),
        },
    )
    return signal


def _geometry_metadata(geometry: Geometry) -> dict:
    return {
        "energy": float(geometry.energy),
        "energy_units": "eV",
        "semiangle": float(geometry.semiangle),
        "semiangle_units": "mrad",
        "reciprocal_sampling": float(geometry.reciprocal_sampling),
        "reciprocal_sampling_units": "1 / Å",
        "defocus": float(geometry.defocus),
        "defocus_units": "Å",
        "aberrations": {str(k): float(v) for k, v in geometry.aberrations.items()},
        "scan_positions": np.asarray(geometry.scan_positions, dtype=np.float64),
        "scan_positions_units": "Å",
    }


def state_to_signal(
    state: ReconstructionState,
    config: SolverConfig,
    geometry: Geometry,
    *,
    title: str | None = None,
    metadata: dict | DictionaryTreeBrowser | None = None,
    scan_shape: tuple[int, int] | None = None,
    depth_units: str = "Å",
    extra_parameters: dict | None = None,
    calibration: dict | None = None,
    calibration_options: dict | None = None,
) -> ComplexSignal2D:
    """A reconstruction as a calibrated complex HyperSpy signal.

    Parameters
    ----------
    state
        The solver's result (:func:`app_extension.solver.engine.reconstruct`).
    config, geometry
        The options and geometry the state was made with; stored in the
        metadata (``Parameters``, ``Geometry``).
    title
        ``metadata.General.title``; default "APP ptychography" (or FPP).
    metadata
        Metadata of the input signal to carry over (e.g.
        ``Acquisition_instrument``); its ``General`` and ``Signal`` nodes are
        not copied.
    scan_shape
        (scan_y, scan_x), stored for reference.
    depth_units
        Units of the depth (navigation) axis, any pint length ("Å", "nm").
    extra_parameters
        Further items for ``metadata.Signal.Ptychography.Parameters`` (e.g.
        the front end's own options).
    calibration
        The data-preparation report (``CalibrationReport.to_dict()``), stored
        as ``metadata.Signal.Ptychography.Calibration``.

    Returns
    -------
    hyperspy.signals.ComplexSignal2D
        Object slices (S, H, W): navigation axis ``z`` (scale = slice
        thickness), signal axes ``x``, ``y`` in Å in the scan frame. Its
        ``metadata.Signal.Ptychography`` holds ``method``, ``tilt_x``,
        ``tilt_y`` (mrad), ``slice_thickness``, ``thickness`` (Å),
        ``num_slices``, ``loss``, ``iterations``, ``status``, ``wavelength``,
        ``intensity_scale``, ``Parameters`` (the SolverConfig),
        ``Geometry``, ``probe``, ``history``, ``tilt_map`` (tilt-map runs
        only: a signal over the scan, see :func:`tilt_map_to_signal`) and
        ``Post_alignment`` (FPP only).
    """
    phase, amplitude = state.slices()  # the entrance frame (a held tilt map's bend taken out)
    obj = (amplitude * np.exp(1j * phase)).astype(np.complex64)
    method = config.mode.upper()
    axes = [
        _depth_axis(obj.shape[0], state.dz, depth_units),
        *_image_axes(obj.shape[-2:], state.sampling, state.origin),
    ]
    signal = ComplexSignal2D(obj, axes=axes)
    if metadata is not None:
        md = metadata.as_dictionary() if isinstance(metadata, DictionaryTreeBrowser) else dict(metadata)
        for key, value in md.items():
            if key not in ("General", "Signal", "_HyperSpy"):
                signal.metadata.set_item(key, value)
    signal.metadata.General.title = title or f"{method} ptychography"
    signal.metadata.Signal.quantity = "Transmission function"
    tilt = np.asarray(state.tilt_mrad, dtype=np.float64)
    mean_tilt = tilt.reshape(-1, 2).mean(axis=0)
    loss = state.history.get("loss", [])
    parameters = config.to_dict()
    parameters["padded_size"] = parameters["padded_size"] if parameters["padded_size"] is not None else 0
    if extra_parameters:
        parameters.update(extra_parameters)
    info = {
        "method": method,
        "tilt_x": float(mean_tilt[0]),
        "tilt_y": float(mean_tilt[1]),
        "tilt_x_units": "mrad",
        "tilt_y_units": "mrad",
        "slice_thickness": state.dz,
        "slice_thickness_units": "Å",
        "thickness": state.thickness,
        "thickness_units": "Å",
        "num_slices": state.num_slices,
        "loss": float(loss[-1]) if loss else float("nan"),
        "iterations": int(state.iteration),
        "status": state.status,
        "pixel_size": float(state.sampling),
        "pixel_size_units": "Å",
        "wavelength": float(state.wavelength),
        "wavelength_units": "Å",
        "intensity_scale": float(state.intensity_scale),
        "Parameters": parameters,
        "Geometry": _geometry_metadata(geometry),
        "probe": probe_to_signal(state),
        "history": history_to_signal(state.history),
    }
    if scan_shape is not None:
        info["scan_shape"] = [int(v) for v in scan_shape]
    if state.has_tilt_map:
        info["tilt_map"] = tilt_map_to_signal(state, geometry, scan_shape)
    # The complex object keeps the phase modulo 2 pi; the whole turns let a
    # continued run start from exactly the solver's (unwrapped) phase.
    turns = np.round((phase - np.angle(obj)) / (2 * np.pi)).astype(np.int8)
    if turns.any():
        info["phase_turns"] = turns
    if state.post_alignment is not None:
        info["Post_alignment"] = post_alignment_to_metadata(state.post_alignment, state)
    if state.positions is not None:
        info["Positions"] = {
            "refined": state.probe_positions(),
            "refined_units": "Å",
            "frame": "scan frame, (y, x) per position in scan order, as Geometry.scan_positions",
            **{
                k: np.asarray(v) if isinstance(v, list) else v
                for k, v in state.positions.summary(state.sampling).items()
            },
        }
    if state.memory_estimate is not None:
        info["Memory_estimate"] = _arrays_for_sequences(dict(state.memory_estimate))
    if calibration is not None:
        # readable items, plus the report exactly as JSON (CalibrationReport.from_dict(json.loads(...)))
        info["Calibration"] = {**_metadata_safe(calibration), "json": json.dumps(calibration)}
    info["State"] = state_to_metadata(state, config, geometry, calibration_options)
    signal.metadata.set_item(RESULT_NODE, _arrays_for_sequences(info))
    return signal


def _metadata_safe(node):
    """A JSON-like dict as HyperSpy metadata: None -> "none", lists -> arrays, nested dicts kept."""
    if isinstance(node, dict):
        return {str(k): _metadata_safe(v) for k, v in node.items()}
    if node is None:
        return "none"
    if isinstance(node, list | tuple):
        if all(isinstance(v, int | float | bool | np.number) for v in node) or all(
            isinstance(v, list | tuple) and all(isinstance(x, int | float | np.number) for x in v)
            for v in node
        ):
            return np.asarray(node) if node else np.zeros(0)
        return json.dumps(node)
    return node


def state_to_metadata(
    state: ReconstructionState,
    config: SolverConfig,
    geometry: Geometry,
    calibration_options: dict | None = None,
) -> dict:
    """The solver state in its one serialised form (:mod:`app_extension.solver.serialize`).

    ``json`` holds the document, ``arrays`` the arrays it points to (object,
    probe, tilt, optimiser moments, ...); a run resumed from this node
    continues exactly where it stopped.
    """
    extra = {"config": config.to_dict(), "geometry": geometry.to_dict()}
    if calibration_options is not None:
        extra["calibration_options"] = calibration_options
    document, arrays = flatten(state.to_tree(extra))
    # HyperSpy's writers store no 0-d arrays in metadata: they go in as 1-element
    # arrays and are named in ``scalar_arrays`` to be read back as 0-d.
    scalars = [name for name, a in arrays.items() if a.ndim == 0]
    arrays = {name: a.reshape(1) if a.ndim == 0 else a for name, a in arrays.items()}
    return {"format": FORMAT, "json": document, "arrays": arrays, "scalar_arrays": json.dumps(scalars)}


def state_from_metadata(node) -> tuple[ReconstructionState, dict]:
    """Inverse of :func:`state_to_metadata`: (state, extra)."""
    d = node.as_dictionary() if isinstance(node, DictionaryTreeBrowser) else dict(node)
    arrays = {k: np.asarray(v) for k, v in d.get("arrays", {}).items()}
    for name in json.loads(str(d.get("scalar_arrays", "[]"))):
        arrays[name] = arrays[name].reshape(())
    return ReconstructionState.from_tree(unflatten(str(d["json"]), arrays), with_extra=True)


def _arrays_for_sequences(node: dict) -> dict:
    """The node with its list and tuple items as numpy arrays (sub-nodes unchanged).

    HyperSpy (2.5) loses, on loading from .hspy/.zspy, the signals stored in
    a metadata node (here ``probe`` and ``history``) when that same node also
    holds a list or a tuple; arrays are safe. Lists in sub-nodes without
    signals (``Parameters.tilt``) are harmless and stay lists.
    """
    return {
        key: np.asarray(value) if isinstance(value, list | tuple) else value for key, value in node.items()
    }


def _result_node(signal: BaseSignal) -> DictionaryTreeBrowser:
    if not signal.metadata.has_item(RESULT_NODE):
        raise ValueError(
            "This signal holds no ptychography result (metadata.Signal.Ptychography is missing); "
            "pass the signal returned by ptycho_app or a checkpoint file written with checkpoint=."
        )
    return signal.metadata.get_item(RESULT_NODE)


def config_from_dict(params: dict) -> SolverConfig:
    """A :class:`SolverConfig` from a stored parameter dictionary (see ``SolverConfig.from_dict``)."""
    return SolverConfig.from_dict(params)


def config_from_result(signal: BaseSignal) -> SolverConfig:
    """The :class:`SolverConfig` stored in a result signal's metadata."""
    return config_from_dict(_result_node(signal).Parameters.as_dictionary())


def load_resume(source) -> tuple[ReconstructionState, SolverConfig | None, dict | None]:
    """What a continued run starts from: (state, previous config, previous geometry dict).

    Parameters
    ----------
    source
        A result signal (from :func:`state_to_signal`), a .hspy/.zspy file
        holding one, a checkpoint file written by ``reconstruct(checkpoint=)``,
        or a :class:`ReconstructionState` (config and geometry then ``None``).
    """
    if isinstance(source, ReconstructionState):
        return source.clone(), None, None
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"resume={str(source)!r}: no such file.")
        if path.suffix.lower() not in (".hspy", ".zspy", ".hdf5"):
            state, extra = ReconstructionState.load(path, with_extra=True)
            config = extra.get("config")
            geometry = extra.get("geometry")
            if geometry is not None:
                geometry = dict(geometry, calibration_options=extra.get("calibration_options"))
            return state, (config_from_dict(config) if config else None), geometry
        import hyperspy.api as hs

        from .solver.serialize import NotAStateError

        try:
            source = hs.load(path)
        except Exception as error:  # noqa: BLE001 - any reader failure means "not a result file"
            raise NotAStateError(
                f"resume={str(source)!r} cannot be read as a saved result ({type(error).__name__}: "
                f"{str(error)[:200]}). Give a .hspy/.zspy file written by ptycho_app or app-ptycho, or a "
                "checkpoint file written with checkpoint=."
            ) from None
    if isinstance(source, BaseSignal):
        node = _result_node(source)
        if node.has_item("State"):
            state, extra = state_from_metadata(node.State)
            geometry = dict(extra["geometry"], calibration_options=extra.get("calibration_options"))
            return state, config_from_dict(extra["config"]), geometry
        geometry = node.Geometry.as_dictionary()
        return signal_to_state(source), config_from_result(source), geometry
    raise TypeError(
        "resume must be a result of ptycho_app, a file it was saved to (.hspy/.zspy), a checkpoint "
        f"file written with checkpoint=, or a ReconstructionState; got {type(source).__name__}."
    )


def signal_to_state(signal: BaseSignal) -> ReconstructionState:
    """Rebuild a :class:`ReconstructionState` from a result signal, to continue the run.

    Inverse of :func:`state_to_signal` (also after saving to .hspy/.zspy and
    loading back).
    """
    import torch

    node = _result_node(signal)
    if node.has_item("State"):
        return state_from_metadata(node.State)[0]
    obj = np.asarray(signal.data)
    sy, sx = signal.axes_manager.signal_axes[1], signal.axes_manager.signal_axes[0]
    sampling = float(node.pixel_size)
    origin = (float(sy.offset), float(sx.offset))
    probe = np.asarray(node.probe.data)
    window = probe.shape[-1]
    positions = np.asarray(node.Geometry.scan_positions, dtype=np.float64)
    corners = (positions - np.asarray(origin)) / sampling - window // 2
    if node.has_item("tilt_map"):
        tilt = np.asarray(node.tilt_map, dtype=np.float32)
    else:
        tilt = np.array([[node.tilt_x, node.tilt_y]], dtype=np.float32)
    phase = np.angle(obj)
    if node.has_item("phase_turns"):
        phase = phase + 2 * np.pi * np.asarray(node.phase_turns, dtype=np.float64)
    state = ReconstructionState(
        phase=torch.as_tensor(phase.astype(np.float32)),
        amplitude=torch.as_tensor(np.abs(obj).astype(np.float32)),
        probe=torch.as_tensor(probe.astype(np.complex64)),
        tilt=torch.as_tensor(tilt),
        slice_thickness=torch.tensor(float(node.slice_thickness), dtype=torch.float32),
        window_corners=torch.as_tensor(corners, dtype=torch.float32),
        sampling=sampling,
        origin=origin,
        wavelength=float(node.wavelength),
        intensity_scale=float(node.intensity_scale),
        iteration=int(node.iterations),
        history=_history_from_signal(node.history),
        status=str(node.status),
    )
    return state


def geometry_from_result(signal: BaseSignal) -> Geometry:
    """The :class:`Geometry` stored in a result signal's metadata."""
    g = _result_node(signal).Geometry
    return Geometry(
        energy=float(g.energy),
        semiangle=float(g.semiangle),
        reciprocal_sampling=float(g.reciprocal_sampling),
        scan_positions=np.asarray(g.scan_positions),
        defocus=float(g.defocus),
        aberrations=g.aberrations.as_dictionary() if g.has_item("aberrations") else {},
    )
