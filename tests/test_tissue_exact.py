"""Issue 11 point 3: tissue method ``exact`` applies the authors' rule (white = every
channel > 127; keep a bag when its white fraction < 0.98) to the level-0 pixels of every
bag, where ``reference`` evaluates it at <= 4x on candidate bags."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_mran.analysis import find_tissue_bags
from napari_mran.slide import open_slide
from slide_writers import downsample

BAG = 2048


def _write_lossless_pyramid(path, image, downsamples=(1, 2, 4, 16)):
    """Deflate tiles (no JPEG blur), lower levels box-averaged as a scanner makes them."""
    with tifffile.TiffWriter(path) as tw:
        for i, f in enumerate(downsamples):
            tw.write(downsample(image, f), tile=(256, 256), compression="zlib",
                     photometric="rgb", subfiletype=0 if i == 0 else 1, metadata=None,
                     resolution=(1e4 / 0.5 / f, 1e4 / 0.5 / f), resolutionunit="CENTIMETER")
    return path


@pytest.fixture(scope="module")
def dotted_slide(tmp_path_factory, cmu_pixels):
    """Bag 0: real tissue.  Bag 1: glass with isolated black pixels on a 7 px lattice
    (white fraction 1 - 1/49 = 0.9796 at level 0, kept by the rule; box-averaged to 4x
    every pixel is >= 239, white, so the bag reads as glass there)."""
    img = np.full((BAG, 2 * BAG, 3), 255, np.uint8)
    img[:, :BAG] = cmu_pixels[:BAG, :BAG]
    img[::7, BAG::7] = 0
    return _write_lossless_pyramid(tmp_path_factory.mktemp("dots") / "dots.tif", img)


def test_exact_keeps_the_bag_that_averaging_whitens(dotted_slide):
    with open_slide(dotted_slide) as slide:
        assert slide.level_downsamples[:3] == [1.0, 2.0, 4.0]
        exact = find_tissue_bags(slide, BAG, "exact")
        fast = find_tissue_bags(slide, BAG, "reference")
    assert [tuple(b) for b in exact.boxes] == [(0, 0, BAG, BAG), (BAG, 0, 2 * BAG, BAG)]
    assert exact.white_fraction[1] == pytest.approx(1 - (293 * 293) / BAG ** 2, abs=1e-9)
    assert exact.parameters["rule_level"] == 0 and exact.parameters["n_candidates"] == 2
    assert [tuple(b) for b in fast.boxes] == [(0, 0, BAG, BAG)]
    assert fast.parameters["rule_level"] == 2


def test_exact_equals_the_rule_on_level0_pixels(svs_pyramid, cmu_pixels):
    """On the real CMU-1 crop the exact white fractions are the rule applied to the
    decoded level-0 pixels, bag by bag (partial bags padded with white)."""
    with open_slide(svs_pyramid) as slide:
        got = find_tissue_bags(slide, BAG, "exact", edge="pad")
        level0 = slide.read_region((0, 0), 0, slide.dimensions)
    h, w = level0.shape[:2]
    padded = np.full((2 * BAG, 2 * BAG, 3), 255, np.uint8)
    padded[:h, :w] = level0
    for box, wf in zip(got.boxes, got.white_fraction):
        x0, y0, x1, y1 = box
        want = float((padded[y0:y1, x0:x1] > 127).all(-1).mean())
        assert wf == pytest.approx(want, abs=1e-12)
    assert all(wf < 0.98 for wf in got.white_fraction)
