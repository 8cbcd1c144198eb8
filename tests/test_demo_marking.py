"""Outputs of the bundled demo model say so (issue 9, part of point 4): the result,
its store, and every export written from it -- CSV, GeoJSON, OME-TIFF, OME-Zarr,
provenance.json; a result of any other model carries no demo wording."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import ome_types
import pytest
import torch

from napari_mran.analysis import predict_slide
from napari_mran.cli import main
from napari_mran.model import MRAN, MRANConfig, load_model, save_model
from napari_mran.results import DEMO_MODEL_NOTE, SlideResult

SLIDE = Path(__file__).resolve().parents[1] / "napari_mran" / "data" / "CMU-1-Small-Region.svs"
KINDS = "geojson,csv,ome-tiff,ome-zarr,provenance"


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The bundled real H&E sample analysed by the demo model and by a random-init
    checkpoint; each result saved as a store."""
    folder = tmp_path_factory.mktemp("demo-marking")
    torch.manual_seed(1)
    ckpt = save_model(MRAN(MRANConfig(width=0.0625, class_names=["normal", "tumour"])),
                      folder / "random-init.safetensors")
    out = {}
    for key, model in (("demo", load_model("demo")), ("plain", load_model(ckpt))):
        result = predict_slide(str(SLIDE), model, compile=False)
        out[key] = result.save(folder / f"{key}.mran.zarr")
    return out


@pytest.fixture(scope="module")
def exports(stores, tmp_path_factory):
    """Every export of every level, through `napari-mran export`."""
    out = {}
    for key, store in stores.items():
        folder = tmp_path_factory.mktemp(f"export-{key}")
        assert main(["export", str(store), "--format", KINDS, "--level", "bag,patch,cell",
                     "--weighting", "global", "--out", str(folder)]) == 0
        out[key] = folder
    return out


def _strict(path: Path):
    def bad(constant):
        raise AssertionError(f"{path}: non-strict JSON {constant}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=bad)


def test_model_is_demo_survives_save_and_load(stores):
    demo, plain = SlideResult.load(stores["demo"]), SlideResult.load(stores["plain"])
    assert demo.model_is_demo is True and demo.provenance["model"]["demo"] is True
    assert plain.model_is_demo is False
    attrs = json.loads((stores["demo"] / "zarr.json").read_text())["attributes"]
    assert attrs["napari_mran"]["model_is_demo"] is True  # visible in the store itself
    assert demo.summary()["model_is_demo"] is True


def test_csv(exports):
    for level in ("bags", "patches", "cells"):
        with open(next(exports["demo"].glob(f"*.{level}.csv")), newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert rows and list(rows[0])[-1] == "model_is_demo"
        assert {r["model_is_demo"] for r in rows} == {"true"}
        assert float(rows[0]["attention"]) >= 0  # still plain, machine-readable CSV
        text = next(exports["plain"].glob(f"*.{level}.csv")).read_text()
        assert "demo" not in text.lower()


def test_geojson(exports):
    for level in ("bags", "patches", "cells"):
        gj = _strict(next(exports["demo"].glob(f"*.{level}.geojson")))
        assert gj["type"] == "FeatureCollection"
        assert gj["napari_mran"] == {"model_is_demo": True, "note": DEMO_MODEL_NOTE}
        assert gj["features"] and all(f["properties"]["model_is_demo"] is True
                                      for f in gj["features"])
        text = next(exports["plain"].glob(f"*.{level}.geojson")).read_text()
        assert "demo" not in text.lower()


def test_ome_tiff(exports):
    for path in sorted(exports["demo"].glob("*.ome.tif")):
        ome = ome_types.from_tiff(path, validate=True)
        image = ome.images[0]
        assert image.name.endswith("(demo model)")
        assert DEMO_MODEL_NOTE.lower() in image.description.lower()
        values = {m.k: m.value for a in ome.structured_annotations.map_annotations
                  for m in a.value.ms}
        assert values["model_is_demo"] == "true"
        assert json.loads(values["napari_mran"])["model_is_demo"] is True
    plain = sorted(exports["plain"].glob("*.ome.tif"))
    assert len(plain) == 3
    for path in plain:
        ome = ome_types.from_tiff(path, validate=True)
        values = {m.k: m.value for a in ome.structured_annotations.map_annotations
                  for m in a.value.ms}
        assert "model_is_demo" not in values
        assert json.loads(values["napari_mran"])["model_is_demo"] is False
        assert "demo model" not in ome.to_xml().lower()


def test_ome_zarr(exports):
    for key, demo in (("demo", True), ("plain", False)):
        paths = sorted(exports[key].glob("*.ome.zarr"))
        assert len(paths) == 3
        for path in paths:
            attrs = _strict(path / ".zattrs")
            assert attrs["napari_mran"]["model_is_demo"] is demo
            ms = attrs["multiscales"][0]
            assert ms["name"].endswith("(demo model)") is demo
            assert (DEMO_MODEL_NOTE in json.dumps(attrs, ensure_ascii=False)) is demo


def test_provenance_json(exports):
    demo = _strict(next(exports["demo"].glob("*.provenance.json")))
    assert demo["model_is_demo"] is True and demo["demo_model_note"] == DEMO_MODEL_NOTE
    assert list(demo)[:4] == ["format", "version", "model_is_demo", "demo_model_note"]
    plain = _strict(next(exports["plain"].glob("*.provenance.json")))
    assert plain["model_is_demo"] is False and "demo_model_note" not in plain
    assert DEMO_MODEL_NOTE not in json.dumps(plain, ensure_ascii=False)


def test_demo_flag_cannot_be_edited_away(stores, tmp_path):
    """The flag is covered by the store's checksums (see test_store_integrity)."""
    import shutil

    from napari_mran.errors import ResultsError

    copy = tmp_path / "demo.mran.zarr"
    shutil.copytree(stores["demo"], copy)
    meta = json.loads((copy / "zarr.json").read_text())
    meta["attributes"]["provenance"]["model"]["demo"] = False
    meta["attributes"]["napari_mran"]["model_is_demo"] = False
    (copy / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(ResultsError, match="checksum"):
        SlideResult.load(copy)
    assert np.isfinite(SlideResult.load(stores["demo"]).slide_probs).all()
