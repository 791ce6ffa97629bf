"""state_to_signal and friends: the solver state as calibrated HyperSpy signals, and back."""

import hyperspy.api as hs
import numpy as np
import pytest
import torch

from app_extension.results import (
    config_from_result,
    geometry_from_result,
    history_to_signal,
    load_resume,
    probe_to_signal,
    signal_to_state,
    state_to_signal,
)
from app_extension.solver.config import SolverConfig
from app_extension.solver.engine import reconstruct


@pytest.fixture(scope="module")
def runs(small_dataset):
    """(state, config) of a short APP run and a short FPP run on the small dataset."""
    out = {}
    for mode in ("app", "fpp"):
        config = SolverConfig(mode=mode, num_slices=3, slice_thickness=8.0, iterations=3, tilt=(1.0, -1.0))
        out[mode] = (
            reconstruct(small_dataset.data, small_dataset.geometry, config, show_progressbar=False),
            config,
        )
    return out


@pytest.mark.parametrize("mode", ["app", "fpp"])
def test_object_axes(runs, small_dataset, mode):
    state, config = runs[mode]
    s = state_to_signal(state, config, small_dataset.geometry, scan_shape=(8, 8))
    assert isinstance(s, hs.signals.ComplexSignal2D)
    np.testing.assert_allclose(s.data, state.object)
    z = s.axes_manager.navigation_axes[0]
    x, y = s.axes_manager.signal_axes
    assert (z.name, z.units, z.size) == ("z", "Å", 3)
    np.testing.assert_allclose(z.scale, state.dz)
    # Reconstruction pixel 1 / (N dk) = 1 / (32 * 0.05 1/Å) = 0.625 Å, in the scan frame.
    for axis, offset in ((y, state.origin[0]), (x, state.origin[1])):
        assert axis.units == "Å"
        np.testing.assert_allclose(axis.scale, 0.625)
        np.testing.assert_allclose(axis.offset, offset)
    np.testing.assert_allclose(x.axis, state.coordinates()[1])
    np.testing.assert_allclose(y.axis, state.coordinates()[0])
    # The first probe position (scan frame 0, 0) lies inside the object field.
    assert x.low_value < 0 < x.high_value and y.low_value < 0 < y.high_value


def test_depth_units_nm(runs, small_dataset):
    state, config = runs["app"]
    s = state_to_signal(state, config, small_dataset.geometry, depth_units="nm")
    z = s.axes_manager.navigation_axes[0]
    assert z.units == "nm"
    np.testing.assert_allclose(z.scale, state.dz / 10)


@pytest.mark.parametrize("mode", ["app", "fpp"])
def test_metadata(runs, small_dataset, mode):
    state, config = runs[mode]
    s = state_to_signal(state, config, small_dataset.geometry, scan_shape=(8, 8), title="demo")
    p = s.metadata.Signal.Ptychography
    assert s.metadata.General.title == "demo"
    assert p.method == mode.upper()
    np.testing.assert_allclose([p.tilt_x, p.tilt_y], state.tilt_mrad)
    assert p.tilt_x_units == p.tilt_y_units == "mrad"
    np.testing.assert_allclose([p.slice_thickness, p.thickness], [state.dz, 3 * state.dz])
    assert p.slice_thickness_units == p.thickness_units == "Å"
    assert p.num_slices == 3 and p.iterations == 3 and p.status == "ok"
    np.testing.assert_allclose(p.loss, state.history["loss"][-1])
    assert p.Parameters.mode == mode and p.Parameters.num_slices == 3
    np.testing.assert_allclose(p.Geometry.energy, 300e3)
    np.testing.assert_allclose(p.Geometry.scan_positions, small_dataset.geometry.scan_positions)
    assert list(p.scan_shape) == [8, 8]
    if mode == "app":
        assert not p.has_item("Post_alignment")
    else:
        # FPP keeps the propagator tilt fixed and reports the tilt the slices' drift implies.
        np.testing.assert_allclose([p.tilt_x, p.tilt_y], [1.0, -1.0])
        pa = p.Post_alignment
        np.testing.assert_allclose(pa.shifts, state.post_alignment["shifts"])
        np.testing.assert_allclose([pa.tilt_x, pa.tilt_y], state.post_alignment["tilt_mrad"])
        np.testing.assert_allclose(pa.total_tilt_x, 1.0 + pa.tilt_x)
        assert pa.mean_phase.axes_manager.signal_shape == s.axes_manager.signal_shape
        np.testing.assert_allclose(
            pa.mean_phase.data, state.post_alignment["mean_phase"], rtol=1e-5, atol=1e-6
        )
        assert pa.aligned_phase.axes_manager.navigation_shape == (3,)


def test_carries_input_metadata(runs, small_dataset):
    state, config = runs["app"]
    md = {
        "General": {"title": "input"},
        "Signal": {"signal_type": "ptychography"},
        "Acquisition_instrument": {"TEM": {"beam_energy": 300.0, "convergence_angle": 22.0}},
    }
    s = state_to_signal(state, config, small_dataset.geometry, metadata=md)
    assert s.metadata.Acquisition_instrument.TEM.beam_energy == 300.0
    assert s.metadata.Signal.signal_type == ""  # the result is not 4D-STEM data
    assert s.metadata.General.title == "APP ptychography"


