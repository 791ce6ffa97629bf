"""The ``app-ptycho`` command line: parsing, every error path, and a small end-to-end run."""

import subprocess
import sys

import h5py
import hyperspy.api as hs
import numpy as np
import pytest

from app_extension.cli import (
    CLIError,
    build_parser,
    main,
    parse_angle,
    parse_detector_sampling,
    parse_energy,
    parse_length,
    parse_tilt,
)
from app_extension.load import LoadError, load_4dstem

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data_file(small_dataset, tmp_path_factory):
    """The small simulated scan saved, uncalibrated, as a user's .hspy file."""
    path = tmp_path_factory.mktemp("cli") / "scan.hspy"
    hs.signals.Signal2D(small_dataset.data).save(path)
    return path


def calibration(ds) -> list[str]:
    """The command-line flags that calibrate the small dataset (with units)."""
    return [
        "--beam-energy",
        f"{ds.geometry.energy / 1e3} kV",
        "--convergence-angle",
        f"{ds.geometry.semiangle} mrad",
        "--scan-step",
        f"{ds.scan_step / 10} nm",
        "--detector-sampling",
        f"{ds.geometry.reciprocal_sampling} 1/Å",
        "--defocus",
        f"{ds.geometry.defocus / 10} nm",
        "--no-calibrate",  # ideal data with the exact defocus; the calibration stage is tested on its own
    ]


# --------------------------------------------------------------------------- parsing


def test_parser_reads_reconstruct_options():
    args = build_parser().parse_args(
        ["reconstruct", "scan.mib", "--mode", "fpp", "--num-slices", "8", "--tilt", "8,-3", "-o", "r.zspy"]
    )
    assert (args.command, args.file, args.mode, args.num_slices, args.output) == (
        "reconstruct",
        "scan.mib",
        "fpp",
        8,
        "r.zspy",
    )
    assert args.iterations is None  # options not given keep ptycho_app's defaults
    assert not args.overwrite


def test_parser_rejects_unknown_mode(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["reconstruct", "x.hspy", "--mode", "xyz"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2 nm", 20.0), ("20 Å", 20.0), ("20 A", 20.0), ("20 angstrom", 20.0), ("20", 20.0), ("0.002 µm", 20.0)],
)
def test_parse_length(text, expected):
    assert parse_length(text, "--x") == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "expected"), [("300 kV", 300.0), ("300 keV", 300.0), ("300000 eV", 300.0), ("80", 80.0)]
)
def test_parse_energy(text, expected):
    assert parse_energy(text, "--beam-energy") == pytest.approx(expected)


def test_parse_angles_and_tilt():
    assert parse_angle("22 mrad", "--c") == pytest.approx(22.0)
    assert parse_angle("0.022 rad", "--c") == pytest.approx(22.0)
    assert parse_tilt("8,-3") == pytest.approx((8.0, -3.0))
    assert parse_tilt("8 mrad, -0.003 rad") == pytest.approx((8.0, -3.0))


def test_parse_detector_sampling():
    assert parse_detector_sampling("1 mrad", "--d") == (pytest.approx(1.0), "mrad")
    assert parse_detector_sampling("0.05 1/Å", "--d") == (pytest.approx(0.05), "1 / Å")
    assert parse_detector_sampling("0.5 1/nm", "--d") == (pytest.approx(0.05), "1 / Å")


@pytest.mark.parametrize(
    ("parser", "text", "match"),
    [
        (parse_length, "3 mrad", "not a length"),
        (parse_length, "two nm", "cannot read"),
        (parse_energy, "300 nm", "not a beam energy"),
        (parse_energy, "300 V", "implausible"),
        (parse_angle, "2 nm", "not an angle"),
        (parse_detector_sampling, "0.05", "needs units"),
        (parse_detector_sampling, "2 nm", "neither"),
        (parse_tilt, "8", "two values"),
    ],
)
def test_parse_errors_name_the_problem(parser, text, match):
    with pytest.raises(CLIError, match=match):
        parser(text, "--x") if parser is not parse_tilt else parser(text)


# --------------------------------------------------------------------------- errors


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_missing_file(tmp_path, capsys):
    code, _, err = run_cli(["reconstruct", tmp_path / "nope.mib"], capsys)
    assert code == 1
    assert "no such file" in err and "nope.mib" in err


