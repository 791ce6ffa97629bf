"""The command line, ``ptycho_app`` and the solver under ``torchrun`` (2 processes, gloo on the CPU).

One ``python -m torch.distributed.run --standalone`` launch (a free port of its
own) serves the three tests: each rank first runs the command line exactly as
``python -m app_extension reconstruct ...`` would (``runpy``), then a user's
``ptycho_app`` script, then the solver itself on in-memory and on lazy, streamed
data, with a barrier and a marker line between the parts so the output of each
can be checked on its own. Most of the launch's time is the start-up of torchrun
and of the two workers (imports), not the reconstructions, which is why one
launch does all three.
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
import torch
import torch.distributed as dist

import app_extension
from app_extension.cli import main
from app_extension.solver import data as data_module
from app_extension.solver.config import SolverConfig
from app_extension.solver.engine import reconstruct
from app_extension.solver.state import ReconstructionState

da = pytest.importorskip("dask.array")
pytestmark = [
    pytest.mark.skipif(not dist.is_gloo_available(), reason="torch without gloo"),
    pytest.mark.long(shared=True),
]

REPO = Path(app_extension.__file__).resolve().parent.parent
ITERATIONS = 3
TIMEOUT = 240  # seconds; a launch takes 7-22 s on the loaded 2-core machine
# the solver's part: its options and the lazy data's chunks
CONFIG = SolverConfig(num_slices=3, iterations=3, batch_size=16, slice_thickness=8.0)
CHUNKS = (2, 4, 32, 32)


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
cli_dir, app_dir, script, script_args, solver_dir, solver_script, *cli_args = sys.argv[1:]


def marker(name):  # a line on both streams, between the output of one part and the next
    sys.stdout.flush()
    sys.stderr.flush()
    dist.barrier()
    if dist.get_rank() == 0:
        print(f"=== {name} ===", flush=True)
        print(f"=== {name} ===", file=sys.stderr, flush=True)
    dist.barrier()


# 1. the command line, as `python -m app_extension ...` runs it
os.chdir(cli_dir)
sys.argv = ["app_extension", *cli_args]
try:
    runpy.run_module("app_extension", run_name="__main__", alter_sys=True)
except SystemExit as stop:
    if stop.code:
        raise
marker("ptycho_app")
# 2. a user's script
os.chdir(app_dir)
sys.argv = [script, *script_args.split("|")]
runpy.run_path(script, run_name="__main__")
marker("solver")
# 3. the solver itself
os.chdir(solver_dir)
sys.argv = [solver_script]
runpy.run_path(solver_script, run_name="__main__")
"""


