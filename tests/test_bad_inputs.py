"""Every bad input a new user may give gets a clear error (or the right behaviour), in all three front ends.

The table below is parametrised over the command line (``app_extension.cli.main``: exit status and
stderr), ``s.ptycho_app`` / ``s.set_experimental_parameters`` on the small calibrated signal, and the
py4DSTEM class. Each case names the error type (or exit status) and patterns the message must hold: the
option (or the problem) and the fix; some name text it must not hold. A Python error must be raised
from app_extension's own code (the last traceback frame), never from inside torch, numpy, pint, h5py
or py4DSTEM; the command line must never print a traceback.

Run: ``python -m pytest -q tests/test_bad_inputs.py``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import hyperspy.api as hs
import numpy as np
import pytest
import torch

from app_extension.cli import main
from app_extension.load import load_4dstem
from app_extension.solver.data_checks import PatternWarning, pattern_warnings, warn_about_patterns
from app_extension.solver.options import OptionError, UnknownOptionError
from app_extension.solver.serialize import NotAStateError
from app_extension.units import CalibrationError

py4DSTEM = pytest.importorskip("py4DSTEM")

from app_extension.py4dstem import AdaptivePropagatorPtychography  # noqa: E402

GPU = torch.cuda.is_available()
no_gpu = pytest.mark.skipif(GPU, reason="a CUDA GPU is present")
FAST = {"num_slices": 2, "slice_thickness": "1 nm", "show_progressbar": False}


# --------------------------------------------------------------------------- set-up


class Env:
    """Fresh inputs for one case: the calibrated signal, a DataCube, the py4DSTEM class, files."""

    def __init__(self, dataset, files: Path):
        self.ds = dataset
        self.files = files

    def signal(self, data=None):
        ds = self.ds
        s = hs.signals.Signal2D(ds.data.copy() if data is None else data)
        s.set_signal_type("ptychography")
        s.set_experimental_parameters(
            beam_energy=ds.geometry.energy / 1e3,
            convergence_angle=ds.geometry.semiangle,
            scan_step=ds.scan_step,
            detector_sampling=ds.geometry.reciprocal_sampling,
        )
        return s

    def app(self, **kwargs):
        return self.signal().ptycho_app(**{**FAST, **kwargs})

    def cube(self, data=None):
        dc = py4DSTEM.DataCube(data=self.ds.data.copy() if data is None else data)
        dc.calibration.set_R_pixel_size(self.ds.scan_step)
        dc.calibration.set_R_pixel_units("A")
        dc.calibration.set_Q_pixel_size(self.ds.geometry.reciprocal_sampling)
        dc.calibration.set_Q_pixel_units("A^-1")
        return dc

    def p4(self, preprocess=True, **kwargs):
        options = dict(
            energy=300e3,
            num_slices=2,
            slice_thicknesses=10.0,
            datacube=self.cube(),
            semiangle_cutoff=22.0,
            verbose=False,
        )
        ptycho = AdaptivePropagatorPtychography(**{**options, **kwargs})
        return ptycho.preprocess() if preprocess else ptycho

    def path(self, name: str) -> str:
        return str(self.files / name)


@pytest.fixture(scope="module")
def files(small_dataset, tmp_path_factory):
    """The bad (and some good) files a user may hand over."""
    d = tmp_path_factory.mktemp("bad_inputs")
    data = small_dataset.data
    hs.signals.Signal2D(data).save(d / "scan.hspy")
    hs.signals.Signal2D(np.zeros((4, 4))).save(d / "image.hspy")  # a HyperSpy file, but no result
    negative = data.copy()
    negative[0, 0, 0, 0] = -1.0
    hs.signals.Signal2D(negative).save(d / "negative.hspy")
    nan = data.copy()
    nan[0, 1, 2, 3] = np.nan
    hs.signals.Signal2D(nan).save(d / "nan.hspy")
    (d / "notes.txt").write_text("not a checkpoint\n")
    (d / "corrupt.h5").write_bytes(b"\x00garbage, not HDF5\x00" * 20)
    (d / "corrupt.hspy").write_bytes(b"\x00garbage, not HDF5\x00" * 20)
    (d / "corrupt.mib").write_bytes(b"not a Merlin file" * 10)
    (d / "empty.hspy").write_bytes(b"")
    (d / "other.xml").write_text("<root><spectrum>1 2 3</spectrum></root>")
    torch.save({"object": torch.zeros(3)}, d / "state.pt")
    with h5py.File(d / "random.h5", "w") as f:
        f["numbers"] = np.arange(5.0)
    with h5py.File(d / "stack3d.h5", "w") as f:
        f["data"] = data.reshape(-1, *data.shape[-2:])
    with h5py.File(d / "five_d.h5", "w") as f:
        f["data"] = data[None]
    return d


@pytest.fixture
def env(small_dataset, files):
    return Env(small_dataset, files)


def _calibration(ds) -> list[str]:
    return [
        "--beam-energy",
        f"{ds.geometry.energy / 1e3:g} kV",
        "--convergence-angle",
        f"{ds.geometry.semiangle:g} mrad",
        "--scan-step",
        f"{ds.scan_step:g} Å",
        "--detector-sampling",
        f"{ds.geometry.reciprocal_sampling:g} 1/Å",
    ]


def _cli_args(
    env: Env, file: str = "scan.hspy", drop: str | None = None, extra=(), iterations=0
) -> list[str]:
    cal = _calibration(env.ds)
    if drop is not None:
        i = cal.index(drop)
        del cal[i : i + 2]
    out = env.files / "out" / "r.hspy"
    out.parent.mkdir(exist_ok=True)
    return [
        "reconstruct",
        env.path(file),
        *cal,
        "--iterations",
        str(iterations),
        "-q",
        "--overwrite",
        "-o",
        str(out),
        *extra,
    ]


# --------------------------------------------------------------------------- the table


@dataclass
class Case:
    """One bad input: what to call, the error (type or CLI exit status) and the message."""

    id: str
    front: str  # "cli", "hyperspy", "py4dstem"
    call: object  # env -> value (Python) or env -> argv (CLI)
    error: type[BaseException] | int
    match: tuple[str, ...]
    absent: tuple[str, ...] = ()
    marks: tuple = field(default_factory=tuple)


def _set(**kw):
    return lambda e: e.signal().set_experimental_parameters(**kw)


def _metadata(key, value):
    def call(e):
        s = e.signal()
        s.metadata.set_item(f"Acquisition_instrument.TEM.{key}", value)
        return s.ptycho_app(**FAST)

    return call


def _convergence_beyond_detector(e):
    s = e.signal()
    s.set_experimental_parameters(convergence_angle=100)  # plausible on its own, but not here
    return s.ptycho_app(**FAST)


def _negative_axis(e):
    s = e.signal()
    for axis in s.axes_manager.signal_axes:
        axis.scale = -axis.scale
    return s.ptycho_app(**FAST)


def _replace_data(e, change):
    s = e.signal()
    data = s.data.copy()
    change(data)
    s.data = data
    return s.ptycho_app(**FAST)


def _nan(d):
    d[0, 1, 2, 3] = np.nan


def _neg(d):
    d[1, 0, 5, 5] = -3.0


def _three_d_signal(e):
    s = hs.signals.Signal2D(e.ds.data.reshape(-1, *e.ds.data.shape[-2:]).copy())
    s.set_signal_type("ptychography")
    return s.ptycho_app(**FAST)


def _cube_3d(e):
    dc = e.cube()
    dc.data = dc.data.reshape(-1, *dc.data.shape[-2:])
    return e.p4(datacube=dc)


def _cube_non_square(e):
    return e.p4(datacube=e.cube(np.ascontiguousarray(e.ds.data[..., :30])))


CASES = [
    # ---- HyperSpy signal: calibration
    Case(
        "hs-beam-energy-abc",
        "hyperspy",
        _set(beam_energy="abc"),
        CalibrationError,
        ("beam_energy='abc'", "300 kV"),
    ),
    Case(
        "hs-beam-energy-in-ptycho_app",
        "hyperspy",
        lambda e: e.app(beam_energy="300 kV"),
        UnknownOptionError,
        ("beam_energy", r"set_experimental_parameters\(beam_energy='300 kV'\)"),
    ),
    Case(
        "hs-beam-energy-eV-for-keV",
        "hyperspy",
        _set(beam_energy=300000),
        CalibrationError,
        ("beam_energy=300000", "looks like eV", r"beam_energy=300 \(keV\)"),
    ),
    Case(
        "hs-beam-energy-1e9-eV",
        "hyperspy",
        _set(beam_energy="1e9 eV"),
        CalibrationError,
        ("1e9 eV", "1 to 3000 keV"),
    ),
    Case(
        "hs-beam-energy-eV-in-metadata",
        "hyperspy",
        _metadata("beam_energy", 300000.0),
        CalibrationError,
        ("metadata", "beam_energy", "looks like eV", "set_experimental_parameters"),
    ),
    Case(
        "hs-beam-energy-angle",
        "hyperspy",
        _set(beam_energy="300 mrad"),
        CalibrationError,
        ("beam_energy", "not a beam energy", "300 kV"),
    ),
    Case(
        "hs-convergence-22-deg",
        "hyperspy",
        _set(convergence_angle="22 deg"),
        CalibrationError,
        ("convergence_angle='22 deg'", "384 mrad", "'22 mrad'"),
    ),
    Case(
        "hs-convergence-length",
        "hyperspy",
        _set(convergence_angle="2 nm"),
        CalibrationError,
        ("convergence_angle", "not an angle", "22 mrad"),
    ),
    Case(
        "hs-convergence-beyond-detector",
        "hyperspy",
        _convergence_beyond_detector,
        CalibrationError,
        ("100 mrad", "bright-field disk", "detector", "convergence_angle=", "detector_sampling="),
    ),
    Case(
        "hs-detector-negative-mrad",
        "hyperspy",
        _set(detector_sampling="-1 mrad"),
        CalibrationError,
        ("detector_sampling='-1 mrad'", "negative", "detector_sampling='1 mrad'"),
        absent=("different pixel sizes",),
    ),
    Case(
        "hs-detector-negative-number",
        "hyperspy",
        _set(detector_sampling=-0.05),
        CalibrationError,
        ("negative", "0.05 1/Å"),
    ),
    Case(
        "hs-detector-length",
        "hyperspy",
        _set(detector_sampling="1 nm"),
        CalibrationError,
        ("detector_sampling", "neither an angle nor", "1 mrad"),
    ),
    Case(
        "hs-detector-axis-negative-in-file",
        "hyperspy",
        _negative_axis,
        CalibrationError,
        ("detector axis", "negative pixel size", "detector_sampling="),
        absent=("different pixel sizes",),
    ),
    Case(
        "hs-scan-step-nan",
        "hyperspy",
        _set(scan_step=float("nan")),
        CalibrationError,
        ("scan_step=nan", "positive, finite", "0.39 Å"),
    ),
    Case(
        "hs-scan-step-angle",
        "hyperspy",
        _set(scan_step="3 mrad"),
        CalibrationError,
        ("scan_step='3 mrad'", "not a length", "0.39 Å"),
    ),
    # ---- HyperSpy signal: options
    Case(
        "hs-padded-size-65.5",
        "hyperspy",
        lambda e: e.app(padded_size=65.5),
        OptionError,
        ("padded_size=65.5", "whole number"),
    ),
    Case(
        "hs-num-slices-2.5",
        "hyperspy",
        lambda e: e.app(num_slices=2.5),
        OptionError,
        ("num_slices=2.5", "whole number"),
    ),
    Case(
        "hs-device-cuda-without-gpu",
        "hyperspy",
        lambda e: e.app(device="cuda"),
        OptionError,
        ("device='cuda'", "no CUDA GPU", "device='cpu'"),
        marks=(no_gpu,),
    ),
    Case(
        "hs-device-gpu-means-cuda",
        "hyperspy",
        lambda e: e.app(device="gpu"),
        OptionError,
        ("device='gpu'", "no CUDA GPU"),
        absent=("not a torch device",),
        marks=(no_gpu,),
    ),
    Case(
        "hs-device-tpu",
        "hyperspy",
        lambda e: e.app(device="tpu"),
        OptionError,
        ("device='tpu'", "not a torch device", "'cpu'"),
    ),
    Case(
        "hs-tilt-one-value",
        "hyperspy",
        lambda e: e.app(tilt="3 mrad"),
        OptionError,
        ("tilt", "pair", r"\(3, -1\)"),
    ),
    Case(
        "hs-tilt-nan",
        "hyperspy",
        lambda e: e.app(tilt=(float("nan"), 0)),
        OptionError,
        (r"tilt\[0\]=nan", "out of range"),
    ),
    Case(
        "hs-defocus-angle",
        "hyperspy",
        lambda e: e.app(defocus="1 mrad"),
        OptionError,
        ("defocus='1 mrad'", "Å"),
    ),
    Case(
        "hs-unknown-option",
        "hyperspy",
        lambda e: e.app(learning_rate=0.1),
        UnknownOptionError,
        ("learning_rate", "the options are"),
    ),
    Case(
        "hs-depth-units-angle",
        "hyperspy",
        lambda e: e.app(depth_units="mrad", iterations=0),
        ValueError,
        ("depth_units", "length unit", "nm"),
    ),
    # ---- HyperSpy signal: resume
    Case(
        "hs-resume-text-file",
        "hyperspy",
        lambda e: e.app(resume=e.path("notes.txt")),
        NotAStateError,
        ("notes.txt", "not an app_extension checkpoint", "checkpoint="),
    ),
    Case(
        "hs-resume-random-h5",
        "hyperspy",
        lambda e: e.app(resume=e.path("random.h5")),
        NotAStateError,
        ("random.h5", "no app_extension state", "checkpoint="),
    ),
    Case(
        "hs-resume-torch-pt",
        "hyperspy",
        lambda e: e.app(resume=e.path("state.pt")),
        NotAStateError,
        ("state.pt", "not an app_extension checkpoint"),
        absent=("weights_only", "Unpickl"),
    ),
    Case(
        "hs-resume-corrupt-hspy",
        "hyperspy",
        lambda e: e.app(resume=e.path("corrupt.hspy")),
        NotAStateError,
        ("corrupt.hspy", "cannot be read as a saved result", r"\.hspy/\.zspy"),
    ),
    Case(
        "hs-resume-hspy-without-result",
        "hyperspy",
        lambda e: e.app(resume=e.path("image.hspy")),
        ValueError,
        ("no ptychography result", "returned by ptycho_app"),
    ),
    # ---- HyperSpy signal: data
    Case(
        "hs-nan-in-data",
        "hyperspy",
        lambda e: _replace_data(e, _nan),
        ValueError,
        ("NaN", "pattern 1", "replace them"),
    ),
    Case(
        "hs-negative-counts",
        "hyperspy",
        lambda e: _replace_data(e, _neg),
        ValueError,
        ("negative intensities", "clip"),
    ),
    Case(
        "hs-non-square-patterns",
        "hyperspy",
        lambda e: e.signal(np.ascontiguousarray(e.ds.data[..., :30])).ptycho_app(**FAST),
        ValueError,
        ("square", "30", r"isig\["),
    ),
    Case("hs-3d-data", "hyperspy", _three_d_signal, ValueError, ("4D-STEM", "navigation", "transpose")),
    # ---- py4DSTEM class
    Case(
        "p4-3d-datacube", "py4dstem", _cube_3d, ValueError, ("3D data", r"reshape\(Rx, Ry, 32, 32\)", "= 64")
    ),
    Case(
        "p4-3d-array-as-datacube",
        "py4dstem",
        lambda e: e.p4(datacube=e.ds.data.reshape(64, 32, 32)),
        TypeError,
        ("datacube must be a py4DSTEM DataCube", r"DataCube\(data=array\)", "reshape"),
    ),
    Case(
        "p4-energy-abc",
        "py4dstem",
        lambda e: e.p4(energy="abc"),
        CalibrationError,
        ("energy='abc'", "eV", "300 kV"),
    ),
    Case(
        "p4-energy-in-keV",
        "py4dstem",
        lambda e: e.p4(energy=300),
        OptionError,
        ("energy=300", "looks like keV", "300000"),
    ),
    Case(
        "p4-energy-1e9-eV",
        "py4dstem",
        lambda e: e.p4(energy=1e9),
        OptionError,
        ("energy=1e\\+09 eV", "300e3"),
    ),
    Case(
        "p4-energy-string-keV-range",
        "py4dstem",
        lambda e: e.p4(energy="1e9 eV"),
        CalibrationError,
        ("energy='1e9 eV'", r"energy=300e3 \(eV\)"),
    ),
    Case(
        "p4-theta-x-length",
        "py4dstem",
        lambda e: e.p4(theta_x="3 nm"),
        OptionError,
        ("theta_x='3 nm'", "mrad"),
    ),
    Case(
        "p4-num-slices-2.5",
        "py4dstem",
        lambda e: e.p4(num_slices=2.5),
        OptionError,
        ("num_slices=2.5", "whole number"),
    ),
    Case(
        "p4-padded-65.5",
        "py4dstem",
        lambda e: e.p4(padded_diffraction_intensities_shape=65.5),
        OptionError,
        ("padded_diffraction_intensities_shape=65.5", "whole number"),
    ),
    Case(
        "p4-padded-smaller-than-patterns",
        "py4dstem",
        lambda e: e.p4(padded_diffraction_intensities_shape=16),
        OptionError,
        ("padded_diffraction_intensities_shape=16", "smaller than the patterns", "at least 32"),
    ),
    Case(
        "p4-semiangle-22-deg",
        "py4dstem",
        lambda e: e.p4(semiangle_cutoff="22 deg"),
        CalibrationError,
        ("semiangle_cutoff='22 deg'", "384 mrad", "22 mrad"),
    ),
    Case(
        "p4-semiangle-beyond-detector",
        "py4dstem",
        lambda e: e.p4(semiangle_cutoff=100),
        CalibrationError,
        ("bright-field disk", "semiangle_cutoff=", "Q pixel size"),
    ),
    Case(
        "p4-device-cuda-without-gpu",
        "py4dstem",
        lambda e: e.p4(device="cuda", preprocess=False),
        OptionError,
        ("device='cuda'", "no CUDA GPU"),
        marks=(no_gpu,),
    ),
    Case(
        "p4-device-gpu-means-cuda",
        "py4dstem",
        lambda e: e.p4(device="gpu", preprocess=False),
        OptionError,
        ("device='gpu'", "no CUDA GPU"),
        marks=(no_gpu,),
    ),
    Case(
        "p4-hyperspy-name-beam_energy",
        "py4dstem",
        lambda e: e.p4(beam_energy=300e3, preprocess=False),
        UnknownOptionError,
        ("beam_energy", r"energy \(in eV\)"),
    ),
    Case(
        "p4-solver-name-padded_size",
        "py4dstem",
        lambda e: e.p4(padded_size=64, preprocess=False),
        OptionError,
        ("padded_size as padded_diffraction_intensities_shape",),
    ),
    Case(
        "p4-defocus-angle",
        "py4dstem",
        lambda e: e.p4(defocus="1 mrad", preprocess=False),
        OptionError,
        ("defocus='1 mrad'", "Å"),
    ),
    Case(
        "p4-force-angular-negative",
        "py4dstem",
        lambda e: e.p4(preprocess=False).preprocess(force_angular_sampling=-1.0),
        ValueError,
        ("force_angular_sampling", "must be positive", "without the sign"),
    ),
    Case(
        "p4-force-scan-negative",
        "py4dstem",
        lambda e: e.p4(preprocess=False).preprocess(force_scan_sampling=-0.4),
        ValueError,
        ("force_scan_sampling", "positive", "force_scan_sampling=0.39"),
    ),
    Case("p4-non-square", "py4dstem", _cube_non_square, ValueError, ("square", "32 x 30", "crop")),
    Case(
        "p4-num-iter-2.5",
        "py4dstem",
        lambda e: e.p4().reconstruct(num_iter=2.5),
        OptionError,
        ("num_iter=2.5", "whole number"),
    ),
    Case(
        "p4-load-text-file",
        "py4dstem",
        lambda e: AdaptivePropagatorPtychography.load(e.path("notes.txt")),
        NotAStateError,
        ("notes.txt", "not a saved AdaptivePropagatorPtychography", "save()"),
    ),
    Case(
        "p4-load-random-h5",
        "py4dstem",
        lambda e: AdaptivePropagatorPtychography.load(e.path("random.h5")),
        NotAStateError,
        ("random.h5", "not a saved AdaptivePropagatorPtychography"),
    ),
    Case(
        "p4-load-torch-pt",
        "py4dstem",
        lambda e: AdaptivePropagatorPtychography.load(e.path("state.pt")),
        NotAStateError,
        ("state.pt", "not an HDF5 file"),
        absent=("weights_only",),
    ),
    # ---- command line
    Case(
        "cli-beam-energy-abc",
        "cli",
        lambda e: _cli_args(e, drop="--beam-energy", extra=["--beam-energy", "abc"]),
        1,
        ("--beam-energy='abc'", "300 kV"),
    ),
    Case(
        "cli-beam-energy-eV-for-keV",
        "cli",
        lambda e: _cli_args(e, drop="--beam-energy", extra=["--beam-energy", "300000"]),
        1,
        ("--beam-energy='300000'", "looks like eV", "'300 kV'"),
    ),
    Case(
        "cli-convergence-22-deg",
        "cli",
        lambda e: _cli_args(e, drop="--convergence-angle", extra=["--convergence-angle", "22 deg"]),
        1,
        ("--convergence-angle='22 deg'", "384 mrad"),
    ),
    Case(
        "cli-convergence-beyond-detector",
        "cli",
        lambda e: _cli_args(e, drop="--convergence-angle", extra=["--convergence-angle", "100 mrad"]),
        1,
        ("bright-field disk", "On the command line: check --convergence-angle, --detector-sampling"),
    ),
    Case(
        "cli-detector-sampling-negative",
        "cli",
        lambda e: _cli_args(e, drop="--detector-sampling", extra=["--detector-sampling", "-1 mrad"]),
        1,
        ("--detector-sampling='-1 mrad'", "negative", "'1 mrad'"),
        absent=("different pixel sizes",),
    ),
    Case(
        "cli-hint-names-only-missing-flags",
        "cli",
        lambda e: _cli_args(e, drop="--beam-energy"),
        1,
        ("beam energy is missing", 'give the calibration as flags, e.g.: --beam-energy "300 kV"$'),
        absent=('--convergence-angle "22 mrad"', '--scan-step "0.39'),
    ),
    Case(
        "cli-signal-index-one-signal",
        "cli",
        lambda e: _cli_args(e, extra=["--signal-index", "1"]),
        1,
        ("holds one signal", "--signal-index 1 is out of range", "leave --signal-index out"),
    ),
    Case(
        "cli-corrupt-h5",
        "cli",
        lambda e: _cli_args(e, file="corrupt.h5"),
        1,
        ("corrupt.h5", "not an HDF5 file", "truncated or corrupt"),
        absent=("EMD reader", "HSPY reader", "USID", "report this error", "multiple file readers"),
    ),
    Case(
        "cli-corrupt-mib",
        "cli",
        lambda e: _cli_args(e, file="corrupt.mib"),
        1,
        ("corrupt.mib", "RosettaSciIO failed", "truncated or corrupt"),
        absent=("report this error",),
    ),
    Case(
        "cli-empty-file",
        "cli",
        lambda e: _cli_args(e, file="empty.hspy"),
        1,
        ("empty.hspy is empty", "did not finish"),
    ),
    Case(
        "cli-xml-not-empad",
        "cli",
        lambda e: _cli_args(e, file="other.xml"),
        1,
        ("not an EMPAD .xml file", "raw_file"),
        absent=("JobinYvon",),
    ),
    Case(
        "cli-3d-h5-needs-scan-shape",
        "cli",
        lambda e: _cli_args(e, file="stack3d.h5"),
        1,
        ("3D array", "--scan-shape NY NX", "64"),
    ),
    Case(
        "cli-5d-h5-no-scan-shape-hint",
        "cli",
        lambda e: _cli_args(e, file="five_d.h5"),
        1,
        ("5D array", "numpy.squeeze"),
        absent=("--scan-shape",),
    ),
    Case(
        "cli-h5-without-4d-dataset",
        "cli",
        lambda e: _cli_args(e, file="random.h5"),
        1,
        ("plain HDF5 file with 0 4D datasets", "numbers"),
    ),
    Case(
        "cli-resume-text-file",
        "cli",
        lambda e: _cli_args(e, extra=["--resume", e.path("notes.txt")]),
        1,
        ("not an app_extension checkpoint", "--checkpoint"),
    ),
    Case(
        "cli-resume-torch-pt",
        "cli",
        lambda e: _cli_args(e, extra=["--resume", e.path("state.pt")]),
        1,
        ("not an app_extension checkpoint",),
        absent=("weights_only",),
    ),
    Case(
        "cli-resume-random-h5",
        "cli",
        lambda e: _cli_args(e, extra=["--resume", e.path("random.h5")]),
        1,
        ("no app_extension state",),
    ),
    Case(
        "cli-device-cuda",
        "cli",
        lambda e: _cli_args(e, extra=["--device", "cuda"]),
        2,
        ("--device='cuda'", "no CUDA GPU"),
        marks=(no_gpu,),
    ),
    Case(
        "cli-device-gpu-means-cuda",
        "cli",
        lambda e: _cli_args(e, extra=["--device", "gpu"]),
        2,
        ("--device='gpu'", "no CUDA GPU"),
        marks=(no_gpu,),
    ),
    Case(
        "cli-padded-size-65.5",
        "cli",
        lambda e: _cli_args(e, extra=["--padded-size", "65.5"]),
        2,
        ("--padded-size='65.5'", "whole number"),
    ),
    Case(
        "cli-num-slices-2.5",
        "cli",
        lambda e: _cli_args(e, extra=["--num-slices", "2.5"]),
        2,
        ("--num-slices='2.5'", "whole number"),
    ),
    Case("cli-tilt-one-value", "cli", lambda e: _cli_args(e, extra=["--tilt", "3"]), 2, ("--tilt", "pair")),
    Case(
        "cli-negative-counts-suggest-clip",
        "cli",
        lambda e: _cli_args(e, file="negative.hspy"),
        1,
        ("negative intensities", "pass --clip-negative"),
    ),
    Case("cli-nan-in-data", "cli", lambda e: _cli_args(e, file="nan.hspy"), 1, ("NaN", "replace them")),
    Case(
        "cli-scan-step-infinite",
        "cli",
        lambda e: _cli_args(e, drop="--scan-step", extra=["--scan-step", "inf"]),
        1,
        ("--scan-step='inf'", "positive, finite"),
    ),
    Case(
        "cli-checkpoint-folder-missing",
        "cli",
        lambda e: _cli_args(e, extra=["--checkpoint", str(e.files / "no_such_dir" / "ck.h5")]),
        1,
        ("--checkpoint", "does not exist", "create it first"),
    ),
]


def test_the_table_is_large_and_covers_every_front_end():
    fronts = [c.front for c in CASES]
    assert len(CASES) >= 40
    assert min(fronts.count(f) for f in ("cli", "hyperspy", "py4dstem")) >= 15
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case: Case, env, capsys):
    if case.front == "cli":
        code = main([str(a) for a in case.call(env)])
        err = capsys.readouterr().err
        assert code == case.error, err
        assert "Traceback" not in err
        text = err
    else:
        with pytest.raises(case.error) as info:
            case.call(env)
        last = Path(str(info.traceback[-1].path))
        assert "app_extension" in last.parts, f"raised from {last}, not from app_extension"
        text = str(info.value)
    for pattern in case.match:
        assert re.search(pattern, text, re.M), f"{pattern!r} not in: {text}"
    for pattern in case.absent:
        assert not re.search(pattern, text, re.M), f"{pattern!r} in: {text}"


# --------------------------------------------------------------------------- correct behaviour


def test_py4dstem_class_reads_energy_and_tilt_with_units(env):
    ptycho = env.p4(energy="300 kV", theta_x="3 mrad", theta_y="-0.001 rad")
    assert ptycho.geometry.energy == pytest.approx(300e3)
    # py4DSTEM's (theta_x, theta_y) -> the solver's (-theta_y, -theta_x)
    assert ptycho.config.tilt == pytest.approx((1.0, -3.0))
    assert env.p4(energy="300000", preprocess=False)._energy == pytest.approx(300e3)  # bare: eV


def test_signal_reads_energy_in_volts_and_angle_in_radians(env):
    s = env.signal()
    s.set_experimental_parameters(beam_energy="300 kV", convergence_angle="0.02 rad")
    tem = s.metadata.Acquisition_instrument.TEM
    assert (tem.beam_energy, tem.convergence_angle) == pytest.approx((300.0, 20.0))


def _no_report_lines(caplog) -> None:
    assert not [r for r in caplog.records if "report this error" in r.getMessage()]


def test_empad_xml_loads_with_the_empad_reader(tmp_path, caplog):
    """hs.load finds two readers for .xml (JobinYvon, EMPAD); the loader picks EMPAD."""
    frames = np.zeros((3, 4, 130, 128), dtype=np.float32)  # 128 x 128 pixels + 2 footer rows
    frames[:, :, :128] = np.arange(12, dtype=np.float32).reshape(3, 4, 1, 1) + 1
    frames.tofile(tmp_path / "scan_x4_y3.raw")
    (tmp_path / "scan.xml").write_text(
        '<?xml version="1.0"?><root><raw_file filename="scan_x4_y3.raw"/><pix_x>4</pix_x>'
        "<pix_y>3</pix_y></root>"
    )
    with caplog.at_level(logging.INFO):
        s = load_4dstem(tmp_path / "scan.xml", lazy=True)
    assert s.data.shape == (3, 4, 128, 128)
    np.testing.assert_array_equal(np.asarray(s.data[:, :, 0, 0]), np.arange(1, 13).reshape(3, 4))
    _no_report_lines(caplog)


def test_arina_master_file_loads_even_when_lazy(tmp_path, caplog):
    """RosettaSciIO's ARINA reader cannot load lazily; the loader then loads into memory."""
    frames = np.random.default_rng(0).poisson(5, (16, 24, 24)).astype(np.uint16)
    with h5py.File(tmp_path / "run_master.h5", "w") as f:
        f.create_group("entry/data")["data_000001"] = frames
    with caplog.at_level(logging.INFO):
        s = load_4dstem(tmp_path / "run_master.h5", lazy=True)
    assert s.data.shape == (4, 4, 24, 24)
    np.testing.assert_array_equal(np.asarray(s.data).reshape(16, 24, 24), frames)
    _no_report_lines(caplog)


