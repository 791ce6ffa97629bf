"""Depth profiles on a synthetic object with a feature in one slice."""

import numpy as np
import pytest

from app_extension.analysis import column_profiles, depth_profile

STEP = 0.1
DZ = 12.5
S = 8
SITES = [(2.0, 2.0), (4.0, 2.0), (2.0, 4.0), (4.0, 4.0)]


def stack(feature_slices=None, feature_site=(4.0, 2.0)):
    n = 64
    x = np.arange(n) * STEP
    xx, yy = np.meshgrid(x, x)
    col = sum(np.exp(-((xx - a) ** 2 + (yy - b) ** 2) / (2 * 0.3**2)) for a, b in SITES)
    phase = np.repeat(0.2 * col[None], S, axis=0)
    bump = np.exp(-((xx - feature_site[0]) ** 2 + (yy - feature_site[1]) ** 2) / (2 * 0.3**2))
    for k, w in (feature_slices or {}).items():
        phase[k] += 0.15 * w * bump
    return phase, x


def result_signal(phase, units="Å", factor=1.0):
    import hyperspy.api as hs

    s = hs.signals.ComplexSignal2D(np.exp(1j * phase))
    z = s.axes_manager.navigation_axes[0]
    z.name, z.scale, z.units = "z", DZ * factor, units
    for ax in s.axes_manager.signal_axes:
        ax.scale, ax.units = STEP * factor, units
    return s


def test_feature_found_in_its_slice():
    phase, x = stack({5: 1.0})
    out = column_profiles(phase, SITES, x=x, y=x, dz=DZ)
    assert out["peak_index"][1] == 5
    assert out["peak_depth"][1] == pytest.approx(5.5 * DZ, abs=0.5 * DZ)
    # The other columns are the same in every slice: flat profiles.
    assert np.ptp(out["profile"][[0, 2, 3]], axis=1).max() < 1e-6
    assert np.allclose(out["depth"], (np.arange(S) + 0.5) * DZ)


def test_sub_slice_depth_between_two_slices():
    phase, x = stack({2: 1.0, 3: 0.6})
    out = column_profiles(phase, SITES[1], x=x, y=x, dz=DZ)
    assert 2.5 * DZ < out["peak_depth"][0] < 3.5 * DZ  # between the centres of slices 2 and 3, nearer 2


def test_result_signal_in_angstrom_and_nm():
    phase, _ = stack({1: 1.0})
    profile, peak = depth_profile(result_signal(phase), (4.0, 2.0))
    assert profile.axes_manager.signal_axes[0].units == "Å"
    assert profile.axes_manager.signal_axes[0].scale == pytest.approx(DZ)
    assert profile.axes_manager.signal_axes[0].offset == pytest.approx(DZ / 2)
    assert int(np.argmax(profile.data)) == 1
    assert peak == pytest.approx(1.5 * DZ, abs=0.5 * DZ)
    # The same object with its axes in nm, asked for the depth in nm.
    profile_nm, peaks_nm = depth_profile(
        result_signal(phase, "nm", 0.1), [(4.0, 2.0), (2.0, 2.0)], units="nm"
    )
    assert profile_nm.data.shape == (2, S)
    assert profile_nm.axes_manager.signal_axes[0].scale == pytest.approx(DZ / 10)
    assert peaks_nm[0] == pytest.approx(peak / 10)
    assert np.allclose(profile_nm.data[0], profile.data)


def test_refine_and_reference():
    phase, x = stack({6: 1.0})
    # A position 0.2 Å off is moved back onto the column.
    out = column_profiles(phase, (4.2, 2.1), x=x, y=x, dz=DZ, refine=0.5)
    assert np.allclose(out["positions"][0], (4.0, 2.0), atol=0.03)
    assert out["peak_index"][0] == 6
    # With a reference column the common depth trend is removed.
    trend = np.linspace(0, 0.5, S)[:, None, None]
    out = column_profiles(phase * (1 + trend), (4.0, 2.0), x=x, y=x, dz=DZ, reference=[(2.0, 2.0)])
    assert out["peak_index"][0] == 6


def test_bad_input():
    phase, x = stack()
    with pytest.raises(ValueError, match="outside"):
        column_profiles(phase, (40.0, 2.0), x=x, y=x, dz=DZ)
    import hyperspy.api as hs

    image = hs.signals.Signal2D(phase[0])
    for ax in image.axes_manager.signal_axes:
        ax.scale, ax.units = STEP, "Å"
    with pytest.raises(ValueError, match="no depth axis"):
        depth_profile(image, (2.0, 2.0))


def test_lattice_reference_removes_the_common_depth_trend():
    """Every column's phase grows with depth (as channelling makes it); one column has a dopant in
    slice 2. Its excess over its own mean peaks in the last slice; over the median of its
    lattice-equivalent columns (another dopant among them does not matter) it peaks in slice 2."""
    from app_extension.analysis import Lattice

    n, a = 96, 1.2
    x = np.arange(n) * STEP
    xx, yy = np.meshgrid(x, x)
    sites = [(a * (i + 0.5), a * (j + 0.5)) for i in range(8) for j in range(8)]
    col = sum(np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * 0.25**2)) for u, v in sites)
    trend = 1.0 + 1.5 * np.arange(S) / (S - 1)  # the same rise with depth in every column
    phase = 0.2 * col[None] * trend[:, None, None]

    def bump(site):
        return np.exp(-((xx - site[0]) ** 2 + (yy - site[1]) ** 2) / (2 * 0.25**2))

    doped, other = sites[3 * 8 + 4], sites[5 * 8 + 2]
    phase[2] += 0.12 * bump(doped)
    phase[6] += 0.12 * bump(other)  # a second dopant, in a column that serves as a reference
    lattice = Lattice((a, 0.0), (0.0, a), origin=(0.0, 0.0))
    plain = column_profiles(phase, doped, x=x, y=x, dz=DZ)
    assert plain["peak_index"][0] == S - 1  # the trend wins without a reference
    out = column_profiles(phase, doped, x=x, y=x, dz=DZ, reference="lattice", lattice=lattice)
    assert out["peak_index"][0] == 2
    refs = out["reference_positions"][0]
    assert len(refs) >= 20 and np.min(np.hypot(*(refs - np.array(doped)).T)) > 1.0
    # the reference columns stay inside the region asked for
    roi = ((2.0, 7.0), (2.0, 7.0))
    out = column_profiles(
        phase, doped, x=x, y=x, dz=DZ, reference="lattice", lattice=lattice, reference_roi=roi
    )
    refs = out["reference_positions"][0]
    assert refs[:, 0].min() >= 2.0 and refs[:, 0].max() <= 7.0 and out["peak_index"][0] == 2
    with pytest.raises(ValueError, match="needs lattice"):
        column_profiles(phase, doped, x=x, y=x, dz=DZ, reference="lattice")
    with pytest.raises(ValueError, match="No lattice-equivalent column"):
        column_profiles(
            phase,
            doped,
            x=x,
            y=x,
            dz=DZ,
            reference="lattice",
            lattice=lattice,
            reference_roi=((0, 0.1), (0, 0.1)),
        )
