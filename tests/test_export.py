"""Exporters: content, strict JSON, CSV injection, atomicity and overwrite refusal."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from napari_mran.errors import OutputExistsError, ResultsError
from napari_mran.export import (
    csv_safe,
    export_csv,
    export_geojson,
    export_ome_tiff,
    export_ome_zarr,
    export_provenance,
)
from napari_mran.export import geojson as geojson_mod
from napari_mran.export import heatmaps as heatmaps_mod
from napari_mran.export import table as table_mod
from napari_mran.results import SlideResult
from procs import sigkill_when_ready

REPO = Path(__file__).resolve().parents[1]
EVIL = '=HYPERLINK("http://x")'


def make_result(seed=0, mpp=0.5, slide_name="slide.svs", **kw) -> SlideResult:
    """Three bags of a 2 x 3 grid (slide 7000 x 5000 px), two classes."""
    boxes = np.array(
        [[0, 0, 2048, 2048], [4096, 2048, 6144, 4096], [2048, 0, 4096, 2048]], np.int64
    )
    rng = np.random.default_rng(seed)
    n = len(boxes)
    args = {
        "boxes": boxes,
        "bag_attention": rng.random(n),
        "bag_probs": rng.random((n, 2)),
        "patch_attention": rng.random((n, 64)),
        "patch_probs": rng.random((n, 64, 2)),
        "cell_attention": rng.random((n, 64, 16)),
        "cell_probs": rng.random((n, 64, 16, 2)),
        "slide_probs": np.array([0.25, 0.75]),
        "class_names": ["normal", "tumour"],
        "slide_size": (7000, 5000),
        "mpp": mpp,
        "provenance": {"slide": {"path": "/data/slide.svs", "name": slide_name}},
    }
    args.update(kw)
    return SlideResult(**args)


def strict_load(path: Path):
    def bad(constant):
        raise AssertionError(f"{path}: non-strict JSON constant {constant}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=bad)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- CSV


def test_csv_bag_level(tmp_path):
    r = make_result()
    out = export_csv(r, tmp_path / "bags.csv")
    rows = read_csv(out)
    assert len(rows) == 3
    assert list(rows[0]) == [
        "slide", "bag_index", "bag_row", "bag_col", "x0", "y0", "x1", "y1",
        "attention", "attention_global", "rank", "prob_normal", "prob_tumour",
    ]  # fmt: skip
    row = rows[1]
    assert (row["bag_row"], row["bag_col"]) == ("1", "2")
    assert [int(row[k]) for k in ("x0", "y0", "x1", "y1")] == [4096, 2048, 6144, 4096]
    assert np.float32(row["attention"]) == np.float32(r.bag_attention[1])  # float32 round trip
    assert np.float32(row["prob_tumour"]) == np.float32(r.bag_probs[1, 1])
    ranks = sorted(int(x["rank"]) for x in rows)
    assert ranks == [1, 2, 3]
    assert rows[int(r.top_bags(1)[0])]["rank"] == "1"
    assert names(tmp_path) == ["bags.csv"]


def test_csv_patch_and_cell_levels(tmp_path):
    r = make_result()
    patch_rows = read_csv(export_csv(r, tmp_path / "p.csv", level="patch"))
    assert len(patch_rows) == 3 * 64
    row = patch_rows[64 + 21]  # bag 1, patch 21 = (2, 5)
    assert (row["patch_index"], row["patch_row"], row["patch_col"]) == ("21", "2", "5")
    assert [int(row[k]) for k in ("x0", "y0", "x1", "y1")] == [
        4096 + 1280,
        2048 + 512,
        4096 + 1536,
        2048 + 768,
    ]
    assert np.float32(row["attention_global"]) == np.float32(r.bag_attention[1]) * np.float32(
        r.patch_attention[1, 21]
    )
    cell_rows = read_csv(export_csv(r, tmp_path / "c.csv", level="cell"))
    assert len(cell_rows) == 3 * 64 * 16
    row = cell_rows[(1 * 64 + 21) * 16 + 13]  # cell 13 = (3, 1)
    assert (row["cell_index"], row["cell_row"], row["cell_col"]) == ("13", "3", "1")
    assert [int(row[k]) for k in ("x0", "y0")] == [4096 + 1280 + 64, 2048 + 512 + 192]
    assert np.float32(row["prob_normal"]) == np.float32(r.cell_probs[1, 21, 13, 0])


def test_csv_fractional_coordinates(tmp_path):
    boxes = np.array([[100, 0, 200, 100]])
    r = make_result(
        boxes=boxes, bag_px=100, slide_size=(300, 200), bag_attention=[1.0], bag_probs=[[0.5, 0.5]],
        patch_attention=np.ones((1, 64)), patch_probs=np.ones((1, 64, 2)),
        cell_attention=np.ones((1, 64, 16)), cell_probs=np.ones((1, 64, 16, 2)),
    )  # fmt: skip
    rows = read_csv(export_csv(r, tmp_path / "p.csv", level="patch"))
    assert (rows[1]["x0"], rows[1]["x1"]) == ("112.5", "125")


def test_csv_formula_injection_is_escaped(tmp_path):
    r = make_result(slide_name=EVIL, bag_attention=np.array([-0.5, 0.25, np.nan]))
    out = export_csv(r, tmp_path / "evil.csv")
    rows = read_csv(out)
    assert rows[0]["slide"] == "'" + EVIL  # neutralised text
    assert rows[0]["attention"] == "-0.5"  # numbers never altered
    assert rows[2]["attention"] == "" and rows[2]["rank"] == ""  # NaN -> empty cell
    # an explicit name too
    rows = read_csv(export_csv(r, tmp_path / "evil2.csv", slide_name="@SUM(1+1)*cmd|' /C calc'!A0"))
    assert rows[0]["slide"].startswith("'@")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("=1+1", "'=1+1"),
        ("+1", "'+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("  =1", "'  =1"),
        ("\uff1d1", "'\uff1d1"),
        ("slide 1.svs", "slide 1.svs"),
        ("", ""),
        (None, ""),
    ],
)
def test_csv_safe(text, expected):
    assert csv_safe(text) == expected


def test_provenance_json_is_strict(tmp_path):
    r = make_result(
        slide_name=EVIL, provenance={"slide": {"name": EVIL}, "timing": {"total_s": float("inf")}}
    )
    data = strict_load(export_provenance(r, tmp_path / "provenance.json"))
    assert data["provenance"]["timing"]["total_s"] is None
    assert data["provenance"]["_nonfinite_replaced_by_null"] == ["/timing/total_s"]
    assert data["summary"]["slide_size"] == [7000, 5000] and data["summary"]["n_bags"] == 3
    assert data["summary"]["slide_name"] == EVIL  # JSON is not a spreadsheet: kept verbatim


# --------------------------------------------------------------------------- GeoJSON


def test_geojson_bags(tmp_path):
    r = make_result()
    data = strict_load(export_geojson(r, tmp_path / "bags.geojson"))
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 3
    f = data["features"][1]
    assert f["type"] == "Feature" and f["geometry"]["type"] == "Polygon"
    assert f["geometry"]["coordinates"] == [
        [[4096, 2048], [6144, 2048], [6144, 4096], [4096, 4096], [4096, 2048]]
    ]
    props = f["properties"]
    assert props["objectType"] == "annotation"  # bags: QuPath annotations
    best = int(np.argmax(r.bag_probs[1]))
    assert props["classification"]["name"] == r.class_names[best]
    assert len(props["classification"]["color"]) == 3
    m = props["measurements"]
    assert m["bag_index"] == 1
    assert np.float32(m["attention"]) == np.float32(r.bag_attention[1])
    assert np.float32(m["prob_tumour"]) == np.float32(r.bag_probs[1, 1])
    assert sorted(x["properties"]["measurements"]["rank"] for x in data["features"]) == [1, 2, 3]


def test_geojson_patches_global_and_cells(tmp_path):
    r = make_result()
    data = strict_load(export_geojson(r, tmp_path / "p.geojson", level="patch", weighting="global"))
    assert len(data["features"]) == 3 * 64
    assert {f["properties"]["objectType"] for f in data["features"]} == {"tile"}
    f = data["features"][64 + 21]
    ring = f["geometry"]["coordinates"][0]
    assert ring[0] == [4096 + 1280, 2048 + 512] and ring[2] == [4096 + 1536, 2048 + 768]
    m = f["properties"]["measurements"]
    assert m["patch_index"] == 21
    assert m["score"] == m["attention_global"]
    assert np.float32(m["attention_global"]) == np.float32(r.bag_attention[1]) * np.float32(
        r.patch_attention[1, 21]
    )
    with pytest.raises(ValueError, match="chosen bags"):
        export_geojson(r, tmp_path / "c.geojson", level="cell")
    cells = strict_load(export_geojson(r, tmp_path / "c0.geojson", level="cell", bags=[0]))
    assert {f["properties"]["objectType"] for f in cells["features"]} == {"detection"}
    cells = strict_load(
        export_geojson(r, tmp_path / "c.geojson", level="cell", bags=[1], object_type="annotation")
    )
    assert len(cells["features"]) == 1024
    assert cells["features"][0]["properties"]["objectType"] == "annotation"
    assert {f["properties"]["measurements"]["bag_index"] for f in cells["features"]} == {1}


def test_geojson_ids_are_stable_uuids_and_gzip(tmp_path):
    """Every feature has a UUID id, unique across levels, the same when the result is
    exported again; a .gz path is gzip-compressed with the same content."""
    import gzip
    import uuid

    r = make_result()
    a = strict_load(export_geojson(r, tmp_path / "a.geojson", level="patch"))
    b = strict_load(export_geojson(r, tmp_path / "b.geojson", level="patch"))
    bags = strict_load(export_geojson(r, tmp_path / "bags.geojson"))
    ids = [f["id"] for f in a["features"]]
    assert all(uuid.UUID(i).version == 5 for i in ids)
    assert len(set(ids)) == len(ids) == 3 * 64
    assert ids == [f["id"] for f in b["features"]]  # stable
    assert not set(ids) & {f["id"] for f in bags["features"]}  # levels differ
    other = make_result(provenance={"slide": {"path": "/data/other.svs"}})
    c = strict_load(export_geojson(other, tmp_path / "c.geojson", level="patch"))
    assert not set(ids) & {f["id"] for f in c["features"]}  # another slide
    moved = make_result(boxes=np.array(  # same slide and model, other tissue bags
        [[0, 2048, 2048, 4096], [2048, 2048, 4096, 4096], [4096, 0, 6144, 2048]], np.int64))
    d = strict_load(export_geojson(moved, tmp_path / "d.geojson", level="patch"))
    assert not set(ids) & {f["id"] for f in d["features"]}
    gz = export_geojson(r, tmp_path / "a.geojson.gz", level="patch")
    raw = gz.read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert gzip.decompress(raw) == (tmp_path / "a.geojson").read_bytes()
    assert export_geojson(r, tmp_path / "a2.geojson.gz", level="patch").read_bytes() == raw
    assert names(tmp_path).count("a.geojson.gz") == 1


def test_geojson_nan_scores_give_strict_json(tmp_path):
    bag_probs = np.array([[np.nan, np.nan], [0.2, np.inf], [0.4, 0.6]])
    r = make_result(bag_attention=np.array([np.nan, 0.5, -np.inf]), bag_probs=bag_probs)
    data = strict_load(export_geojson(r, tmp_path / "nan.geojson"))
    m0 = data["features"][0]["properties"]
    assert "attention" not in m0["measurements"] and "rank" not in m0["measurements"]
    assert "classification" not in m0  # no finite probability
    m1 = data["features"][1]["properties"]
    assert "prob_tumour" not in m1["measurements"] and m1["classification"]["name"] == "normal"
    assert data["features"][1]["properties"]["measurements"]["rank"] == 1
    text = (tmp_path / "nan.geojson").read_text()
    assert "NaN" not in text and "Infinity" not in text


# --------------------------------------------------------------------------- heatmaps


def test_ome_tiff_pyramid_and_values(tmp_path):
    import tifffile

    r = make_result()
    out = export_ome_tiff(r, tmp_path / "cell.ome.tif", level="cell", weighting="global", tile=32)
    h = r.heatmap("cell", "global")
    pyramid = h.pyramid(min_size=32)
    assert len(pyramid) == 3  # 64 x 96 -> 32 x 48 -> 16 x 24
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome
        series = tif.series[0]
        assert [lvl.shape for lvl in series.levels] == [p.data.shape for p in pyramid]
        for lvl, p in zip(series.levels, pyramid):
            np.testing.assert_array_equal(lvl.asarray(), p.data)
        page = tif.pages[0]
        assert page.is_tiled and page.dtype == np.float32
        assert len(page.subifds or []) == 2
        ome = tif.ome_metadata
    assert 'PhysicalSizeX="32.0"' in ome and 'PhysicalSizeY="32.0"' in ome  # 64 px * 0.5 µm
    assert names(tmp_path) == ["cell.ome.tif"]


def test_ome_tiff_without_mpp(tmp_path):
    import tifffile

    r = make_result(mpp=None)
    out = export_ome_tiff(r, tmp_path / "bag.ome.tif", level="bag", value="prob", class_index=1)
    with tifffile.TiffFile(out) as tif:
        assert "PhysicalSizeX" not in tif.ome_metadata
        data = tif.series[0].asarray()
    np.testing.assert_array_equal(data, r.heatmap("bag", value="prob").data)


def test_ome_zarr_multiscales_and_values(tmp_path):
    import zarr

    r = make_result(mpp=(0.25, 0.5))
    out = export_ome_zarr(r, tmp_path / "patch.ome.zarr", level="patch", chunk=8)
    group = zarr.open_group(str(out), mode="r", zarr_format=2)
    ms = group.attrs["multiscales"][0]
    assert ms["version"] == "0.4"
    assert [a["name"] for a in ms["axes"]] == ["y", "x"] and ms["axes"][0]["unit"] == "micrometer"
    h = r.heatmap("patch")
    pyramid = h.pyramid(min_size=8)
    assert len(ms["datasets"]) == len(pyramid) == 3  # 16 x 24 -> 8 x 12 -> 4 x 6
    for k, (ds, p) in enumerate(zip(ms["datasets"], pyramid)):
        scale, translation = (t[t["type"]] for t in ds["coordinateTransformations"])
        f = 2**k
        assert scale == [256 * f * 0.5, 256 * f * 0.25]
        # centre of pixel [0, 0] in a frame where level-0 pixel i is centred at i * mpp
        assert translation == [(128 * f - 0.5) * 0.5, (128 * f - 0.5) * 0.25]
        np.testing.assert_array_equal(group[ds["path"]][...], p.data)
    assert group.attrs["napari_mran"]["level"] == "patch"
    json.loads((out / ".zattrs").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert names(tmp_path) == ["patch.ome.zarr"]


def test_ome_zarr_overwrite_rules(tmp_path):
    r = make_result()
    out = export_ome_zarr(r, tmp_path / "h.ome.zarr", level="bag")
    with pytest.raises(OutputExistsError):
        export_ome_zarr(r, out, level="cell")
    export_ome_zarr(r, out, level="cell", overwrite=True)  # our own previous export
    import zarr

    assert zarr.open_group(str(out), mode="r").attrs["napari_mran"]["level"] == "cell"
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="notes.txt"):
        export_ome_zarr(r, out, level="bag", overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    user = tmp_path / "user.ome.zarr"
    user.mkdir()
    (user / "data.bin").write_bytes(b"1")
    with pytest.raises(OutputExistsError):
        export_ome_zarr(r, user, overwrite=True)
    assert names(user) == ["data.bin"]


# --------------------------------------------------------------------------- atomicity, overwrite


EXPORTERS = {
    "csv": lambda r, p, **kw: export_csv(r, p, level="patch", **kw),
    "geojson": lambda r, p, **kw: export_geojson(r, p, level="patch", **kw),
    "provenance": export_provenance,
    "ome_tiff": lambda r, p, **kw: export_ome_tiff(r, p, level="cell", tile=32, **kw),
}


@pytest.mark.parametrize("kind", sorted(EXPORTERS))
def test_overwrite_refusal_leaves_file_byte_identical(tmp_path, kind):
    target = tmp_path / f"out.{kind}"
    original = b"user data \x00\xff not ours"
    target.write_bytes(original)
    os.utime(target, (1_000_000, 1_000_000))
    with pytest.raises(OutputExistsError, match="already exists"):
        EXPORTERS[kind](make_result(), target)
    assert target.read_bytes() == original and target.stat().st_mtime == 1_000_000
    assert names(tmp_path) == [target.name]
    EXPORTERS[kind](make_result(), target, overwrite=True)
    assert target.read_bytes() != original
    assert names(tmp_path) == [target.name]


@pytest.mark.parametrize("kind", sorted(EXPORTERS))
def test_exporters_refuse_to_replace_a_folder(tmp_path, kind):
    target = tmp_path / "folder"
    target.mkdir()
    (target / "keep").write_text("x")
    with pytest.raises(OutputExistsError):
        EXPORTERS[kind](make_result(), target, overwrite=True)
    assert (target / "keep").read_text() == "x"


def _boom(*args, **kwargs):
    raise RuntimeError("simulated failure mid-write")


def _partial_then_boom_chunks(real):
    def gen(*args, **kwargs):
        yield next(real(*args, **kwargs))
        raise RuntimeError("simulated failure mid-write")

    return gen


def test_no_temp_files_after_failure_mid_write(tmp_path, monkeypatch):
    r = make_result()
    # CSV: first chunk written, then the generator fails
    monkeypatch.setattr(table_mod, "_chunks", _partial_then_boom_chunks(table_mod._chunks))
    with pytest.raises(RuntimeError):
        export_csv(r, tmp_path / "a.csv", level="cell")
    # GeoJSON: the second feature fails to encode
    real_dumps = geojson_mod.json.dumps
    calls = {"n": 0}

    def flaky_dumps(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated failure mid-write")
        return real_dumps(*a, **k)

    monkeypatch.setattr(geojson_mod.json, "dumps", flaky_dumps)
    with pytest.raises(RuntimeError):
        export_geojson(r, tmp_path / "a.geojson")
    monkeypatch.setattr(geojson_mod.json, "dumps", real_dumps)

    # OME-TIFF: the writer produces part of a file, then fails
    def half_tiff(path, *args, **kwargs):
        Path(path).write_bytes(b"II*\x00partial")
        raise RuntimeError("simulated failure mid-write")

    monkeypatch.setattr(heatmaps_mod, "_tifffile_write", half_tiff)
    with pytest.raises(ResultsError, match="simulated failure"):
        export_ome_tiff(r, tmp_path / "a.ome.tif")

    # OME-Zarr: a level written, then failure
    real_ngff = heatmaps_mod._zarr_write_ngff

    def half_zarr(folder, levels, chunk, attrs):
        real_ngff(folder, levels[:1], chunk, {})
        raise RuntimeError("simulated failure mid-write")

    monkeypatch.setattr(heatmaps_mod, "_zarr_write_ngff", half_zarr)
    with pytest.raises(ResultsError, match="simulated failure"):
        export_ome_zarr(r, tmp_path / "a.ome.zarr")

    # KeyboardInterrupt (Ctrl-C) cleans up too
    monkeypatch.setattr(
        table_mod, "_chunks", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt())
    )
    with pytest.raises(KeyboardInterrupt):
        export_csv(r, tmp_path / "b.csv")
    assert names(tmp_path) == []


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ResultsError, match="does not exist"):
        export_csv(make_result(), tmp_path / "no" / "such" / "x.csv")


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions"
)
def test_read_only_folder_is_a_clear_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ResultsError, match="permission|read-only"):
            export_csv(make_result(), ro / "x.csv")
        assert names(ro) == []
    finally:
        ro.chmod(0o755)


def test_sigkill_during_export_leaves_no_half_file(tmp_path):
    """SIGKILL while the CSV is half written: the final name never appears."""
    final = tmp_path / "cells.csv"
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from napari_mran.export import table
        from test_export import make_result
        real = table._chunks
        def slow(*a, **k):
            gen = real(*a, **k)
            yield next(gen)
            open({str(tmp_path / "ready")!r}, "w").close()
            time.sleep(60)
            yield from gen
        table._chunks = slow
        table.export_csv(make_result(), {str(final)!r}, level="cell")
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    sigkill_when_ready(proc, tmp_path / "ready", "writer never started")
    assert not final.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "ready"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".cells.csv.partial-")


def test_disk_full_mid_write_is_a_clear_error(tmp_path, monkeypatch):
    import errno

    real_dumps = geojson_mod.json.dumps
    calls = {"n": 0}

    def full(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_dumps(*a, **k)

    monkeypatch.setattr(geojson_mod.json, "dumps", full)
    with pytest.raises(ResultsError, match="no space left") as info:
        export_geojson(make_result(), tmp_path / "x.geojson", level="patch")
    assert "x.geojson" in str(info.value)
    assert names(tmp_path) == []


def test_file_created_by_another_run_while_writing_is_not_clobbered(tmp_path, monkeypatch):
    target = tmp_path / "bags.csv"
    real = table_mod._chunks

    def other_run_writes_first(*a, **k):
        target.write_text("other run")
        yield from real(*a, **k)

    monkeypatch.setattr(table_mod, "_chunks", other_run_writes_first)
    with pytest.raises(OutputExistsError, match="created while writing"):
        export_csv(make_result(), target)
    assert target.read_text() == "other run"
    assert names(tmp_path) == ["bags.csv"]