def test_plain_h5_loads_without_rosettasciio_error_lines(tmp_path, small_dataset, caplog):
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["patterns"] = small_dataset.data
    with caplog.at_level(logging.INFO):
        s = load_4dstem(tmp_path / "plain.h5", lazy=True)
    assert s.data.shape == small_dataset.data.shape
    _no_report_lines(caplog)


def test_3d_plain_h5_with_scan_shape_loads(env):
    s = load_4dstem(env.path("stack3d.h5"), scan_shape=(8, 8))
    np.testing.assert_array_equal(s.data, env.ds.data)


def test_clip_negative_flag(env, capsys):
    assert main(_cli_args(env, file="negative.hspy", extra=["--clip-negative", "--no-summary"])) == 0
    assert "negative intensities" not in capsys.readouterr().err


def test_ctrl_c_on_the_command_line_suggests_resume_and_marks_the_summary(env, monkeypatch, capsys):
    from app_extension.report import summary_figure
    from app_extension.signals.ptychography import AppPtychography2D

    original = AppPtychography2D.ptycho_app

    def interrupted(self, **kwargs):
        def stop(state):
            if state.iteration == 1:
                raise KeyboardInterrupt

        return original(self, callback=stop, **kwargs)

    monkeypatch.setattr(AppPtychography2D, "ptycho_app", interrupted)
    argv = _cli_args(env, iterations=3, extra=["--num-slices", "2"])
    assert main(argv) == 130
    err = capsys.readouterr().err
    out = argv[argv.index("-o") + 1]
    assert f"--resume {out}" in err and "ptycho_app(resume" not in err
    result = hs.load(out)
    assert result.metadata.Signal.Ptychography.status == "interrupted"
    title = summary_figure(result)._suptitle
    assert "INTERRUPTED" in title.get_text() and "--resume" in title.get_text()
    assert title.get_color() == "red"
    # The suggested command continues the run.
    monkeypatch.setattr(AppPtychography2D, "ptycho_app", original)
    assert main(argv[:2] + _calibration(env.ds) + ["--resume", out, "--overwrite", "-q", "-o", out]) == 0
    finished = hs.load(out).metadata.Signal.Ptychography
    assert finished.status == "ok" and int(finished.iterations) > 1
    assert summary_figure(hs.load(out))._suptitle.get_color() != "red"


