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
