"""Hot, dead and noisy pixels from the per-pixel statistics (app_extension.measurements.bad_pixels)."""

import numpy as np
import pytest
from measurements_data import DEAD, HOT, ideal, recorded_data

from app_extension.measurements.bad_pixels import fill_bad_pixels, find_bad_pixels


def _stats(data):
    flat = data.reshape(-1, *data.shape[-2:]).astype(np.float64)
    return flat.sum(axis=0), flat.var(axis=0)


def test_finds_every_injected_pixel_with_its_kind():
    total, var = _stats(recorded_data())
    bad, listing = find_bad_pixels(total, var)
    kinds = {(r, c): k for r, c, k in listing}
    for p in HOT:
        assert kinds.get(p) == "hot", (p, listing)
    for p in DEAD:
        assert kinds.get(p) == "dead", (p, listing)
    false = [p for p in kinds if p not in HOT + DEAD]
    assert len(false) <= 1, false
    assert bad.sum() == len(listing)


def test_noiseless_pattern_structure_is_not_flagged():
    # the strong bright-field / dark-field contrast and the disk edge alone give no bad pixels
    total, var = _stats(ideal().data)
    _, listing = find_bad_pixels(total, var)
    assert listing == []


def test_noisy_pixel_from_the_variance():
    data = recorded_data().reshape(-1, 48, 48).copy()
    rng = np.random.default_rng(1)
    # same mean as its neighbours, but mostly 0 with rare bursts of 10 times the mean
    level = data[:, 10, 24].mean()
    data[:, 10, 24] = np.where(rng.random(data.shape[0]) < 0.1, 10 * level, 0.0)
    data[:, 10, 24] *= level / data[:, 10, 24].mean()
    total, var = _stats(data)
    _, listing = find_bad_pixels(total, var)
    assert (10, 24, "noisy") in listing


def test_user_mask_is_merged_and_checked():
    total, var = _stats(recorded_data())
    user = np.zeros((48, 48), dtype=bool)
    user[0, 0] = user[47, 47] = True
    _, listing = find_bad_pixels(total, var, user)
    assert (0, 0, "user") in listing and (47, 47, "user") in listing
    with pytest.raises(TypeError, match="boolean"):
        find_bad_pixels(total, var, user.astype(int))
    with pytest.raises(ValueError, match="shape"):
        find_bad_pixels(total, var, user[:10])


def test_fill_uses_the_good_neighbours():
    img = np.arange(49, dtype=np.float32).reshape(7, 7)
    bad = np.zeros((7, 7), dtype=bool)
    bad[3, 3] = True
    bad[3, 4] = True  # a pair: the inner one is filled from good pixels only
    out = fill_bad_pixels(np.stack([img, 2 * img]), bad)
    good_nb = [img[2, 2], img[2, 3], img[2, 4], img[3, 2], img[4, 2], img[4, 3], img[4, 4]]
    assert out[0, 3, 3] == pytest.approx(np.mean(good_nb))
    assert out[1, 3, 3] == pytest.approx(2 * np.mean(good_nb))
    assert np.all(out[0][~bad] == img[~bad])
