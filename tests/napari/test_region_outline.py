"""A result analysed inside a region shows the region's outline when its store is
opened in napari (the region recorded in provenance, aligned with the slide)."""

from __future__ import annotations

import json

import numpy as np

from napari_mran._napari.sample_data import sample_slide_path
from napari_mran.analysis import predict_slide
from napari_mran.model import load_model
from napari_mran.roi import read_geojson
from napari_mran.slide import open_slide


def test_the_recorded_region_is_drawn_over_the_slide(make_napari_viewer, tmp_path):
    ring = [[100, 100], [1900, 100], [1900, 1500], [100, 1500], [100, 100]]
    doc = {"type": "FeatureCollection", "features": [{
        "type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"objectType": "annotation",
                       "classification": {"name": "Tumor", "color": [200, 0, 0]}}}]}
    (tmp_path / "roi.geojson").write_text(json.dumps(doc))
    region = read_geojson(tmp_path / "roi.geojson")
    with open_slide(sample_slide_path()) as slide:
        result = predict_slide(slide, load_model("demo"), roi=region, compile=False)
    store = result.save(tmp_path / "r.mran.zarr")
    viewer = make_napari_viewer()
    viewer.open(str(store), plugin="napari-mran")
    outlines = [ly for ly in viewer.layers if ly.name.endswith("region (roi.geojson)")]
    assert len(outlines) == 1
    slide_layer = next(ly for ly in viewer.layers if ly.name == "CMU-1-Small-Region.svs")
    got = np.asarray(outlines[0].data[0])  # world (y, x)
    want = np.array([slide_layer.data_to_world([y, x]) for x, y in ring[:-1]])
    assert got.shape[0] in (4, 5)
    assert np.allclose(got[:4], want, atol=1e-6 + 1e-3 * np.abs(want).max())
    # a result without a region has no outline layer
    with open_slide(sample_slide_path()) as slide:
        plain = predict_slide(slide, load_model("demo"), compile=False)
    viewer.layers.clear()
    viewer.open(str(plain.save(tmp_path / "p.mran.zarr")), plugin="napari-mran")
    assert not any("region" in ly.name for ly in viewer.layers)
