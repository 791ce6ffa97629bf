"""The data-preparation stage: prepare() end to end on corrupted forward-model data."""

import json

import numpy as np
import pytest
from measurements_data import (
    AXIS,
    DEAD,
    DEFOCUS,
    HOT,
    ROTATION,
    SCAN,
    THICKNESS,
    recorded_calibration,
    recorded_data,
)

from app_extension.measurements import CalibrationReport, PrepareOptions, prepare
from app_extension.measurements.centre import mean_disk


@pytest.fixture(scope="module")
def prepared_transposed():
    return prepare(recorded_data(transpose=True), recorded_calibration(), thickness=THICKNESS)


def test_prepare_measures_everything(prepared_transposed):
    r = prepared_transposed.report
    assert np.hypot(*(np.array(r.centre_px) - AXIS)) < 0.15
    assert r.transposed is True and r.transposed_source == "parallax"
    assert abs(r.rotation_deg - ROTATION) < 1.0
    assert r.defocus_A == pytest.approx(DEFOCUS, rel=0.12)
    assert r.semiangle_mrad == pytest.approx(22.0, rel=0.02) and r.semiangle_warning == ""
    found = {(row, col) for row, col, _ in r.bad_pixels}
    assert set(HOT + DEAD) <= found and len(found) <= len(HOT + DEAD) + 1
    g = prepared_transposed.geometry
    assert g.defocus == r.defocus_A and g.aberrations["C12"] == r.C12_A
    # the positions are the unrotated raster in the scan frame
    np.testing.assert_allclose(
        g.scan_positions[1] - g.scan_positions[0], [0, recorded_calibration().scan_step[1]]
    )


def test_prepared_patterns_are_in_the_ideal_frame(prepared_transposed):
    p = prepared_transposed.patterns
    assert p.shape == (SCAN[0] * SCAN[1], 48, 48) and p.dtype == np.float32
    centre, _, _, _ = mean_disk(prepared_transposed.filled_patterns().mean(axis=0))
    assert np.hypot(*(centre - 24)) < 0.2
    # a second pass over the prepared data finds nothing left to correct
    again = prepare(
        prepared_transposed.filled_patterns().reshape(*SCAN, 48, 48),
        recorded_calibration(),
        bad_pixels=False,
    ).report
    assert np.hypot(*(np.array(again.centre_px) - 24)) < 0.15
    assert abs(again.rotation_deg) < 1.0 and again.transposed is False
    assert np.abs(again.descan_px_per_A).max() < 0.01


def test_mask_leaves_out_bad_and_outside_pixels(prepared_transposed):
    mask = prepared_transposed.mask
    assert mask.shape == (48, 48) and mask.dtype == bool
    assert not mask[0, 0] and not mask[-1, -1]  # corners pulled from outside the detector
    assert mask[24, 24]
    assert prepared_transposed.report.masked_pixels == int((~mask).sum())
    assert 8 <= (~mask).sum() < 0.25 * mask.size


def test_transform_per_batch_matches(prepared_transposed):
    data = recorded_data(transpose=True).reshape(-1, 48, 48)
    idx = np.array([3, 100, 575])
    out = prepared_transposed.transform(data[idx], idx)
    np.testing.assert_allclose(out, prepared_transposed.patterns[idx], rtol=1e-6, atol=1e-6)


def test_everything_off_passes_the_data_through():
    data = recorded_data()
    out = prepare(data, recorded_calibration(), PrepareOptions.all_off())
    assert np.array_equal(out.patterns, data.reshape(-1, 48, 48))
    assert out.mask.all() and out.report.rotation_deg == 0.0 and out.report.bad_pixels == []
    assert out.geometry.defocus == DEFOCUS and out.geometry.aberrations == {}


def test_user_values_override(prepared_transposed):
    out = prepare(
        recorded_data(transpose=True),
        recorded_calibration(),
        rotation=ROTATION + 0.3,
        transpose=True,
        centre=AXIS,
        aberrations=False,
        bad_pixels=False,
    )
    r = out.report
    assert r.rotation_source == "user" and r.rotation_deg == ROTATION + 0.3
    assert r.centre_source == "user" and r.centre_px == AXIS
    assert r.defocus_A == DEFOCUS and r.bad_pixels == []


def test_report_round_trip(prepared_transposed):
    r = prepared_transposed.report
    d = json.loads(json.dumps(r.to_dict()))
    back = CalibrationReport.from_dict(d)
    assert back.to_dict() == r.to_dict()
    text = str(r)
    assert "optic axis" in text and "scan rotation" in text and "bad pixels" in text


