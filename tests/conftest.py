"""Shared test set-up: a non-interactive matplotlib backend and small simulated data."""

import os

# One thread per process for OpenBLAS and OpenMP, set before numpy loads them: pytest-xdist runs one
# worker per core, and a second thread per worker only waits for a core (measured: 80 -> 75 s).
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import matplotlib  # noqa: E402

matplotlib.use("agg")

import pytest  # noqa: E402
import torch  # noqa: E402

# The test problems are tiny: one thread avoids thread start-up and contention costs
# that exceed the work itself (measured: 19 s instead of 150 s for the solver tests on
# a loaded 2-core machine).
torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "long(shared=False): takes several seconds (a kernel, a torchrun launch); run first. "
        "shared=True: the tests share one long module fixture; they run first of all, together.",
    )


def _order(item) -> int:
    long = item.get_closest_marker("long")
    return 2 if long is None else 0 if long.kwargs.get("shared") else 1


def pytest_collection_modifyitems(config, items):
    """The long tests first, so that pytest-xdist's workers do not end the run waiting on one of them.

    The tests that share one long fixture (the torchrun launch) come first of all: the first worker
    takes them at once, so no other worker steals one of them and repeats the launch.
    """
    items.sort(key=_order)  # stable: the collection order otherwise


# Small enough for the whole HyperSpy test set to run in seconds: 8 x 8 scan,
# 32 x 32 patterns, 6 unit cells (23.4 Å) of SrTiO3 tilted by (8, -3) mrad.
SMALL = {"scan_shape": (8, 8), "pattern_size": 32, "unit_cells_z": 6}


@pytest.fixture(scope="session")
def small_dataset():
    """A SimulatedDataset from app_extension.simulate (noiseless)."""
    from app_extension.simulate import simulate_tilted_crystal

    return simulate_tilted_crystal(**SMALL)


@pytest.fixture
def small_signal(small_dataset):
    """The small dataset as a calibrated "ptychography" signal (a fresh copy per test)."""
    import hyperspy.api as hs

    s = hs.signals.Signal2D(small_dataset.data.copy())
    s.set_signal_type("ptychography")
    s.set_experimental_parameters(
        beam_energy=small_dataset.geometry.energy / 1e3,
        convergence_angle=small_dataset.geometry.semiangle,
        scan_step=small_dataset.scan_step,
        detector_sampling=small_dataset.geometry.reciprocal_sampling,
    )
    s.metadata.General.title = "small STO"
    return s
