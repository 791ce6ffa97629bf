"""Exact resume: 2 + 2 iterations equal 4 straight ones, in the solver and in every front end.

The optimisers' moments (Adam, Rprop), the divergence reference and the batch
order (seeded per iteration) are part of the saved state, so a run continued
from memory, a checkpoint, a .hspy result, a CLI result file or a py4DSTEM file
takes exactly the steps an uninterrupted run takes.
"""

import numpy as np
import pytest
import torch

from app_extension.solver.config import SolverConfig
from app_extension.solver.engine import reconstruct
from app_extension.solver.state import ReconstructionState

# APP with everything learned from iteration 1 on: probe, tilt, dz (Rprop) and the
# drift-to-tilt step all carry state across the resume.
OPTIONS = dict(num_slices=3, slice_thickness=8.0, batch_size=16, start_dz=1, seed=1)


def assert_same(a: ReconstructionState, b: ReconstructionState, atol=1e-6):
    for name in ("phase", "amplitude", "probe", "tilt", "slice_thickness"):
        x, y = getattr(a, name).detach(), getattr(b, name).detach()
        torch.testing.assert_close(x, y, atol=atol, rtol=1e-5, msg=name)
    assert a.iteration == b.iteration
    np.testing.assert_allclose(a.history["loss"], b.history["loss"], rtol=1e-5)


@pytest.fixture(scope="module")
def straight(small_dataset):
    config = SolverConfig(iterations=4, **OPTIONS)
    return reconstruct(small_dataset.data, small_dataset.geometry, config, show_progressbar=False)


def test_engine_resume_from_memory_and_checkpoint(small_dataset, straight, tmp_path):
    data, geometry = small_dataset.data, small_dataset.geometry
    config = SolverConfig(iterations=2, **OPTIONS)
    path = tmp_path / "half.h5"
    half = reconstruct(data, geometry, config, show_progressbar=False, checkpoint=path)
    assert half.optimizer is not None and "adam" in half.optimizer and "rprop" in half.optimizer
    from_memory = reconstruct(data, geometry, config, state=half.clone(), show_progressbar=False)
    from_file = reconstruct(
        data, geometry, config, state=ReconstructionState.load(path), show_progressbar=False
    )
    assert_same(from_memory, straight)
    assert_same(from_file, straight)


def test_resume_without_optimizer_state_differs(small_dataset, straight):
    """The control: dropping the saved moments changes the result (what the test above guards)."""
    data, geometry = small_dataset.data, small_dataset.geometry
    config = SolverConfig(iterations=2, **OPTIONS)
    half = reconstruct(data, geometry, config, show_progressbar=False)
    half.optimizer = None
    resumed = reconstruct(data, geometry, config, state=half, show_progressbar=False)
    assert not torch.allclose(resumed.phase, straight.phase, atol=1e-6)


def test_ptycho_app_resume_from_result_and_file(small_signal, tmp_path):
    kwargs = dict(OPTIONS, defocus=100.0, show_progressbar=False)
    straight = small_signal.ptycho_app(iterations=4, **kwargs)
    half = small_signal.ptycho_app(iterations=2, **kwargs)
    again = small_signal.ptycho_app(resume=half, iterations=2, show_progressbar=False)
    np.testing.assert_allclose(again.data, straight.data, atol=1e-5, rtol=1e-5)
    for ext in ("hspy", "zspy"):
        half.save(tmp_path / f"half.{ext}")
        from_file = small_signal.ptycho_app(
            resume=tmp_path / f"half.{ext}", iterations=2, show_progressbar=False
        )
        np.testing.assert_allclose(from_file.data, straight.data, atol=1e-5, rtol=1e-5)
    p, q = again.metadata.Signal.Ptychography, straight.metadata.Signal.Ptychography
    np.testing.assert_allclose(
        [p.tilt_x, p.tilt_y, p.slice_thickness], [q.tilt_x, q.tilt_y, q.slice_thickness], rtol=1e-5
    )


def test_cli_resume_equals_straight_run(small_signal, tmp_path, capsys):
    from app_extension.cli import main

    path = tmp_path / "scan.hspy"
    small_signal.save(path)
    flags = ["--num-slices", "3", "--slice-thickness", "8", "--batch-size", "16", "--start-dz", "1"]
    flags += ["--seed", "1", "--defocus", "100", "-q", "--no-summary"]
    assert (
        main(["reconstruct", str(path), "--iterations", "4", "-o", str(tmp_path / "straight.hspy"), *flags])
        == 0
    )
    half = tmp_path / "half.hspy"
    assert main(["reconstruct", str(path), "--iterations", "2", "-o", str(half), *flags]) == 0
    out = tmp_path / "resumed.hspy"
    assert (
        main(
            [
                "reconstruct",
                str(path),
                "--iterations",
                "2",
                "--resume",
                str(half),
                "-o",
                str(out),
                "-q",
                "--no-summary",
            ]
        )
        == 0
    )
    import hyperspy.api as hs

    np.testing.assert_allclose(
        hs.load(out).data, hs.load(tmp_path / "straight.hspy").data, atol=1e-5, rtol=1e-5
    )


def test_py4dstem_resume_equals_straight_run(small_dataset, tmp_path):
    py4DSTEM = pytest.importorskip("py4DSTEM")
    from app_extension.py4dstem import AdaptivePropagatorPtychography

    def make():
        dc = py4DSTEM.DataCube(data=small_dataset.data.copy())
        dc.calibration.set_R_pixel_size(small_dataset.scan_step)
        dc.calibration.set_R_pixel_units("A")
        dc.calibration.set_Q_pixel_size(small_dataset.geometry.reciprocal_sampling)
        dc.calibration.set_Q_pixel_units("A^-1")
        p = AdaptivePropagatorPtychography(
            energy=300e3,
            num_slices=3,
            slice_thicknesses=8.0,
            datacube=dc,
            semiangle_cutoff=22.0,
            defocus=100.0,
            verbose=False,
            start_dz=1,
        )
        return p.preprocess(calibrate=False), dc

    straight, _ = make()
    straight.reconstruct(num_iter=4, max_batch_size=16, seed_random=1, progress_bar=False)
    half, dc = make()
    half.reconstruct(num_iter=2, max_batch_size=16, seed_random=1, progress_bar=False)
    half.reconstruct(num_iter=2, progress_bar=False)
    np.testing.assert_allclose(half.object, straight.object, atol=1e-5, rtol=1e-5)
    other, dc = make()
    other.reconstruct(num_iter=2, max_batch_size=16, seed_random=1, progress_bar=False)
    other.save(tmp_path / "half.h5")
    read = AdaptivePropagatorPtychography.load(tmp_path / "half.h5", datacube=dc)
    read.reconstruct(num_iter=2, progress_bar=False)
    np.testing.assert_allclose(read.object, straight.object, atol=1e-5, rtol=1e-5)
