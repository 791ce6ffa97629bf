"""A one-page PNG summary of a reconstruction result.

:func:`summary_figure` draws, from a result signal (as returned by
``s.ptycho_app()`` or read back from .hspy/.zspy): the phase averaged over the
slices (for FPP, the post-aligned average), the probe intensity, and the tilt
and slice thickness against iteration, and for a tilt-map run the map
(:func:`draw_tilt_map`). It uses a bare matplotlib ``Figure``,
so it works without a display and never opens a window.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["summary_figure", "save_summary", "averaged_phase", "draw_tilt_map", "draw_positions"]

_NODE = "Signal.Ptychography"


def averaged_phase(result) -> np.ndarray:
    """Phase (rad) averaged over the slices; for FPP the average after post-alignment."""
    node = result.metadata.get_item(_NODE) if result.metadata.has_item(_NODE) else None
    if node is not None and node.has_item("Post_alignment.mean_phase"):
        mean = node.get_item("Post_alignment.mean_phase")
        return np.asarray(getattr(mean, "data", mean), dtype=np.float64)
    data = np.asarray(result.data)
    phase = np.angle(data)
    return phase.mean(axis=0) if phase.ndim == 3 else phase


def _history(node) -> dict:
    """History as a dict of arrays, from the history signal or a plain dict."""
    if node is None or not node.has_item("history"):
        return {}
    history = node.history
    if hasattr(history, "data") and history.metadata.has_item("Signal.quantities"):
        keys = list(history.metadata.Signal.quantities)
        n = (
            int(history.metadata.Signal.iterations)
            if history.metadata.has_item("Signal.iterations")
            else None
        )
        return {k: np.asarray(history.data[i, :n], dtype=np.float64) for i, k in enumerate(keys)}
    if hasattr(history, "as_dictionary"):
        history = history.as_dictionary()
    return {k: np.asarray(v, dtype=np.float64) for k, v in dict(history).items()}


def _extent(signal_axes) -> list[float] | None:
    try:
        x, y = signal_axes[0], signal_axes[1]
    except (IndexError, TypeError):
        return None
    return [x.low_value, x.high_value, y.high_value, y.low_value]


def draw_tilt_map(ax, tilt_map, colorbar: bool = True):
    """Draw a tilt map signal: colour for the magnitude, arrows for the direction.

    Parameters
    ----------
    ax
        A matplotlib Axes.
    tilt_map
        The signal of :func:`app_extension.results.tilt_map_to_signal`
        (``metadata.Signal.Ptychography.tilt_map``): (theta_x, theta_y) in
        mrad over the scan. Undetermined points (NaN) are left blank.
    """
    data = np.asarray(tilt_map.data, dtype=np.float64)
    tx, ty = data[0], data[1]
    magnitude = np.hypot(tx, ty)
    ax_x, ax_y = tilt_map.axes_manager.signal_axes[0], tilt_map.axes_manager.signal_axes[1]
    xs = ax_x.offset + ax_x.scale * np.arange(ax_x.size)
    ys = ax_y.offset + ax_y.scale * np.arange(ax_y.size)
    extent = [
        xs[0] - ax_x.scale / 2,
        xs[-1] + ax_x.scale / 2,
        ys[-1] + ax_y.scale / 2,
        ys[0] - ax_y.scale / 2,
    ]
    image = ax.imshow(magnitude, cmap="viridis", extent=extent, interpolation="nearest")
    if colorbar:
        ax.figure.colorbar(image, ax=ax, label="|tilt| (mrad)")
    step = max(1, int(round(max(tx.shape) / 12)))
    yy, xx = np.meshgrid(ys[::step], xs[::step], indexing="ij")
    u, v = tx[::step, ::step], ty[::step, ::step]
    scale = np.nanmax(np.hypot(u, v)) if np.isfinite(u).any() else 1.0
    # y grows downward in the image, as the scan's y axis does: arrows point where the columns lean
    ax.quiver(
        xx,
        yy,
        u,
        v,
        color="white",
        angles="xy",
        scale_units="xy",
        scale=max(scale, 1e-9) / (0.9 * step * max(ax_x.scale, ax_y.scale)),
        width=0.006,
    )
    md = tilt_map.metadata
    note = ""
    if md.has_item("Tilt_map.global_tilt"):
        g = np.asarray(md.Tilt_map.global_tilt, dtype=np.float64)
        note = f"global tilt ({g[0]:.2f}, {g[1]:.2f}) mrad"
    if md.has_item("Tilt_map.non_uniform"):
        flag = "non-uniform: map needed" if md.Tilt_map.non_uniform else "uniform: global tilt enough"
        note += f"; {flag}"
    ax.set_title("tilt map (colour |tilt|, arrows direction)\n" + note, fontsize=9)
    ax.set_xlabel(f"x ({ax_x.units})")
    ax.set_ylabel(f"y ({ax_y.units})")
    return image


def summary_figure(result, truth: dict | None = None):
    """A matplotlib Figure summarising a result signal.

    Parameters
    ----------
    result
        The complex object signal with ``metadata.Signal.Ptychography``.
    truth
        Optional known values (``tilt_x``, ``tilt_y`` in mrad,
        ``slice_thickness`` in Å) drawn as dashed lines, e.g. for simulations.
    """
    from matplotlib.figure import Figure

    node = result.metadata.get_item(_NODE) if result.metadata.has_item(_NODE) else None
    has_map = node is not None and node.has_item("tilt_map") and hasattr(node.tilt_map, "axes_manager")
    has_positions = node is not None and node.has_item("Positions.refined") and node.has_item("Geometry")
    third_row = has_map or has_positions
    fig = Figure(figsize=(11, 12.5 if third_row else 8.5), layout="constrained")
    axes = fig.subplots(3 if third_row else 2, 2)
    method = str(node.method) if node is not None and node.has_item("method") else "Ptychography"

    ax = axes[0, 0]
    phase = averaged_phase(result)
    extent = _extent(result.axes_manager.signal_axes)
    image = ax.imshow(phase, cmap="gray", extent=extent)
    fig.colorbar(image, ax=ax, label="phase (rad)")
    label = "post-aligned average" if node is not None and node.has_item("Post_alignment") else "average"
    ax.set_title(f"{method}: phase, {label} over slices")
    ax.set_xlabel("x (Å)")
    ax.set_ylabel("y (Å)")

    ax = axes[0, 1]
    if node is not None and node.has_item("probe"):
        probe = node.probe
        data = np.asarray(getattr(probe, "data", probe))
        intensity = (np.abs(data) ** 2).reshape(-1, *data.shape[-2:]).sum(axis=0)
        p_extent = _extent(probe.axes_manager.signal_axes) if hasattr(probe, "axes_manager") else None
        image = ax.imshow(intensity, cmap="magma", extent=p_extent)
        fig.colorbar(image, ax=ax, label="intensity")
        modes = data.shape[0] if data.ndim == 3 else 1
        ax.set_title(f"probe intensity ({modes} mode{'s' if modes > 1 else ''} summed)")
        ax.set_xlabel("x (Å)")
        ax.set_ylabel("y (Å)")
    else:
        ax.set_axis_off()

    history = _history(node)
    truth = truth or {}
    ax = axes[1, 0]
    for key, colour in (("tilt_x", "C0"), ("tilt_y", "C1")):
        if key in history and history[key].size:
            its = np.arange(1, history[key].size + 1)
            ax.plot(its, history[key], "o-", ms=3, color=colour, label=key.replace("_", " "))
        if key in truth:
            ax.axhline(truth[key], color=colour, ls="--", lw=1, label=f"true {key.replace('_', ' ')}")
    if node is not None and node.has_item("Post_alignment"):
        pa = node.Post_alignment
        tx = float(pa.get_item("total_tilt_x", pa.tilt_x))
        ty = float(pa.get_item("total_tilt_y", pa.tilt_y))
        last = len(history.get("tilt_x", [])) or 1
        ax.plot([last], [tx], "s", color="C0", ms=8, mfc="none", label=f"FPP post-alignment x: {tx:.2f} mrad")
        ax.plot([last], [ty], "s", color="C1", ms=8, mfc="none", label=f"FPP post-alignment y: {ty:.2f} mrad")
    ax.set_xlabel("iteration")
    ax.set_ylabel("tilt (mrad)")
    ax.set_title("propagator tilt")
    _legend(ax)

    ax = axes[1, 1]
    if "slice_thickness" in history and history["slice_thickness"].size:
        dz = history["slice_thickness"]
        its = np.arange(1, dz.size + 1)
        ax.plot(its, dz, "o-", ms=3, color="C2", label="slice thickness dz")
        if "slice_thickness" in truth:
            ax.axhline(truth["slice_thickness"], color="C2", ls="--", lw=1, label="true dz")
        if node is not None and node.has_item("num_slices"):
            ax.plot(
                [],
                [],
                " ",
                label=f"{int(node.num_slices)} slices, total {dz[-1] * int(node.num_slices) / 10:.2f} nm",
            )
        _legend(ax)
    ax.set_xlabel("iteration")
    ax.set_ylabel("dz (Å)")
    ax.set_title("slice thickness")
    if third_row:
        spare = [axes[2, 0], axes[2, 1]]
        if has_map:
            draw_tilt_map(spare.pop(0), node.tilt_map)
        if has_positions:
            draw_positions(spare.pop(0), node)
        for ax in spare:
            ax.set_axis_off()
        md = node.tilt_map.metadata if has_map else None
        if spare and md is not None and md.has_item("Tilt_map.verdict"):
            ax = spare[0]
            import textwrap

            ax.text(
                0,
                1,
                "\n".join(textwrap.wrap(str(md.Tilt_map.verdict), 55)),
                va="top",
                fontsize=10,
                transform=ax.transAxes,
            )
    _status_title(fig, node, method)
    return fig


def draw_positions(ax, node, magnify: float = 10.0) -> None:
    """The refined scan positions against the nominal raster, their differences magnified."""
    nominal = np.asarray(node.Geometry.scan_positions, dtype=np.float64)
    refined = np.asarray(node.Positions.refined, dtype=np.float64)
    shift = refined - nominal
    shift -= shift.mean(axis=0)  # a common shift is only a shift of the object
    ax.plot(nominal[:, 1], nominal[:, 0], ".", color="0.6", ms=3, label="nominal raster")
    ax.quiver(
        nominal[:, 1],
        nominal[:, 0],
        shift[:, 1] * magnify,
        shift[:, 0] * magnify,
        angles="xy",
        scale_units="xy",
        scale=1.0,
        color="C3",
        width=0.004,
        label=f"refined - nominal, x{magnify:g}",
    )
    ax.set_aspect("equal")
    ax.invert_yaxis()  # y down, as the images
    rms = float(np.sqrt((shift**2).sum(axis=1).mean()))
    ax.set_title(f"scan positions: RMS change {rms * 100:.1f} pm (arrows x{magnify:g})")
    ax.set_xlabel("x (Å)")
    ax.set_ylabel("y (Å)")
    _legend(ax)


#: Explanations of the statuses that mean the run did not finish.
_STATUS_TEXT = {
    "interrupted": "INTERRUPTED (Ctrl-C): not converged, the state reached so far; continue it with --resume",
    "diverged": "DIVERGED: the loss became non-finite; the last good state is shown",
}


def _status_title(fig, node, method: str) -> None:
    """The figure title: the method and iterations, with a red status line for an unfinished run."""
    status = str(node.get_item("status", "ok")) if node is not None else "ok"
    iterations = int(node.iterations) if node is not None and node.has_item("iterations") else None
    done = f", {iterations} iterations" if iterations is not None else ""
    if status == "ok":
        fig.suptitle(f"{method}{done}")
        return
    text = _STATUS_TEXT.get(status, f"status {status!r}: the run did not finish")
    fig.suptitle(f"{method}{done}\n{text}", color="red", fontweight="bold")


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def save_summary(result, path: str | os.PathLike, truth: dict | None = None, dpi: int = 100) -> None:
    """Write :func:`summary_figure` to ``path`` (PNG)."""
    fig = summary_figure(result, truth=truth)
    fig.savefig(os.fspath(path), dpi=dpi)
