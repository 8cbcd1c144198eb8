"""Our own heatmap exports open again in napari (issue 9, point 8): the .ome.tif /
.ome.zarr written by napari_mran.export become heatmap layers that sit exactly over the
slide layer, in a real viewer; other floating-point TIFFs are declined."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from fake_results import BAG, assert_over_bags, make_result, write_slide

from napari_mran._napari import layers as L
from napari_mran._napari.frame import SlideFrame
from napari_mran._napari.reader import get_heatmap_reader, get_reader
from napari_mran.export import export_ome_tiff, export_ome_zarr

CELL = BAG // 32


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    return write_slide(tmp_path_factory.mktemp("heat"))


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
