"""TCGA labels from slide file names (empty files named like GDC downloads)."""

from __future__ import annotations

import json
import os

import pytest

from napari_mran.errors import LabelsError, OutputExistsError
from napari_mran.labels import read_labels_table
from napari_mran.tcga import parse_tcga_name, sample_kind, tcga_labels, write_labels_csv

U1 = "0b5c2d7e-4a1f-4c3e-9d2b-111111111111"
U2 = "6f1e3a9c-2b4d-4e8f-a1c7-222222222222"


def _touch(root, rel):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


@pytest.fixture
def gdc_folder(tmp_path):
    root = tmp_path / "slides"
    files = [
        f"TCGA-A1-A0SB-01Z-00-DX1.{U1}.svs",               # tumour (primary solid)
        f"TCGA-A1-A0SB-11A-01-TS1.{U2}.svs",               # normal, same case
        f"{U1}/TCGA-BH-A0B3-06A-02-BSB.{U2}.svs",          # metastatic = tumour, in a GDC file folder
        f"{U2}/tcga-bh-a0bw-10a-01-ts1.{U1}.svs",          # blood-derived normal, lower-case name
        f"TCGA-E2-A14N-20A-01-TS1.{U1}.svs",               # control: skipped
        f"TCGA-E2-A14N-50A-01-TS1.{U1}.svs",               # cell line: unknown sample type
        f"dupe/TCGA-A1-A0SB-01Z-00-DX1.{U2}.svs",          # the first slide again
        "slide_0001.svs",                                  # not a TCGA name
        "TCGA-A1-A0SB.svs",                                # a case barcode without a sample type
        "annotations.txt",                                 # not a slide file
        ".hidden/TCGA-A1-A0SB-01Z-00-DX2.svs",             # hidden folder: ignored
        f".TCGA-A1-A0SB-01Z-00-DX3.{U1}.svs.partial",      # hidden partial download: ignored
    ]
    for rel in files:
        _touch(root, rel)
    return root


def test_parse_barcodes_and_sample_kinds():
    p = parse_tcga_name(f"some/folder/TCGA-A1-A0SB-01Z-00-DX1.{U1}.svs")
    assert (p.barcode, p.case, p.sample_type, p.kind) == ("TCGA-A1-A0SB-01Z-00-DX1", "TCGA-A1-A0SB", 1, "tumour")
    assert parse_tcga_name("TCGA-A1-A0SB-11.svs").kind == "normal"
    assert parse_tcga_name("tcga-a1-a0sb-01a.tif").case == "TCGA-A1-A0SB"
    for bad in ("TCGA-A1-A0SB.svs", "slide.svs", "TCGA-A1-A0S-01Z.svs", "TCGA-A1-A0SB-1Z.svs", "XTCGA-A1-A0SB-01Z.svs"):
        assert parse_tcga_name(bad) is None, bad
    assert [sample_kind(t) for t in (1, 9, 10, 19, 20, 29, 30, 0, 60)] == \
        ["tumour", "tumour", "normal", "normal", "control", "control", "unknown", "unknown", "unknown"]


