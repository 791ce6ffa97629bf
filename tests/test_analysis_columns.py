"""Column metrology: Gaussian fits on synthetic perovskite lattices with known sub-pm displacements."""

import numpy as np
import pytest

from app_extension.analysis import Lattice, find_lattice, fit_columns, perovskite_metrology
from app_extension.analysis.columns import PEROVSKITE_MOTIF

A = 3.905
STEP = 0.1  # Å per pixel
ORIGIN = (0.7, 0.4)  # (x, y) Å of an A column
PEAKS = {"A": 1.0, "B": 0.8, "O1": 0.3, "O2": 0.3}


def perovskite_image(displacement, angle_deg=0.0, cells=5, width=0.35, peaks=None):
    """Phase-like image of an ABO3 [001] lattice; ``displacement(i, j)`` -> (dx, dy) Å of the B column."""
    n = int(cells * A / STEP)
    x = np.arange(n) * STEP
    xx, yy = np.meshgrid(x, x)
    c, s = np.cos(np.deg2rad(angle_deg)), np.sin(np.deg2rad(angle_deg))
    lattice = Lattice((A * c, A * s), (-A * s, A * c), ORIGIN)
    img = np.zeros((n, n))
    for i in range(-2, cells + 3):
        for j in range(-2, cells + 3):
            for label, (u, v) in PEROVSKITE_MOTIF.items():
                p = lattice.position(i, j, u, v)
                if label == "B":
                    p = p + np.asarray(displacement(i, j))
                img += (peaks or PEAKS)[label] * np.exp(
                    -((xx - p[0]) ** 2 + (yy - p[1]) ** 2) / (2 * width**2)
                )
    return img, lattice


def _random_shifts(seed=0, size=0.008):
    rng = np.random.default_rng(seed)
    table = {}

    def shift(i, j):
        if (i, j) not in table:
            table[(i, j)] = rng.uniform(-size, size, 2)
        return table[(i, j)]

    return shift, table


def test_sub_pm_displacements_recovered_with_lattice_from_fft():
    shift, table = _random_shifts()
    img, truth = perovskite_image(shift)
    result = perovskite_metrology(img, sampling=STEP, a_site=(ORIGIN[0] + A, ORIGIN[1] + A))
    cells = result["cells"]
    assert len(cells) >= 9
    # Cell (0, 0) of the found lattice is the true cell whose A column is at the found origin.
    offset = np.round(truth.fractional(result["lattice"].origin)).astype(int)
    assert np.allclose(truth.fractional(result["lattice"].origin), offset, atol=1e-3)
    for c in cells:
        true = table[(int(c["i"]) + offset[0], int(c["j"]) + offset[1])] * 100  # pm
        # A and O sit on their ideal sites, so both displacements equal the B shift.
        assert abs(c["dA_x"] - true[0]) < 0.2 and abs(c["dA_y"] - true[1]) < 0.2
        assert abs(c["dO_x"] - true[0]) < 0.2 and abs(c["dO_y"] - true[1]) < 0.2
    mags = np.array(
        [np.hypot(*table[(int(c["i"]) + offset[0], int(c["j"]) + offset[1])]) * 100 for c in cells]
    )
    assert result["summary"]["dA"]["mean"] == pytest.approx(mags.mean(), abs=0.1)
    assert result["summary"]["dA"]["std"] == pytest.approx(mags.std(), abs=0.1)
    lat = result["lattice"]
    assert np.hypot(*lat.a1) == pytest.approx(A, abs=1e-3)


def test_uniform_displacement_on_rotated_user_lattice():
    img, lattice = perovskite_image(lambda i, j: (0.004, -0.003), angle_deg=12.0)
    result = perovskite_metrology(img, lattice, sampling=STEP)
    cells = result["cells"]
    assert len(cells) >= 4
    assert np.allclose(cells["dA_x"], 0.4, atol=0.2) and np.allclose(cells["dA_y"], -0.3, atol=0.2)
    assert result["summary"]["dO"]["mean"] == pytest.approx(0.5, abs=0.2)
    assert "dA" in result["maps"] and np.nanmax(result["maps"]["dA"].data) < 0.7


def test_find_lattice_returns_the_primitive_cell():
    img, truth = perovskite_image(lambda i, j: (0.0, 0.0), angle_deg=5.0)
    lattice = find_lattice(img, STEP, (0.0, 0.0))
    assert np.hypot(*lattice.a1) == pytest.approx(A, rel=0.01)
    assert np.hypot(*lattice.a2) == pytest.approx(A, rel=0.01)
    assert abs(np.dot(lattice.a1, lattice.a2)) < 0.05 * A**2
    # The origin is on a column (A or B look alike in the FFT; both are strong).
    frac = truth.fractional(lattice.origin)
    assert np.abs(2 * frac - np.round(2 * frac)).max() < 0.01


def _signals(img):
    import hyperspy.api as hs

    angstrom = hs.signals.Signal2D(img.copy())
    nm = hs.signals.Signal2D(img.copy())
    for s, units, factor in ((angstrom, "Å", 1.0), (nm, "nm", 0.1)):
        for ax in s.axes_manager.signal_axes:
            ax.scale, ax.units, ax.offset = STEP * factor, units, 0.0
    stack = np.stack([img * 0.5, img * 1.0, img * 1.5])  # mean phase = img
    result = hs.signals.ComplexSignal2D(np.exp(1j * stack / 4))  # phases < pi
    result.axes_manager.navigation_axes[0].name = "z"
    result.axes_manager.navigation_axes[0].scale = 20.0
    result.axes_manager.navigation_axes[0].units = "Å"
    for ax in result.axes_manager.signal_axes:
        ax.scale, ax.units = STEP, "Å"
    return angstrom, nm, result


def test_signal_types_give_the_same_positions():
    img, lattice = perovskite_image(lambda i, j: (0.003, 0.002), cells=3)
    angstrom, nm, result = _signals(img)
    ref = fit_columns(img, lattice, sampling=STEP)
    for s in (angstrom, nm):
        t = fit_columns(s, lattice)
        assert np.allclose(t["x"], ref["x"], atol=1e-5) and np.allclose(t["y"], ref["y"], atol=1e-5)
    # A result: mean phase over slices (here img / 4).
    t = fit_columns(result, lattice)
    assert np.allclose(t["x"], ref["x"], atol=1e-4) and np.allclose(t["y"], ref["y"], atol=1e-4)


def test_uncalibrated_signal_is_refused():
    import hyperspy.api as hs

    img, lattice = perovskite_image(lambda i, j: (0.0, 0.0), cells=3)
    with pytest.raises(ValueError, match="not calibrated"):
        fit_columns(hs.signals.Signal2D(img), lattice)


def test_a_and_b_alike_still_give_the_perovskite_cell():
    # A and B equally strong: the FFT's strongest lattice is the centred one (a / sqrt 2).
    peaks = {"A": 1.0, "B": 1.0, "O1": 0.3, "O2": 0.3}
    img, _ = perovskite_image(lambda i, j: (0.002, 0.0), peaks=peaks)
    centred = find_lattice(img, STEP, (0.0, 0.0))
    assert np.hypot(*centred.a1) == pytest.approx(A / np.sqrt(2), rel=0.01)
    result = perovskite_metrology(img, sampling=STEP, a_site=(ORIGIN[0] + A, ORIGIN[1] + A))
    assert np.hypot(*result["lattice"].a1) == pytest.approx(A, rel=1e-3)
    assert np.allclose(result["cells"]["dA_x"], 0.2, atol=0.2)
