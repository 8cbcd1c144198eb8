"""Issue 9 point 3: input that is not brightfield H&E is refused before analysis, unless
the user overrides the check (recorded in provenance)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_mran.analysis import predict_slide
from napari_mran.brightfield import check_rgb, check_slide
from napari_mran.cli import main
from napari_mran.errors import AnalysisError
from napari_mran.model import load_model
from napari_mran.slide import open_slide
from datafiles import shared
from slide_writers import write_generic_pyramid, write_svs_pyramid


def _fluorescence(h=2048, w=2048, seed=0) -> np.ndarray:
    """One bright channel (nuclei-like blobs) on a black background, as DAPI."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(300):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(6, 20)
        img[..., 2][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(120, 255)
    return img


def _grey(cmu: np.ndarray) -> np.ndarray:
    g = (cmu[..., :3].astype(np.float32) @ [0.299, 0.587, 0.114]).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def _gradient(h=2048, w=2048) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1),
                     (xx + yy) * 255 // (w + h - 2)], axis=2).astype(np.uint8)


@pytest.fixture(scope="module")
def bad_slides(tmp_path_factory, cmu_pixels):
    d = tmp_path_factory.mktemp("bad")
    return {
        "fluorescence": write_svs_pyramid(d / "fluo.svs", _fluorescence(), downsamples=(1, 4)),
        "grey": write_svs_pyramid(d / "grey.svs", _grey(cmu_pixels)[:2048, :2048],
                                  downsamples=(1, 4)),
        "gradient": write_generic_pyramid(d / "gradient.tif", _gradient(), downsamples=(1, 4),
                                          tile=256),
    }


@pytest.mark.parametrize("kind, words", [("fluorescence", "background is dark"),
                                         ("grey", "no colour"),
                                         ("gradient", "not H&E")])
def test_not_he_is_refused_with_one_line(kind, words, bad_slides, model_file, tmp_path, capsys):
    path = bad_slides[kind]
    with open_slide(path) as slide:
        verdict = check_slide(slide)
        assert not verdict.ok and words in verdict.reason
        with pytest.raises(AnalysisError, match="not a brightfield H&E image"):
            predict_slide(slide, load_model(model_file))
    out = tmp_path / "out"
    rc = main(["analyze", str(path), "--model", str(model_file), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and str(path) in err[0] and words in err[0]
    assert "--allow-non-brightfield" in err[0]
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_override_is_recorded(bad_slides, model_file, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["analyze", str(bad_slides["grey"]), "--model", str(model_file), "--out", str(out),
               "--export", "", "--allow-non-brightfield", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    from napari_mran.results import SlideResult

    check = SlideResult.load(out / "grey.mran.zarr").provenance["input_check"]
    assert check["passed"] is False and check["overridden"] is True and "no colour" in check["reason"]


def test_real_fluorescence_ndpi_fails_the_check():
    with open_slide(shared("ndpi/test3-DAPI-2-387.ndpi")) as slide:
        verdict = check_slide(slide)
    assert not verdict.ok and "background is dark" in verdict.reason


def test_real_and_synthetic_he_pass(cmu_small, tmp_path):
    with open_slide(cmu_small) as slide:
        verdict = check_slide(slide)
    assert verdict.ok, verdict
    assert verdict.stats["green_darkest_fraction"] > 0.9
    from napari_mran.synthetic import make_slide

    for tumour, seed in ((True, 1), (False, 2)):
        p = make_slide(tmp_path / f"s{seed}.svs", 2048, 2048, tumour, seed).path
        with open_slide(p) as slide:
            assert check_slide(slide).ok


def test_passing_check_is_recorded(cmu_small, model_file):
    with open_slide(cmu_small) as slide:
        result = predict_slide(slide, load_model(model_file))
    check = result.provenance["input_check"]
    assert check["passed"] is True and check["overridden"] is False and check["rule"]
    json.dumps(check, allow_nan=False)


def test_check_rgb_edge_cases():
    blank = np.full((64, 64, 3), 250, np.uint8)
    assert check_rgb(blank).ok  # nothing stained to judge: tissue detection decides
    assert not check_rgb(np.zeros((64, 64), np.uint8)).ok
    boxes = np.full((64, 64, 3), 255, np.uint8)
    boxes[:32, :32] = (255, 0, 0)
    boxes[32:, 32:] = (0, 0, 255)
    assert "pure" in check_rgb(boxes).reason


def test_pixel_conversion_is_recorded(bad_slides, model_file):
    """A grey slide is converted to RGB explicitly; the result says how (reliability row 9)."""
    with open_slide(bad_slides["grey"]) as slide:
        result = predict_slide(slide, load_model(model_file), allow_non_brightfield=True)
        assert result.provenance["slide"]["pixel_conversion"] == \
            slide.properties["mran.pixel-conversion"]
    with open_slide(bad_slides["gradient"]) as slide:
        result = predict_slide(slide, load_model(model_file), allow_non_brightfield=True)
    assert result.provenance["slide"]["pixel_conversion"]
