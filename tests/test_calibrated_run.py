"""The data-preparation stage inside the front ends: ptycho_app, the CLI and the py4DSTEM class.

The scan (tests/measurements_data.py) has a 15 degree scan rotation, an off-centre optic axis with
descan, hot and dead pixels, astigmatism and shot noise. The front ends find them by default, store
the report, and reconstruct; with ``calibrate=False`` they use the patterns as given.
"""

import json

import hyperspy.api as hs
import measurements_data as md
import numpy as np
import pytest

OPTIONS = dict(
    num_slices=2, slice_thickness=md.THICKNESS / 2, iterations=2, batch_size=48, show_progressbar=False
)


def _signal(transpose=False):
    s = hs.signals.Signal2D(md.recorded_data(transpose=transpose).copy())
    s.set_signal_type("ptychography")
    s.set_experimental_parameters(
        beam_energy=300, convergence_angle=22, scan_step=md.ideal().scan_step, detector_sampling=md.SAMPLING
    )
    return s


def test_ptycho_app_finds_and_reports_the_calibration():
    result = _signal().ptycho_app(defocus=md.DEFOCUS + 40, **OPTIONS)
    p = result.metadata.Signal.Ptychography
    report = json.loads(str(p.Calibration.json))
    assert report["rotation_deg"] == pytest.approx(md.ROTATION, abs=1.5)
    assert report["transposed"] is False
    np.testing.assert_allclose(report["centre_px"], md.AXIS, atol=0.3)
    found = {(r, c) for r, c, _ in report["bad_pixels"]}
    assert set(md.HOT) | set(md.DEAD) <= found
    # the fitted defocus, not the given (40 Å off) one, starts the probe
    assert abs(float(p.Geometry.defocus) - md.DEFOCUS) < abs(float(p.Geometry.defocus) - (md.DEFOCUS + 40))
    # the scan positions are the unrotated raster: object, positions and tilt are in the scan frame
    np.testing.assert_allclose(p.Geometry.scan_positions, md.scan_positions(), atol=1e-9)
    assert p.Parameters.scan_rotation == pytest.approx(report["rotation_deg"])
    assert np.isfinite(result.data).all()


def test_calibration_off_uses_the_patterns_as_given():
    result = _signal().ptycho_app(defocus=md.DEFOCUS, calibrate=False, **OPTIONS)
    p = result.metadata.Signal.Ptychography
    assert not p.has_item("Calibration")
    assert float(p.Geometry.defocus) == md.DEFOCUS


def test_transposed_detector_is_found():
    report = json.loads(
        str(
            _signal(transpose=True)
            .ptycho_app(defocus=md.DEFOCUS, **OPTIONS)
            .metadata.Signal.Ptychography.Calibration.json
        )
    )
    assert report["transposed"] is True
    assert report["rotation_deg"] == pytest.approx(md.ROTATION, abs=1.5)


def test_cli_prints_the_calibration(tmp_path, capsys):
    from app_extension.cli import main

    _signal().save(tmp_path / "scan.hspy")
    code = main(
        [
            "reconstruct",
            str(tmp_path / "scan.hspy"),
            "--num-slices",
            "2",
            "--iterations",
            "1",
            "--defocus",
            "150",
            "--slice-thickness",
            str(md.THICKNESS / 2),
            "-q",
            "--no-summary",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "Calibration measured from the data" in out and "scan rotation" in out and "bad pixels" in out


def test_py4dstem_class_runs_the_same_stage(monkeypatch):
    py4DSTEM = pytest.importorskip("py4DSTEM")
    import app_extension.solver.distributed as distributed
    from app_extension.py4dstem import AdaptivePropagatorPtychography

    joined = []  # the stage joins torchrun's group for the class's device (so rank 0 alone measures)
    monkeypatch.setattr(
        distributed, "from_environment", lambda device: joined.append(device) or (None, device)
    )

    dc = py4DSTEM.DataCube(data=md.recorded_data().copy())
    dc.calibration.set_R_pixel_size(md.ideal().scan_step)
    dc.calibration.set_R_pixel_units("A")
    dc.calibration.set_Q_pixel_size(md.SAMPLING)
    dc.calibration.set_Q_pixel_units("A^-1")
    p = AdaptivePropagatorPtychography(
        energy=300e3,
        num_slices=2,
        slice_thicknesses=md.THICKNESS / 2,
        datacube=dc,
        semiangle_cutoff=22.0,
        defocus=md.DEFOCUS,
        verbose=False,
    ).preprocess()
    assert joined == ["cpu"]
    report = p.calibration_report
    assert report["rotation_deg"] == pytest.approx(md.ROTATION, abs=1.5)
    np.testing.assert_allclose(report["centre_px"], md.AXIS, atol=0.3)
    p.reconstruct(num_iter=1, max_batch_size=48, progress_bar=False)
    assert p.to_hyperspy().metadata.Signal.Ptychography.has_item("Calibration")
