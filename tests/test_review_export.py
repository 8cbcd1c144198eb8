"""``napari-mran export STORE --format reviews``: QuPath GeoJSON annotations and CSV of
a real store's review marks (demo model, bundled CMU-1-Small-Region SVS), with the
export conventions (plan, unchanged files, --overwrite) and exit codes."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from napari_mran.cli import main
from napari_mran.export.plan import export_plan
from napari_mran.export.reviews import CSV_COLUMNS, MARK_COLORS
from napari_mran.results import SlideResult
from napari_mran.review import Reviews

REPO = Path(__file__).resolve().parents[1]
SVS = REPO / "napari_mran" / "data" / "CMU-1-Small-Region.svs"
STEM = "CMU-1-Small-Region"


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("an")
    assert main(["analyze", str(SVS), "--model", "demo", "--out", str(out), "--quiet",
                 "--export", ""]) == 0
    return out / f"{STEM}.mran.zarr"


@pytest.fixture
def store(analysed, tmp_path) -> Path:
    dst = tmp_path / "s" / analysed.name
    shutil.copytree(analysed, dst)
    return dst


@pytest.fixture
def marked(store) -> Path:
    rv = Reviews.load(store)
    rv.set_bag(0, "agree", reviewer="dr a")
    rv.set_bag(1, "disagree", reviewer="dr a")
    rv.set_patch(1, 9, "label", "tumour", reviewer="=HYPERLINK(evil)")
    rv.set_patch(1, 63, "label", "normal", reviewer="dr b")  # past the slide's bottom edge
    rv.save()
    return store


def _qupath_check(doc: dict) -> list[dict]:
    """What QuPath's GeoJSON import needs: a FeatureCollection of Features whose
    Polygon rings are closed, counter-clockwise-agnostic, non-degenerate, with an
    objectType and a classification {name, color [r, g, b]}."""
    assert doc["type"] == "FeatureCollection" and isinstance(doc["features"], list)
    for f in doc["features"]:
        assert f["type"] == "Feature" and isinstance(f["id"], str)
        geom = f["geometry"]
        assert geom["type"] == "Polygon" and len(geom["coordinates"]) == 1
        ring = geom["coordinates"][0]
        assert len(ring) >= 4 and ring[0] == ring[-1]
        xs, ys = [p[0] for p in ring], [p[1] for p in ring]
        assert max(xs) > min(xs) and max(ys) > min(ys)
        props = f["properties"]
        assert props["objectType"] == "annotation"
        cls = props["classification"]
        assert isinstance(cls["name"], str) and cls["name"]
        assert len(cls["color"]) == 3 and all(0 <= int(v) <= 255 for v in cls["color"])
    return doc["features"]


def test_export_reviews_geojson_and_csv(marked, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", str(marked), "--format", "reviews", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    gj, table = out / f"{STEM}.reviews.geojson", out / f"{STEM}.reviews.csv"
    assert report["written"] == [str(gj), str(table)] and "warnings" not in report
    result = SlideResult.load(marked)
    doc = json.loads(gj.read_text())
    feats = _qupath_check(doc)
    assert doc["napari_mran"]["model_is_demo"] is True
    names = [f["properties"]["classification"]["name"] for f in feats]
    assert names == ["Agree", "Disagree", "tumour", "normal"]
    assert feats[0]["properties"]["classification"]["color"] == list(MARK_COLORS["agree"])
    assert feats[0]["geometry"]["coordinates"][0][2] == [2048, 2048]
    patch = feats[2]["properties"]
    assert patch["level"] == "patch" and patch["patch_index"] == 9 and patch["bag_index"] == 1
    assert patch["patch_attention"] == pytest.approx(float(result.patch_attention[1, 9]))
    assert patch["bag_attention"] == pytest.approx(float(result.bag_attention[1]))
    assert patch["model_sha256"] == result.provenance["model"]["sha256"]
    # patch 63 of bag 1 lies past the slide's bottom edge (2967 px): not clipped away
    assert feats[3]["geometry"]["coordinates"][0][0] == [1792, 3840]
    with open(table, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 4
    assert [r["mark"] for r in rows] == ["agree", "disagree", "label", "label"]
    assert rows[2]["reviewer"] == "'=HYPERLINK(evil)"  # never a spreadsheet formula
    assert rows[2]["label"] == "tumour" and rows[0]["patch_index"] == "" and rows[0]["label"] == ""
    assert [int(rows[2][k]) for k in ("x0", "y0", "x1", "y1")] == [256, 2304, 512, 2560]


def test_export_again_is_unchanged_and_new_marks_clash(marked, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["export", str(marked), "--format", "reviews", "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 0
    assert len(json.loads(capsys.readouterr().out)["unchanged"]) == 2
    rv = Reviews.load(marked)
    rv.clear(0)
    rv.save()
    before = (out / f"{STEM}.reviews.csv").read_bytes()
    assert main(argv) == 2
    assert "already exists with other content" in capsys.readouterr().err
    assert (out / f"{STEM}.reviews.csv").read_bytes() == before
    assert main([*argv, "--overwrite"]) == 0
    assert len((out / f"{STEM}.reviews.csv").read_text().splitlines()) == 4


def test_a_store_without_marks_is_refused(store, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", str(store), "--format", "csv,reviews", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(store) in err[0] and "no review marks" in err[0]
    assert not out.exists()  # refused before anything was written


def test_tampered_marks_are_refused(marked, tmp_path, capsys):
    meta = marked / "reviews" / "zarr.json"
    meta.write_text(meta.read_text().replace('"dr b"', '"dr c"'))
    assert main(["export", str(marked), "--format", "reviews", "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "checksum" in err and str(marked) in err and "Traceback" not in err


def test_marks_of_another_model_warn(marked, tmp_path, model_file, capsys):
    other = tmp_path / "other"
    assert main(["analyze", str(SVS), "--model", str(model_file), "--out", str(other),
                 "--quiet", "--export", ""]) == 0
    theirs = other / marked.name
    shutil.copytree(marked / "reviews", theirs / "reviews")
    capsys.readouterr()
    assert main(["export", str(theirs), "--format", "reviews", "--out", str(tmp_path / "o")]) == 0
    cap = capsys.readouterr()
    assert "another model version" in json.loads(cap.out)["warnings"][0]
    assert "warning:" in cap.err and str(theirs) in cap.err
    doc = json.loads((tmp_path / "o" / f"{STEM}.reviews.geojson").read_text())
    assert "another model version" in doc["napari_mran"]["model_warning"]


def test_the_plan_names_both_files(marked, tmp_path):
    plan = export_plan(SlideResult.load(marked), tmp_path, ["reviews"], store=marked)
    assert [j.path.name for j in plan] == [f"{STEM}.reviews.geojson", f"{STEM}.reviews.csv"]
    with pytest.raises(ValueError, match="results store"):
        export_plan(SlideResult.load(marked), tmp_path, ["reviews"])
