"""The py4DSTEM-style APP class: preprocess, reconstruct (and continue), results, save/read, conventions."""

import numpy as np
import pytest
import torch

py4DSTEM = pytest.importorskip("py4DSTEM")

from app_extension.physics.optics import aberration_phase, electron_wavelength, fourier_grid  # noqa: E402
from app_extension.physics.propagator import propagator  # noqa: E402
from app_extension.py4dstem import AdaptivePropagatorPtychography, signal_to_datacube  # noqa: E402
from app_extension.py4dstem.reconstruction import _polar_parameters, _solver_aberrations  # noqa: E402

DEFOCUS = 100.0  # Å, the simulator's default


def _cube(dataset, rotation=0.0, flip=False, data=None):
    dc = py4DSTEM.DataCube(data=dataset.data.copy() if data is None else data, name="small STO")
    cal = dc.calibration
    cal.set_R_pixel_size(dataset.scan_step)
    cal.set_R_pixel_units("A")
    cal.set_Q_pixel_size(dataset.geometry.reciprocal_sampling)
    cal.set_Q_pixel_units("A^-1")
    cal.set_QR_rotflip_degrees((rotation, flip))
    return dc


def _app(dc, **kwargs):
    options = dict(
        energy=300e3,
        num_slices=3,
        slice_thicknesses=8.0,
        datacube=dc,
        semiangle_cutoff=22.0,
        defocus=DEFOCUS,
        verbose=False,
        batch_size=16,
    )
    options.update(kwargs)
    return AdaptivePropagatorPtychography(**options)


@pytest.fixture(scope="module")
def run(small_dataset):
    """A small APP run: 2 iterations, then 2 more."""
    ptycho = _app(_cube(small_dataset)).preprocess(calibrate=False)
    ptycho.reconstruct(num_iter=2, progress_bar=False)
    first = {"iteration": ptycho.iteration, "errors": ptycho.error_iterations, "object": ptycho.object.copy()}
    ptycho.reconstruct(num_iter=2, progress_bar=False)
    return ptycho, first


def test_preprocess_reads_the_calibration(small_dataset):
    ptycho = _app(_cube(small_dataset)).preprocess(calibrate=False)
    geometry = ptycho.geometry
    assert geometry.reciprocal_sampling == pytest.approx(small_dataset.geometry.reciprocal_sampling)
    np.testing.assert_allclose(geometry.scan_positions, small_dataset.geometry.scan_positions, atol=1e-9)
    assert geometry.defocus == DEFOCUS
    assert geometry.energy == 300e3 and geometry.semiangle == 22.0


def test_preprocess_in_nm_and_mrad(small_dataset):
    dc = _cube(small_dataset)
    dc.calibration.set_R_pixel_size(small_dataset.scan_step / 10)
    dc.calibration.set_R_pixel_units("nm")
    mrad = small_dataset.geometry.reciprocal_sampling * electron_wavelength(300e3) * 1e3
    dc.calibration.set_Q_pixel_size(mrad)
    dc.calibration.set_Q_pixel_units("mrad")
    geometry = _app(dc).preprocess(calibrate=False).geometry
    assert geometry.reciprocal_sampling == pytest.approx(small_dataset.geometry.reciprocal_sampling, rel=1e-9)
    np.testing.assert_allclose(geometry.scan_positions, small_dataset.geometry.scan_positions, atol=1e-9)


def test_preprocess_without_calibration_fails_clearly(small_dataset):
    dc = py4DSTEM.DataCube(data=small_dataset.data.copy())
    with pytest.raises(ValueError, match="set_R_pixel_size"):
        _app(dc).preprocess(calibrate=False)
    dc.calibration.set_R_pixel_size(0.5)
    dc.calibration.set_R_pixel_units("A")
    with pytest.raises(ValueError, match="set_Q_pixel_size"):
        _app(dc).preprocess(calibrate=False)
    with pytest.raises(ValueError, match="semi-angle"):
        _app(_cube(small_dataset), semiangle_cutoff=None).preprocess(calibrate=False)
    with pytest.raises(ValueError, match="No DataCube"):
        _app(None).preprocess(calibrate=False)
    with pytest.raises(RuntimeError, match="preprocess"):
        _app(_cube(small_dataset)).reconstruct(num_iter=1)