def test_unreadable_format(tmp_path, capsys):
    junk = tmp_path / "notes.xyz"
    junk.write_text("not a 4D-STEM file\n")
    code, _, err = run_cli(["reconstruct", junk], capsys)
    assert code == 1
    assert "Could not read" in err and "RosettaSciIO" in err
    assert not (tmp_path / "notes_app.hspy").exists()


def test_corrupt_hspy(tmp_path, capsys):
    bad = tmp_path / "broken.hspy"
    bad.write_bytes(b"\x00" * 64)
    code, _, err = run_cli(["reconstruct", bad], capsys)
    assert code == 1
    assert "Could not read" in err


def test_3d_array_needs_scan_shape(tmp_path, small_dataset, capsys):
    stack = tmp_path / "stack.hspy"
    hs.signals.Signal2D(small_dataset.data.reshape(-1, 32, 32)).save(stack)
    code, _, err = run_cli(["reconstruct", stack, *calibration(small_dataset)], capsys)
    assert code == 1
    assert "3D array" in err and "--scan-shape" in err
    code, _, err = run_cli(["reconstruct", stack, "--scan-shape", "5", "5"], capsys)
    assert code == 1
    assert "25 positions" in err and "64 patterns" in err


def test_2d_image_is_rejected(tmp_path, capsys):
    image = tmp_path / "image.hspy"
    hs.signals.Signal2D(np.ones((16, 16))).save(image)
    code, _, err = run_cli(["reconstruct", image], capsys)
    assert code == 1
    assert "2D array" in err and "4D-STEM" in err


def test_uncalibrated_data_are_refused_before_computing(data_file, tmp_path, capsys):
    code, _, err = run_cli(["reconstruct", data_file, "-o", tmp_path / "r.hspy"], capsys)
    assert code == 1
    assert "calibrated" in err or "beam_energy" in err or "beam energy" in err
    assert not (tmp_path / "r.hspy").exists()


def test_bad_output_extension(data_file, tmp_path, capsys):
    code, _, err = run_cli(["reconstruct", data_file, "-o", tmp_path / "r.tif"], capsys)
    assert code == 1
    assert ".hspy" in err and ".zspy" in err


def test_existing_output_is_not_overwritten(data_file, tmp_path, small_dataset, capsys):
    out = tmp_path / "r.hspy"
    out.write_bytes(b"precious")
    code, _, err = run_cli(["reconstruct", data_file, *calibration(small_dataset), "-o", out], capsys)
    assert code == 1
    assert "exists" in err and "--overwrite" in err
    assert out.read_bytes() == b"precious"


def test_existing_summary_is_not_overwritten(data_file, tmp_path, small_dataset, capsys):
    png = tmp_path / "r.png"
    png.write_bytes(b"precious")
    code, _, err = run_cli(
        ["reconstruct", data_file, *calibration(small_dataset), "-o", tmp_path / "r.hspy"], capsys
    )
    assert code == 1
    assert "r.png exists" in err
    assert png.read_bytes() == b"precious"
    assert not (tmp_path / "r.hspy").exists()


def test_bad_unit_flag(data_file, tmp_path, capsys):
    code, _, err = run_cli(
        ["reconstruct", data_file, "--scan-step", "3 mrad", "-o", tmp_path / "r.hspy"], capsys
    )
    assert code == 1
    assert "--scan-step" in err and "not a length" in err


