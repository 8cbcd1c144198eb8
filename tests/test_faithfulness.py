"""Restricted predictions (top-k bags, top-m patches) against direct model calls."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_mran import AnalysisError, open_slide
from napari_mran.analysis import predict_slide
from napari_mran.faithfulness import (parse_k, parse_m, restricted_prediction,
                                      restriction_sweep)
from napari_mran.model import MRAN, MRANConfig
from slide_writers import write_svs_pyramid


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    return MRAN(MRANConfig(width=0.125, class_names=["normal", "tumour"])).eval()


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory, cmu_pixels):
    """6144 x 2048 px: three tissue bags (a crop, its mirror, another crop)."""
    a = cmu_pixels[:2048, :2048]
    b = cmu_pixels[900:2948, 100:2148]
    img = np.concatenate([a, a[:, ::-1], b], axis=1)
    p = tmp_path_factory.mktemp("faith") / "three.svs"
    write_svs_pyramid(p, img, downsamples=(1, 2, 4, 16), tile=256, mpp=0.5)
    return p


@pytest.fixture(scope="module")
def result(slide_path, model):
    with open_slide(slide_path) as slide:
        r = predict_slide(slide, model, compile=False, batch_size=3)
    assert r.n_bags == 3 and r.embeddings is not None
    return r


def bag_pixels(slide_path, boxes):
    with open_slide(slide_path) as slide:
        imgs = [slide.read_region((int(b[0]), int(b[1])), 1, (1024, 1024)) for b in boxes]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255


def test_all_bags_no_patch_limit_reproduces_the_result(slide_path, model, result):
    # from the stored embeddings: no slide needed
    r = restricted_prediction(None, model, result)
    assert r["source"] == "stored embeddings" and r["bags_used"] == 3
    np.testing.assert_allclose(r["slide_probs"], result.slide_probs, atol=1e-6)
    # without stored embeddings: the bags are re-read with the analysis's settings
    bare = dataclasses.replace(result, embeddings=None)
    with open_slide(slide_path) as slide:
        r2 = restricted_prediction(slide, model, bare, k_bags="all", m_patches=None)
    assert r2["source"] == "re-read"
    np.testing.assert_allclose(r2["slide_probs"], result.slide_probs, atol=1e-5)
    np.testing.assert_allclose(r2["patch_attention"], result.patch_attention[r2["bag_indices"]],
                               atol=1e-5)


def test_patch_limit_is_applied(slide_path, model, result):
    with open_slide(slide_path) as slide:
        r = restricted_prediction(slide, model, result, k_bags=2, m_patches=5, batch_size=2)
    alpha = r["patch_attention"]
    assert alpha.shape == (2, 64) and r["patches_per_bag"] == 5 and r["bags_used"] == 2
    assert ((alpha > 0).sum(axis=1) == 5).all()
    np.testing.assert_allclose(alpha.sum(1), 1, atol=1e-5)
    # the kept patches are the 5 with the highest unrestricted alpha of each bag
    x = bag_pixels(slide_path, result.boxes[r["bag_indices"]])
    with torch.inference_mode():
        full = model.forward_bags(x)
        lim = model.forward_bags(x, top_k_patches=5)
        expect = torch.softmax(model.forward_slide(lim.embedding).slide_logits, -1).numpy()
    for row, full_alpha in zip(alpha, full.alpha.numpy()):
        assert set(np.flatnonzero(row)) == set(np.argsort(-full_alpha)[:5])
    np.testing.assert_allclose(r["slide_probs"], expect, atol=1e-5)
    unrestricted = restricted_prediction(None, model, result, k_bags=2)["slide_probs"]
    assert not np.allclose(r["slide_probs"], unrestricted, atol=1e-7)


def test_top_one_bag(slide_path, model, result):
    best = int(np.argmax(result.bag_attention))
    r = restricted_prediction(None, model, result, k_bags=1)
    assert r["bags_used"] == 1 and r["bag_indices"] == [best]
    with torch.inference_mode():
        so = model.forward_slide(torch.from_numpy(result.embeddings[[best]]))
    np.testing.assert_allclose(r["slide_probs"], torch.softmax(so.slide_logits, -1).numpy(),
                               atol=1e-6)
    assert so.gamma.item() == pytest.approx(1.0)
    # k larger than the number of bags means all bags
    assert restricted_prediction(None, model, result, k_bags=50)["bags_used"] == 3


def test_sweep_matches_single_calls(slide_path, model, result):
    with open_slide(slide_path) as slide:
        rows = restriction_sweep(slide, model, result, k_list=[1, 2, "all"], m_list=[3, "all"])
        single = restricted_prediction(slide, model, result, k_bags=2, m_patches=3)
    assert [(r["k"], r["m"]) for r in rows] == [(1, 3), (1, "all"), (2, 3), (2, "all"),
                                                ("all", 3), ("all", "all")]
    assert [r["bags_used"] for r in rows] == [1, 1, 2, 2, 3, 3]
    np.testing.assert_allclose(rows[2]["slide_probs"], single["slide_probs"], atol=1e-6)
    np.testing.assert_allclose(rows[-1]["slide_probs"], result.slide_probs, atol=1e-6)


def test_bad_arguments(model, result):
    with pytest.raises(ValueError, match="k must"):
        restricted_prediction(None, model, result, k_bags=0)
    with pytest.raises(ValueError, match="m must"):
        restricted_prediction(None, model, result, m_patches=65)
    with pytest.raises(AnalysisError, match="need the slide"):
        restricted_prediction(None, model, result, m_patches=4)
    with pytest.raises(TypeError, match="unknown option"):
        restricted_prediction(None, model, result, bag_px=1024)
    assert parse_k("ALL") is None and parse_k("3") == 3 and parse_m(64) == 64
    other = MRAN(MRANConfig(width=0.125, class_names=["a", "b"]))
    with pytest.raises(AnalysisError, match="classes"):
        restricted_prediction(None, other, result)
