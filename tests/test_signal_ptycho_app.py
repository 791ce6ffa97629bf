"""s.ptycho_app(): end to end on small simulated data, options with units, resume, lazy input, Ctrl-C."""

import hyperspy.api as hs
import numpy as np
import pytest

from app_extension.signals.ptychography import AppPtychography2D
from app_extension.solver.state import ReconstructionState

DEFOCUS = 100.0  # Å: simulate_tilted_crystal's default, which the small dataset uses

# The calibration stage is tested on its own (test_measurements_*, test_calibrated_run); these
# tests check the rest on ideal data with the exact defocus, so it is off here.
FAST = {"num_slices": 3, "slice_thickness": "0.8 nm", "show_progressbar": False, "calibrate": False}


@pytest.mark.parametrize("lazy", [True, False])
def test_end_to_end_app(small_signal, small_dataset, lazy):
    s = small_signal.as_lazy() if lazy else small_signal
    # The simulated probe is exact, so it is kept fixed; the drift step is off on this tiny field.
    result = s.ptycho_app(
        defocus=f"{DEFOCUS / 10} nm",
        iterations=6,
        tilt=("5 mrad", 0),
        batch_size=16,
        lr_tilt=0.1,
        start_probe=100,
        drift_to_tilt_every=0,
        **FAST,
    )
    assert isinstance(result, hs.signals.ComplexSignal2D)
    assert not result._lazy
    p = result.metadata.Signal.Ptychography
    assert p.method == "APP" and p.status == "ok" and p.iterations == 6
    # Calibrated: depth axis = recovered dz, pixels 1 / (32 * 0.05 1/Å) = 0.625 Å, scan frame.
    z = result.axes_manager.navigation_axes[0]
    np.testing.assert_allclose(z.scale, p.slice_thickness)
    np.testing.assert_allclose(p.thickness, 3 * p.slice_thickness)
    for axis in result.axes_manager.signal_axes:
        assert axis.units == "Å"
        np.testing.assert_allclose(axis.scale, 0.625)
        assert axis.low_value < 0 < small_dataset.scan_step * 7 < axis.high_value
    # The options arrived in the solver's units.
    np.testing.assert_allclose(p.Parameters.slice_thickness, 8.0)
    np.testing.assert_allclose(p.Parameters.tilt, [5.0, 0.0])
    np.testing.assert_allclose(p.Geometry.defocus, DEFOCUS)
    np.testing.assert_allclose(p.Geometry.energy, 300e3)
    # Sane: the fit improves every iteration, everything is finite, dz stays plausible, and the
    # tilt moves from the start (5, 0) towards the truth (8, -3).
    loss = p.history.data[0]
    assert np.all(np.diff(loss) < 0)
    assert np.all(np.isfinite(result.data))
    assert 4.0 < p.slice_thickness < 16.0
    assert 5.0 < p.tilt_x < 12.0 and -6.0 < p.tilt_y < 0.0
    assert result.metadata.Acquisition_instrument.TEM.beam_energy == 300.0
    assert result.metadata.General.title == "APP ptychography of small STO"
    phase = result.phase
    assert isinstance(phase, hs.signals.Signal2D)
    assert float(np.ptp(phase.data)) > 0.1


def test_lazy_and_eager_agree(small_signal):
    eager = small_signal.ptycho_app(iterations=2, defocus=DEFOCUS, **FAST)
    lazy = small_signal.as_lazy().ptycho_app(iterations=2, defocus=DEFOCUS, **FAST)
    np.testing.assert_allclose(lazy.data, eager.data, rtol=1e-5, atol=1e-6)


