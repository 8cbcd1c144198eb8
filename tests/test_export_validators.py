"""Our heatmap exports are valid by the formats' own validators, for every level and
weighting: the OME-TIFF's OME-XML against the OME 2016-06 schema (ome-types, strict),
the OME-Zarr against the NGFF 0.4 image model (ome-zarr-models)."""

from __future__ import annotations

import json

import numpy as np
import ome_types
import pytest
import tifffile
import zarr

from napari_mran.export import export_ome_tiff, export_ome_zarr
from napari_mran.export.heatmaps import HEATMAP_FORMAT, read_heatmap_metadata
from napari_mran.results import SlideResult

LEVELS = ("bag", "patch", "cell")
WEIGHTINGS = ("local", "global")
CASES = [(lv, w) for lv in LEVELS for w in WEIGHTINGS]


def make_result(mpp=0.5, demo=False) -> SlideResult:
    """Four bags of 1024 px on a 4500 x 2100 px slide (grid 3 x 5 with edge bags)."""
    boxes = np.array([[0, 0, 1024, 1024], [1024, 0, 2048, 1024], [2048, 1024, 3072, 2048],
                      [4096, 2048, 5120, 3072]], np.int64)
    rng = np.random.default_rng(3)
    n = len(boxes)

    def simplex(*shape):
        x = rng.random(shape).astype(np.float32) + 0.05
        return x / x.sum(-1, keepdims=True)

    return SlideResult(
        boxes=boxes, bag_attention=simplex(n), bag_probs=simplex(n, 2),
        patch_attention=simplex(n, 64), patch_probs=simplex(n, 64, 2),
        cell_attention=simplex(n, 64, 16), cell_probs=simplex(n, 64, 16, 2),
        slide_probs=np.array([0.4, 0.6], np.float32), class_names=["normal", "tumour"],
        slide_size=(4500, 2100), bag_px=1024, mpp=mpp,
        provenance={"slide": {"path": "/data/s.svs"}, "model": {"demo": demo}})


def ngff_image_model():
    """ome-zarr-models' NGFF 0.4 Image model.  With pydantic 2.14 (our pin) its
    generic group class has to be rebuilt with pydantic-zarr's ArraySpec/GroupSpec in
    scope before first use (ome-zarr-models 1.6 was released against pydantic < 2.13)."""
    import pydantic_zarr.v2 as pz
    from ome_zarr_models.v04 import Image

    Image.model_rebuild(_types_namespace={"ArraySpec": pz.ArraySpec, "GroupSpec": pz.GroupSpec})
    return Image


# --------------------------------------------------------------------------- OME-TIFF