@pytest.fixture(scope="module")
def launch(scan_file, small_dataset, tmp_path_factory):
    """One torchrun launch: the CLI in ``cli/``, the user script in ``app/``, the solver in ``solver/``."""
    root = tmp_path_factory.mktemp("torchrun_launch")
    cli_dir, app_dir, solver_dir = root / "cli", root / "app", root / "solver"
    for folder in (cli_dir, app_dir, solver_dir):
        folder.mkdir()
    (root / "launch.py").write_text(LAUNCH)
    script = app_dir / "user_script.py"
    script.write_text(SCRIPT)
    solver_script = solver_dir / "solver_script.py"
    solver_script.write_text(SOLVER_SCRIPT)
    np.save(solver_dir / "counts.npy", _counts(small_dataset))
    runs = {"config": CONFIG.to_dict(), "geometry": small_dataset.geometry.to_dict(), "chunks": CHUNKS}
    (solver_dir / "run.json").write_text(json.dumps(runs))
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
    paths = [root / "launch.py", cli_dir, app_dir, script, script_args, solver_dir, solver_script]
    done = _torchrun([*map(str, paths), *cli_args], cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    parts = {}
    for name, stream in (("out", done.stdout), ("err", done.stderr)):
        first, rest = stream.split("=== ptycho_app ===\n")
        second, third = rest.split("=== solver ===\n")
        parts[name] = (first, second, third)
    out, err = parts["out"], parts["err"]
    return {
        "cli": (cli_dir, out[0], err[0]),
        "app": (app_dir, out[1], err[1]),
        "solver": (solver_dir, out[2], err[2]),
    }


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


# The solver under torchrun, called directly: 2 iterations with a checkpoint (written by rank 0), resumed
# for 1; then lazy, chunked and streamed data, of which each rank reads only its own units.


def _counts(ds) -> np.ndarray:
    return np.round(ds.data * 2e4).astype(np.uint16)


SOLVER_SCRIPT = """
import json

import dask.array as da
import numpy as np
import torch
import torch.distributed as dist

from app_extension.solver import data as data_module
from app_extension.solver.config import Geometry, SolverConfig
from app_extension.solver.data import MeasuredData
from app_extension.solver.distributed import Communicator
from app_extension.solver.engine import reconstruct
from app_extension.solver.state import ReconstructionState

torch.set_num_threads(1)
rank, world = dist.get_rank(), dist.get_world_size()
counts = np.load("counts.npy")
with open("run.json") as f:
    runs = json.load(f)
config = SolverConfig.from_dict(runs["config"])
geometry = Geometry(**runs["geometry"])
# in memory: 2 iterations with a checkpoint (rank 0 writes it), then resumed for 1
reconstruct(counts, geometry, config, iterations=2, checkpoint="checkpoint.h5", show_progressbar=False)
dist.barrier()
state = ReconstructionState.load("checkpoint.h5")
result = reconstruct(counts, geometry, config, state=state, iterations=1, show_progressbar=False)
result.save(f"memory{rank}.h5")
# lazy, chunked, streamed; units of one chunk (8 patterns), groups of 2 units: 8 units to deal out
data_module.UNIT_BYTES = 8 * counts.shape[-1] ** 2 * 2
data_module.GROUP_BATCHES = 1
lazy = da.from_array(counts, chunks=tuple(runs["chunks"]))
data = MeasuredData(lazy, geometry, config, "cpu", stream=True, comm=Communicator(rank, world, "cpu"))
np.save(f"positions{rank}.npy", data.positions)
data.close()
result = reconstruct(lazy, geometry, config, stream=True, show_progressbar=False)
result.save(f"lazy{rank}.h5")
"""


def _close(a: ReconstructionState, b: ReconstructionState) -> None:
    for name in ("phase", "amplitude", "probe", "tilt", "slice_thickness"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-4, atol=1e-5, msg=name)
    np.testing.assert_allclose(a.history["loss"], b.history["loss"], rtol=1e-5)
    assert a.iteration == b.iteration


def test_solver_under_torchrun_agrees_with_one_process(launch, small_dataset, monkeypatch):
    """Two processes agree with one over the same batches, in memory (resumed) and streamed."""
    folder, _, _ = launch["solver"]
    counts, geometry = _counts(small_dataset), small_dataset.geometry
    # the ranks held disjoint halves of the positions, whole units each
    p0, p1 = (np.load(folder / f"positions{r}.npy") for r in (0, 1))
    assert np.intersect1d(p0, p1).size == 0 and np.union1d(p0, p1).size == 64 and p0.size == p1.size == 32

    single = reconstruct(counts, geometry, CONFIG, show_progressbar=False)
    ranks = [ReconstructionState.load(folder / f"memory{r}.h5") for r in (0, 1)]
    assert single.iteration == 3 and all(s.iteration == 3 for s in ranks)
    for state in ranks:
        _close(state, single)
    # every rank took exactly the same steps
    assert torch.equal(ranks[0].phase, ranks[1].phase) and torch.equal(ranks[0].probe, ranks[1].probe)
    assert single.dz != CONFIG.slice_thickness  # dz was learned (its reduction is exercised)

    monkeypatch.setattr(data_module, "UNIT_BYTES", 8 * 32 * 32 * 2)
    monkeypatch.setattr(data_module, "GROUP_BATCHES", 1)
    lazy_single = reconstruct(
        da.from_array(counts, chunks=CHUNKS), geometry, CONFIG, stream=True, show_progressbar=False
    )
    for r in (0, 1):
        _close(ReconstructionState.load(folder / f"lazy{r}.h5"), lazy_single)
