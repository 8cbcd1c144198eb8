"""The .mran.zarr reader and the writers: a saved result re-opens as the same layers."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from slide_writers import write_svs_pyramid
from test_store_integrity import remove_completion_marker

from napari_mran import vocab
from napari_mran._napari import keys as K
from napari_mran._napari import layers as L
from napari_mran._napari import writers
from napari_mran._napari.frame import SlideFrame
from napari_mran._napari.reader import get_reader, get_results_reader
from napari_mran._napari.sample_data import sample_slide_path
from napari_mran.errors import MRANError, OutputExistsError
from napari_mran.results import SlideResult

BAG = 1024
BAGS = [(0, 0), (0, 1), (1, 1), (1, 2), (0, 3)]  # (row, col) on a 2 x 4 grid


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    """4096 x 2048 px, MPP 0.5 (real H&E tiles from the bundled sample)."""
    crop = tifffile.imread(sample_slide_path())[:2048, :2048]
    img = np.concatenate([crop, crop[:, ::-1]], axis=1)
    p = tmp_path_factory.mktemp("reader") / "slide.svs"
    return write_svs_pyramid(p, img, downsamples=(1, 4, 16), tile=256, mpp=0.5)


def make_result(slide_path, mpp=0.5, size=(4096, 2048), seed=0) -> SlideResult:
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


def _roles(viewer):
    return {ly.metadata.get(K.ROLE): ly for ly in viewer.layers}


def test_reader_declines_what_is_not_a_store(tmp_path):
    assert get_results_reader(str(tmp_path)) is None           # a folder
    f = tmp_path / "x.mran.zarr"
    f.write_text("not a folder")
    assert get_results_reader(str(f)) is None                   # a file
    assert get_results_reader([str(tmp_path), str(tmp_path)]) is None
    store = tmp_path / "empty.mran.zarr"
    store.mkdir()
    assert get_reader(str(store)) is None  # the slide reader leaves stores alone


def test_incomplete_store_notifies(make_napari_viewer, tmp_path, slide_path, monkeypatch):
    from napari.utils import notifications

    store = make_result(slide_path).save(tmp_path / "r.mran.zarr")
    remove_completion_marker(store)  # an interrupted write
    seen = []
    monkeypatch.setattr(notifications, "show_error", lambda msg: seen.append(msg))
    reader = get_results_reader(str(store))
    assert reader is not None and reader(str(store)) == [(None,)]
    assert seen and "incomplete results store" in seen[0]
    viewer = make_napari_viewer(show=True)
    assert viewer.open(str(store), plugin="napari-mran") == [] and len(viewer.layers) == 0


def test_store_opens_over_its_slide(make_napari_viewer, qtbot, tmp_path, slide_path):
    result = make_result(slide_path)
    store = result.save(tmp_path / "slide.mran.zarr")
    viewer = make_napari_viewer(show=True)
    layers = viewer.open(str(store), plugin="napari-mran")
    names = [ly.name for ly in layers]
    assert names == ["slide.svs", "slide.svs tissue bags", "slide.svs bag attention",
                     "slide.svs patch attention", "slide.svs cell attention",
                     "slide.svs top bags"]
    slide_layer = layers[0]
    roles = _roles(viewer)
    # the same alignment as after an analysis: bag i's pixels cover its level-0 box
    for level, k in vocab.PIXELS_PER_BAG.items():
        layer = roles[L.ROLES[level]]
        assert layer.metadata["mran_results_path"] == str(store)
        for (x0, y0, x1, y1) in result.boxes:
            r, c = y0 // BAG * k, x0 // BAG * k
            assert np.allclose(layer.data_to_world([r - 0.5, c - 0.5]),
                               slide_layer.data_to_world([y0 - 0.5, x0 - 0.5]))
            assert np.allclose(layer.data_to_world([r + k - 0.5, c + k - 0.5]),
                               slide_layer.data_to_world([y1 - 0.5, x1 - 0.5]))
        data = result.heatmap(level).data
        assert np.array_equal(np.isnan(layer.data), np.isnan(data))
    assert len(roles[L.TOP_ROLE].data) == len(BAGS)
    assert len(roles[L.TISSUE_ROLE].data) == len(BAGS)
    # hover text comes with the reader's layers too
    (wy0, wx0), (wy1, wx1) = SlideFrame.from_layer(slide_layer).box_to_world(result.boxes[2])
    st = roles[L.ROLES["cell"]].get_status(((wy0 + wy1) / 2, (wx0 + wx1) / 2), world=True,
                                           view_direction=None, dims_displayed=[0, 1])
    assert "bag #2" in st["coordinates"]
    # the widget adopts the opened result: slide prediction and ranked bags
    _dock, w = viewer.window.add_plugin_dock_widget("napari-mran", "Analyze slide")
    qtbot.waitUntil(lambda: w.results.top_table.rowCount() == len(BAGS), timeout=5000)
    assert "tumour (0.70)" in w.results.prediction_label.text()
    assert int(w.results.top_table.item(0, 0).data(256)) == int(result.top_bags(1)[0])  # UserRole
    # opening it again does not add the slide a second time
    again = viewer.open(str(store), plugin="napari-mran")
    assert again[0].name.startswith("slide.svs tissue bags")
    assert sum(1 for ly in viewer.layers if "mran_slide" in ly.metadata) == 1


def test_store_without_its_slide(make_napari_viewer, tmp_path, slide_path, monkeypatch):
    from napari.utils import notifications

    moved = tmp_path / "gone.svs"
    shutil.copy(slide_path, moved)
    result = make_result(moved)
    store = result.save(tmp_path / "gone.mran.zarr")
    moved.unlink()
    seen = []
    monkeypatch.setattr(notifications, "show_warning", lambda msg: seen.append(msg))
    viewer = make_napari_viewer(show=True)
    layers = viewer.open(str(store), plugin="napari-mran")
    assert seen and "no longer exists" in seen[0] and "µm" in seen[0]
    assert layers[0].name == "gone.svs tissue bags"
    patch = _roles(viewer)[L.ROLES["patch"]]
    # µm from the result's MPP: level-0 pixel i is centred at i * 0.5 µm
    assert [str(u) for u in patch.units] == ["micrometer", "micrometer"]
    assert np.allclose(patch.scale, (BAG / 8 * 0.5,) * 2)
    assert np.allclose(patch.data_to_world([-0.5, -0.5]), [-0.25, -0.25])
    st = patch.get_status((0.5 * 100, 0.5 * 100), world=True, view_direction=None,
                          dims_displayed=[0, 1])
    assert "bag #0" in st["coordinates"]


def test_store_with_another_slide_size_or_no_mpp(make_napari_viewer, tmp_path, slide_path,
                                                 monkeypatch):
    from napari.utils import notifications

    seen = []
    monkeypatch.setattr(notifications, "show_warning", lambda msg: seen.append(msg))
    store = make_result(slide_path, size=(8192, 2048)).save(tmp_path / "other.mran.zarr")
    viewer = make_napari_viewer(show=True)
    layers = viewer.open(str(store), plugin="napari-mran")
    assert "the result was computed on 8192 x 2048 px" in seen[0]
    assert "mran_slide" not in layers[0].metadata
    # no MPP: level-0 pixels
    store2 = make_result(slide_path, mpp=None, size=(8192, 2048)).save(tmp_path / "px.mran.zarr")
    layers = viewer.open(str(store2), plugin="napari-mran")
    patch = next(ly for ly in layers if ly.metadata.get(K.ROLE) == L.ROLES["patch"])
    assert np.allclose(patch.scale, (BAG / 8,) * 2) and "level-0 pixels" in seen[-1]


def test_writers(tmp_path, slide_path):
    result = make_result(slide_path)
    tuples = L.result_layer_data(result, SlideFrame.from_result(result), weighting="global")
    by_role = {kw["metadata"][K.ROLE]: (data, kw) for data, kw, _ in tuples}
    patch_data, patch_kw = by_role[L.ROLES["patch"]]
    out = writers.write_geojson(str(tmp_path / "p.geojson"), patch_data, patch_kw)
    gj = json.loads(Path(out[0]).read_text())
    assert len(gj["features"]) == len(BAGS) * 64
    f0 = gj["features"][0]["properties"]["measurements"]
    assert f0["score"] == pytest.approx(f0["attention_global"])  # the layer's weighting
    cell_data, cell_kw = by_role[L.ROLES["cell"]]
    out = writers.write_geojson(str(tmp_path / "c.geojson"), cell_data, cell_kw)
    assert len(json.loads(Path(out[0]).read_text())["features"]) == len(BAGS) * 1024
    top_data, top_kw = by_role[L.TOP_ROLE]
    out = writers.write_geojson(str(tmp_path / "top.geojson"), top_data, top_kw)
    assert len(json.loads(Path(out[0]).read_text())["features"]) == len(BAGS)
    out = writers.write_csv(str(tmp_path / "cells.csv"), cell_data, cell_kw)
    assert len(Path(out[0]).read_text().splitlines()) == 1 + len(BAGS) * 1024
    out = writers.write_ome_tiff(str(tmp_path / "p.ome.tif"), patch_data, patch_kw)
    assert np.allclose(np.nan_to_num(tifffile.imread(out[0])),
                       np.nan_to_num(result.heatmap("patch", "global").data))
    out = writers.write_ome_zarr(str(tmp_path / "p.ome.zarr"), patch_data, patch_kw)
    assert (tmp_path / "p.ome.zarr" / ".zattrs").is_file()
    out = writers.write_provenance(str(tmp_path / "prov.json"), patch_data, patch_kw)
    assert json.loads(Path(out[0]).read_text())["provenance"]["slide"]["path"] == str(slide_path)
    with pytest.raises(OutputExistsError, match="never overwrite"):
        writers.write_csv(str(tmp_path / "cells.csv"), cell_data, cell_kw)
    with pytest.raises(MRANError, match="not an MRAN result layer"):
        writers.write_csv(str(tmp_path / "x.csv"), None, {"name": "camera", "metadata": {}})
