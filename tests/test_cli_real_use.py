"""Issue 9 points 4, 5 and 9: the CLI as a new user meets it.

No silent demo model; nothing overwritten by accident; the README's analyze-then-export
works; ``info --json`` is one document; ``info | head`` ends quietly."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import napari_mran.analysis as analysis_mod
from napari_mran.cli import main
from napari_mran.results import SlideResult
from slide_writers import write_svs_pyramid

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def one_bag(tmp_path_factory, cmu_pixels):
    """Two different one-bag slides with the same file name in two folders."""
    root = tmp_path_factory.mktemp("same-stem")
    (root / "a").mkdir()
    (root / "b").mkdir()
    a = write_svs_pyramid(root / "a" / "X.svs", cmu_pixels[:2048, :2048], downsamples=(1, 4))
    b = write_svs_pyramid(root / "b" / "X.svs", np.ascontiguousarray(cmu_pixels[-2048:, :2048]),
                          downsamples=(1, 4))
    return a, b


# ------------------------------------------------------------------ point 4: the demo model

def test_model_is_required_everywhere(one_bag, tmp_path, capsys):
    a, _ = one_bag
    for argv in (["analyze", str(a), "--out", str(tmp_path / "o")],
                 ["predict", str(a), "--out", str(tmp_path / "o")],
                 ["evaluate", "--slides", str(a.parent), "--labels", str(tmp_path / "l.csv"),
                  "--out", str(tmp_path / "o")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "--model is required" in err and "--model demo" in err, err
    assert not (tmp_path / "o").exists()


def test_demo_model_says_so_in_every_cli_output(one_bag, tmp_path, capsys):
    a, _ = one_bag
    out = tmp_path / "an"
    assert main(["analyze", str(a), "--model", "demo", "--out", str(out), "--quiet",
                 "--json"]) == 0
    cap = capsys.readouterr()
    summary = json.loads(cap.out)["slides"][0]
    assert summary["model"]["demo"] is True and "not a diagnosis" in summary["model"]["note"]
    assert "--model demo" in cap.err and "synthetic" in cap.err
    assert SlideResult.load(out / "X.mran.zarr").provenance["model"]["demo"] is True

    pred = tmp_path / "pred"
    assert main(["predict", str(a), "--model", "demo", "--out", str(pred), "-q"]) == 0
    cap = capsys.readouterr()
    assert "DEMO" in cap.out and "--model demo" in cap.err
    with open(pred / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["status"] == "done" and rows[0]["model"].startswith("DEMO model")
    assert SlideResult.load(pred / "X.mran.zarr").provenance["model"]["demo"] is True

    labels = tmp_path / "labels.csv"
    labels.write_text("slide,label,case\nX.svs,1,c1\n")
    ev = tmp_path / "ev"
    rc = main(["evaluate", "--model", "demo", "--slides", str(a.parent), "--labels",
               str(labels), "--out", str(ev), "--k", "1", "--m", "4", "-q"])
    assert rc == 0, capsys.readouterr().err
    assert "DEMO" in capsys.readouterr().out
    with open(ev / "predictions.csv", newline="") as fh:
        assert next(csv.DictReader(fh))["model"].startswith("DEMO model")
    assert json.loads((ev / "metrics.json").read_text())["model"]["demo"] is True


def test_a_checkpoint_is_not_called_demo(one_bag, model_file, tmp_path, capsys):
    a, _ = one_bag
    assert main(["analyze", str(a), "--model", str(model_file), "--out", str(tmp_path),
                 "--export", "", "--quiet"]) == 0
    cap = capsys.readouterr()
    assert "DEMO" not in cap.out and "demo" not in cap.err
    assert main(["analyze", str(a), "--model", str(model_file), "--out", str(tmp_path),
                 "--export", "", "--quiet", "--json", "--overwrite"]) == 0
    assert json.loads(capsys.readouterr().out)["slides"][0]["model"]["demo"] is False


# ------------------------------------------------------------------ point 5: nothing lost

def test_same_stem_inputs_get_distinct_outputs(one_bag, model_file, tmp_path, capsys):
    a, b = one_bag
    out = tmp_path / "D"
    rc = main(["analyze", str(a), str(b), "--model", str(model_file), "--out", str(out),
               "--export", "csv", "--overwrite", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    docs = capsys.readouterr().out
    stores = sorted(p for p in out.iterdir() if p.name.endswith(".mran.zarr"))
    csvs = sorted(p for p in out.iterdir() if p.name.endswith(".csv"))
    assert len(stores) == 2 and len(csvs) == 2, docs
    r1, r2 = (SlideResult.load(s) for s in stores)
    assert {r1.provenance["slide"]["path"], r2.provenance["slide"]["path"]} == {str(a), str(b)}
    assert not np.array_equal(r1.patch_attention, r2.patch_attention)
    # the same file twice is refused before anything is computed
    assert main(["analyze", str(a), str(a), "--model", str(model_file), "--out",
                 str(tmp_path / "E"), "--quiet"]) == 2
    assert "given more than once" in capsys.readouterr().err


def test_overwrite_onto_a_foreign_folder_fails_before_reading(one_bag, model_file, tmp_path,
                                                             capsys, monkeypatch):
    a, _ = one_bag
    out = tmp_path / "D"
    store = out / "X.mran.zarr"
    store.mkdir(parents=True)
    (store / "my-notes.txt").write_text("mine")  # not a results store: never replaced
    calls = []
    monkeypatch.setattr(analysis_mod, "read_bag",
                        lambda *a, **k: calls.append(1) or pytest.fail("a bag was read"))
    rc = main(["analyze", str(a), "--model", str(model_file), "--out", str(out), "--overwrite",
               "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "X.mran.zarr" in err and "refuses to replace" in err
    assert not calls and (store / "my-notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["X.mran.zarr"]


def test_existing_outputs_name_the_options(one_bag, model_file, tmp_path, capsys):
    a, _ = one_bag
    out = tmp_path / "D"
    assert main(["analyze", str(a), "--model", str(model_file), "--out", str(out), "--export",
                 "csv", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["analyze", str(a), "--model", str(model_file), "--out", str(out),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and "--out" in err


def test_readme_analyze_then_export_into_the_same_folder(one_bag, tmp_path, capsys,
                                                         monkeypatch):
    """The README's two lines, literally (demo model, default exports, same folder)."""
    a, _ = one_bag
    slide = tmp_path / "slide.svs"
    shutil.copy(a, slide)
    readme = (REPO / "README.md").read_text()
    assert "napari-mran analyze slide.svs --model demo --out results/" in readme
    assert "napari-mran export results/slide.mran.zarr --format geojson,csv,ome-tiff,ome-zarr" \
        in readme
    monkeypatch.chdir(tmp_path)
    assert main(["analyze", "slide.svs", "--model", "demo", "--out", "results/", "-q"]) == 0
    first = {p.name: p.read_bytes() for p in (tmp_path / "results").iterdir() if p.is_file()}
    capsys.readouterr()
    rc = main(["export", "results/slide.mran.zarr", "--format", "geojson,csv,ome-tiff,ome-zarr"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    # what analyze wrote is the same content: kept as it was, reported as unchanged
    assert {Path(p).name for p in report["unchanged"]} == {"slide.bags.geojson",
                                                          "slide.patches.csv"}
    assert {p.name: p.read_bytes() for p in (tmp_path / "results").iterdir()
            if p.name in first} == first
    assert len(report["written"]) == 9  # 11 planned files, 2 already there
    # a file the user changed is not replaced; the error says which option to use
    (tmp_path / "results" / "slide.patches.csv").write_text("edited\n")
    assert main(["export", "results/slide.mran.zarr", "--format", "csv"]) == 2
    err = capsys.readouterr().err
    assert "slide.patches.csv" in err and "--overwrite" in err
    assert (tmp_path / "results" / "slide.patches.csv").read_text() == "edited\n"


# ------------------------------------------------------------------ point 9

def test_info_json_is_one_document(cmu_small, one_bag, capsys):
    a, b = one_bag
    assert main(["info", str(cmu_small), str(a), str(b), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [d["path"] for d in doc] == [str(cmu_small), str(a), str(b)]
    assert main(["info", str(a), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == str(a)


def test_info_into_head_ends_quietly(cmu_small):
    """``napari-mran info ... | head -1``: no BrokenPipeError traceback."""
    many = [str(cmu_small)] * 40
    cmd = [sys.executable, "-m", "napari_mran", "info", *many]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader goes away, as `head -1` does
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert first and "Traceback" not in err and "BrokenPipe" not in err, err


def test_an_unreadable_slide_leaves_no_output_folder(tmp_path, capsys):
    fake = tmp_path / "fake.svs"
    fake.write_text("not a slide")
    out = tmp_path / "never"
    assert main(["analyze", str(fake), "--model", "demo", "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert str(fake) in err and "not a recognised slide format" in err
    assert not out.exists()
