"""The synthetic stain / scanner shift (``make_slide(..., stain_shift=...)``): same tissue
and ground truth, other stains, light and sharpness."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_mran.stain import fit_reference
from napari_mran.synthetic import STAIN_SHIFTS, StainShift, make_cohort, make_slide


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    d = tmp_path_factory.mktemp("shift")
    base = make_slide(d / "base.svs", 2048, 2048, True, 5)
    shifted = make_slide(d / "b.svs", 2048, 2048, True, 5, stain_shift="scanner-b")
    return base, shifted


def _level0(info) -> np.ndarray:
    return tifffile.imread(info.path, key=0)


def test_same_tissue_and_truth_other_colours(twins):
    base, shifted = twins
    assert tifffile.imread(base.mask_path).tobytes() == tifffile.imread(shifted.mask_path).tobytes()
    assert base.tumour_boxes == shifted.tumour_boxes
    assert base.stain_shift is None and shifted.stain_shift["name"] == "scanner-b"
    a, b = _level0(base), _level0(shifted)
    assert np.abs(a.astype(int) - b).mean() > 5


def test_the_stain_vectors_move(twins):
    """Macenko fits of the two slides: the H vector turns by more than 5 degrees, the
    E/H balance changes."""
    base, shifted = twins
    fa, fb = (fit_reference(_level0(i), "macenko") for i in twins)
    cos = float(fa.stains()[0] @ fb.stains()[0])
    assert np.degrees(np.arccos(min(1.0, cos))) > 5
    assert abs(fa.max_c()[1] / fa.max_c()[0] - fb.max_c()[1] / fb.max_c()[0]) > 0.05


def test_glass_follows_brightness_and_tint(tmp_path):
    """A glass-only corner: RGB x brightness x tint (to rounding); blur 0 changes nothing else."""
    shift = StainShift(brightness=0.9, tint=(1.0, 0.95, 1.02), name="dim")
    base = make_slide(tmp_path / "a.svs", 1024, 1024, False, 3)
    dim = make_slide(tmp_path / "d.svs", 1024, 1024, False, 3, stain_shift=shift)
    a, d = _level0(base)[:64, :64].reshape(-1, 3).mean(0), _level0(dim)[:64, :64].reshape(-1, 3).mean(0)
    assert a.min() > 230  # glass
    np.testing.assert_allclose(d, a * 0.9 * np.array([1.0, 0.95, 1.02]), atol=1.5)


def test_blur_softens_edges(tmp_path):
    sharp = make_slide(tmp_path / "s.svs", 1024, 1024, True, 8)
    soft = make_slide(tmp_path / "b.svs", 1024, 1024, True, 8, stain_shift=StainShift(blur=2.0))
    grad = [np.abs(np.diff(_level0(i).astype(float), axis=1)).mean() for i in (sharp, soft)]
    assert grad[1] < 0.7 * grad[0], grad


def test_bad_shifts_are_refused_before_writing(tmp_path):
    for bad in ({"hematoxylin": (1, 1)}, {"eosin": (1, 0, 1)}, {"brightness": 9.0},
                {"blur": -1}, {"tint": "red"}):
        with pytest.raises(ValueError, match="StainShift"):
            StainShift(**bad)
    with pytest.raises(ValueError, match="scanner-b"):
        make_cohort(tmp_path / "c", 2, 0, 512, 512, stain_shift="scanner-z")
    assert not (tmp_path / "c").exists()
    assert STAIN_SHIFTS["scanner-b"].to_dict()["name"] == "scanner-b"