def test_dask_input_gives_the_same_result():
    da = pytest.importorskip("dask.array")
    data = recorded_data()
    opts = PrepareOptions(aberrations=False, orientation=False)
    a = prepare(data, recorded_calibration(), opts)
    b = prepare(da.from_array(data, chunks=(4, 24, 48, 48)), recorded_calibration(), opts)
    np.testing.assert_allclose(a.patterns, b.patterns)
    assert a.report.bad_pixels == b.report.bad_pixels


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match="Reshape"):
        prepare(np.zeros((10, 48, 48)), recorded_calibration())
    data = recorded_data().copy()
    data[0, 0, 0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        prepare(data, recorded_calibration())


def test_lazy_resampling_equals_the_memory_mapped_copy():
    """Under torchrun each rank maps its own chunks as they are read (preparation._resample_lazily);
    that must give the patterns the one-process path writes to its memory-mapped file, also when the
    file is chunked across the detector."""
    da = pytest.importorskip("dask.array")
    from app_extension.preparation import _resample_lazily, _resample_to_memmap

    data = recorded_data()
    lazy = da.from_array(data, chunks=(3, 5, 24, 48))
    prepared = prepare(lazy, recorded_calibration(), PrepareOptions(aberrations=False), materialise=False)
    assert not prepared.transform.identity  # a rotation, descan and bad pixels to apply
    mapped = np.asarray(_resample_to_memmap(lazy, prepared))
    streamed = _resample_lazily(lazy, prepared.transform)
    assert streamed.dtype == np.float32 and streamed.shape == data.shape
    np.testing.assert_array_equal(np.asarray(streamed.compute()).reshape(mapped.shape), mapped)
    # one chunk alone (what a rank reads) is the same as its rows of the whole
    np.testing.assert_array_equal(
        np.asarray(streamed[3:6, 5:10].compute()).reshape(-1, *data.shape[-2:]),
        mapped.reshape(data.shape)[3:6, 5:10].reshape(-1, *data.shape[-2:]),
    )


def test_in_memory_data_under_torchrun_are_measured_on_rank_zero_only(monkeypatch):
    """Under torchrun, data in memory (every rank holds them whole) are measured by rank 0 alone; the
    other ranks receive its result and resample with it. Each rank's patterns, geometry and report
    equal one process's. Two ranks are played in one process: rank_and_size and the broadcast faked."""
    import torch.distributed as dist

    import app_extension.measurements as measurements
    import app_extension.solver.distributed as distributed
    from app_extension.preparation import prepare_data
    from app_extension.solver.config import CalibrationOptions, Geometry

    data = recorded_data()
    sy, sx = data.shape[:2]
    recorded = recorded_calibration()
    dy, dx = recorded.scan_step
    yy, xx = np.meshgrid(np.arange(sy) * dy, np.arange(sx) * dx, indexing="ij")
    raster = np.stack([yy.ravel(), xx.ravel()], axis=1)
    geometry = Geometry(300e3, 22.0, recorded.reciprocal_sampling, raster, defocus=DEFOCUS)
    options = CalibrationOptions(fit_aberrations=False)
    joined = []  # the process group is joined (torchrun) before the stage, for the run's device
    monkeypatch.setattr(
        distributed, "from_environment", lambda device: joined.append(device) or (None, device)
    )
    single = prepare_data(data, geometry, (sy, sx), options, thickness=THICKNESS, device="cpu")
    assert joined == ["cpu"]

    sent = []

    def broadcast_from_rank_zero(box, src):
        sent.append(box[0])

    monkeypatch.setattr(distributed, "rank_and_size", lambda: (0, 2))
    monkeypatch.setattr(dist, "broadcast_object_list", broadcast_from_rank_zero)
    rank0 = prepare_data(data, geometry, (sy, sx), options, thickness=THICKNESS)
    assert len(sent) == 1 and sent[0].patterns is None  # the measurement only, not the patterns

    def receive(box, src):
        box[0] = sent[0]

    def must_not_measure(*args, **kwargs):
        raise AssertionError("rank 1 measured the data itself")

    monkeypatch.setattr(distributed, "rank_and_size", lambda: (1, 2))
    monkeypatch.setattr(dist, "broadcast_object_list", receive)
    monkeypatch.setattr(measurements, "prepare", must_not_measure)
    rank1 = prepare_data(data, geometry, (sy, sx), options, thickness=THICKNESS)

    for inputs in (rank0, rank1):
        np.testing.assert_array_equal(np.asarray(inputs.patterns), np.asarray(single.patterns))
        np.testing.assert_array_equal(inputs.detector_mask, single.detector_mask)
        np.testing.assert_array_equal(inputs.geometry.scan_positions, single.geometry.scan_positions)
        assert inputs.geometry.defocus == single.geometry.defocus
        a, b = inputs.report.to_dict(), single.report.to_dict()
        a.pop("timings_s"), b.pop("timings_s")
        assert a == b
