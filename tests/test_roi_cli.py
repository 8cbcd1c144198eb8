"""`analyze --roi FILE [--roi-class NAME]` and `predict --roi-dir DIR [--roi-missing whole]`:
only the bags inside are analysed; bad regions are one line, exit 2, before anything is
written or read."""

from __future__ import annotations

import json

import numpy as np
import pytest

import napari_mran.analysis as analysis_mod
from napari_mran.cli.main import main
from napari_mran.results import SlideResult
from slide_writers import write_svs_pyramid
from test_roi import qupath_feature, rect, write_geojson

BAG = 2048


@pytest.fixture(scope="module")
def slides(tmp_path_factory, cmu_pixels):
    """Two 6144 x 4096 slides (3 x 2 bags, the real CMU-1 crop in 4 of them)."""
    root = tmp_path_factory.mktemp("roi-cli")
    img = np.full((4096, 6144, 3), 243, np.uint8)
    src = cmu_pixels[:BAG, :BAG]
    for (r, c) in [(0, 0), (0, 1), (1, 1), (1, 2)]:
        img[r * BAG:(r + 1) * BAG, c * BAG:(c + 1) * BAG] = src[:, ::-1] if c % 2 else src
    a = write_svs_pyramid(root / "A.svs", img, downsamples=(1, 2, 4, 16), tile=256, mpp=0.5)
    b = write_svs_pyramid(root / "B.svs", np.ascontiguousarray(img[:, ::-1]),
                          downsamples=(1, 2, 4, 16), tile=256, mpp=0.5)
    return a, b


@pytest.fixture
def no_reading(monkeypatch):
    calls = []
    monkeypatch.setattr(analysis_mod, "read_bag",
                        lambda *a, **k: calls.append(1) or pytest.fail("a bag was read"))
    return calls


def _error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1
    return err[0]


def test_analyze_inside_a_qupath_region_with_the_demo_model(slides, tmp_path, capsys):
    a, _ = slides
    roi = write_geojson(tmp_path / "regions.geojson",
                        [qupath_feature(rect(300, 200, 2600, 1800)),
                         qupath_feature(rect(4200, 2200, 6000, 4000), cls="Stroma")])
    out = tmp_path / "out"
    rc = main(["analyze", str(a), "--model", "demo", "--roi", str(roi), "--roi-class", "Tumor",
               "--out", str(out), "--quiet", "--json", "--export", "geojson,csv"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)["slides"][0]
    assert summary["bags"] == 2 and summary["region"]["bags_outside"] == 2
    result = SlideResult.load(out / "A.mran.zarr")
    assert result.boxes.tolist() == [[0, 0, 2048, 2048], [2048, 0, 4096, 2048]]
    assert result.provenance["region"]["classes"] == ["Tumor"]
    assert result.cell_tissue is not None
    # both classes: the Stroma rectangle adds the tissue bag at x 4096-6144, y 2048-4096
    # (not its neighbour at x 2048-4096: the rectangle starts at x 4200)
    rc = main(["analyze", str(a), "--model", "demo", "--roi", str(roi), "--out",
               str(tmp_path / "both"), "--quiet", "--export", ""])
    assert rc == 0 and SlideResult.load(tmp_path / "both" / "A.mran.zarr").n_bags == 3


@pytest.mark.parametrize("content, extra, message", [
    ("{oops", [], "not JSON"),
    (None, [], "far beyond the 6144 x 4096 px slide"),
    (None, ["--roi-class", "Necrosis,Other"], r"no annotation of class Necrosis, Other; the "
                                              r"classes found are: Tumor \(1\)"),
    ([qupath_feature([[[0, 0], [3000, 1500], [3000, 0], [0, 1200], [0, 0]]])], [],
     "self-intersecting ring"),
    ([qupath_feature(rect(0.1, 0.1, 0.9, 0.9))], [], r"within \[0, 1\]"),
])
def test_bad_region_is_one_line_exit_2_before_anything(slides, tmp_path, capsys, no_reading,
                                                       content, extra, message):
    a, _ = slides
    roi = tmp_path / "r.geojson"
    if isinstance(content, str):
        roi.write_text(content)
    else:
        write_geojson(roi, content or [qupath_feature(rect(1000, 1000, 20000, 9000))])
    out = tmp_path / "out"
    rc = main(["analyze", str(a), "--model", "demo", "--roi", str(roi), *extra, "--out",
               str(out), "--quiet"])
    line = _error_line(capsys)
    assert rc == 2 and str(roi) in line and pytest.importorskip("re").search(message, line)
    assert not out.exists() and not no_reading


def test_roi_usage_errors(slides, tmp_path, capsys, no_reading):
    a, b = slides
    roi = write_geojson(tmp_path / "r.geojson", [qupath_feature(rect(0, 0, 900, 900))])
    rc = main(["analyze", str(a), str(b), "--model", "demo", "--roi", str(roi), "--out",
               str(tmp_path / "o")])
    assert rc == 2 and "--roi-dir" in _error_line(capsys)
    rc = main(["analyze", str(a), "--model", "demo", "--roi-class", "Tumor", "--out",
               str(tmp_path / "o")])
    assert rc == 2 and "--roi-class needs --roi" in _error_line(capsys)
    rc = main(["analyze", str(a), "--model", "demo", "--roi", str(tmp_path / "nope.geojson"),
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "region file not found" in _error_line(capsys)
    assert not (tmp_path / "o").exists() and not no_reading


def test_predict_roi_dir_missing_regions_are_listed(slides, tmp_path, capsys, no_reading):
    a, b = slides
    rois = tmp_path / "rois"
    rois.mkdir()
    write_geojson(rois / "A.geojson", [qupath_feature(rect(300, 200, 2600, 1800))])
    out = tmp_path / "out"
    rc = main(["predict", str(a), str(b), "--model", "demo", "--roi-dir", str(rois),
               "--out", str(out), "--quiet"])
    line = _error_line(capsys)
    assert rc == 2 and "1 slide(s): B.svs" in line and "--roi-missing whole" in line
    assert not out.exists() and not no_reading


def test_predict_roi_dir_per_slide_and_whole(slides, tmp_path, capsys):
    a, b = slides
    rois = tmp_path / "rois"
    rois.mkdir()
    write_geojson(rois / "A.geojson", [qupath_feature(rect(300, 200, 2600, 1800))])
    (rois / "notes.txt").write_text("not a region")
    out = tmp_path / "out"
    args = ["predict", str(a), str(b), "--model", "demo", "--roi-dir", str(rois),
            "--roi-missing", "whole", "--out", str(out), "--quiet", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["done"] == 2
    ra, rb = SlideResult.load(out / "A.mran.zarr"), SlideResult.load(out / "B.mran.zarr")
    assert ra.n_bags == 2 and ra.provenance["region"]["source"] == str(rois / "A.geojson")
    assert rb.n_bags == 4 and "region" not in rb.provenance
    assert ra.provenance["cohort"]["options"]["roi"] == ra.provenance["region"]["sha256"]
    # the same run again skips both verified stores; a changed region re-analyses A only
    assert main(args) == 0 and json.loads(capsys.readouterr().out)["skipped"] == 2
    write_geojson(rois / "A.geojson", [qupath_feature(rect(300, 200, 1800, 1800))])
    assert main([*args, "--overwrite"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["skipped"] == 1 and again["done"] == 1
    assert SlideResult.load(out / "A.mran.zarr").n_bags == 1
