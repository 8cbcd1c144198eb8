"""GeoJSON and CSV exports honour the shown-cell mask (``cell_tissue``, docs/roi.md):
GeoJSON leaves out patches and cells on glass or outside the region (bags stay), CSV
keeps every row and flags it in a ``shown`` column; results without the mask (older
stores) export as before.  Real results: the bundled CMU-1-Small-Region analysed by
the demo model (about 2/3 of its cells are glass)."""

from __future__ import annotations

import csv
import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from napari_mran.analysis import predict_slide
from napari_mran.export import export_csv, export_geojson
from napari_mran.export.plan import export_plan, write_export
from napari_mran.model import load_model
from napari_mran.results import SlideResult
from napari_mran.roi import make_region

SLIDE = Path(__file__).resolve().parents[1] / "napari_mran" / "data" / "CMU-1-Small-Region.svs"
PER_BAG = {"bag": (), "patch": (64,), "cell": (64, 16)}
INDEX_KEYS = ("bag_index", "patch_index", "cell_index")


@pytest.fixture(scope="module")
def demo_model():
    return load_model("demo")


@pytest.fixture(scope="module")
def store(tmp_path_factory, demo_model) -> Path:
    """The bundled slide analysed by the demo model, saved as a results store."""
    result = predict_slide(str(SLIDE), demo_model, compile=False)
    return result.save(tmp_path_factory.mktemp("shown") / "cmu.mran.zarr")


@pytest.fixture
def masked(store) -> SlideResult:
    """The result loaded from its store (the mask comes back from disk)."""
    result = SlideResult.load(store)
    assert result.cell_tissue is not None
    return result


@pytest.fixture
def old(store) -> SlideResult:
    """The same result as a store written before the mask existed gives."""
    result = SlideResult.load(store)
    result.cell_tissue = None
    return result


def strict_load(path: Path):
    def bad(constant):
        raise AssertionError(f"{path}: non-strict JSON constant {constant}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=bad)


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def on_slide(result: SlideResult, level: str) -> np.ndarray:
    return result.slide_boxes(level)[1]


def check_collection(data: dict, result: SlideResult) -> None:
    """What the existing GeoJSON tests check: a strict FeatureCollection of closed
    5-point polygons on the slide, each with a UUID-5 id and a finite score."""
    w, h = result.slide_size
    assert data["type"] == "FeatureCollection"
    ids = [f["id"] for f in data["features"]]
    assert len(set(ids)) == len(ids) and all(uuid.UUID(i).version == 5 for i in ids)
    for f in data["features"]:
        ring = f["geometry"]["coordinates"][0]
        assert f["geometry"]["type"] == "Polygon" and len(ring) == 5 and ring[0] == ring[-1]
        pts = np.asarray(ring, float)
        assert (pts >= 0).all() and (pts[:, 0] <= w).all() and (pts[:, 1] <= h).all()
        assert np.isfinite(f["properties"]["measurements"]["score"])


def feature_indices(data: dict, level: str) -> set[tuple[int, ...]]:
    n = 1 + len(PER_BAG[level])
    return {tuple(int(f["properties"]["measurements"][k]) for k in INDEX_KEYS[:n])
            for f in data["features"]}


def expected_indices(mask: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in i) for i in np.argwhere(mask)}


# --------------------------------------------------------------------------- GeoJSON


@pytest.mark.parametrize("level", ["patch", "cell"])
def test_geojson_lists_only_shown_patches_and_cells(masked, tmp_path, level):
    bags = None if level == "patch" else range(masked.n_bags)
    data = strict_load(export_geojson(masked, tmp_path / f"{level}.geojson", level=level,
                                      bags=bags, weighting="global"))
    check_collection(data, masked)
    shown = masked.shown(level) & on_slide(masked, level)
    assert 0 < shown.sum() < on_slide(masked, level).sum()  # the slide has glass cells
    assert len(data["features"]) == int(shown.sum())
    assert feature_indices(data, level) == expected_indices(shown)
    # rank: 1..n among the exported features, by the chosen score
    ranks = sorted(f["properties"]["measurements"]["rank"] for f in data["features"])
    assert ranks == list(range(1, len(ranks) + 1))
    best = min(data["features"], key=lambda f: f["properties"]["measurements"]["rank"])
    scores = masked.scores(level, "global")[shown]
    assert np.float32(best["properties"]["measurements"]["score"]) == np.float32(scores.max())


def test_geojson_bags_stay_and_ids_do_not_depend_on_the_mask(masked, old, tmp_path):
    bags = strict_load(export_geojson(masked, tmp_path / "bags.geojson"))
    check_collection(bags, masked)
    assert len(bags["features"]) == masked.n_bags
    old_bags = strict_load(export_geojson(old, tmp_path / "old-bags.geojson"))
    assert bags == old_bags  # every bag here has shown cells: nothing changes
    new = strict_load(export_geojson(masked, tmp_path / "p.geojson", level="patch"))
    before = strict_load(export_geojson(old, tmp_path / "old-p.geojson", level="patch"))
    kept = {f["id"] for f in new["features"]}
    assert kept < {f["id"] for f in before["features"]}  # a subset, same ids