@pytest.mark.parametrize("mpp", [0.5, None], ids=["mpp", "no-mpp"])
@pytest.mark.parametrize("level, weighting", CASES)
def test_ome_tiff_is_valid_ome_xml(tmp_path, level, weighting, mpp):
    r = make_result(mpp=mpp)
    path = export_ome_tiff(r, tmp_path / f"{level}-{weighting}.ome.tif", level=level,
                           weighting=weighting, tile=16)
    heat = r.heatmap(level, weighting)
    with tifffile.TiffFile(path) as tif:
        xml = tif.ome_metadata
        levels = [lv.asarray() for lv in tif.series[0].levels]
    ome_types.validate_xml(xml)  # the OME 2016-06 XSD, raises on any violation
    ome = ome_types.from_tiff(path, validate=True)
    assert len(ome.images) == 1
    pixels = ome.images[0].pixels
    assert (pixels.size_y, pixels.size_x) == heat.data.shape
    assert pixels.type == ome_types.model.PixelType.FLOAT
    assert (pixels.size_c, pixels.size_z, pixels.size_t) == (1, 1, 1)
    assert len(pixels.tiff_data_blocks) == 1 and pixels.tiff_data_blocks[0].plane_count == 1
    if mpp is None:
        assert pixels.physical_size_x is None and pixels.physical_size_y is None
    else:
        assert pixels.physical_size_x == pytest.approx(heat.scale[1] * mpp)
        assert pixels.physical_size_y == pytest.approx(heat.scale[0] * mpp)
        assert pixels.physical_size_x_unit.value == "µm"
    # our metadata: a MapAnnotation of our namespace, referenced by the image
    (ann,) = [a for a in ome.structured_annotations.map_annotations
              if a.namespace == HEATMAP_FORMAT]
    assert [ref.id for ref in ome.images[0].annotation_refs] == [ann.id]
    own = json.loads({m.k: m.value for m in ann.value.ms}["napari_mran"])
    assert own == read_heatmap_metadata(path)
    assert (own["level"], own["weighting"]) == (level, weighting)
    # the pixels: level 0 is the heatmap; the pyramid halves down to one tile
    np.testing.assert_array_equal(levels[0], heat.data)
    assert all(a.shape == ((b.shape[0] + 1) // 2, (b.shape[1] + 1) // 2)
               for a, b in zip(levels[1:], levels))
    assert max(levels[-1].shape) <= 16 and len(levels) == own["n_levels"]


def test_ome_tiff_of_a_probability_map_is_valid(tmp_path):
    r = make_result()
    path = export_ome_tiff(r, tmp_path / "p.ome.tif", level="cell", value="prob",
                           class_index="tumour", tile=32)
    ome = ome_types.from_tiff(path, validate=True)
    assert ome.images[0].name == "MRAN cell P(tumour)"


# --------------------------------------------------------------------------- OME-Zarr


@pytest.mark.parametrize("mpp", [0.5, None], ids=["mpp", "no-mpp"])
@pytest.mark.parametrize("level, weighting", CASES)
def test_ome_zarr_is_a_valid_ngff_04_image(tmp_path, level, weighting, mpp):
    Image = ngff_image_model()
    r = make_result(mpp=mpp)
    path = export_ome_zarr(r, tmp_path / f"{level}-{weighting}.ome.zarr", level=level,
                           weighting=weighting, chunk=8)
    heat = r.heatmap(level, weighting)
    group = zarr.open_group(str(path), mode="r")
    image = Image.from_zarr(group)  # raises pydantic.ValidationError if not NGFF 0.4
    (ms,) = image.attributes.multiscales
    assert ms.version == "0.4"
    assert [a.name for a in ms.axes] == ["y", "x"]
    assert all(a.unit == ("micrometer" if mpp else None) for a in ms.axes)
    arrays = [group[d.path] for d in ms.datasets]
    np.testing.assert_array_equal(arrays[0][...], heat.data)
    factor = 1.0 if mpp is None else mpp
    for k, (d, arr) in enumerate(zip(ms.datasets, arrays)):
        scale, translation = d.coordinateTransformations
        s = heat.scale[0] * 2**k
        assert scale.scale == pytest.approx([s * factor] * 2)
        # centre of pixel [0, 0] in the slide layer's frame (level-0 pixel i at i)
        assert translation.translation == pytest.approx([(s / 2 - 0.5) * factor] * 2)
        assert arr.dtype == np.float32 and arr.ndim == 2
        # NGFF 0.4 (not checked by ome-zarr-models): "/" chunk key separator
        zarray = json.loads((path / d.path / ".zarray").read_text())
        assert zarray["dimension_separator"] == "/" and zarray["zarr_format"] == 2
    assert max(arrays[-1].shape) <= 8
    assert read_heatmap_metadata(path)["n_levels"] == len(arrays)


def test_validators_catch_a_broken_export(tmp_path):
    """The validators are not vacuous: a wrong OME pixel type and an NGFF axis count
    that does not match the arrays are both rejected."""
    Image = ngff_image_model()
    r = make_result()
    tif = export_ome_tiff(r, tmp_path / "a.ome.tif", level="patch")
    with tifffile.TiffFile(tif) as t:
        xml = t.ome_metadata
    with pytest.raises(Exception, match="(?i)float64|Type|valid"):
        ome_types.from_xml(xml.replace('Type="float"', 'Type="float64"'), validate=True)
    z = export_ome_zarr(r, tmp_path / "a.ome.zarr", level="patch")
    attrs = json.loads((z / ".zattrs").read_text())
    attrs["multiscales"][0]["axes"].append({"name": "c", "type": "channel"})
    (z / ".zattrs").write_text(json.dumps(attrs))
    with pytest.raises(Exception):
        Image.from_zarr(zarr.open_group(str(z), mode="r"))
