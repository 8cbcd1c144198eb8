"""The bundled demo model: loads offline, is labelled as a demo, and finds synthetic tumour."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mran.analysis import predict_slide
from napari_mran.model import load_model
from napari_mran.synthetic import make_slide, tumour_bag_labels


@pytest.fixture(scope="module")
def demo():
    return load_model("demo")


def test_demo_model_is_labelled_and_has_training_provenance(demo):
    cfg = demo.config
    assert list(cfg.class_names) == ["normal", "tumour"]
    assert (cfg.bag_px, cfg.input_px, cfg.grid, cfg.cell_grid) == (2048, 1024, 8, 4)
    assert cfg.width == 0.125
    prov = cfg.provenance
    assert "train" in prov["trained_by"] and prov["metrics"]["val"]["accuracy"] == 1.0
    assert demo.is_demo and len(demo.checkpoint_sha256) == 64


@pytest.mark.parametrize("tumour", [True, False])
def test_demo_model_on_an_unseen_synthetic_slide(demo, tmp_path, tumour):
    info = make_slide(tmp_path / "s.svs", 6144, 6144, tumour=tumour, seed=4242)
    result = predict_slide(info.path, demo, compile=False)
    assert result.provenance["model"]["demo"] is True
    p_tumour = float(result.slide_probs[1])
    if not tumour:
        assert p_tumour < 0.5
        return
    assert p_tumour > 0.5
    frac = tumour_bag_labels(info.mask_path, result.boxes)
    top = int(np.argmax(result.bag_attention))
    assert frac[top] == frac.max() > 0  # the most attended bag is the most tumour-rich one