def test_labels_from_a_gdc_download_folder(gdc_folder, tmp_path):
    result = tcga_labels(gdc_folder)
    rows = {r.slide: (r.label, r.case) for r in result.rows}
    assert rows == {
        f"TCGA-A1-A0SB-01Z-00-DX1.{U1}.svs": (1, "TCGA-A1-A0SB"),
        f"TCGA-A1-A0SB-11A-01-TS1.{U2}.svs": (0, "TCGA-A1-A0SB"),
        f"{U1}/TCGA-BH-A0B3-06A-02-BSB.{U2}.svs": (1, "TCGA-BH-A0B3"),
        f"{U2}/tcga-bh-a0bw-10a-01-ts1.{U1}.svs": (0, "TCGA-BH-A0BW"),
    }
    skipped = {s.slide: s.reason for s in result.skipped}
    assert skipped == {
        f"TCGA-E2-A14N-20A-01-TS1.{U1}.svs": "control",
        f"TCGA-E2-A14N-50A-01-TS1.{U1}.svs": "unknown_type",
        f"dupe/TCGA-A1-A0SB-01Z-00-DX1.{U2}.svs": "duplicate",
        "slide_0001.svs": "not_tcga",
        "TCGA-A1-A0SB.svs": "not_tcga",
        "annotations.txt": "not_slide",
    }
    assert result.counts() == {"slides": 4, "tumour": 2, "normal": 2, "cases": 3,
                               "skipped": {"control": 1, "unknown_type": 1, "duplicate": 1, "not_tcga": 2,
                                           "not_slide": 1}}
    report = result.report()
    for needle in ("4 slides of 3 cases", "control sample (type 20)", "unknown sample type 50",
                   f"same barcode TCGA-A1-A0SB-01Z-00-DX1 as TCGA-A1-A0SB-01Z-00-DX1.{U1}.svs",
                   "not a TCGA slide name", "slide_0001.svs", "not a slide file"):
        assert needle in report, needle

    out = tmp_path / "labels.csv"
    assert write_labels_csv(result, out) == out
    table = read_labels_table(out, gdc_folder, class_names=["normal", "tumour"])
    assert {r["slide"]: (r["label"], r["case"]) for r in table} == rows
    assert out.read_text().splitlines()[0] == "slide,label,case"
    assert sorted(os.listdir(tmp_path)) == ["labels.csv", "slides"]  # no temporary file left
    before = out.read_bytes()
    with pytest.raises(OutputExistsError):
        write_labels_csv(result, out)
    assert out.read_bytes() == before
    flat = tcga_labels(gdc_folder, recursive=False, tumour_label=0, normal_label=1)
    assert {r.slide: r.label for r in flat.rows} == {f"TCGA-A1-A0SB-01Z-00-DX1.{U1}.svs": 0,
                                                     f"TCGA-A1-A0SB-11A-01-TS1.{U2}.svs": 1}
    write_labels_csv(flat, out, overwrite=True)
    assert len(read_labels_table(out, gdc_folder)) == 2


def test_errors(tmp_path):
    with pytest.raises(LabelsError, match="not found"):
        tcga_labels(tmp_path / "absent")
    _touch(tmp_path, "slide.svs")
    _touch(tmp_path, "TCGA-A1-A0SB-20A-01-TS1.svs")
    empty = tcga_labels(tmp_path)
    assert not empty.rows and len(empty.skipped) == 2
    with pytest.raises(LabelsError, match="no TCGA tumour or normal slide") as info:
        write_labels_csv(empty, tmp_path / "labels.csv")
    assert "control sample" in str(info.value)
    assert not (tmp_path / "labels.csv").exists()
    for kwargs in ({"tumour_label": 1, "normal_label": 1}, {"tumour_label": -1}, {"normal_label": "0"}):
        with pytest.raises(LabelsError):
            tcga_labels(tmp_path, **kwargs)
    _touch(tmp_path, "TCGA-A1-A0SB-01Z-00-DX1.svs")
    assert "only one class" in tcga_labels(tmp_path).report()


def test_cli_tcga_labels(gdc_folder, tmp_path, capsys):
    from napari_mran.cli import main

    out = tmp_path / "labels.csv"
    assert main(["tcga-labels", str(gdc_folder), "--out", str(out)]) == 0
    cap = capsys.readouterr()
    counts = json.loads(cap.out)
    assert counts["labels"] == str(out) and len(read_labels_table(out, gdc_folder)) == 4
    assert "control" in cap.err  # the report of what was skipped and why
    assert main(["tcga-labels", str(gdc_folder), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["tcga-labels", str(tmp_path / "absent"), "--out", str(tmp_path / "x.csv")]) == 2
    capsys.readouterr()
    empty = tmp_path / "none"
    empty.mkdir()
    (empty / "slide.svs").write_bytes(b"")
    assert main(["tcga-labels", str(empty), "--out", str(tmp_path / "y.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("files skipped") == 1 and not (tmp_path / "y.csv").exists()