def test_constructor_checks():
    with pytest.raises(ValueError, match="keV"):
        AdaptivePropagatorPtychography(energy=300, num_slices=3, slice_thicknesses=8.0)
    with pytest.raises(ValueError, match="one slice thickness"):
        AdaptivePropagatorPtychography(energy=300e3, num_slices=3, slice_thicknesses=[8.0, 9.0])
    with pytest.raises(ValueError, match="not modelled"):
        AdaptivePropagatorPtychography(energy=300e3, num_slices=3, slice_thicknesses=8.0, C41=10.0)
    with pytest.raises(ValueError, match="not a recognised"):
        AdaptivePropagatorPtychography(energy=300e3, num_slices=3, slice_thicknesses=8.0, defocos=10.0)


def test_reconstruct_results_and_continuation(run):
    ptycho, first = run
    assert first["iteration"] == 2 and len(first["errors"]) == 2
    assert ptycho.iteration == 4
    assert ptycho.error_iterations[:2] == first["errors"]
    assert len(ptycho.error_iterations) == 4 and len(ptycho.history["tilt_x"]) == 4
    assert not np.allclose(ptycho.object, first["object"])  # it went on, from where it was
    assert np.isfinite(ptycho.error)
    assert ptycho.object.shape[0] == 3 and np.iscomplexobj(ptycho.object)
    assert ptycho.probe.shape == (32, 32)
    assert ptycho.positions.shape == (64, 2)
    # the refined positions stay close to the raster on these ideal data (refinement from iteration 3)
    np.testing.assert_allclose(
        np.diff(ptycho.positions[:2, 1]), ptycho.geometry.scan_positions[1, 1], atol=0.05
    )
    assert ptycho.slice_thicknesses.shape == (2,)
    assert ptycho.slice_thicknesses[0] == pytest.approx(ptycho.slice_thickness)
    assert ptycho.thickness == pytest.approx(3 * ptycho.slice_thickness)
    # py4DSTEM's (theta_x, theta_y) is the paper's (-theta_y, -theta_x).
    assert ptycho.theta_x == pytest.approx(-ptycho.tilt[1])
    assert ptycho.theta_y == pytest.approx(-ptycho.tilt[0])
    assert ptycho.object_cropped.shape[1] < ptycho.object.shape[1]


def test_visualize_returns_a_figure(run):
    import matplotlib.pyplot as plt

    fig = run[0].visualize()
    assert len(fig.axes) >= 5
    plt.close(fig)


def test_to_hyperspy_is_what_ptycho_app_returns(small_dataset, small_signal):
    options = dict(num_slices=3, slice_thickness=8.0, defocus=DEFOCUS, batch_size=16, show_progressbar=False)
    expected = small_signal.ptycho_app(iterations=2, calibrate=False, **options)
    ptycho = _app(signal_to_datacube(small_signal)).preprocess(calibrate=False)
    result = ptycho.reconstruct(num_iter=2, progress_bar=False).to_hyperspy()
    np.testing.assert_allclose(result.data, expected.data, rtol=1e-5, atol=1e-6)
    for a, b in zip(result.axes_manager._axes, expected.axes_manager._axes, strict=True):
        assert (a.name, a.units) == (b.name, b.units)
        assert a.scale == pytest.approx(b.scale, rel=1e-5) and a.offset == pytest.approx(b.offset, abs=1e-6)
    got, want = result.metadata.Signal.Ptychography, expected.metadata.Signal.Ptychography
    for key in ("tilt_x", "tilt_y", "slice_thickness", "thickness", "num_slices", "iterations"):
        assert got[key] == pytest.approx(want[key], rel=1e-5), key
    assert got.method == want.method == "APP"
    assert got.Parameters.as_dictionary() == want.Parameters.as_dictionary()
    assert result.metadata.Acquisition_instrument.TEM.beam_energy == pytest.approx(300.0)


