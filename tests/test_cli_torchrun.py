"""The command line and ``ptycho_app`` under ``torchrun`` (2 processes, gloo on the CPU), unchanged.

One ``python -m torch.distributed.run --standalone`` launch (a free port of its
own) serves both tests: each rank first runs the command line exactly as
``python -m app_extension reconstruct ...`` would (``runpy``), then a user's
``ptycho_app`` script, with a barrier and a marker line between the two so the
output of each can be checked on its own. Most of the launch's time is the
start-up of torchrun and of the two workers (imports), not the reconstruction,
which is why one launch does both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import hyperspy.api as hs
import numpy as np
import pytest
import torch.distributed as dist

import app_extension
from app_extension.cli import main

pytestmark = pytest.mark.skipif(not dist.is_gloo_available(), reason="torch without gloo")

REPO = Path(app_extension.__file__).resolve().parent.parent
ITERATIONS = 3
TIMEOUT = 240  # seconds; a launch takes 7-22 s on the loaded 2-core machine


def _flags(ds) -> list[str]:
    """Calibration and a short APP run for the small dataset."""
    return [
        "--beam-energy",
        f"{ds.geometry.energy / 1e3} kV",
        "--convergence-angle",
        f"{ds.geometry.semiangle} mrad",
        "--scan-step",
        f"{ds.scan_step} Å",
        "--detector-sampling",
        f"{ds.geometry.reciprocal_sampling} 1/Å",
        "--defocus",
        f"{ds.geometry.defocus} Å",
        "--num-slices",
        "2",
        "--thickness",
        "23.4 Å",
        "--iterations",
        str(ITERATIONS),
        "--batch-size",
        "16",  # 4 steps per iteration, each all-reduced
        "-q",
        "--no-calibrate",  # ideal data; the calibration stage runs alike on every rank (tested elsewhere)
    ]


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("APP_EXTENSION_DISTRIBUTED", None)
    env.update(
        OMP_NUM_THREADS="1",
        MPLBACKEND="agg",
        PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])]),
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return subprocess.run(
        [*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )


@pytest.fixture(scope="module")
def scan_file(small_dataset, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("torchrun_data") / "scan.hspy"
    hs.signals.Signal2D(small_dataset.data).save(path)
    return path


LAUNCH = """
import os
import runpy
import sys

import torch
import torch.distributed as dist

torch.set_num_threads(1)
cli_dir, app_dir, script, script_args, *cli_args = sys.argv[1:]
# 1. the command line, as `python -m app_extension ...` runs it
os.chdir(cli_dir)
sys.argv = ["app_extension", *cli_args]
try:
    runpy.run_module("app_extension", run_name="__main__", alter_sys=True)
except SystemExit as stop:
    if stop.code:
        raise
sys.stdout.flush()
sys.stderr.flush()
dist.barrier()
if dist.get_rank() == 0:
    print("=== ptycho_app ===", flush=True)
    print("=== ptycho_app ===", file=sys.stderr, flush=True)
