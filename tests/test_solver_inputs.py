"""Bad input is refused with a message naming the problem."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app_extension.solver.config import Geometry, SolverConfig
from app_extension.solver.data import check_intensities
from app_extension.solver.engine import reconstruct


def good_data(p=4, n=8) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, (p, n, n)).astype(np.float32)


def test_check_intensities_accepts_3d_4d_and_torch():
    data = good_data(6)
    out = check_intensities(data)
    assert out.dtype == np.float32 and out.shape == (6, 8, 8)
    np.testing.assert_array_equal(check_intensities(data.reshape(2, 3, 8, 8)), data)
    np.testing.assert_array_equal(check_intensities(torch.as_tensor(data.astype(np.float64))), data)


def _with(data: np.ndarray, index, value) -> np.ndarray:
    data = data.copy()
    data[index] = value
    return data


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (np.ones((8, 8)), "2 dimension"),
        (np.ones((2, 2, 2, 8, 8)), "5 dimension"),
        (np.ones((4, 8, 6)), "square"),
        (np.ones((2, 3, 8, 6)), "square"),
        (_with(good_data(), (1, 2, 3), np.nan), "NaN"),
        (_with(good_data(), (2, 0, 0), np.inf), "infinite"),
        (_with(good_data(), (0, 4, 4), -0.5), "negative"),
        (np.zeros((4, 8, 8)), "all zero"),
    ],
    ids=["2d", "5d", "non-square", "non-square-4d", "nan", "inf", "negative", "zeros"],
)
def test_check_intensities_rejects(data, match):
    with pytest.raises(ValueError, match=match):
        check_intensities(data)


def test_check_intensities_rejects_complex_and_count_mismatch():
    with pytest.raises(TypeError, match="real"):
        check_intensities(good_data().astype(np.complex64))
    with pytest.raises(ValueError, match="4 patterns but 5 scan positions"):
        check_intensities(good_data(4), num_positions=5)


def test_nan_message_points_at_pattern():
    with pytest.raises(ValueError, match="pattern 2"):
        check_intensities(_with(good_data(), (2, 5, 5), np.nan))


GEOMETRY = dict(energy=300e3, semiangle=20.0, reciprocal_sampling=0.05, scan_positions=np.zeros((4, 2)))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (dict(energy=-300e3), "energy"),
        (dict(energy=0.0), "energy"),
        (dict(semiangle=float("nan")), "semiangle"),
        (dict(reciprocal_sampling=-0.05), "reciprocal_sampling"),
        (dict(scan_positions=np.zeros((4, 3))), "scan_positions"),
        (dict(scan_positions=np.zeros(8)), "scan_positions"),
        (dict(scan_positions=np.full((4, 2), np.nan)), "scan_positions"),
    ],
    ids=[
        "negative-energy",
        "zero-energy",
        "nan-semiangle",
        "negative-sampling",
        "3-columns",
        "flat",
        "nan-pos",
    ],
)
def test_geometry_rejects(changes, match):
    with pytest.raises(ValueError, match=match):
        Geometry(**{**GEOMETRY, **changes})


def test_geometry_raster():
    pos = Geometry.raster((2, 3), 1.5)
    np.testing.assert_allclose(pos, [[0, 0], [0, 1.5], [0, 3], [1.5, 0], [1.5, 1.5], [1.5, 3]])
    rotated = Geometry.raster((1, 2), 1.0, rotation=90.0)
    np.testing.assert_allclose(rotated, [[0, 0], [1, 0]], atol=1e-12)  # +x scan axis turned to +y


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (dict(mode="epie"), "mode"),
        (dict(loss="gaussian"), "loss"),
        (dict(tilt=(0.5, 350.0)), "mrad"),  # degrees or µrad given as mrad
        (dict(tilt=(1.0, 2.0, 3.0)), "tilt"),
        (dict(tilt=(np.nan, 0.0)), "tilt"),
        (dict(num_slices=0), "num_slices"),
        (dict(num_slices=2.5), "num_slices"),
        (dict(iterations=-1), "iterations"),
        (dict(batch_size=0), "batch_size"),
        (dict(probe_modes=0), "probe_modes"),
        (dict(slice_thickness=-5.0), "slice_thickness"),
        (dict(depth_regularization=1.0), "depth_regularization"),
        (dict(lr_tilt=-0.1), "lr_tilt"),
        (dict(divergence_factor=0.5), "divergence_factor"),
    ],
    ids=lambda x: str(x) if isinstance(x, str) else None,
)
def test_solver_config_rejects(changes, match):
    with pytest.raises(ValueError, match=match):
        SolverConfig(**changes)


def test_solver_config_normalises():
    config = SolverConfig(mode="APP", loss="Poisson", tilt=[3, -2], iterations=0)
    assert config.mode == "app" and config.loss == "poisson"
    assert config.tilt == (3.0, -2.0)
    assert config.learns_geometry and not config.replace(mode="fpp").learns_geometry
    assert config.to_dict()["tilt"] == [3.0, -2.0]


def test_reconstruct_rejects_mismatch_and_small_padding():
    geometry = Geometry(**{**GEOMETRY, "reciprocal_sampling": 0.1})
    with pytest.raises(ValueError, match="3 patterns but 4 scan positions"):
        reconstruct(good_data(3), geometry, SolverConfig(iterations=0), show_progressbar=False)
    with pytest.raises(ValueError, match="padded_size"):
        reconstruct(good_data(4), geometry, SolverConfig(iterations=0, padded_size=4), show_progressbar=False)


def test_reconstruct_rejects_state_from_other_data():
    geometry = Geometry(**{**GEOMETRY, "reciprocal_sampling": 0.1})
    state = reconstruct(
        good_data(4, 8), geometry, SolverConfig(iterations=0, num_slices=2), show_progressbar=False
    )
    with pytest.raises(ValueError, match="probe window"):
        reconstruct(
            good_data(4, 16), geometry, SolverConfig(iterations=0), state=state, show_progressbar=False
        )
    other = Geometry(**{**GEOMETRY, "reciprocal_sampling": 0.1, "scan_positions": np.zeros((5, 2))})
    with pytest.raises(ValueError, match="made for 4 scan positions"):
        reconstruct(good_data(5, 8), other, SolverConfig(iterations=0), state=state, show_progressbar=False)
