"""The built-in demo (app_extension.demo) and ``app-ptycho demo``, on the small simulated crystal."""

import hyperspy.api as hs
import numpy as np
import pytest

import app_extension.demo as demo
from app_extension.cli import main


@pytest.fixture(scope="module")
def numbers(small_dataset):
    return demo.run_demo(iterations=3, num_slices=2, start_thickness=30.0, dataset=small_dataset)


def test_run_demo_reports_truth_and_both_methods(numbers, small_dataset):
    assert numbers["true_tilt"] == pytest.approx(small_dataset.tilt)
    assert numbers["true_thickness"] == pytest.approx(small_dataset.thickness)
    assert numbers["scan_shape"] == (8, 8) and numbers["pattern_size"] == 32
    for mode in ("app", "fpp"):
        run = numbers[mode]
        assert run["iterations"] == 3 and run["num_slices"] == 2 and run["status"] == "ok"
        assert np.isfinite(run["loss"]) and run["seconds"] > 0


def test_run_demo_app_learns_fpp_keeps_geometry(numbers):
    app, fpp = numbers["app"], numbers["fpp"]
    # APP moves tilt and thickness away from the start (tilt 0, 30 Å); FPP keeps them.
    assert np.hypot(*app["tilt"]) > 0.1
    assert app["thickness"] != pytest.approx(30.0, abs=1e-3)
    assert fpp["tilt"] == (0.0, 0.0)
    assert fpp["thickness"] == pytest.approx(30.0)
    assert "post_alignment_tilt" in fpp and "post_alignment_tilt" not in app
    assert np.isfinite(fpp["post_alignment_tilt"]).all()


def test_format_demo_lists_truth_app_and_fpp(numbers):
    text = demo.format_demo(numbers)
    assert "truth" in text and "APP (learned)" in text and "FPP (post-alignment)" in text
    assert f"{numbers['app']['thickness'] / 10:.2f}" in text


def test_tilt_versus_slices_rows(small_dataset):
    rows = demo.tilt_versus_slices(small_dataset, slice_counts=(2, 3), iterations=1, modes=("fpp",))
    assert [r["num_slices"] for r in rows] == [2, 3]
    for r in rows:
        assert r["mode"] == "fpp"
        assert r["slice_thickness"] == pytest.approx(small_dataset.thickness / r["num_slices"])
        assert np.isfinite(r["tilt"]).all()


def test_demo_command_writes_results(small_dataset, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(demo, "demo_dataset", lambda: small_dataset)
    code = main(["demo", "--iterations", "1", "-q", "--output", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "truth" in out and "(8.00, -3.00)" in out
    for mode in ("app", "fpp"):
        assert (tmp_path / f"demo_{mode}.png").read_bytes()[:4] == b"\x89PNG"
        result = hs.load(tmp_path / f"demo_{mode}.hspy")
        assert result.metadata.Signal.Ptychography.method == mode.upper()
    # a second run does not overwrite them without --overwrite
    assert main(["demo", "--iterations", "1", "-q", "--output", str(tmp_path)]) == 1
    assert "--overwrite" in capsys.readouterr().err
