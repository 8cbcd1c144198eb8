"""Bag grid and tissue selection on synthetic low-resolution images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_mran.errors import MRANError
from napari_mran.tissue import (
    TissueError,
    bag_grid,
    bag_px_from_um,
    otsu_threshold,
    select_tissue_bags,
    tissue_mask,
)

WHITE = 240


def white(h: int, w: int) -> np.ndarray:
    return np.full((h, w, 3), WHITE, dtype=np.uint8)


# --------------------------------------------------------------------------- grid


def test_bag_grid_row_major_and_partial_bags_dropped():
    grid = bag_grid((5000, 4200), 2048)
    assert grid.dtype == np.int64
    # 5000 // 2048 = 2 columns, 4200 // 2048 = 2 rows; partial bags dropped
    np.testing.assert_array_equal(
        grid,
        [
            [0, 0, 2048, 2048],
            [2048, 0, 4096, 2048],
            [0, 2048, 2048, 4096],
            [2048, 2048, 4096, 4096],
        ],
    )


def test_bag_grid_exact_multiple_and_too_small():
    assert bag_grid((4096, 2048)).shape == (2, 4)
    empty = bag_grid((2047, 9000))
    assert empty.shape == (0, 4) and empty.dtype == np.int64


def test_bag_grid_other_bag_size():
    grid = bag_grid((1000, 700), 300)
    assert grid.shape == (3 * 2, 4)
    assert grid[-1].tolist() == [600, 300, 900, 600]


@pytest.mark.parametrize("bad", [0, -5, 31, 2048.5, "2048"])
def test_bag_grid_rejects_bad_bag_px(bad):
    with pytest.raises(TissueError):
        bag_grid((4096, 4096), bad)


def test_bag_grid_rejects_bad_size():
    with pytest.raises(TissueError):
        bag_grid((0, 100))
    with pytest.raises(TissueError):
        bag_grid(4096)


def test_bag_px_from_um():
    assert bag_px_from_um(1024, 0.5) == 2048
    assert bag_px_from_um(512.0, (0.25, 0.2501)) == 2048
    assert bag_px_from_um(100, 0.3) == 333  # rounded


@pytest.mark.parametrize(
    "mpp", [0, -1, float("nan"), float("inf"), 1e13, 0.001, None, "x", (0.25, 0.5)]
)
def test_bag_px_from_um_rejects_bad_mpp(mpp):
    with pytest.raises(TissueError) as info:
        bag_px_from_um(1024, mpp)
    assert isinstance(info.value, MRANError) and isinstance(info.value, ValueError)


def test_bag_px_from_um_rejects_bad_size():
    for bad in (0, -3, float("nan")):
        with pytest.raises(TissueError):
            bag_px_from_um(bad, 0.5)
    with pytest.raises(TissueError):
        bag_px_from_um(5, 0.5)  # 10 px < 32


# --------------------------------------------------------------------------- reference rule


def _paint(
    img: np.ndarray, bag_rc: tuple[int, int], n_px: int, side: int = 32, value=(120, 60, 120)
):
    """Paint *n_px* tissue pixels (row-major) into the low-res block of a bag."""
    r, c = bag_rc
    block = img[r * side : (r + 1) * side, c * side : (c + 1) * side].reshape(-1, 3)
    block[:n_px] = value
    img[r * side : (r + 1) * side, c * side : (c + 1) * side] = block.reshape(side, side, 3)


def test_reference_rule_exact_fractions():
    # 8192 x 4096 slide, bag 2048, downsample 64 -> 128 x 64 low-res, 32 x 32 px per bag
    img = white(64, 128)
    _paint(img, (0, 0), 512)  # white 0.5 -> kept
    _paint(img, (0, 1), 21)  # white 1003/1024 = 0.9795 -> kept
    _paint(img, (0, 2), 20)  # white 1004/1024 = 0.9805 -> dropped
    sel = select_tissue_bags(img, (64, 64), (8192, 4096))
    assert sel.grid_shape == (2, 4)
    expected_white = np.array([512, 1003, 1004, 1024, 1024, 1024, 1024, 1024]) / 1024
    np.testing.assert_allclose(sel.white_fraction, expected_white)
    np.testing.assert_array_equal(sel.kept, [True, True, False, False, False, False, False, False])
    np.testing.assert_array_equal(sel.boxes, [[0, 0, 2048, 2048], [2048, 0, 4096, 2048]])
    np.testing.assert_array_equal(sel.kept_indices, [0, 1])
    assert not sel.no_data.any()
    np.testing.assert_allclose(sel.valid_fraction, 1.0)
    # the boundary: white fraction == max_white_fraction is dropped (strict <)
    sel2 = select_tissue_bags(img, (64, 64), (8192, 4096), max_white_fraction=1003 / 1024)
    assert not sel2.kept[1] and sel2.kept[0]


def test_reference_white_level_is_strictly_greater():
    img = white(64, 64)
    img[:32, :32] = 127  # not > 127: tissue
    img[32:, 32:] = (128, 128, 127)  # one channel <= 127: tissue
    img[:32, 32:] = 128  # all > 127: white
    mask = tissue_mask(img)
    assert mask[:32, :32].all() and mask[32:, 32:].all() and not mask[:32, 32:].any()
    sel = select_tissue_bags(img, (64, 64), (4096, 4096))
    np.testing.assert_array_equal(sel.kept, [True, False, False, True])


def test_partial_edge_bags_are_never_selected():
    # 5000 x 3000 slide: only a 2 x 1 grid; tissue only in the dropped right strip
    img = white(187, 312)  # downsample 16
    img[:, 260:] = (150, 50, 120)
    sel = select_tissue_bags(img, (16, 16), (5000, 3000))
    assert sel.grid_boxes.shape == (2, 4)
    assert sel.boxes.shape == (0, 4)
    assert not sel.kept.any()


def test_non_square_downsample():
    # 4096 x 4096 slide, dx = 32, dy = 64 -> low-res 128 wide, 64 high
    img = white(64, 128)
    img[0:32, 64:128] = (150, 50, 120)  # level-0 x in [2048, 4096), y in [0, 2048): bag 1
    sel = select_tissue_bags(img, (32, 64), (4096, 4096))
    np.testing.assert_array_equal(sel.kept, [False, True, False, False])
    np.testing.assert_allclose(sel.white_fraction, [1, 0, 1, 1])
    # swapped axes are caught, not silently used
    with pytest.raises(TissueError, match="mismatch"):
        select_tissue_bags(img, (64, 32), (4096, 4096))


def test_pixel_centres_decide_membership():
    # downsample 3 on a 96 x 96 slide with bag 48 -> 32 x 32 low-res; pixel centres at 1.5, 4.5, ...
    # bag [48, 96): centres 49.5 ... => first column index 16 (16 * 3 + 1.5 = 49.5)
    img = white(32, 32)
    img[:, 15] = (100, 50, 100)  # centre 46.5: inside bag 0 only
    sel = select_tissue_bags(img, (3, 3), (96, 96), bag_px=48)
    np.testing.assert_allclose(sel.white_fraction, [15 / 16, 1.0, 15 / 16, 1.0])


def test_box_smaller_than_a_lowres_pixel_uses_the_pixel_under_its_centre():
    # 6000 x 6000 slide, downsample 3000: 2 x 2 low-res, centres at 1500 and 4500.
    # Bag [2048, 4096) contains no centre: it takes pixel floor(3072 / 3000) = 1.
    img = white(2, 2)
    img[0, 1] = (100, 40, 90)
    sel = select_tissue_bags(img, (3000, 3000), (6000, 6000))
    np.testing.assert_array_equal(sel.kept, [False, True, False, False])
    img2 = white(2, 2)
    img2[1, 1] = (100, 40, 90)  # only bag (1, 1) maps (by its centre) onto pixel (1, 1)
    sel2 = select_tissue_bags(img2, (3000, 3000), (6000, 6000))
    np.testing.assert_array_equal(sel2.kept, [False, False, False, True])
    assert np.isfinite(sel.white_fraction).all()


def test_valid_mask_excludes_missing_tiles():
    img = white(64, 64)  # 4096 x 4096, downsample 64: bags of 32 x 32 px
    img[:32, :32] = 0  # bag 0: missing tile read as black (would look like tissue)
    img[:32, 32:] = 0  # bag 1: 3/4 missing, 1/4 tissue
    img[:8, 32:] = (130, 60, 130)
    img[32:, :32] = 0  # bag 2: 1/4 missing, rest white
    valid = np.ones((64, 64), bool)
    valid[:32, :] = False
    valid[:8, 32:] = True
    valid[32:40, :32] = False
    img[32:40, :32] = 0
    img[40:64, :32] = WHITE
    sel = select_tissue_bags(img, (64, 64), (4096, 4096), valid=valid)
    np.testing.assert_allclose(sel.valid_fraction, [0.0, 0.25, 0.75, 1.0])
    np.testing.assert_array_equal(sel.no_data, [True, True, False, False])
    assert np.isnan(sel.white_fraction[0])
    assert sel.white_fraction[1] == 0.0  # computed on the valid quarter only
    assert sel.white_fraction[2] == 1.0  # the missing (black) pixels did not count as tissue
    np.testing.assert_array_equal(sel.kept, [False, False, False, False])
    np.testing.assert_array_equal(sel.no_data_boxes, [[0, 0, 2048, 2048], [2048, 0, 4096, 2048]])
    assert sel.parameters["n_no_data_bags"] == 2
    # a lower bar for valid data keeps the bag whose valid quarter is tissue
    sel2 = select_tissue_bags(img, (64, 64), (4096, 4096), valid=valid, min_valid_fraction=0.2)
    np.testing.assert_array_equal(sel2.kept, [False, True, False, False])
    # the pixel mask never marks missing pixels as tissue
    assert not tissue_mask(img, valid=valid)[:32, :32].any()


def test_rgba_alpha_zero_is_no_data():
    rgba = np.zeros((64, 64, 4), np.uint8)  # transparent everywhere (OpenSlide missing tiles)
    rgba[32:, 32:] = (150, 60, 140, 255)
    sel = select_tissue_bags(rgba, (64, 64), (4096, 4096))
    np.testing.assert_array_equal(sel.no_data, [True, True, True, False])
    np.testing.assert_array_equal(sel.kept, [False, False, False, True])
    assert sel.parameters["alpha_as_valid"] is True


def test_bad_inputs():
    img = white(64, 64)
    with pytest.raises(TissueError, match="uint8"):
        select_tissue_bags(img.astype(np.float32), (64, 64), (4096, 4096))
    with pytest.raises(TissueError, match="RGB"):
        select_tissue_bags(img[..., 0], (64, 64), (4096, 4096))
    with pytest.raises(TissueError):
        select_tissue_bags(img, (0, 64), (4096, 4096))
    with pytest.raises(TissueError, match="method"):
        select_tissue_bags(img, (64, 64), (4096, 4096), method="magic")
    with pytest.raises(TissueError, match="valid"):
        select_tissue_bags(img, (64, 64), (4096, 4096), valid=np.ones((3, 3), bool))
    with pytest.raises(TissueError, match="mismatch"):
        select_tissue_bags(img, (64, 64), (8192, 4096))


def test_parameters_are_strict_json():
    sel = select_tissue_bags(white(64, 64), (64, 64), (4096, 4096), method="otsu")
    text = json.dumps(sel.parameters, allow_nan=False)
    assert json.loads(text)["method"] == "otsu"


# --------------------------------------------------------------------------- otsu


def pink_on_white(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(238, 6, (96, 128, 3)), 0, 255).astype(np.uint8)  # bright, grey-ish
    truth = np.zeros((96, 128), bool)
    truth[10:50, 20:70] = True
    pink = np.stack(
        [
            rng.normal(220, 8, truth.sum()),
            rng.normal(150, 10, truth.sum()),
            rng.normal(190, 10, truth.sum()),
        ],
        axis=1,
    )
    img[truth] = np.clip(pink, 0, 255).astype(np.uint8)
    return img, truth


def test_otsu_on_pink_tissue():
    img, truth = pink_on_white()
    mask = tissue_mask(img, "otsu")
    assert (mask == truth).mean() > 0.99
    # the reference rule misses pale pink (all channels > 127): the reason for the option
    assert tissue_mask(img, "reference")[truth].mean() < 0.5
    # 128 x 96 low-res at downsample 32 -> 4096 x 3072 slide; bag 1024 -> 4 x 3 grid
    sel = select_tissue_bags(img, (32, 32), (4096, 3072), bag_px=1024, method="otsu")
    # tissue covers low-res rows 10..50, cols 20..70: bags (0,0),(0,1),(0,2),(1,0),(1,1),(1,2)
    expected = np.zeros((3, 4), bool)
    expected[0:2, 0:3] = True
    np.testing.assert_array_equal(sel.kept.reshape(3, 4), expected)
    assert 0.05 <= sel.parameters["otsu_threshold"] < 0.3
    np.testing.assert_allclose(sel.tissue_fraction, 1 - sel.white_fraction)


def test_otsu_blank_slide_keeps_nothing():
    img = white(64, 64)
    assert not tissue_mask(img, "otsu").any()
    sel = select_tissue_bags(img, (64, 64), (4096, 4096), method="otsu")
    assert not sel.kept.any()
    assert sel.parameters["otsu_threshold"] >= 0.05


def test_otsu_min_tissue_fraction():
    img = white(64, 64)
    img[:3, :32] = (200, 90, 160)  # 96 / 1024 = 9.4 % of bag 0
    sel = select_tissue_bags(img, (64, 64), (4096, 4096), method="otsu", min_tissue_fraction=0.05)
    np.testing.assert_array_equal(sel.kept, [True, False, False, False])
    sel = select_tissue_bags(img, (64, 64), (4096, 4096), method="otsu", min_tissue_fraction=0.1)
    assert not sel.kept.any()


def test_otsu_threshold_bimodal():
    values = np.concatenate([np.full(100, 0.1), np.full(50, 0.6)])
    t = otsu_threshold(values)
    assert 0.1 <= t < 0.6
    assert otsu_threshold(np.array([])) == 1.0
    assert otsu_threshold(np.full(10, 0.3)) >= 0.3  # single value: nothing above


# --------------------------------------------------------------------------- property: fast == brute force


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(3, 24),
    w=st.integers(3, 24),
    dx=st.sampled_from([7.0, 16.0, 33.5, 64.0, 100.0]),
    dy=st.sampled_from([7.0, 16.0, 40.0, 64.0]),
    seed=st.integers(0, 2**16),
)
def test_fractions_match_brute_force(h, w, dx, dy, seed):
    rng = np.random.default_rng(seed)
    img = np.where(rng.random((h, w, 1)) < 0.5, 250, 60).astype(np.uint8).repeat(3, axis=2)
    valid = rng.random((h, w)) < 0.8
    size = (int(w * dx), int(h * dy))
    bag = 64
    sel = select_tissue_bags(img, (dx, dy), size, bag_px=bag, valid=valid, min_valid_fraction=0.0)
    cy = (np.arange(h) + 0.5) * dy
    cx = (np.arange(w) + 0.5) * dx
    white_px = np.all(img > 127, axis=2)
    for k, (x0, y0, x1, y1) in enumerate(sel.grid_boxes):
        rows = np.flatnonzero((cy >= y0) & (cy < y1))
        cols = np.flatnonzero((cx >= x0) & (cx < x1))
        if rows.size == 0:
            rows = np.array([min(int((y0 + y1) / 2 // dy), h - 1)])
        if cols.size == 0:
            cols = np.array([min(int((x0 + x1) / 2 // dx), w - 1)])
        v = valid[np.ix_(rows, cols)]
        wt = white_px[np.ix_(rows, cols)] & v
        assert sel.valid_fraction[k] == pytest.approx(v.mean())
        if v.any():
            assert sel.white_fraction[k] == pytest.approx(wt.sum() / v.sum())
        else:
            assert np.isnan(sel.white_fraction[k])
