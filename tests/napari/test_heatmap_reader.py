"""Our own heatmap exports open again in napari (issue 9, point 8): the .ome.tif /
.ome.zarr written by napari_mran.export become heatmap layers that sit exactly over the
slide layer, in a real viewer; other floating-point TIFFs are declined."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile
from slide_writers import write_svs_pyramid

from napari_mran._napari import layers as L
from napari_mran._napari.frame import SlideFrame
from napari_mran._napari.reader import get_heatmap_reader, get_reader
from napari_mran._napari.sample_data import sample_slide_path
from napari_mran.export import export_ome_tiff, export_ome_zarr
from napari_mran.results import SlideResult

BAG = 1024
BAGS = [(0, 0), (0, 1), (1, 1), (1, 2), (0, 3)]  # (row, col) on a 2 x 4 grid
CELL = BAG // 32


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    """4096 x 2048 px, MPP 0.5 (real H&E tiles from the bundled sample)."""
    crop = tifffile.imread(sample_slide_path())[:2048, :2048]
    img = np.concatenate([crop, crop[:, ::-1]], axis=1)
    p = tmp_path_factory.mktemp("heat") / "slide.svs"
    return write_svs_pyramid(p, img, downsamples=(1, 4, 16), tile=256, mpp=0.5)


def make_result(slide_path, mpp=0.5, seed=0) -> SlideResult:
    rng = np.random.default_rng(seed)
    n = len(BAGS)

    def simplex(*shape):
        x = rng.random(shape).astype(np.float32) + 0.05
        return x / x.sum(-1, keepdims=True)

    boxes = np.array([[c * BAG, r * BAG, (c + 1) * BAG, (r + 1) * BAG] for r, c in BAGS],
                     np.int64)
    return SlideResult(
        boxes=boxes, bag_attention=simplex(n), bag_probs=simplex(n, 2),
        patch_attention=simplex(n, 64), patch_probs=simplex(n, 64, 2),
        cell_attention=simplex(n, 64, 16), cell_probs=simplex(n, 64, 16, 2),
        slide_probs=np.array([0.3, 0.7], np.float32), class_names=["normal", "tumour"],
        slide_size=(4096, 2048), bag_px=BAG, mpp=mpp,
        provenance={"slide": {"path": os.path.abspath(slide_path)}})


def assert_over_bags(layer, slide_layer, result, k):
    """Heatmap pixel corners land on the slide layer's bag corners (k px per bag)."""
    for (x0, y0, x1, y1) in result.boxes:
        r, c = y0 // BAG * k, x0 // BAG * k
        assert np.allclose(layer.data_to_world([r - 0.5, c - 0.5]),
                           slide_layer.data_to_world([y0 - 0.5, x0 - 0.5]))
        assert np.allclose(layer.data_to_world([r + k - 0.5, c + k - 0.5]),
                           slide_layer.data_to_world([y1 - 0.5, x1 - 0.5]))


def test_ome_tiff_heatmap_opens_over_its_slide(make_napari_viewer, tmp_path, slide_path):
    result = make_result(slide_path)
    tif = export_ome_tiff(result, tmp_path / "slide.cell-attention-global.ome.tif",
                          level="cell", weighting="global", tile=32)
    viewer = make_napari_viewer(show=True)
    (slide_layer,) = viewer.open(str(slide_path), plugin="napari-mran")
    (layer,) = viewer.open(str(tif), plugin="napari-mran")
    assert layer.name == "slide.cell-attention-global.ome.tif"
    assert not layer.rgb and layer.multiscale and layer.colormap.name == L.COLORMAPS["cell"]
    heat = result.heatmap("cell", "global")
    np.testing.assert_array_equal(np.asarray(layer.data[0]), heat.data)
    # the same placement, colours and contrast as the layer an analysis shows
    (_, expect, _) = L.heatmap_layer_data(heat.data, "cell", BAG,
                                          SlideFrame.from_layer(slide_layer), "x", {})
    assert np.allclose(layer.scale, expect["scale"])
    assert np.allclose(layer.translate, expect["translate"])
    assert np.allclose(layer.contrast_limits, expect["contrast_limits"])
    assert np.allclose(layer.scale, (CELL * 0.5, CELL * 0.5))         # µm per heatmap px
    assert np.allclose(layer.translate, ((CELL / 2 - 0.5) * 0.5,) * 2)  # centre of [0, 0]
    assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]
    assert_over_bags(layer, slide_layer, result, 32)
    assert layer.metadata["mran_heatmap"]["level"] == "cell"


