"""The built-in demo (app_extension.demo) and ``app-ptycho demo``, on the small simulated crystal."""

import hyperspy.api as hs
import numpy as np
import pytest

import app_extension.demo as demo
from app_extension.cli import main


@pytest.fixture(scope="module")
def numbers(small_dataset):
    return demo.run_demo(iterations=3, num_slices=2, start_thickness=30.0, dataset=small_dataset)


def test_run_demo_reports_both_methods(numbers):
    assert numbers["scan_shape"] == (8, 8) and numbers["pattern_size"] == 32
    for mode in ("app", "fpp"):
        run = numbers[mode]
        assert run["iterations"] == 3 and run["num_slices"] == 2 and run["status"] == "ok"
        assert np.isfinite(run["loss"]) and run["seconds"] > 0


def test_run_demo_app_learns_fpp_keeps_geometry(numbers, small_dataset):
    app, fpp = numbers["app"], numbers["fpp"]
    # APP moves tilt and thickness from the start (tilt 0, 30 Å) toward the truth ((8, -3) mrad,
    # 23.4 Å) even in 3 iterations (measured, seeds 0-2: tilt 8.2-8.5 mrad from the truth against 8.5
    # at the start, thickness 29.0 Å); FPP keeps them.
    truth = np.asarray(small_dataset.tilt)
    assert np.hypot(*(np.asarray(app["tilt"]) - truth)) < np.hypot(*truth) - 0.1
    assert abs(app["thickness"] - small_dataset.thickness) < abs(30.0 - small_dataset.thickness) - 0.5
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
    for mode in ("app", "fpp"):
        assert (tmp_path / f"demo_{mode}.png").read_bytes()[:4] == b"\x89PNG"
        result = hs.load(tmp_path / f"demo_{mode}.hspy")
        assert result.metadata.Signal.Ptychography.method == mode.upper()
    # The printed APP row is the written result.
    node = hs.load(tmp_path / "demo_app.hspy").metadata.Signal.Ptychography
    row = next(line for line in out.splitlines() if line.startswith("APP (learned)"))
    assert f"({node.tilt_x:.2f}, {node.tilt_y:.2f})" in row and f"{node.thickness / 10:.2f}" in row
    # a second run does not overwrite them without --overwrite
    assert main(["demo", "--iterations", "1", "-q", "--output", str(tmp_path)]) == 1
    assert "--overwrite" in capsys.readouterr().err
