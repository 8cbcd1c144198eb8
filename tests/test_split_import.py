"""Import of the authors' published split CSVs (their csv/<cohort>/split/<ratio>/<i>/ layout),
written here as small fixtures (no network): both of their file layouts, id matching, and
the errors for ids that match no slide, wrong labels, a case in two parts."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from napari_mran.cli import main as cli_main
from napari_mran.training import LabelledSlide, LabelsError, read_authors_split
from napari_mran.training.splits import authors_split_folders

# TCGA-like file names (barcode.uuid.svs); two slides of case TCGA-AA-0002
N = {
    "t1": "TCGA-AA-0001-01A-01-BS1.0a1b2c3d-0000-0000-0000-000000000001.svs",
    "n1": "TCGA-AA-0001-11A-01-TS1.0a1b2c3d-0000-0000-0000-000000000002.svs",
    "t2": "TCGA-AA-0002-01A-01-BS1.0a1b2c3d-0000-0000-0000-000000000003.svs",
    "t2b": "TCGA-AA-0002-01A-02-TS1.0a1b2c3d-0000-0000-0000-000000000004.svs",
    "n3": "TCGA-AA-0003-11A-01-TS1.0a1b2c3d-0000-0000-0000-000000000005.svs",
    "t4": "TCGA-AA-0004-01A-01-BS1.0a1b2c3d-0000-0000-0000-000000000006.svs",
}
LABEL = {k: 0 if k.startswith("n") else 1 for k in N}


def rows(subfolders: bool = True) -> list[LabelledSlide]:
    """labels.csv rows as napari-mran tcga-labels writes them (GDC layout: <uuid>/<file>)."""
    return [LabelledSlide(f"gdc-{k}/{N[k]}" if subfolders else N[k], LABEL[k], N[k][:12])
            for k in N]


def write_bags(path: Path, keys, label=None) -> None:
    """Bag rows as in their csv/<cohort>/split files: wsi,bag_id,x,y,type."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["wsi", "bag_id", "x", "y", "type"])
        for k in keys:
            for b in range(3):
                w.writerow([f"/home/them/data/TCGA-X/uuid-{k}/{N.get(k, k)}", b, 2048 * b, 0,
                            LABEL.get(k, 1) if label is None else label])