def test_lazy_signal_is_read_chunk_by_chunk_never_whole(small_signal, monkeypatch):
    """ptycho_app on a lazy signal never computes the whole dask array, and matches the eager run."""
    import dask.array as da

    lazy = small_signal.as_lazy()
    lazy.rechunk(nav_chunks=(2, 4))
    full = lazy.data.shape
    assert len(lazy.data.chunks[0]) > 1
    compute, to_numpy = da.Array.compute, da.Array.__array__

    def refuse_whole(method):
        def guarded(self, *args, **kwargs):
            if self.shape == full:
                raise AssertionError("the whole lazy array was computed")
            return method(self, *args, **kwargs)

        return guarded

    # read units are whole chunks merged up to 16 MB: here, one chunk each (this array is tiny)
    monkeypatch.setattr("app_extension.solver.data.UNIT_BYTES", 1)
    monkeypatch.setattr(da.Array, "compute", refuse_whole(compute))
    monkeypatch.setattr(da.Array, "__array__", refuse_whole(to_numpy))
    with pytest.raises(AssertionError, match="whole lazy array"):
        np.asarray(lazy.data)  # the guard works
    options = dict(iterations=2, defocus=DEFOCUS, **FAST)
    from_lazy = lazy.ptycho_app(**options)
    monkeypatch.undo()
    np.testing.assert_allclose(from_lazy.data, small_signal.ptycho_app(**options).data, atol=1e-6)


def test_fpp_mode(small_signal):
    result = small_signal.ptycho_app(mode="fpp", iterations=2, tilt=(2, -1), defocus=DEFOCUS, **FAST)
    p = result.metadata.Signal.Ptychography
    assert p.method == "FPP"
    np.testing.assert_allclose([p.tilt_x, p.tilt_y], [2.0, -1.0])  # fixed propagator
    np.testing.assert_allclose(p.slice_thickness, 8.0)
    assert p.Post_alignment.shifts.shape == (3, 2)
    assert isinstance(p.Post_alignment.mean_phase, hs.signals.Signal2D)


def test_options_reach_solver(small_signal):
    result = small_signal.ptycho_app(
        iterations=1,
        probe_modes=2,
        batch_size=16,
        seed=3,
        lr_object=0.01,
        lr_tilt=0.0,
        depth_regularization=0.0,
        padded_size=40,
        scan_rotation="0 deg",
        aberrations={"C30": "0 mm"},
        **FAST,
    )
    p = result.metadata.Signal.Ptychography
    assert p.Parameters.probe_modes == 2 and p.probe.axes_manager.navigation_shape == (2,)
    assert (p.Parameters.batch_size, p.Parameters.seed, p.Parameters.padded_size) == (16, 3, 40)
    np.testing.assert_allclose([p.Parameters.lr_object, p.Parameters.lr_tilt], [0.01, 0.0])
    assert p.Parameters.scan_rotation == 0.0 and p.Parameters.scan_rotation_units == "deg"
    # Padding to 40 px makes the pixel 1 / (40 * 0.05) = 0.5 Å.
    np.testing.assert_allclose(result.axes_manager.signal_axes[0].scale, 0.5)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"slice_thickness": "3 mrad"}, ValueError, "slice_thickness"),
        ({"defocus": "20 mrad"}, ValueError, "defocus"),
        ({"tilt": "3 mrad"}, ValueError, "pair"),
        ({"tilt": (1, 2, 3)}, ValueError, "pair"),
        ({"tilt": ("3 nm", 0)}, ValueError, "tilt"),
        ({"mode": "dpp"}, ValueError, "mode"),
        ({"num_slices": 0}, ValueError, "num_slices"),
        ({"scan_rotation": "2 nm"}, ValueError, "scan_rotation"),
        ({"depth_units": "mrad"}, ValueError, "depth_units"),
        ({"checkpoint": "/no/such/folder/run.ckpt"}, FileNotFoundError, "checkpoint"),
        ({"resume": 42}, TypeError, "resume"),
        ({"learning_rate": 0.1}, TypeError, "unknown option"),
        ({"resume": "no_such_file.ckpt"}, FileNotFoundError, "no_such_file"),
    ],
)
def test_bad_options(small_signal, kwargs, error, message):
    with pytest.raises(error, match=message):
        small_signal.ptycho_app(iterations=1, show_progressbar=False, **kwargs)


def test_resume_from_result_and_saved_file(small_signal, tmp_path):
    first = small_signal.ptycho_app(iterations=2, defocus=DEFOCUS, **FAST)
    more = small_signal.ptycho_app(resume=first, iterations=2, show_progressbar=False)
    p = more.metadata.Signal.Ptychography
    assert p.iterations == 4 and p.history.metadata.Signal.iterations == 4
    np.testing.assert_allclose(p.history.data[0, :2], first.metadata.Signal.Ptychography.history.data[0])
    # The previous run's options (defocus, slices, thickness) carry over.
    np.testing.assert_allclose(p.Geometry.defocus, DEFOCUS)
    np.testing.assert_allclose(p.Parameters.slice_thickness, 8.0)
    first.save(tmp_path / "first.hspy")
    again = small_signal.ptycho_app(resume=tmp_path / "first.hspy", iterations=2, show_progressbar=False)
    np.testing.assert_allclose(again.data, more.data, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="Leave num_slices out"):
        small_signal.ptycho_app(resume=first, num_slices=5, iterations=1)