def test_save_and_read_round_trip_then_continue(run, small_dataset, tmp_path):
    ptycho = run[0]
    path = tmp_path / "app.h5"
    py4DSTEM.save(str(path), ptycho)
    back = py4DSTEM.read(str(path))
    assert isinstance(back, AdaptivePropagatorPtychography)
    np.testing.assert_allclose(back.object, ptycho.object)
    np.testing.assert_allclose(back.probe, ptycho.probe)
    assert back.error_iterations == pytest.approx(ptycho.error_iterations)
    assert (back.theta_x, back.theta_y) == pytest.approx((ptycho.theta_x, ptycho.theta_y))
    assert back.slice_thickness == pytest.approx(ptycho.slice_thickness)
    np.testing.assert_allclose(back.positions, ptycho.positions)
    assert back.config == ptycho.config
    with pytest.raises(RuntimeError, match="attach_datacube"):
        back.reconstruct(num_iter=1)
    same = AdaptivePropagatorPtychography.load(path, datacube=_cube(small_dataset))
    same.reconstruct(num_iter=1, progress_bar=False)
    assert same.iteration == ptycho.iteration + 1


def test_scan_rotation_follows_py4dstem_qr_rotation(small_dataset):
    """Patterns turned by np.rot90 need QR_rotation = -90 deg, as py4DSTEM's own vector maps say."""
    from py4DSTEM.process.calibration.rotation import get_Rvector_from_Qvector

    # np.rot90 on (Qx, Qy) sends the detector direction of scan vector (-1, 0) to (0, -1).
    assert np.allclose(get_Rvector_from_Qvector(0.0, -1.0, -90.0)[:2], (-1.0, 0.0))
    data = np.rot90(small_dataset.data, k=1, axes=(2, 3)).copy()
    errors = {}
    for rotation in (-90.0, 0.0, 90.0):
        ptycho = _app(_cube(small_dataset, rotation=rotation, data=data), num_slices=2, mode="fpp")
        ptycho.preprocess(calibrate=False).reconstruct(num_iter=3, progress_bar=False)
        errors[rotation] = ptycho.error
    assert errors[-90.0] < min(errors[0.0], errors[90.0])


def test_qr_flip_transposes_the_patterns(small_dataset):
    data = np.swapaxes(small_dataset.data, 2, 3).copy()
    flipped = _app(_cube(small_dataset, flip=True, data=data)).preprocess(calibrate=False)
    plain = _app(_cube(small_dataset)).preprocess(calibrate=False)
    np.testing.assert_array_equal(flipped._intensities, plain._intensities)


def test_tilt_convention_matches_py4dstem_propagator():
    """py4DSTEM's propagator at (theta_x, theta_y) is Eq. 3 at (-theta_y, -theta_x)."""
    from py4DSTEM.process.phase import MultislicePtychography

    reference = MultislicePtychography(energy=300e3, num_slices=2, slice_thicknesses=5.0, verbose=False)
    if not hasattr(reference, "_precompute_propagator_arrays"):
        pytest.skip("py4DSTEM's propagator helper moved")
    shape, sampling, theta = (16, 20), 0.2, (3.0, -8.0)
    theirs = reference._precompute_propagator_arrays(shape, (sampling,) * 2, 300e3, np.array([5.0]), *theta)[
        0
    ]
    ky, kx = fourier_grid(shape, sampling, dtype=torch.float64)
    tilt = AdaptivePropagatorPtychography.tilt_from_py4dstem(*theta)
    assert tilt == (8.0, -3.0)
    ours = propagator(
        ky, kx, electron_wavelength(300e3), 5.0, torch.tensor(tilt, dtype=torch.float64)
    ).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    wrong = propagator(
        ky, kx, electron_wavelength(300e3), 5.0, torch.tensor(theta, dtype=torch.float64)
    ).numpy()
    assert np.abs(wrong - theirs).max() > 0.1


def test_aberrations_match_py4dstem_probe():
    """py4DSTEM polar parameters give the same aberration function once the angles are mirrored."""
    from py4DSTEM.process.phase.utils import ComplexProbe

    params = {"C12": 40.0, "phi12": 0.4, "C21": 2e3, "phi21": 1.1, "C30": 5e4}
    probe = ComplexProbe(
        energy=300e3, gpts=(24, 24), sampling=(0.3, 0.3), semiangle_cutoff=25.0, **params, defocus=50.0
    )
    theirs = probe.evaluate_chi(*probe.get_scattering_angles())
    defocus, aberrations = _solver_aberrations(_polar_parameters(params, {"defocus": 50.0}))
    assert defocus == 50.0
    ky, kx = fourier_grid((24, 24), 0.3, dtype=torch.float64)
    ours = aberration_phase(ky, kx, electron_wavelength(300e3), dict(aberrations, C10=-defocus)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-3)
