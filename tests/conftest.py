"""Shared test set-up: a non-interactive matplotlib backend and small simulated data."""

import matplotlib

matplotlib.use("agg")

import pytest  # noqa: E402
import torch  # noqa: E402

# The test problems are tiny: one thread avoids thread start-up and contention costs
# that exceed the work itself (measured: 19 s instead of 150 s for the solver tests on
# a loaded 2-core machine).
torch.set_num_threads(1)

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
