"""The .mran.zarr reader and the writers: a saved result re-opens as the same layers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from fake_results import BAG, BAGS, assert_over_bags, make_result, write_slide
from test_store_integrity import remove_completion_marker

from napari_mran import vocab
from napari_mran._napari import keys as K
from napari_mran._napari import layers as L
from napari_mran._napari import writers
from napari_mran._napari.frame import SlideFrame
from napari_mran._napari.reader import get_reader, get_results_reader
from napari_mran.errors import MRANError, OutputExistsError


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    return write_slide(tmp_path_factory.mktemp("reader"))


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
        assert_over_bags(layer, slide_layer, result, k)
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
