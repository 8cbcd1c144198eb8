"""Issue 9 point 7: the whole tissue is analysed (edge policy ``pad``, the default), the
authors' ``drop`` is available for exact reproduction, and both are recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_mran.analysis import predict_slide
from napari_mran.cli import main
from napari_mran.errors import AnalysisError
from napari_mran.model import load_model
from napari_mran.results import SlideResult
from napari_mran.slide import open_slide
from napari_mran.tissue import bag_grid, select_tissue_bags, tissue_coverage
from slide_writers import write_svs_pyramid


@pytest.fixture(scope="module")
def demo():
    return load_model("demo")


def test_cmu1_whole_tissue_with_pad_and_authors_rule_with_drop(cmu_small, demo):
    with open_slide(cmu_small) as slide:  # 2220 x 2967: one whole bag, three partial ones
        padded = predict_slide(slide, demo)
        dropped = predict_slide(slide, demo, edge="drop")
    # the partial bag below holds tissue; the 172 px strip on the right is glass
    assert dropped.n_bags == 1 and padded.n_bags == 2
    tp, td = padded.provenance["tissue"], dropped.provenance["tissue"]
    assert tp["edge"] == "pad" and td["edge"] == "drop"
    assert tp["coverage"] > 0.99
    # the authors' rule sees 56 % of this slide's tissue
    assert 0.5 < td["coverage"] < 0.75
    # the whole bag is the same bag either way
    np.testing.assert_array_equal(dropped.boxes[0], [0, 0, 2048, 2048])
    i = [tuple(b) for b in padded.boxes].index((0, 0, 2048, 2048))
    np.testing.assert_allclose(padded.patch_attention[i], dropped.patch_attention[0], atol=1e-5)
    # partial bags reach past the slide; the heatmap grid covers the slide
    assert padded.boxes[:, 3].max() == 4096 and padded.grid_shape == (2, 2)
    assert dropped.grid_shape == (2, 2) and np.isnan(dropped.heatmap("bag").data).sum() == 3


def test_padding_is_not_reported(cmu_small, demo):
    """Heatmap pixels and patches/cells wholly past the slide's edge carry nothing."""
    with open_slide(cmu_small) as slide:
        result = predict_slide(slide, demo)
    result.cell_tissue = None  # padding only here; the tissue mask is tested in test_roi.py
    w, h = result.slide_size
    cell = result.heatmap("cell").data  # 64 px cells: rows >= ceil(2967 / 64) are padding
    assert cell.shape == (64, 64)
    assert np.isnan(cell[-(-h // 64):]).all() and np.isfinite(cell[: h // 64, :32]).all()
    boxes, inside = result.slide_boxes("patch")
    assert boxes[..., 2].max() <= w and boxes[..., 3].max() <= h
    # the partial bag starting at y 2048 keeps patch rows 0-3 (2048 + 4 * 256 > 2967)
    i = [tuple(b) for b in result.boxes].index((0, 2048, 2048, 4096))
    assert inside[i].reshape(8, 8).all(axis=1).tolist() == [True] * 4 + [False] * 4


def test_partial_bag_store_round_trips(cmu_small, demo, tmp_path):
    with open_slide(cmu_small) as slide:
        result = predict_slide(slide, demo)
    result.save(tmp_path / "r.mran.zarr")
    back = SlideResult.load(tmp_path / "r.mran.zarr")
    np.testing.assert_array_equal(back.boxes, result.boxes)
    assert back.provenance["tissue"]["edge"] == "pad"


def test_cli_summary_states_the_analysed_fraction(cmu_small, tmp_path, capsys):
    rc = main(["analyze", str(cmu_small), "--model", "demo", "--out", str(tmp_path / "a"),
               "--export", "", "--edge", "drop"])
    assert rc == 0
    out = capsys.readouterr().out  # the human summary line
    assert "56% of the tissue" in out and "edge policy drop" in out and "[DEMO MODEL]" in out
    rc = main(["analyze", str(cmu_small), "--model", "demo", "--out", str(tmp_path / "b"),
               "--export", "", "--edge", "drop", "--json", "-q"])
    summary = json.loads(capsys.readouterr().out)["slides"][0]
    assert summary["edge"] == "drop" and 0.5 < summary["tissue_coverage"] < 0.75


def test_slide_smaller_than_one_bag(tmp_path, cmu_pixels, demo):
    path = write_svs_pyramid(tmp_path / "small.svs", cmu_pixels[:1500, :1200], downsamples=(1, 4))
    with open_slide(path) as slide:
        with pytest.raises(AnalysisError, match="smaller than one bag"):
            predict_slide(slide, demo, edge="drop")
        result = predict_slide(slide, demo)  # pad: the one partial bag
    assert result.n_bags == 1 and tuple(result.boxes[0]) == (0, 0, 2048, 2048)


def test_unknown_edge_policy_is_refused(cmu_small, demo):
    with open_slide(cmu_small) as slide, pytest.raises(AnalysisError, match="edge must be one of"):
        predict_slide(slide, demo, edge="crop")


def test_padded_bag_counts_outside_as_white():
    """A partial bag whose inside part is all tissue: the padded bag is mostly white."""
    lowres = np.full((30, 30, 3), 100, np.uint8)  # 3000 x 3000 slide, all tissue, 100 px/px
    grid = bag_grid((3000, 3000), 2048, "pad")
    assert len(grid) == 4 and len(bag_grid((3000, 3000), 2048, "drop")) == 1
    sel = select_tissue_bags(lowres, (100.0, 100.0), (3000, 3000), bag_px=2048, edge="pad")
    inside = (np.minimum(grid[:, 2], 3000) - grid[:, 0]) * (np.minimum(grid[:, 3], 3000)
                                                             - grid[:, 1]) / 2048 ** 2
    np.testing.assert_allclose(sel.white_fraction, 1 - inside, atol=0.02)
    assert sel.valid_fraction.min() == pytest.approx(1.0)
    # the corner bag holds (952/2048)^2 = 22 % tissue: kept (white 0.78 < 0.98)
    assert sel.kept.all()
    frac, n = tissue_coverage(lowres, (100.0, 100.0), grid[:1])
    assert n == 900 and frac == pytest.approx((2048 / 3000) ** 2, abs=0.03)