dist.barrier()
# 2. a user's script
os.chdir(app_dir)
sys.argv = [script, *script_args.split("|")]
runpy.run_path(script, run_name="__main__")
"""


@pytest.fixture(scope="module")
def launch(scan_file, small_dataset, tmp_path_factory):
    """One torchrun launch: the CLI in ``cli/``, then the user script in ``app/``."""
    root = tmp_path_factory.mktemp("torchrun_launch")
    cli_dir, app_dir = root / "cli", root / "app"
    cli_dir.mkdir()
    app_dir.mkdir()
    (root / "launch.py").write_text(LAUNCH)
    script = app_dir / "user_script.py"
    script.write_text(SCRIPT)
    g = small_dataset.geometry
    numbers = [g.energy / 1e3, g.semiangle, small_dataset.scan_step, g.reciprocal_sampling, g.defocus]
    cli_args = [
        "reconstruct",
        str(scan_file),
        *_flags(small_dataset),
        "--checkpoint",
        "run.ckpt",
        "-o",
        "run.hspy",
    ]
    script_args = "|".join(map(str, [scan_file, *numbers]))  # the script's own sys.argv[1:]
    done = _torchrun(
        [str(root / "launch.py"), str(cli_dir), str(app_dir), str(script), script_args, *cli_args], cwd=root
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out, err = done.stdout.split("=== ptycho_app ===\n"), done.stderr.split("=== ptycho_app ===\n")
    assert len(out) == 2 and len(err) == 2, done.stdout + done.stderr
    return {"cli": (cli_dir, out[0], err[0]), "app": (app_dir, out[1], err[1])}


def test_cli_under_torchrun_writes_once_and_agrees_with_one_process(
    launch, scan_file, small_dataset, tmp_path, capsys
):
    flags = _flags(small_dataset)
    runs, stdout, stderr = launch["cli"]
    done = subprocess.CompletedProcess([], 0, stdout, stderr)
    # rank 0 alone wrote the result, its PNG summary and the checkpoint, and printed the report
    assert sorted(p.name for p in runs.iterdir()) == ["run.ckpt", "run.hspy", "run.png"]
    assert done.stdout.count("result: run.hspy") == 1
    assert done.stdout.count("memory (preflight estimate of the peak)") == 1
    assert done.stderr.count("2 processes") == 1  # the start line, from rank 0 only
    assert done.stderr.count("The bright-field disk") == 1  # a warning on the data, from rank 0 only

    single = tmp_path / "single.hspy"
    code = main(["reconstruct", str(scan_file), *flags, "--no-summary", "-o", str(single)])
    capsys.readouterr()
    assert code == 0
    a, b = hs.load(runs / "run.hspy"), hs.load(single)
    na, nb = a.metadata.Signal.Ptychography, b.metadata.Signal.Ptychography
    assert na.iterations == nb.iterations == ITERATIONS
    np.testing.assert_allclose(a.data, b.data, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        [na.tilt_x, na.tilt_y, na.thickness], [nb.tilt_x, nb.tilt_y, nb.thickness], rtol=1e-4
    )
    loss = na.history.metadata.Signal.quantities.index("loss")
    np.testing.assert_allclose(na.history.data[loss], nb.history.data[loss], rtol=1e-5)

    # the checkpoint rank 0 wrote continues in one process
    more = tmp_path / "more.hspy"
    code = main(
        [
            "reconstruct",
            str(scan_file),
            *flags[:10],
            "--resume",
            str(runs / "run.ckpt"),
            "--iterations",
            "1",
            "-q",
            "--no-summary",
            "-o",
            str(more),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert hs.load(more).metadata.Signal.Ptychography.iterations == ITERATIONS + 1


SCRIPT = """
import sys

import hyperspy.api as hs
import torch

from app_extension.solver.distributed import rank_and_size

torch.set_num_threads(1)
path, energy, angle, step, sampling, defocus = sys.argv[1:7]
s = hs.load(path, lazy=True)
s.set_signal_type("ptychography")
s.set_experimental_parameters(
    beam_energy=float(energy), convergence_angle=float(angle), scan_step=float(step),
    detector_sampling=float(sampling),
)
result = s.ptycho_app(
    defocus=float(defocus), num_slices=2, slice_thickness=11.7, iterations=3, batch_size=16,
    show_progressbar=False,
)
rank, world = rank_and_size()
result.save(f"rank{rank}_of_{world}.hspy")
"""


def test_ptycho_app_under_torchrun_returns_the_same_result_on_every_rank(launch, scan_file, small_dataset):
    """A user's script, unchanged, under torchrun: the lazy signal is shared, both ranks get the result.

    The calibration stage (on by default) runs on rank 0 alone; the other rank receives its result and
    resamples only the patterns it reads. The result equals one process's, calibration included.
    """
    folder, _, _ = launch["app"]
    r0, r1 = (hs.load(folder / f"rank{r}_of_2.hspy") for r in (0, 1))
    np.testing.assert_array_equal(r0.data, r1.data)
    assert r0.metadata.Signal.Ptychography.iterations == 3
    # the lazy signal's dask array reached the solver: nothing of it was held in memory
    assert r0.metadata.Signal.Ptychography.Memory_estimate.held_bytes == 0
    g = small_dataset.geometry
    s = hs.load(scan_file, lazy=True)
    s.set_signal_type("ptychography")
    s.set_experimental_parameters(
        beam_energy=g.energy / 1e3,
        convergence_angle=g.semiangle,
        scan_step=small_dataset.scan_step,
        detector_sampling=g.reciprocal_sampling,
    )
    single = s.ptycho_app(
        defocus=g.defocus,
        num_slices=2,
        slice_thickness=11.7,
        iterations=3,
        batch_size=16,
        show_progressbar=False,
    )
    reports = [json.loads(r.metadata.Signal.Ptychography.Calibration.json) for r in (r0, r1, single)]
    assert reports[0] == reports[1]  # rank 1 holds rank 0's report, timings included
    for report in reports:
        report.pop("timings_s")
    assert reports[0] == reports[2]
    np.testing.assert_allclose(r0.data, single.data, rtol=1e-4, atol=1e-5)