def test_geojson_bag_without_shown_cells_stays_unranked(masked, tmp_path):
    r = masked
    mask = r.cell_tissue.copy()
    mask[0] = 0  # bag 0: no shown cell (e.g. only touched by a region's edge)
    r.cell_tissue = mask
    bags = strict_load(export_geojson(r, tmp_path / "bags.geojson"))["features"]
    assert [f["properties"]["measurements"]["bag_index"] for f in bags] == [0, 1]
    assert "rank" not in bags[0]["properties"]["measurements"]
    assert bags[1]["properties"]["measurements"]["rank"] == 1
    patches = strict_load(export_geojson(r, tmp_path / "p.geojson", level="patch"))
    assert {i[0] for i in feature_indices(patches, "patch")} == {1}
    assert len(patches["features"]) == int((r.shown("patch") & on_slide(r, "patch")).sum())


def test_geojson_of_a_region_lies_inside_it(demo_model, tmp_path):
    x0, y0, x1, y1 = 400, 300, 1700, 2200
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    region = make_region([[ring]], "napari shapes layer ROI")
    result = predict_slide(str(SLIDE), demo_model, roi=region, compile=False)
    data = strict_load(export_geojson(result, tmp_path / "c.geojson", level="cell",
                                      bags=range(result.n_bags)))
    check_collection(data, result)
    assert len(data["features"]) == int(result.shown("cell").sum()) > 0
    centres = np.array([np.asarray(f["geometry"]["coordinates"][0][:4], float).mean(0)
                        for f in data["features"]])
    assert ((centres[:, 0] > x0) & (centres[:, 0] < x1)
            & (centres[:, 1] > y0) & (centres[:, 1] < y1)).all()


# --------------------------------------------------------------------------- CSV


@pytest.mark.parametrize("level", ["bag", "patch", "cell"])
def test_csv_keeps_every_row_and_flags_it(masked, old, tmp_path, level):
    header, rows = read_csv(export_csv(masked, tmp_path / f"{level}.csv", level=level))
    old_header, old_rows = read_csv(export_csv(old, tmp_path / f"old-{level}.csv",
                                               level=level))
    # backward compatible: the old columns in their order, `shown` after the scores
    # (model_is_demo stays last)
    assert "shown" not in old_header and old_header[-1] == "model_is_demo"
    assert header == [*old_header[:-1], "shown", "model_is_demo"]
    inside = on_slide(masked, level)
    assert len(rows) == len(old_rows) == int(inside.sum())
    flags = [r["shown"] for r in rows]
    assert set(flags) <= {"true", "false"}
    assert [f == "true" for f in flags] == masked.shown(level)[inside].tolist()
    for r, o in zip(rows, old_rows):  # the scores themselves are unchanged
        assert {k: r[k] for k in old_header if k != "rank"} == \
            {k: o[k] for k in old_header if k != "rank"}
    # rank: over the shown rows only (1..k); unshown rows have none
    ranks = [int(r["rank"]) for r in rows if r["shown"] == "true"]
    assert sorted(ranks) == list(range(1, len(ranks) + 1))
    assert all(r["rank"] == "" for r in rows if r["shown"] == "false")


def test_older_results_export_as_before(old, tmp_path):
    for level in ("patch", "cell"):
        inside = on_slide(old, level)
        header, rows = read_csv(export_csv(old, tmp_path / f"{level}.csv", level=level))
        assert "shown" not in header and len(rows) == int(inside.sum())
        assert sorted(int(r["rank"]) for r in rows) == list(range(1, len(rows) + 1))
        data = strict_load(export_geojson(old, tmp_path / f"{level}.geojson", level=level,
                                          bags=range(old.n_bags)))
        assert len(data["features"]) == int(inside.sum())


def test_export_plan_writes_filtered_files(masked, tmp_path):
    """The plan the CLI and the napari panel share writes the same filtered files."""
    jobs = export_plan(masked, tmp_path, ["geojson", "csv"], levels=["patch", "cell"])
    paths = {job.path.name: write_export(masked, job) for job in jobs}
    stem = "CMU-1-Small-Region"
    for level, plural in (("patch", "patches"), ("cell", "cells")):
        n_shown = int((masked.shown(level) & on_slide(masked, level)).sum())
        gj = strict_load(paths[f"{stem}.{plural}.geojson"])
        assert len(gj["features"]) == n_shown
        _, rows = read_csv(paths[f"{stem}.{plural}.csv"])
        assert sum(r["shown"] == "true" for r in rows) == n_shown