def test_resume_keeps_scan_rotation(small_signal):
    first = small_signal.ptycho_app(iterations=1, scan_rotation="3 deg", **FAST)
    more = small_signal.ptycho_app(resume=first, iterations=1, show_progressbar=False)
    for result in (first, more):
        p = result.metadata.Signal.Ptychography
        np.testing.assert_allclose(p.Parameters.scan_rotation, 3.0)
    np.testing.assert_allclose(
        more.metadata.Signal.Ptychography.Geometry.scan_positions,
        first.metadata.Signal.Ptychography.Geometry.scan_positions,
    )


def test_extra_solver_options(small_signal):
    result = small_signal.ptycho_app(
        iterations=1, start_dz=5, max_amplitude=0.9, divergence_factor=50, **FAST
    )
    p = result.metadata.Signal.Ptychography.Parameters
    assert p.start_dz == 5 and p.divergence_factor == 50
    np.testing.assert_allclose(p.max_amplitude, 0.9)


def test_checkpoint_and_resume(small_signal, tmp_path):
    path = tmp_path / "run.ckpt"
    first = small_signal.ptycho_app(iterations=2, defocus=DEFOCUS, checkpoint=path, **FAST)
    assert path.exists()
    state = ReconstructionState.load(path)
    assert state.iteration == 2
    more = small_signal.ptycho_app(resume=path, iterations=1, show_progressbar=False)
    assert more.metadata.Signal.Ptychography.iterations == 3
    np.testing.assert_allclose(more.metadata.Signal.Ptychography.Geometry.defocus, DEFOCUS)
    np.testing.assert_allclose(more.metadata.Signal.Ptychography.Parameters.slice_thickness, 8.0)
    assert first.metadata.Signal.Ptychography.iterations == 2


def test_interrupt_returns_state_so_far(small_signal):
    def stop_after_two(state):
        if state.iteration == 2:
            raise KeyboardInterrupt

    with pytest.warns(UserWarning, match="interrupted"):
        result = small_signal.ptycho_app(iterations=5, callback=stop_after_two, **FAST)
    p = result.metadata.Signal.Ptychography
    assert p.status == "interrupted"
    assert p.iterations == 2  # the state the callback saw when Ctrl-C came
    assert np.all(np.isfinite(result.data))


@pytest.mark.parametrize("preference", [True, False])
def test_progressbar_follows_preferences(small_signal, capsys, preference):
    old = hs.preferences.General.show_progressbar
    hs.preferences.General.show_progressbar = preference
    try:
        small_signal.ptycho_app(iterations=1, num_slices=2, slice_thickness=8.0)
    finally:
        hs.preferences.General.show_progressbar = old
    err = capsys.readouterr().err
    assert ("APP ptychography" in err) is preference


def test_result_round_trip_keeps_everything(small_signal, tmp_path):
    result = small_signal.ptycho_app(iterations=2, defocus=DEFOCUS, **FAST)
    result.save(tmp_path / "obj.hspy")
    loaded = hs.load(tmp_path / "obj.hspy")
    p, q = result.metadata.Signal.Ptychography, loaded.metadata.Signal.Ptychography
    for key in ("method", "tilt_x", "tilt_y", "slice_thickness", "thickness", "num_slices", "loss", "status"):
        assert q[key] == pytest.approx(p[key]) if isinstance(p[key], float) else q[key] == p[key]
    assert loaded.axes_manager.navigation_axes[0].scale == pytest.approx(p.slice_thickness)
    loaded.plot()
    loaded.phase.plot()
    q.history.plot()
    q.probe.amplitude.plot()


def test_ptycho_app_only_on_ptychography_signals(small_dataset):
    s = hs.signals.Signal2D(small_dataset.data)
    assert not hasattr(s, "ptycho_app")
    s.set_signal_type("ptychography")
    assert isinstance(s, AppPtychography2D)
