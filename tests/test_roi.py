"""Regions of interest: QuPath GeoJSON, validation, rasterisation, analysis inside a region,
and the per-cell shown mask (background and outside-the-region cells uncoloured)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import napari_mran.analysis as analysis_mod
from napari_mran._events import collect as drain
from napari_mran.analysis import analyze_slide
from napari_mran.inference import AnalysisOptions
from napari_mran.inference.reading import tissue_lowres
from napari_mran.results import SlideResult
from napari_mran.roi import Region, RoiError, make_region, read_geojson
from napari_mran.slide import open_slide
from slide_writers import write_svs_pyramid

BAG = 2048


def qupath_feature(coords, cls="Tumor", kind="Polygon", object_type="annotation"):
    """A Feature exactly as QuPath 0.4+ exports an annotation."""
    props = {"objectType": object_type}
    if cls is not None:
        props["classification"] = {"name": cls, "color": [200, 0, 0]}
    return {"type": "Feature", "id": "5b6a3e1c-2f0b-4e5e-9a53-6f1a2b3c4d5e",
            "geometry": {"type": kind, "coordinates": coords}, "properties": props}


def rect(x0, y0, x1, y1):
    return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]


def write_geojson(path, features):
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


@pytest.fixture(scope="module")
def tissue_slide(tmp_path_factory, cmu_pixels):
    """6144 x 4096 px (3 x 2 bags): the real CMU-1 crop (70 % glass inside it) in 4 bags."""
    img = np.full((4096, 6144, 3), 243, np.uint8)
    src = cmu_pixels[:BAG, :BAG]
    for (r, c) in [(0, 0), (0, 1), (1, 1), (1, 2)]:
        img[r * BAG:(r + 1) * BAG, c * BAG:(c + 1) * BAG] = src[:, ::-1] if c % 2 else src
    p = tmp_path_factory.mktemp("roi") / "tissue.svs"
    write_svs_pyramid(p, img, downsamples=(1, 2, 4, 16), tile=256, mpp=0.5)
    return p


# ------------------------------------------------------------------ GeoJSON and checks

def test_qupath_export_classes_and_object_types(tmp_path):
    f = write_geojson(tmp_path / "a.geojson", [
        qupath_feature(rect(0, 0, 100, 100)),
        qupath_feature([rect(200, 0, 300, 100), rect(400, 0, 500, 100)], kind="MultiPolygon"),
        qupath_feature(rect(0, 200, 100, 300), cls="Stroma"),
        qupath_feature(rect(0, 400, 50, 450), object_type="detection"),
        qupath_feature(rect(0, 500, 50, 550), object_type="cell"),
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]},
         "properties": {"objectType": "annotation"}},
    ])
    everything = read_geojson(f)
    assert len(everything.polygons) == 4 and everything.area_px() == 4 * 100 * 100
    assert any("1 detection" in n for n in everything.notes)
    assert any("Point" in n for n in everything.notes)
    tumour = read_geojson(f, ["Tumor"])
    assert len(tumour.polygons) == 3 and tumour.classes == ("Tumor",)
    assert tumour.sha256 != everything.sha256
    with pytest.raises(RoiError, match=r"no annotation of class Necrosis; the classes found "
                                       r"are: Stroma \(1\), Tumor \(2\)"):
        read_geojson(f, ["Necrosis"])


def test_older_qupath_forms_and_bare_geometry(tmp_path):
    old = {"type": "Feature", "id": "PathAnnotationObject",
           "geometry": {"type": "Polygon", "coordinates": rect(0, 0, 10, 10)},
           "properties": {"classification": {"name": "Tumor", "colorRGB": -3670016},
                          "isLocked": False}}
    det = {**old, "id": "PathDetectionObject"}
    (tmp_path / "old.json").write_text(json.dumps([old, det]))
    r = read_geojson(tmp_path / "old.json", ["Tumor"])
    assert len(r.polygons) == 1 and r.bbox == (0.0, 0.0, 10.0, 10.0)
    (tmp_path / "bare.json").write_text(json.dumps({"type": "Polygon",
                                                    "coordinates": rect(0, 0, 10, 20)}))
    assert read_geojson(tmp_path / "bare.json").area_px() == 200.0
    string_class = {**old, "properties": {"classification": "Stroma"}}
    (tmp_path / "s.json").write_text(json.dumps([string_class]))
    assert read_geojson(tmp_path / "s.json", ["Stroma"]).classes == ("Stroma",)


@pytest.mark.parametrize("text, message", [
    ("{not json", r"not JSON \(line 1"),
    ('{"hello": 1}', "not GeoJSON"),
    ('{"type": "FeatureCollection", "features": []}', "no polygon annotations"),
    (json.dumps({"type": "FeatureCollection", "features": [
        qupath_feature([[[0, 0], [10, 0], [20, 0], [0, 0]]])]}), "degenerate ring"),
    (json.dumps({"type": "FeatureCollection", "features": [
        qupath_feature([[[0, 0], [200, 100], [200, 0], [0, 80], [0, 0]]])]}),
     r"self-intersecting ring \(edges meet near x=88\.9, y=44\.4\)"),
    (json.dumps({"type": "FeatureCollection", "features": [  # a bow-tie: signed area 0
        qupath_feature([[[0, 0], [100, 100], [100, 0], [0, 100], [0, 0]]])]}),
     r"self-intersecting ring \(edges meet near x=50\.0, y=50\.0\)"),
    (json.dumps({"type": "FeatureCollection", "features": [
        qupath_feature([[[0, 0], [10, 0], ["a", 5], [0, 0]]])]}), "number pairs"),
])
def test_bad_files_name_the_file_and_the_reason(tmp_path, text, message):
    f = tmp_path / "bad.geojson"
    f.write_text(text)
    with pytest.raises(RoiError, match=message) as info:
        read_geojson(f)
    assert str(f) in str(info.value)


def test_region_against_the_slide():
    w, h = 6144, 4096
    with pytest.raises(RoiError, match=r"within \[0, 1\].*level-0 pixels"):
        make_region([rect(0.1, 0.1, 0.5, 0.5)], "n.geojson").check_slide(w, h)
    with pytest.raises(RoiError, match="far beyond.*microns\\? a lower level"):
        make_region([rect(1000, 1000, 20000, 9000)], "x40.geojson").check_slide(w, h)
    with pytest.raises(RoiError, match="wholly outside"):
        make_region([rect(6200, 100, 6500, 300)], "o.geojson").check_slide(w, h)
    part = make_region([rect(6000, 100, 6500, 300)], "p.geojson").check_slide(w, h)
    assert any("past the slide edge" in n for n in part.notes)
    assert part.area_px(w, h) == 144 * 200 and part.area_px() == 500 * 200


def test_mask_and_box_test_agree_with_geometry():
    # a square with a square hole, and a triangle
    region = make_region([[rect(0, 0, 1000, 1000)[0], rect(250, 250, 750, 750)[0]],
                          [[[2000, 0], [3000, 0], [2000, 1000]]]], "t")
    assert region.area_px() == 1000 ** 2 - 500 ** 2 + 500 * 1000
    m = region.mask((100, 300), 10.0)
    # pixel centres: 5, 15, ...; pixel area 100 px²: the raster area is within one edge row
    assert abs(m.sum() * 100 - region.area_px()) < 4 * 1000 * 10
    assert m[0, 0] and not m[50, 50] and m[10, 201] and not m[90, 290]
    boxes = np.array([[400, 400, 600, 600],      # in the hole
                      [700, 700, 900, 900],      # across the hole's edge
                      [2900, 900, 3100, 1100],   # beside the triangle's hypotenuse
                      [2100, 100, 2200, 200],    # inside the triangle
                      [1100, 0, 1900, 1000]])    # between the two
    assert region.intersects(boxes).tolist() == [False, True, False, True, False]


def test_options_key_only_changes_with_a_region():
    plain = AnalysisOptions()
    assert "roi" not in plain.key()
    region = make_region([rect(0, 0, 100, 100)], "a.geojson")
    same = make_region([rect(0, 0, 100, 100)], "elsewhere.geojson")
    assert plain.replace(roi=region).key()["roi"] == region.sha256 == same.sha256
    assert plain.replace(roi=region) == plain.replace(roi=same)
    with pytest.raises(ValueError, match="roi must be"):
        AnalysisOptions(roi="a.geojson")


# ------------------------------------------------------------------ analysis

def _read_boxes(monkeypatch):
    """Record the box of every bag read for the model (the real reader still runs)."""
    seen = []
    real = analysis_mod.read_bag

    def recording(slide, box, plan):
        seen.append(tuple(int(v) for v in box))
        return real(slide, box, plan)

    monkeypatch.setattr(analysis_mod, "read_bag", recording)
    return seen


def test_only_bags_in_the_region_are_read(tissue_slide, tiny_model, tmp_path, monkeypatch):
    # QuPath rectangle over bag (0, 0) and the left part of bag (0, 1); the tissue bags
    # (1, 1) and (1, 2) lie outside
    f = write_geojson(tmp_path / "tissue.geojson",
                      [qupath_feature(rect(300, 200, 2600, 1800)),
                       qupath_feature(rect(4200, 2200, 6000, 4000), cls="Stroma")])
    region = read_geojson(f, ["Tumor"])
    seen = _read_boxes(monkeypatch)
    with open_slide(tissue_slide) as slide:
        events, result = drain(analyze_slide(slide, tiny_model, roi=region, batch_size=2,
                                             compile=False))
    assert sorted(seen) == [(0, 0, 2048, 2048), (2048, 0, 4096, 2048)]
    assert result.boxes.tolist() == [[0, 0, 2048, 2048], [2048, 0, 4096, 2048]]
    assert "inside the region (2 outside)" in events[0].message
    rec = result.provenance["region"]
    assert rec["source"] == str(f) and rec["sha256"] == region.sha256
    assert rec["classes"] == ["Tumor"] and rec["n_polygons"] == 1
    assert rec["bags_kept"] == 2 and rec["bags_outside"] == 2
    assert rec["area_px"] == 2300 * 1600 and rec["area_um2"] == pytest.approx(2300 * 1600 / 4)
    assert rec["bbox"] == [300, 200, 2600, 1800] and rec["polygons"]


def test_heatmaps_show_nothing_outside_the_region_or_on_glass(tissue_slide, tiny_model,
                                                              tmp_path):
    region = make_region([rect(300, 200, 2600, 1800)], "napari shapes layer ROI")
    with open_slide(tissue_slide) as slide:
        inside = analysis_mod.predict_slide(slide, tiny_model, roi=region, compile=False)
        whole = analysis_mod.predict_slide(slide, tiny_model, compile=False)
    cell = inside.heatmap("cell")  # 32 px per bag, 64 level-0 px per cell
    centre = (np.arange(cell.data.shape[0]) + 0.5) * 64, (np.arange(cell.data.shape[1]) + 0.5) * 64
    in_roi = ((centre[0][:, None] > 200) & (centre[0][:, None] < 1800)
              & (centre[1][None] > 300) & (centre[1][None] < 2600))
    assert np.isnan(cell.data[~in_roi]).all()
    assert np.isfinite(cell.data[in_roi]).any()
    # glass inside the region (the CMU crop is 70 % glass): uncoloured too
    with open_slide(tissue_slide) as slide:
        lowres, _, (d, _) = tissue_lowres(slide)
    k = int(64 // d)  # low-res pixels per cell side
    h, w = cell.data.shape
    glass = (lowres[..., :3].reshape(h, k, w, k, 3) > 220).all(-1).all((1, 3))
    assert np.isnan(cell.data[in_roi & glass]).all()
    assert np.isnan(whole.heatmap("cell").data[glass]).all()
    # a patch pixel is shown when any of its cells is; bags stay when any cell is shown
    patch = inside.heatmap("patch").data
    assert np.array_equal(np.isfinite(patch),
                          np.isfinite(cell.data).reshape(16, 4, 24, 4).any((1, 3)))
    assert np.isfinite(inside.heatmap("bag").data).sum() == 2
    # the scores themselves are unchanged: only the raster hides them
    assert np.isfinite(inside.cell_attention).all()


def test_shown_mask_is_stored_and_older_stores_stay_valid(tissue_slide, tiny_model, tmp_path):
    region = make_region([rect(300, 200, 2600, 1800)], "r.geojson")
    with open_slide(tissue_slide) as slide:
        result = analysis_mod.predict_slide(slide, tiny_model, roi=region, compile=False)
    assert result.cell_tissue.shape == (2, 64, 16) and result.cell_tissue.dtype == np.uint8
    assert 0 < result.cell_tissue.sum() < result.cell_tissue.size
    back = SlideResult.load(result.save(tmp_path / "r.mran.zarr"))
    assert np.array_equal(back.cell_tissue, result.cell_tissue)
    assert back.provenance["region"]["sha256"] == region.sha256
    np.testing.assert_array_equal(back.heatmap("cell").data, result.heatmap("cell").data)
    result.cell_tissue = None  # a store written before the mask existed
    old = SlideResult.load(result.save(tmp_path / "old.mran.zarr"))
    assert old.cell_tissue is None and old.shown("patch") is None
    assert np.isfinite(old.heatmap("cell").data).sum() == 2 * 32 * 32


def test_bad_shown_mask_is_refused(tissue_slide, tiny_model):
    from napari_mran.errors import ResultsError

    with open_slide(tissue_slide) as slide:
        result = analysis_mod.predict_slide(slide, tiny_model, compile=False,
                                            roi=make_region([rect(0, 0, 900, 900)], "r"))
    with pytest.raises(ResultsError, match="cell_tissue has shape"):
        SlideResult(**{**_fields(result), "cell_tissue": np.ones((2, 64, 16), np.uint8)})
    with pytest.raises(ResultsError, match="0 and 1"):
        SlideResult(**{**_fields(result), "cell_tissue": np.full((1, 64, 16), 3, np.uint8)})


def _fields(result: SlideResult) -> dict:
    import dataclasses

    return {f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.init}


def test_region_outside_the_slide_fails_before_reading(tissue_slide, tiny_model, monkeypatch):
    monkeypatch.setattr(analysis_mod, "read_bag", lambda *a, **k: pytest.fail("a bag was read"))
    far = make_region([rect(10000, 100, 12000, 300)], "far.geojson")
    with open_slide(tissue_slide) as slide, pytest.raises(RoiError, match="far.geojson"):
        analysis_mod.predict_slide(slide, tiny_model, roi=far, compile=False)
    glass = make_region([rect(4200, 100, 6000, 1900)], "glass.geojson")  # glass only
    from napari_mran.errors import AnalysisError
    with open_slide(tissue_slide) as slide, pytest.raises(
            AnalysisError, match="no tissue bags found inside the region of glass.geojson"):
        analysis_mod.predict_slide(slide, tiny_model, roi=glass, compile=False)


def test_region_is_picklable_for_cohort_workers():
    import pickle

    region = make_region([rect(0, 0, 100, 100)], "a.geojson", ["Tumor"])
    back = pickle.loads(pickle.dumps(AnalysisOptions(roi=region)))
    assert back.roi == region and isinstance(back.roi, Region)
    assert back.roi.sha256 == region.sha256 and back.roi.classes == ("Tumor",)
