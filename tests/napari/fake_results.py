"""A small real-tissue slide and a made-up SlideResult over it (the reader tests)."""

from __future__ import annotations

import os

import numpy as np
import tifffile
from slide_writers import write_svs_pyramid

from napari_mran._napari.sample_data import sample_slide_path
from napari_mran.results import SlideResult

BAG = 1024
BAGS = [(0, 0), (0, 1), (1, 1), (1, 2), (0, 3)]  # (row, col) on a 2 x 4 grid


def write_slide(folder) -> os.PathLike:
    """4096 x 2048 px, MPP 0.5 (real H&E tiles from the bundled sample)."""
    crop = tifffile.imread(sample_slide_path())[:2048, :2048]
    img = np.concatenate([crop, crop[:, ::-1]], axis=1)
    return write_svs_pyramid(folder / "slide.svs", img, downsamples=(1, 4, 16), tile=256,
                             mpp=0.5)


def make_result(slide_path, mpp=0.5, size=(4096, 2048), seed=0) -> SlideResult:
    """Random attention and probabilities for the tissue bags BAGS of *slide_path*."""
    rng = np.random.default_rng(seed)
    n, c = len(BAGS), 2

    def simplex(*shape):
        x = rng.random(shape).astype(np.float32) + 0.05
        return x / x.sum(-1, keepdims=True)

    boxes = np.array([[col * BAG, row * BAG, (col + 1) * BAG, (row + 1) * BAG]
                      for row, col in BAGS], np.int64)
    return SlideResult(
        boxes=boxes, bag_attention=simplex(n), bag_probs=simplex(n, c),
        patch_attention=simplex(n, 64), patch_probs=simplex(n, 64, c),
        cell_attention=simplex(n, 64, 16), cell_probs=simplex(n, 64, 16, c),
        slide_probs=np.array([0.3, 0.7], np.float32), class_names=["normal", "tumour"],
        slide_size=size, bag_px=BAG, mpp=mpp,
        provenance={"slide": {"path": os.path.abspath(slide_path)}})


def assert_over_bags(layer, slide_layer, result, k):
    """Heatmap pixel corners land on the slide layer's bag corners (k px per bag)."""
    for (x0, y0, x1, y1) in result.boxes:
        r, c = y0 // BAG * k, x0 // BAG * k
        assert np.allclose(layer.data_to_world([r - 0.5, c - 0.5]),
                           slide_layer.data_to_world([y0 - 0.5, x0 - 0.5]))
        assert np.allclose(layer.data_to_world([r + k - 0.5, c + k - 0.5]),
                           slide_layer.data_to_world([y1 - 0.5, x1 - 0.5]))
