"""Registration of the "ptychography" signal type with HyperSpy (like exspy's test_assign_subclass)."""

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import hyperspy.api as hs
import numpy as np
import pytest
import yaml

import app_extension
from app_extension.signals.ptychography import AppPtychography2D, LazyAppPtychography2D

REPO = Path(__file__).resolve().parents[1]


def test_yaml_copies_identical():
    package_copy = Path(app_extension.__file__).parent / "hyperspy_extension.yaml"
    top_copy = REPO / "hyperspy_extension.yaml"
    assert package_copy.read_bytes() == top_copy.read_bytes(), (
        "hyperspy_extension.yaml at the top of the repository and in app_extension/ must be identical"
    )


def test_yaml_content():
    spec = yaml.safe_load((Path(app_extension.__file__).parent / "hyperspy_extension.yaml").read_text())
    for name, lazy in (("AppPtychography2D", False), ("LazyAppPtychography2D", True)):
        entry = spec["signals"][name]
        assert entry["signal_type"] == "ptychography"
        assert entry["signal_dimension"] == 2
        assert entry["dtype"] == "real"
        assert entry["lazy"] is lazy
        assert hasattr(importlib.import_module(entry["module"]), name)


def test_entry_point_and_version():
    names = [ep.value for ep in importlib.metadata.entry_points(group="hyperspy.extensions")]
    assert "app_extension" in names
    assert isinstance(app_extension.__version__, str) and app_extension.__version__


def test_known_signal_types(capsys):
    hs.print_known_signal_types()
    out = capsys.readouterr().out
    assert "ptychography" in out
    assert "AppPtychography2D" in out


@pytest.mark.parametrize("signal_type", ["ptychography", "ptycho", "app_ptychography"])
@pytest.mark.parametrize("lazy", [True, False])
def test_assign_subclass(lazy, signal_type):
    s = hs.signals.Signal2D(np.zeros((2, 3, 4, 4), dtype=np.float32))
    if lazy:
        s = s.as_lazy()
    s.set_signal_type(signal_type)
    assert isinstance(s, LazyAppPtychography2D if lazy else AppPtychography2D)
    assert s._lazy is lazy
    assert s.metadata.Signal.signal_type == signal_type  # HyperSpy keeps the alias as given
    assert hasattr(s, "ptycho_app")


@pytest.mark.parametrize("lazy", [True, False])
def test_assign_subclass_back(lazy):
    s = hs.signals.Signal2D(np.zeros((2, 3, 4, 4)))
    s.set_signal_type("ptychography")
    if lazy:
        s = s.as_lazy()
        assert isinstance(s, LazyAppPtychography2D)
    s.set_signal_type("")
    assert not isinstance(s, AppPtychography2D)
    assert type(s).__name__ == ("LazySignal2D" if lazy else "Signal2D")


def test_as_lazy_and_compute():
    s = hs.signals.Signal2D(np.ones((2, 2, 4, 4)))
    s.set_signal_type("ptychography")
    lazy = s.as_lazy()
    assert isinstance(lazy, LazyAppPtychography2D)
    lazy.compute()
    assert isinstance(lazy, AppPtychography2D) and not lazy._lazy


def _write_empad(folder: Path, shape=(3, 4)) -> Path:
    """A minimal EMPAD file pair (xml + raw, 128 x 130 float32 frames) that RosettaSciIO reads."""
    ny, nx = shape
    raw = folder / f"scan_x{nx}_y{ny}.raw"
    rng = np.random.default_rng(0)
    rng.random((ny, nx, 130, 128)).astype("<f4").tofile(raw)
    xml = folder / "scan.xml"
    xml.write_text(
        f'<?xml version="1.0"?>\n<root><raw_file filename="{raw.name}"/><pix_x>{nx}</pix_x>'
        f"<pix_y>{ny}</pix_y></root>"
    )
    return xml


@pytest.mark.parametrize("lazy", [True, False])
def test_empad_loaded_data(tmp_path, lazy):
    s = hs.load(_write_empad(tmp_path), file_format="EMPAD", lazy=lazy)
    assert s.metadata.Signal.signal_type == "electron_diffraction"
    s.set_signal_type("ptychography")
    assert isinstance(s, LazyAppPtychography2D if lazy else AppPtychography2D)
    assert s.axes_manager.navigation_shape == (4, 3)
    # RosettaSciIO leaves the axes uncalibrated: the reconstruction must say so up front.
    with pytest.raises(ValueError, match="scan step is not calibrated"):
        s.ptycho_app(iterations=1)
    # Once calibrated, the (memory-mapped, for lazy) file data reconstruct.
    s.set_experimental_parameters(
        beam_energy=300, convergence_angle=22, scan_step="0.4 Å", detector_sampling="1 mrad"
    )
    result = s.ptycho_app(iterations=1, num_slices=1, show_progressbar=False)
    assert result.axes_manager.signal_shape[0] > 128
    assert np.all(np.isfinite(result.data))


@pytest.mark.parametrize("extension", ["hspy", "zspy"])
@pytest.mark.parametrize("lazy", [True, False])
def test_save_load_restores_class(tmp_path, extension, lazy):
    if extension == "zspy":
        pytest.importorskip("zarr")
    s = hs.signals.Signal2D(np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4))
    s.set_signal_type("ptychography")
    s.set_experimental_parameters(
        beam_energy=300, convergence_angle=22, scan_step=0.4, detector_sampling=0.05
    )
    path = tmp_path / f"data.{extension}"
    s.save(path)
    loaded = hs.load(path, lazy=lazy)
    assert isinstance(loaded, LazyAppPtychography2D if lazy else AppPtychography2D)
    assert loaded.metadata.Acquisition_instrument.TEM.beam_energy == 300
    np.testing.assert_allclose(loaded.axes_manager.navigation_axes[0].scale, 0.4)
    np.testing.assert_allclose(np.asarray(loaded.data), s.data)


def test_hyperspy_import_does_not_import_torch():
    code = (
        "import sys, numpy as np, hyperspy.api as hs\n"
        "s = hs.signals.Signal2D(np.zeros((2, 2, 4, 4)))\n"
        "s.set_signal_type('ptychography')\n"
        "assert type(s).__name__ == 'AppPtychography2D'\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