def test_cuda_without_gpu(data_file, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    code, _, err = run_cli(["reconstruct", data_file, "--device", "cuda", "-o", tmp_path / "r.hspy"], capsys)
    assert code == 2  # a usage error, found while the flags are parsed
    assert "no CUDA GPU" in err


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def finished_run(data_file, small_dataset, tmp_path_factory):
    """A two-iteration APP run through the command line, written as .hspy + PNG."""
    out = tmp_path_factory.mktemp("run") / "result.hspy"
    argv = ["reconstruct", data_file, *calibration(small_dataset)]
    argv += ["--num-slices", "2", "--thickness", "23.4 Å", "--iterations", "2", "--tilt", "1,-1", "-q"]
    argv += ["--checkpoint", out.with_suffix(".ckpt"), "-o", out]
    code = main([str(a) for a in argv])
    return code, out, argv


def test_end_to_end_writes_result_and_summary(finished_run):
    code, out, _ = finished_run
    assert code == 0
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == PNG_MAGIC
    result = hs.load(out)
    assert isinstance(result, hs.signals.ComplexSignal2D)
    assert result.data.shape[0] == 2  # slices
    node = result.metadata.Signal.Ptychography
    assert node.method == "APP"
    assert node.iterations == 2
    assert node.num_slices == 2
    assert np.isfinite([node.tilt_x, node.tilt_y, node.thickness]).all()
    # the calibration given on the command line reached the solver, in its units
    geometry = node.Geometry
    assert geometry.energy == pytest.approx(300e3)
    assert geometry.defocus == pytest.approx(100.0)
    assert node.Parameters.slice_thickness == pytest.approx(11.7)
    assert out.with_suffix(".ckpt").exists()


def test_end_to_end_output_is_protected_then_overwritten(finished_run, capsys):
    code, out, argv = finished_run
    before = out.stat().st_mtime_ns
    code, _, err = run_cli(argv, capsys)
    assert code == 1 and "exists" in err
    assert out.stat().st_mtime_ns == before


def test_resume_from_result(finished_run, tmp_path, capsys):
    _, out, argv = finished_run
    out2 = tmp_path / "more.zspy"
    code, stdout, err = run_cli(
        ["reconstruct", argv[1], *argv[2:12], "--resume", out, "--iterations", "1", "-q", "-o", out2], capsys
    )
    assert code == 0, err
    assert "3 iterations in total" in stdout
    assert hs.load(out2).metadata.Signal.Ptychography.iterations == 3


def test_fpp_prints_post_alignment(data_file, small_dataset, tmp_path, capsys):
    out = tmp_path / "fpp.hspy"
    argv = ["reconstruct", data_file, *calibration(small_dataset), "--mode", "fpp", "--num-slices", "2"]
    argv += ["--iterations", "1", "-q", "--no-summary", "-o", out]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "FPP post-alignment tilt" in stdout
    assert not out.with_suffix(".png").exists()


def test_module_entry_point():
    """``python -m app_extension ... --help`` answers without importing torch (it takes a fraction of a second)."""
    script = (
        "import runpy, sys\n"
        "sys.argv = ['app_extension', 'reconstruct', '--help']\n"
        "try:\n"
        "    runpy.run_module('app_extension', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as stop:\n"
        "    assert not stop.code, stop.code\n"
        "assert 'torch' not in sys.modules, 'torch imported for --help'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "--beam-energy" in done.stdout and "--overwrite" in done.stdout


# --------------------------------------------------------------------------- loading


def test_load_plain_hdf5_with_calibration(tmp_path, small_dataset):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["data"] = small_dataset.data
        f.attrs["energy_eV"] = 300e3
        f.attrs["semiangle_mrad"] = 22.0
        f.attrs["scan_step_A"] = small_dataset.scan_step
        f.attrs["reciprocal_pixel_A-1"] = 0.05
    s = load_4dstem(path)
    assert s.data.shape == small_dataset.data.shape
    assert s.axes_manager.navigation_axes[0].scale == pytest.approx(small_dataset.scan_step)
    assert s.axes_manager.signal_axes[0].scale == pytest.approx(0.05)
    assert s.metadata.Acquisition_instrument.TEM.beam_energy == pytest.approx(300.0)


def test_load_hdf5_without_4d_dataset(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["a"] = np.zeros((3, 3))
    with pytest.raises(LoadError, match="0 4D datasets"):
        load_4dstem(path)


def test_load_scan_shape_reshapes_a_stack(tmp_path, small_dataset):
    path = tmp_path / "stack.hspy"
    stack = hs.signals.Signal2D(small_dataset.data.reshape(-1, 32, 32))
    stack.axes_manager.signal_axes[0].scale = 0.05
    stack.save(path)
    s = load_4dstem(path, scan_shape=(8, 8))
    assert s.axes_manager.navigation_shape == (8, 8)
    assert s.axes_manager.signal_axes[0].scale == pytest.approx(0.05)
    np.testing.assert_array_equal(s.data, small_dataset.data)


def test_load_py4dstem_file(tmp_path, small_dataset):
    py4dstem = pytest.importorskip("py4DSTEM")
    path = tmp_path / "datacube.h5"
    cube = py4dstem.DataCube(data=small_dataset.data)
    py4dstem.save(str(path), cube, mode="o")
    s = load_4dstem(path)
    assert s.axes_manager.navigation_dimension == 2 and s.axes_manager.signal_dimension == 2
    np.testing.assert_array_equal(s.data, small_dataset.data)


def test_load_py4dstem_keeps_rotation_and_flip(tmp_path, small_dataset):
    py4dstem = pytest.importorskip("py4DSTEM")
    path = tmp_path / "flipped.h5"
    cube = py4dstem.DataCube(data=small_dataset.data)
    cube.calibration.set_R_pixel_size(small_dataset.scan_step)
    cube.calibration.set_R_pixel_units("A")
    cube.calibration.set_Q_pixel_size(0.05)
    cube.calibration.set_Q_pixel_units("A^-1")
    cube.calibration.set_QR_rotation_degrees(12.0)
    cube.calibration.set_QR_flip(True)
    py4dstem.save(str(path), cube, mode="o")
    s = load_4dstem(path)
    np.testing.assert_array_equal(s.data, np.swapaxes(small_dataset.data, 2, 3))
    assert s.metadata.Acquisition_instrument.TEM.scan_rotation == pytest.approx(12.0)
    assert not s.metadata.Acquisition_instrument.TEM.detector_transposed
    assert s.axes_manager.navigation_axes[0].scale == pytest.approx(small_dataset.scan_step)
    assert [a.name for a in s.axes_manager.signal_axes] == ["kx", "ky"]


def test_scan_rotation_flag_reaches_the_solver(data_file, small_dataset, tmp_path, capsys):
    out = tmp_path / "rot.hspy"
    argv = ["reconstruct", data_file, *calibration(small_dataset), "--scan-rotation", "0.5 deg"]
    argv += ["--num-slices", "1", "--iterations", "1", "-q", "--no-summary", "-o", out]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert hs.load(out).metadata.Signal.Ptychography.Parameters.scan_rotation == pytest.approx(0.5)


def test_resume_from_checkpoint(finished_run, tmp_path, capsys):
    _, out, argv = finished_run
    out2 = tmp_path / "from_ckpt.hspy"
    argv2 = ["reconstruct", argv[1], *argv[2:12], "--resume", out.with_suffix(".ckpt"), "--iterations", "1"]
    code, stdout, err = run_cli([*argv2, "-q", "--no-summary", "-o", out2], capsys)
    assert code == 0, err
    assert "3 iterations in total" in stdout


def test_resume_from_missing_file(data_file, tmp_path, capsys):
    code, _, err = run_cli(["reconstruct", data_file, "--resume", tmp_path / "gone.ckpt"], capsys)
    assert code == 1
    assert "--resume" in err and "no such file" in err


# --------------------------------------------------------------------------- memory report


def test_memory_estimate_is_reported_and_verbose_gives_the_parts(data_file, small_dataset, tmp_path, capsys):
    out = tmp_path / "mem.hspy"
    argv = ["reconstruct", data_file, *calibration(small_dataset), "--num-slices", "1", "--iterations", "1"]
    code, stdout, err = run_cli([*argv, "-q", "--no-summary", "-o", out], capsys)
    assert code == 0, err
    line = next(row for row in stdout.splitlines() if "memory (preflight estimate of the peak)" in row)
    stored = hs.load(out).metadata.Signal.Ptychography.Memory_estimate
    assert f"host {stored.host_bytes / 1e6:.0f} MB" in line and "data held on the device" in line
    assert "runtime (kernels" not in stdout  # the parts only with -v
    code, stdout, err = run_cli([*argv, "-q", "--no-summary", "-v", "--overwrite", "-o", out], capsys)
    assert code == 0, err
    assert "memory estimate: host" in stdout and "runtime (kernels, FFT plans, allocator pools)" in stdout


def test_memory_refusal_is_a_message_not_a_traceback(data_file, small_dataset, tmp_path, capsys, monkeypatch):
    from app_extension.solver import memory

    monkeypatch.setattr(memory, "available_memory", lambda device: 10**6)  # 1 MB free
    out = tmp_path / "big.hspy"
    argv = ["reconstruct", data_file, *calibration(small_dataset), "--iterations", "1", "-q", "-o", out]
    code, _, err = run_cli(argv, capsys)
    assert code == 1
    assert "error: The run does not fit in memory: needs" in err and "(1 MB free)" in err
    assert "Traceback" not in err and not out.exists()