def test_probe_signal(runs):
    state, _ = runs["app"]
    probe = probe_to_signal(state)
    assert isinstance(probe, hs.signals.ComplexSignal2D)
    np.testing.assert_allclose(probe.data, state.probe.numpy())
    x = probe.axes_manager.signal_axes[0]
    assert x.units == "Å"
    np.testing.assert_allclose(x.scale, state.sampling)
    # Probe centre (pixel N // 2) at x = 0.
    np.testing.assert_allclose(x.axis[16], 0.0, atol=1e-12)


def test_history_signal(runs):
    state, _ = runs["app"]
    h = history_to_signal(state.history)
    assert isinstance(h, hs.signals.Signal1D)
    assert list(h.metadata.Signal.quantities)[:4] == ["loss", "tilt_x", "tilt_y", "slice_thickness"]
    assert list(h.metadata.Signal.quantity_units)[:4] == ["", "mrad", "mrad", "Å"]
    np.testing.assert_allclose(h.data[0], state.history["loss"])
    np.testing.assert_allclose(h.axes_manager.signal_axes[0].axis, [1, 2, 3])
    h.plot()


def test_history_empty():
    h = history_to_signal({"loss": [], "tilt_x": []})
    assert h.metadata.Signal.iterations == 0


@pytest.mark.parametrize("extension", ["hspy", "zspy"])
@pytest.mark.parametrize("mode", ["app", "fpp"])
def test_save_load_and_back_to_state(tmp_path, runs, small_dataset, mode, extension):
    if extension == "zspy":
        pytest.importorskip("zarr")
    state, config = runs[mode]
    # scan_shape is a sequence in the same node as the probe and history signals (HyperSpy 2.5
    # dropped such signals on loading when stored as a list).
    s = state_to_signal(state, config, small_dataset.geometry, scan_shape=(8, 8))
    s.save(tmp_path / f"result.{extension}")
    loaded = hs.load(tmp_path / f"result.{extension}")
    assert isinstance(loaded, hs.signals.ComplexSignal2D)
    np.testing.assert_allclose(loaded.data, s.data)
    p = loaded.metadata.Signal.Ptychography
    assert isinstance(p.probe, hs.signals.ComplexSignal2D)
    assert isinstance(p.history, hs.signals.Signal1D)
    if mode == "fpp":
        assert isinstance(p.Post_alignment.mean_phase, hs.signals.Signal2D)
    np.testing.assert_allclose(p.tilt_x, state.tilt_mrad[0])
    back = signal_to_state(loaded)
    torch.testing.assert_close(back.phase, state.phase, atol=1e-5, rtol=0)
    torch.testing.assert_close(back.amplitude, state.amplitude, atol=1e-6, rtol=0)
    torch.testing.assert_close(back.probe, state.probe)
    torch.testing.assert_close(back.window_corners, state.window_corners, atol=1e-4, rtol=0)
    np.testing.assert_allclose(
        [back.dz, back.sampling, back.wavelength], [state.dz, state.sampling, state.wavelength]
    )
    assert back.iteration == state.iteration
    np.testing.assert_allclose(back.history["loss"], state.history["loss"])
    assert config_from_result(loaded) == config
    np.testing.assert_allclose(
        geometry_from_result(loaded).scan_positions, small_dataset.geometry.scan_positions
    )


def test_tilt_map(tmp_path, small_dataset):
    config = SolverConfig(num_slices=2, slice_thickness=8.0, iterations=2, tilt_map=True, start_tilt=0)
    state = reconstruct(small_dataset.data, small_dataset.geometry, config, show_progressbar=False)
    s = state_to_signal(state, config, small_dataset.geometry, scan_shape=(8, 8))
    p = s.metadata.Signal.Ptychography
    assert p.tilt_map.data.shape == (2, 8, 8)  # (theta_x, theta_y) over the scan
    np.testing.assert_allclose([p.tilt_x, p.tilt_y], state.tilt_mrad.mean(axis=0))
    s.save(tmp_path / "map.hspy")
    back = signal_to_state(hs.load(tmp_path / "map.hspy"))
    torch.testing.assert_close(back.tilt, state.tilt)


def test_phase_beyond_pi_survives(runs, small_dataset):
    state, config = runs["app"]
    state = state.clone()
    state.phase += 4.0  # past pi: the complex object alone would wrap it
    back = signal_to_state(state_to_signal(state, config, small_dataset.geometry))
    torch.testing.assert_close(back.phase, state.phase, atol=1e-5, rtol=0)


def test_load_resume_sources(tmp_path, runs, small_dataset):
    state, config = runs["app"]
    same, no_config, no_geometry = load_resume(state)
    assert same is not state and no_config is None and no_geometry is None
    torch.testing.assert_close(same.phase, state.phase)
    state.save(
        tmp_path / "run.ckpt",
        extra={"config": config.to_dict(), "geometry": small_dataset.geometry.to_dict()},
    )
    loaded, loaded_config, geometry = load_resume(tmp_path / "run.ckpt")
    assert loaded_config == config
    assert geometry["defocus"] == small_dataset.geometry.defocus
    torch.testing.assert_close(loaded.probe, state.probe)
    with pytest.raises(TypeError, match="resume must be"):
        load_resume(3.0)


def test_signal_to_state_needs_result():
    with pytest.raises(ValueError, match="no ptychography result"):
        signal_to_state(hs.signals.ComplexSignal2D(np.ones((2, 4, 4), dtype=complex)))