def write_sheet(path: Path, keys) -> None:
    """Slide rows as in their csv/<cohort>/sheet files: File Name,Sample Type."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["File Name", "Sample Type"])
        for k in keys:
            w.writerow([N.get(k, k), "Primary Tumor" if LABEL.get(k, 1) else "Solid Tissue Normal"])


def layout(folder: Path, train, val, test, sheet_val: bool = True) -> Path:
    folder.mkdir(parents=True)
    write_bags(folder / "case_train.csv", train)
    (write_sheet if sheet_val else write_bags)(folder / "case_val.csv", val)
    write_bags(folder / "case_test.csv", test)
    return folder


def test_both_layouts_map_onto_the_labelled_slides(tmp_path):
    folder = layout(tmp_path / "0", ["t1", "n1", "t2", "t2b"], ["n3"], ["t4"])
    imp = read_authors_split(folder, rows())
    by = {p: sorted(m.slide.split("/")[-1] for m in imp.parts[p]) for p in imp.parts}
    assert by == {"train": sorted(N[k] for k in ("t1", "n1", "t2", "t2b")),
                  "val": [N["n3"]], "test": [N["t4"]]}
    assert imp.n_ids == {"train": 4, "val": 1, "test": 1}
    assert imp.matched_by["file name"] == 6 and not any(imp.unmatched.values())
    assert imp.n_bags[f"gdc-t1/{N['t1']}"] == 3  # their tissue bags per slide (bag layout)
    assert imp.unused == []


def test_ids_match_by_stem_or_barcode(tmp_path):
    # our copies were converted to .tiff and one renamed to its barcode only
    ours = [LabelledSlide(N["t1"].replace(".svs", ".tiff"), 1, "TCGA-AA-0001"),
            LabelledSlide(N["n1"][:23] + ".svs", 0, "TCGA-AA-0001"),
            LabelledSlide(N["t4"], 1, "TCGA-AA-0004")]
    imp = read_authors_split(layout(tmp_path / "0", ["t1", "n1"], [], ["t4"]), ours)
    assert imp.matched_by == {"file name": 1, "stem": 1, "TCGA barcode": 1}
    assert len(imp.parts["train"]) == 2


def test_ids_that_match_no_slide_are_an_error_or_reported(tmp_path):
    folder = layout(tmp_path / "0", ["t1", "n1", "ghost-a.svs"], ["n3"], ["t4", "ghost-b.svs"])
    with pytest.raises(LabelsError, match=r"2 of 6 slide ids .* match no slide") as err:
        read_authors_split(folder, rows())
    assert "train: ghost-a.svs" in str(err.value) and "test: ghost-b.svs" in str(err.value)
    imp = read_authors_split(folder, rows(), allow_missing=True)
    assert imp.unmatched == {"train": ["ghost-a.svs"], "val": [], "test": ["ghost-b.svs"]}
    assert sorted(s.split("/")[-1] for s in imp.unused) == sorted([N["t2"], N["t2b"]])
    report = imp.report()
    assert "2 id(s) match no labelled slide" in report and "2 labelled slide(s) are in no part" in report


def test_inconsistent_split_files_are_refused(tmp_path):
    # a label that disagrees with labels.csv
    bad = tmp_path / "label" / "0"
    bad.mkdir(parents=True)
    write_bags(bad / "case_train.csv", ["t1"], label=0)
    write_sheet(bad / "case_val.csv", ["n3"])
    write_bags(bad / "case_test.csv", ["t4"])
    with pytest.raises(LabelsError, match="another label"):
        read_authors_split(bad, rows())
    # one case (TCGA-AA-0002) in two parts
    with pytest.raises(LabelsError, match="case 'TCGA-AA-0002' is in both train and test"):
        read_authors_split(layout(tmp_path / "case" / "0", ["t2"], ["n3"], ["t2b"]), rows())
    # a slide in two parts
    with pytest.raises(LabelsError, match="is in both"):
        read_authors_split(layout(tmp_path / "twice" / "0", ["t1"], ["t1"], ["t4"]), rows())
    # a missing file, unknown columns, an unknown sample type
    folder = layout(tmp_path / "cols" / "0", ["t1"], ["n3"], ["t4"])
    (folder / "case_test.csv").unlink()
    with pytest.raises(LabelsError, match="case_test.csv: split file not found"):
        read_authors_split(folder, rows())
    (folder / "case_test.csv").write_text("slide,label\nx.svs,1\n")
    with pytest.raises(LabelsError, match="expected the authors' columns"):
        read_authors_split(folder, rows())
    (folder / "case_test.csv").write_text(f"File Name,Sample Type\n{N['t4']},Metastatic\n")
    with pytest.raises(LabelsError, match="'Metastatic' is not an integer"):
        read_authors_split(folder, rows())


def test_split_folders_in_numeric_order(tmp_path):
    for i in (0, 1, 2, 10):
        (tmp_path / str(i)).mkdir()
    (tmp_path / "notes").mkdir()
    assert [p.name for p in authors_split_folders(tmp_path)] == ["0", "1", "2", "10"]
    with pytest.raises(LabelsError, match="no numbered split folders"):
        authors_split_folders(tmp_path / "notes")


def test_cli_unmatched_ids_exit_2_before_anything_is_created(tmp_path, capsys):
    slides = tmp_path / "slides"
    for r in rows():  # read_labels checks the files exist; nothing opens them here
        (slides / r.slide).parent.mkdir(parents=True, exist_ok=True)
        (slides / r.slide).write_bytes(b"")
    labels = tmp_path / "labels.csv"
    labels.write_text("slide,label,case\n" + "".join(f"{r.slide},{r.label},{r.case}\n" for r in rows()))
    split_dir = tmp_path / "split" / "311"
    layout(split_dir / "0", ["t1", "n1"], ["n3"], ["t4"])
    layout(split_dir / "1", ["t1", "n1", "ghost.svs"], ["n3"], ["t4"])
    out = tmp_path / "out"
    base = ["train", "--slides", str(slides), "--labels", str(labels), "--out", str(out),
            "--split-dir", str(split_dir)]
    assert cli_main(base) == 2
    err = capsys.readouterr().err
    assert "1: 1 of 5 slide ids in the split files match no slide" in err and "ghost.svs" in err
    assert not out.exists()
    assert cli_main(base + ["--repeats", "3"]) == 2
    assert "3 repeats asked, but it holds 2 split folder(s)" in capsys.readouterr().err
    assert not out.exists()