def test_ome_tiff_heatmap_alone_uses_the_slide_readers_frame(make_napari_viewer, tmp_path,
                                                               slide_path):
    result = make_result(slide_path)
    tif = export_ome_tiff(result, tmp_path / "patch.ome.tif", level="patch", tile=16)
    viewer = make_napari_viewer(show=True)
    (layer,) = viewer.open(str(tif), plugin="napari-mran")
    (slide_layer,) = viewer.open(str(slide_path), plugin="napari-mran")  # opened afterwards
    assert_over_bags(layer, slide_layer, result, 8)
    # another slide (not open), no MPP: level-0 pixels, as the slide reader shows a
    # slide without MPP
    px = export_ome_tiff(make_result(tmp_path / "other.svs", mpp=None),
                         tmp_path / "px.ome.tif", level="bag")
    (layer,) = viewer.open(str(px), plugin="napari-mran")
    assert not layer.multiscale
    assert np.allclose(layer.scale, (BAG, BAG))
    assert np.allclose(layer.translate, (BAG / 2 - 0.5,) * 2)


def test_ome_zarr_heatmap_opens_aligned(make_napari_viewer, tmp_path, slide_path):
    result = make_result(slide_path)
    z = export_ome_zarr(result, tmp_path / "slide.patch-attention-local.ome.zarr",
                        level="patch", chunk=8)
    assert get_heatmap_reader(str(z)) is not None
    viewer = make_napari_viewer(show=True)
    (slide_layer,) = viewer.open(str(slide_path), plugin="napari-mran")
    (layer,) = viewer.open(str(z), plugin="napari-mran")
    assert layer.multiscale and layer.colormap.name == L.COLORMAPS["patch"]
    np.testing.assert_array_equal(np.asarray(layer.data[0]), result.heatmap("patch").data)
    assert_over_bags(layer, slide_layer, result, 8)


def test_other_files_are_declined(tmp_path):
    """A floating-point TIFF that is not ours is left to another reader (no error
    notification); an OME-Zarr that is not ours too."""
    import zarr

    f = tmp_path / "float.tif"
    tifffile.imwrite(f, np.random.default_rng(0).random((64, 64), np.float32))
    assert get_reader(str(f)) is None
    f2 = tmp_path / "float.ome.tif"
    tifffile.imwrite(f2, np.zeros((32, 32), np.float32), ome=True, metadata={"axes": "YX"})
    assert get_reader(str(f2)) is None
    other = tmp_path / "other.ome.zarr"
    zarr.open_group(str(other), mode="w", zarr_format=2).attrs["multiscales"] = []
    assert get_heatmap_reader(str(other)) is None
    assert get_heatmap_reader(str(tmp_path / "missing.ome.zarr")) is None


def test_demo_model_heatmap_layer_says_so(tmp_path, slide_path):
    from napari_mran._napari.reader import heatmap_layer_data

    result = make_result(slide_path)
    result.provenance["model"] = {"demo": True}
    tif = export_ome_tiff(result, tmp_path / "demo.ome.tif", level="bag")
    _data, kwargs, kind = heatmap_layer_data(str(tif))
    assert kind == "image" and kwargs["name"] == "demo.ome.tif (demo model)"
    assert kwargs["metadata"]["mran_heatmap"]["model_is_demo"] is True