# --------------------------------------------------------------------------- pattern health


def _with_empty(data: np.ndarray) -> np.ndarray:
    data = data.copy()
    data[2, 5] = 0
    data[7, 0] = 0
    return data


@pytest.mark.parametrize("front", ["hyperspy", "py4dstem", "cli"])
def test_empty_patterns_are_reported_with_count_and_positions(front, env, tmp_path):
    data = _with_empty(env.ds.data)
    if front == "hyperspy":
        patterns = env.signal(data).data
    elif front == "py4dstem":
        patterns = env.cube(data).data
    else:
        hs.signals.Signal2D(data).save(tmp_path / "holes.hspy")
        patterns = load_4dstem(tmp_path / "holes.hspy").data
    messages = pattern_warnings(patterns)
    assert len(messages) == 1
    assert "2 of 64 patterns are all zero" in messages[0]
    assert "(2, 5), (7, 0)" in messages[0] and "crop the scan" in messages[0]
    with pytest.warns(PatternWarning, match="all zero"):
        warn_about_patterns(patterns)


def test_all_empty_patterns_are_refused(env):
    with pytest.raises(ValueError, match=r"Every pattern is all zero \(64 of 64\)"):
        pattern_warnings(np.zeros_like(env.ds.data))


def _counts(ds, dose=2e4, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).poisson(ds.data * dose).astype(np.uint16)


def test_saturated_uint16_patterns_are_flagged(env):
    data = _counts(env.ds)
    data[3, 3, 14:18, 14:18] = 65535
    data[4, 4, 15, 15] = 65535
    (message,) = pattern_warnings(data)
    assert "17 pixels in 2 patterns sit at the value 65535" in message
    assert "(3, 3), (4, 4)" in message and "saturated" in message


def test_a_piled_up_maximum_below_the_type_maximum_is_flagged(env):
    data = _counts(env.ds, dose=2e5)
    top = int(data.max())
    clipped = np.minimum(data, top // 2)  # a detector clipping at half the peak
    (message,) = pattern_warnings(clipped)
    assert f"at the value {top // 2}" in message


@pytest.mark.parametrize("kind", ["float simulation", "poisson counts", "low counts"])
def test_healthy_patterns_give_no_warning(kind, env):
    data = {
        "float simulation": env.ds.data,
        "poisson counts": _counts(env.ds),
        "low counts": _counts(env.ds, dose=50),
    }[kind]
    assert pattern_warnings(data) == []
