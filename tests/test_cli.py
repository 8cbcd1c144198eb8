"""The `napari-mran` CLI: info, analyze (+ exports), errors as exit codes with reasons."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

from napari_mran.cli import main
from napari_mran.results import SlideResult
from datafiles import shared
from slide_writers import write_svs_pyramid


@pytest.fixture(scope="module")
def two_bag_slide(tmp_path_factory, cmu_pixels):
    img = np.full((2048, 4096, 3), 240, np.uint8)
    img[:, :2048] = cmu_pixels[:2048, :2048]
    img[:, 2048:] = cmu_pixels[:2048, :2048][:, ::-1]
    return write_svs_pyramid(tmp_path_factory.mktemp("s") / "two=bags.svs", img,
                             downsamples=(1, 2, 8), mpp=0.5)


def test_info(capsys, cmu_small):
    assert main(["info", str(cmu_small), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["level_dimensions"] == [[2220, 2967]] and info["mpp"] == [0.499, 0.499]


def test_info_bad_file(capsys, tmp_path):
    p = tmp_path / "x.svs"
    p.write_bytes(b"garbage" * 10)
    assert main(["info", str(p)]) == 2
    err = capsys.readouterr().err
    assert str(p) in err and "not a recognised slide format" in err and "Traceback" not in err


def test_analyze_writes_store_and_exports(tmp_path, capsys, two_bag_slide, model_file):
    out = tmp_path / "out"
    rc = main(["analyze", str(two_bag_slide), "--model", str(model_file), "--out", str(out),
               "--export", "geojson,csv,ome-tiff,provenance,overview", "--quiet", "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)["slides"][0]
    stem = "two=bags"
    assert report["bags"] == 2
    result = SlideResult.load(out / f"{stem}.mran.zarr")
    assert result.n_bags == 2 and result.provenance["model"]["sha256"]
    gj = json.loads((out / f"{stem}.bags.geojson").read_text())
    assert len(gj["features"]) == 2
    assert (out / f"{stem}.patches.csv").read_text().count("\n") == 1 + 2 * 64
    assert tifffile.imread(out / f"{stem}.patch-attention-global.ome.tif").shape == (8, 16)
    assert (out / f"{stem}.overview.png").read_bytes()[:4] == b"\x89PNG"
    # a second run refuses before computing, and leaves the first run's files as they were
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    rc = main(["analyze", str(two_bag_slide), "--model", str(model_file), "--out", str(out),
               "--quiet"])
    assert rc == 2 and "already exists" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_analyze_bad_inputs(tmp_path, capsys, model_file):
    bad_model = tmp_path / "bad.safetensors"
    bad_model.write_bytes(b"\x00" * 100)
    slide = shared("openslide-python/unreadable.svs")
    assert main(["analyze", str(slide), "--model", str(bad_model), "--out", str(tmp_path / "o")]) == 2
    assert str(bad_model) in capsys.readouterr().err
    assert main(["analyze", str(slide), "--model", str(model_file), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(slide) in err and "cannot be decoded" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_sigint_stops_and_writes_nothing(tmp_path, two_bag_slide, model_file):
    """Ctrl-C during an analysis: exit 130 within a batch, no results written."""
    out = tmp_path / "sig"
    code = (
        "import time, sys\n"
        "import napari_mran.analysis as A\n"
        "orig = A.read_bag\n"
        "def slow(*a, **k):\n"
        "    print('reading', flush=True); time.sleep(1.5); return orig(*a, **k)\n"
        "A.read_bag = slow\n"
        "from napari_mran.cli import main\n"
        f"sys.exit(main(['analyze', {str(two_bag_slide)!r}, '--model', {str(model_file)!r},"
        f" '--out', {str(out)!r}, '--batch-size', '1', '--quiet']))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "reading" in line:
            break
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert time.perf_counter() - t0 < 20
    assert not out.exists() or not any(p for p in out.iterdir() if not p.name.startswith("."))


def _strict(path):
    def bad(constant):
        raise AssertionError(f"{path}: non-strict JSON constant {constant}")
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=bad)


def _inside(coords, w, h):
    """Every vertex of a (Multi)Polygon ring list lies inside the w x h slide."""
    pts = np.asarray([p for ring in coords for p in ring], float)
    return (pts[:, 0] >= 0).all() and (pts[:, 0] <= w).all() and \
        (pts[:, 1] >= 0).all() and (pts[:, 1] <= h).all()


def test_cmu1_analyze_then_export_every_format(tmp_path, capsys, cmu_small, model_file):
    """Issue 3's done-criterion, literally: `napari-mran analyze` on the real
    CMU-1-Small-Region.svs with a random-init checkpoint writes the store and every
    export; `napari-mran export` then writes each format of each level from the store;
    everything is re-opened (strict JSON, tifffile, zarr) and lines up with the slide."""
    import zarr

    w, h = 2220, 2967
    out = tmp_path / "out"
    rc = main(["analyze", str(cmu_small), "--model", str(model_file), "--out", str(out),
               "--export", "geojson,csv,ome-tiff,ome-zarr,provenance,overview", "--quiet",
               "--json"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)["slides"][0]
    store = out / "CMU-1-Small-Region.mran.zarr"
    assert report["outputs"]["store"] == str(store)
    for kind, path in report["outputs"].items():
        assert (out / path).exists(), kind
    result = SlideResult.load(store)
    assert result.slide_size == (w, h) and result.n_bags >= 1

    ex = tmp_path / "ex"
    rc = main(["export", str(store), "--format", "geojson,csv,ome-tiff,ome-zarr,provenance",
               "--level", "bag,patch,cell", "--weighting", "global", "--out", str(ex)])
    assert rc == 0, capsys.readouterr().err
    written = json.loads(capsys.readouterr().out)["written"]
    stem = "CMU-1-Small-Region"
    expect = {f"{stem}.{p}.geojson" for p in ("bags", "patches", "cells")} | \
        {f"{stem}.{p}.csv" for p in ("bags", "patches", "cells")} | \
        {f"{stem}.bag-attention-local.ome.tif", f"{stem}.bag-attention-local.ome.zarr"} | \
        {f"{stem}.{lv}-attention-global.{e}" for lv in ("patch", "cell")
         for e in ("ome.tif", "ome.zarr")} | {f"{stem}.provenance.json"}
    assert {os.path.basename(p) for p in written} == expect
    assert sorted(p.name for p in ex.iterdir()) == sorted(expect)

    # edge policy pad: the partial bag below reaches past the slide; exports hold only
    # what lies on the slide (clipped geometry; patches/cells wholly outside left out)
    assert result.boxes[:, 3].max() > h
    for level, lv in (("bags", "bag"), ("patches", "patch"), ("cells", "cell")):
        on_slide = int(result.slide_boxes(lv)[1].sum())
        assert on_slide < result.n_bags * {"bag": 1, "patch": 64, "cell": 1024}[lv] or lv == "bag"
        gj = _strict(ex / f"{stem}.{level}.geojson")
        # GeoJSON: shown (tissue) patches/cells only; bags all; CSV: every row on the slide
        shown = on_slide if lv == "bag" else \
            int((result.shown(lv) & result.slide_boxes(lv)[1]).sum())
        assert 0 < shown <= on_slide
        assert gj["type"] == "FeatureCollection" and len(gj["features"]) == shown
        for f in gj["features"]:
            assert _inside(f["geometry"]["coordinates"], w, h)
            assert np.isfinite(f["properties"]["measurements"]["score"])
        rows = (ex / f"{stem}.{level}.csv").read_text().strip().splitlines()
        assert len(rows) == 1 + on_slide
    for level, px in (("bag", 2048), ("patch", 256), ("cell", 64)):
        lw = "local" if level == "bag" else "global"
        heat = result.heatmap(level, lw)
        with tifffile.TiffFile(ex / f"{stem}.{level}-attention-{lw}.ome.tif") as tif:
            assert tif.is_ome
            data = tif.series[0].asarray()
            ome = tif.ome_metadata
        np.testing.assert_array_equal(data, heat.data)
        assert f'PhysicalSizeX="{px * 0.499:g}"' in ome or f'PhysicalSizeX="{px * 0.499}"' in ome
        group = zarr.open_group(str(ex / f"{stem}.{level}-attention-{lw}.ome.zarr"), mode="r",
                                zarr_format=2)
        ms = group.attrs["multiscales"][0]
        np.testing.assert_array_equal(group[ms["datasets"][0]["path"]][...], heat.data)
    prov = _strict(ex / f"{stem}.provenance.json")
    assert prov["provenance"]["slide"]["path"] == str(cmu_small)


def test_export_refuses_existing_and_bad_input(tmp_path, capsys, two_bag_slide, model_file):
    out = tmp_path / "out"
    assert main(["analyze", str(two_bag_slide), "--model", str(model_file), "--out", str(out),
                 "--export", "", "--quiet"]) == 0
    capsys.readouterr()
    store = out / "two=bags.mran.zarr"
    assert main(["export", str(store), "--format", "csv,overview"]) == 0  # beside the store
    written = json.loads(capsys.readouterr().out)["written"]
    assert [os.path.basename(p) for p in written] == [
        "two=bags.bags.csv", "two=bags.patches.csv", "two=bags.cells.csv",
        "two=bags.overview.png"]
    # the same export again: every file is already there with this content, kept as is
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["export", str(store), "--format", "csv"]) == 0
    assert len(json.loads(capsys.readouterr().out)["unchanged"]) == 3
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # one existing file with other content: refused before anything is written
    (out / "two=bags.bags.csv").write_text("edited by the user\n")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["export", str(store), "--format", "geojson,csv"]) == 2
    err = capsys.readouterr().err
    assert "two=bags.bags.csv" in err and "already exists" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert main(["export", str(store), "--format", "csv", "--level", "bag",
                 "--overwrite"]) == 0
    capsys.readouterr()
    assert main(["export", str(store), "--format", "geojson", "--gzip", "--level", "patch"]) == 0
    gz = out / "two=bags.patches.geojson.gz"
    assert json.loads(capsys.readouterr().out)["written"] == [str(gz)]
    import gzip
    assert len(json.loads(gzip.decompress(gz.read_bytes()))["features"]) == \
        int(SlideResult.load(store).shown("patch").sum())
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    # bad input: clear errors naming the file or the option, exit 2
    assert main(["export", str(store), "--format", "pdf"]) == 2
    assert "unknown export format 'pdf'" in capsys.readouterr().err
    assert main(["export", str(store), "--format", "csv", "--level", "tile"]) == 2
    assert "unknown level" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "none.mran.zarr"), "--format", "csv"]) == 2
    assert "none.mran.zarr" in capsys.readouterr().err
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    assert main(["export", str(store), "--format", "provenance", "--out", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert str(a_file) in err and "cannot create the output folder" in err
    assert a_file.read_text() == "mine"
    # the overview needs the slide: gone -> a clear error, nothing written
    moved = tmp_path / "moved.svs"
    two_copy = tmp_path / "copy"
    shutil.copytree(store, two_copy / store.name)
    r = SlideResult.load(two_copy / store.name)
    assert r.provenance["slide"]["path"] == str(two_bag_slide)
    slide_bytes = two_bag_slide.read_bytes()
    two_bag_slide.rename(moved)
    try:
        assert main(["export", str(two_copy / store.name), "--format", "csv,overview"]) == 2
        err = capsys.readouterr().err
        assert "overview needs the slide" in err and str(two_bag_slide) in err
        assert sorted(p.name for p in two_copy.iterdir()) == [store.name]
    finally:
        moved.rename(two_bag_slide)
    assert two_bag_slide.read_bytes() == slide_bytes
