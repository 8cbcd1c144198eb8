"""Repeated Monte-Carlo splits (--split-ratio/--repeats): the split function, the CLI's
checks, a two-repeat run with its summary, resume of an interrupted multi-repeat run, and
the authors' split folders (--split-dir) end to end."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from napari_mran.cli import main as cli_main
from napari_mran.synthetic import make_cohort
from napari_mran.training import (LabelledSlide, LabelsError, TrainConfig, parse_ratio,
                                  ratio_split, repeat_seed, train_repeats)
from napari_mran.training.repeats import plan_repeats

FAST = ["--epochs", "1", "--width", "0.0625", "--max-bags-per-slide", "1", "--batch-size", "2",
        "--workers", "2", "--quiet"]
CFG = dict(epochs=1, width=0.0625, max_bags_per_slide=1, batch_size=2, workers=2)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """10 single-slide cases, 5 tumour and 5 normal: a 2:1:2 split gives every part both
    classes (2 + 1 + 2 cases of each label)."""
    out = tmp_path_factory.mktemp("cohort10")
    labels = make_cohort(out, 10, seed=3, width=4096, height=2048)
    return out, labels


def _rows(n_cases: int, slides_per_case=(1, 2, 3), labels=(0, 1)) -> list[LabelledSlide]:
    rows = []
    for c in range(n_cases):
        for k in range(slides_per_case[c % len(slides_per_case)]):
            rows.append(LabelledSlide(f"c{c}_s{k}.svs", labels[c % len(labels)], f"case{c}"))
    return rows


def _read_split(path: Path) -> dict[str, str]:
    with open(path, newline="") as fh:
        return {r["slide"]: r["split"] for r in csv.DictReader(fh)}


def test_parse_ratio():
    assert parse_ratio("3:1:1") == (3, 1, 1)
    assert parse_ratio(" 2 : 1 : 2 ") == (2, 1, 2)
    assert parse_ratio([2, 1, 2]) == (2, 1, 2)
    for bad in ("2:1", "2:1:2:1", "2:1:0", "2:-1:2", "1.5:1:1", "a:b:c", "", "2::1"):
        with pytest.raises(LabelsError, match="three positive integers"):
            parse_ratio(bad)


def test_ratio_split_case_level_stratified_seeded():
    rows = _rows(60)  # 60 cases (30 per label), 1-3 slides each
    ratio = (3, 1, 1)
    a = ratio_split(rows, ratio, seed=repeat_seed(0, 0))
    assert a == ratio_split(rows, ratio, seed=repeat_seed(0, 0))  # deterministic per seed
    assert ratio_split(rows, ratio, seed=repeat_seed(0, 1)) != a  # another repeat, another split
    assert ratio_split(rows, ratio, seed=repeat_seed(1, 0)) != a  # another --seed too
    assert len({repeat_seed(0, i) for i in range(5)}) == 5
    assert sorted(r.slide for p in a.values() for r in p) == sorted(r.slide for r in rows)
    where = {}
    for part, members in a.items():
        for m in members:
            assert where.setdefault(m.case, part) == part  # a case never in two parts
    for label in (0, 1):  # stratified: per label, the case counts follow the ratio
        n = {p: len({m.case for m in a[p] if m.label == label}) for p in a}
        assert n == {"train": 18, "val": 6, "test": 6}

    # within rounding: 2:1:2 of 7 cases per label -> 2.8/1.4/2.8 -> each part within 1
    rows = _rows(14, slides_per_case=(1,))
    for i in range(5):
        sp = ratio_split(rows, "2:1:2", seed=repeat_seed(7, i))
        for label in (0, 1):
            n = [sum(m.label == label for m in sp[p]) for p in ("train", "val", "test")]
            assert sum(n) == 7 and all(abs(k - e) < 1 for k, e in zip(n, (2.8, 1.4, 2.8)))
    # 2 cases per label cannot fill three parts: a clear error before anything is written
    with pytest.raises(LabelsError, match="the val part is empty"):
        plan_repeats(_rows(4, slides_per_case=(1,)), repeats=2, ratio="2:1:2")
    # 3 cases of a label with 3:1:1: every part still gets one of them
    sp = ratio_split(_rows(6, slides_per_case=(1,)), "3:1:1", seed=0)
    for label in (0, 1):
        assert all(sum(m.label == label for m in sp[p]) == 1 for p in sp)


def test_cli_checks_the_ratio_before_creating_anything(cohort, tmp_path, capsys):
    slides, labels = cohort
    out = tmp_path / "never"
    base = ["train", "--slides", str(slides), "--labels", str(labels), "--out", str(out)]
    for extra, message in (
            (["--split-ratio", "2:1"], "three positive integers"),
            (["--split-ratio", "2:0:2"], "'0' is not a positive integer"),
            (["--split-ratio", "x:1:1"], "three positive integers"),
            (["--split-ratio", "2:1:2", "--repeats", "0"], "--repeats: must be >= 1"),
            (["--split-ratio", "2:1:2", "--split-dir", str(tmp_path)], "exclude each other"),
            (["--split-ratio", "2:1:2", "--split-file", str(labels)], "--split-file excludes"),
            (["--repeats", "3"], "need --split-ratio or --split-dir")):
        assert cli_main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error:") and message in err, (extra, err)
        assert not out.exists(), extra


def test_cli_two_repeats_write_the_summary_then_resume_skips_them(cohort, tmp_path, capsys):
    slides, labels = cohort
    out = tmp_path / "rep"
    args = ["train", "--slides", str(slides), "--labels", str(labels), "--out", str(out),
            "--split-ratio", "2:1:2", "--repeats", "2", "--seed", "4", *FAST]
    assert cli_main(args) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["repeats"] == 2 and "| Accuracy |" in captured.err  # the table is printed
    text = (out / "repeats-summary.csv").read_text()
    assert "nan" not in text.lower() and "inf" not in text.lower()
    table = list(csv.DictReader(text.splitlines()))
    assert [r["metric"] for r in table] == ["accuracy", "auc", "f1", "sensitivity",
                                           "specificity", "precision"]
    splits = [_read_split(out / "splits" / f"repeat-{i}.csv") for i in range(2)]
    assert splits[0] != splits[1]
    truth = {r["slide"]: int(r["label"]) for r in csv.DictReader(open(labels))}
    for i, sp in enumerate(splits):
        counts = Counter(sp.values())
        assert counts == {"train": 4, "val": 2, "test": 4}
        for part in ("train", "val", "test"):  # both classes in every part
            assert {truth[s] for s, p in sp.items() if p == part} == {0, 1}
        test_labels = list(csv.DictReader(open(out / "splits" / f"repeat-{i}-test.csv")))
        assert sorted(r["slide"] for r in test_labels) == sorted(s for s, p in sp.items()
                                                                if p == "test")
        test_doc = json.loads((out / f"repeat-{i}" / "test_metrics.json").read_text())
        assert test_doc["metrics"]["n"] == 4 and test_doc["n_slides"] == 4
    for row in table[:5]:  # accuracy, AUC, F1, sensitivity, specificity: both repeats defined
        values = [float(row["repeat_0"]), float(row["repeat_1"])]
        assert row["n"] == "2"
        assert float(row["mean"]) == pytest.approx(sum(values) / 2, abs=1e-6)
        assert float(row["sd"]) == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5, abs=1e-6)
        assert doc["test"][row["metric"]]["mean"] == pytest.approx(float(row["mean"]), abs=1e-6)
    md = (out / "repeats-summary.md").read_text()
    assert "Mean ± SD" in md and "2:1:2" in md and "nan" not in md.lower()

    # resume: both repeats are verified and skipped, the summary is the same
    before = {p: p.stat().st_mtime_ns for p in out.glob("repeat-*/model.safetensors")}
    assert cli_main(args[:-1] + ["--resume"]) == 0  # not --quiet: the progress lines
    err = capsys.readouterr().err
    assert err.count("finished and verified, skipped") == 2
    assert (out / "repeats-summary.csv").read_text() == text
    assert {p: p.stat().st_mtime_ns for p in out.glob("repeat-*/model.safetensors")} == before
    # without --resume the folder is refused; with other options too
    assert cli_main(args) == 2 and "not empty" in capsys.readouterr().err
    assert cli_main(args[:-len(FAST)] + FAST[:-1] + ["--lr", "0.01", "--resume"]) == 2
    assert "options differ" in capsys.readouterr().err
    # a finished repeat whose model file changed does not verify
    model = out / "repeat-1" / "model.safetensors"
    model.write_bytes(model.read_bytes() + b"\0")
    assert cli_main(args + ["--resume"]) == 2
    assert "not the model that test_metrics.json was made from" in capsys.readouterr().err


def test_interrupted_repeats_resume_at_the_unfinished_repeat(cohort, tmp_path):
    slides, labels = cohort
    out = tmp_path / "rep"
    cfg = TrainConfig(**CFG, seed=1)
    gen = train_repeats(slides, labels, out, cfg, repeats=2, ratio="2:1:2")
    for ev in gen:  # killed inside repeat 0's first epoch: no checkpoint yet
        if ev.event is not None and ev.event.stage == "upstream":
            break
    gen.close()
    assert (out / "repeat-0" / "train_config.json").is_file()
    assert not (out / "repeat-0" / "checkpoint.pt").exists()
    seen = []
    gen = train_repeats(slides, labels, out, cfg, repeats=2, ratio="2:1:2", resume=True)
    for ev in gen:  # repeat 0 starts over; stop once repeat 1 has its checkpoint, before its test
        seen.append(ev)
        if ev.repeat == 1 and ev.event is not None and ev.event.stage == "epoch":
            break
    gen.close()
    assert not any("resumed" in e.message for e in seen if e.repeat == 0)
    assert len((out / "repeat-0" / "metrics.jsonl").read_text().splitlines()) == 1
    assert (out / "repeat-0" / "test_metrics.json").is_file()
    assert (out / "repeat-1" / "checkpoint.pt").is_file()
    assert not (out / "repeat-1" / "test_metrics.json").exists()
    assert not (out / "repeats-summary.csv").exists()
    with pytest.raises(Exception, match="not empty"):
        next(train_repeats(slides, labels, out, cfg, repeats=2, ratio="2:1:2"))

    events = []
    gen = train_repeats(slides, labels, out, cfg, repeats=2, ratio="2:1:2", resume=True)
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            summary = stop.value
            break
    assert [e.stage for e in events if e.repeat == 0] == ["split", "skip"]
    messages = [e.message for e in events if e.repeat == 1]
    assert any("resumed after epoch 1 of 1" in m for m in messages)
    assert not any("upstream" in m for m in messages)  # nothing trained again
    assert summary.metrics["accuracy"]["n"] == 2 and len(summary.tests) == 2
    assert (out / "repeats-summary.md").is_file()


def _write_authors_layout(folder: Path, assignment: dict[str, str], labels: dict[str, int]):
    """The authors' split folder: bag rows (wsi,bag_id,x,y,type) for train and test, slide
    rows (File Name,Sample Type) for val, as in their csv/<cohort>/split and sheet folders."""
    folder.mkdir(parents=True)
    for part in ("train", "val", "test"):
        names = [s for s, p in assignment.items() if p == part]
        with open(folder / f"case_{part}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            if part == "val":
                w.writerow(["File Name", "Sample Type"])
                for s in names:
                    w.writerow([s, "Primary Tumor" if labels[s] else "Solid Tissue Normal"])
            else:
                w.writerow(["wsi", "bag_id", "x", "y", "type"])
                for s in names:
                    for b in range(2):
                        w.writerow([f"/home/them/data/TCGA/uuid-{s}/{s}", b, 2048 * b, 0, labels[s]])


def test_cli_split_dir_end_to_end(cohort, tmp_path, capsys):
    slides, labels = cohort
    truth = {r["slide"]: int(r["label"]) for r in csv.DictReader(open(labels))}
    names = sorted(truth)
    normal = [s for s in names if truth[s] == 0]
    tumour = [s for s in names if truth[s] == 1]
    assignment = {}
    for group in (normal, tumour):
        for s, part in zip(group, ["train", "train", "val", "test", "test"]):
            assignment[s] = part
    split_dir = tmp_path / "LUSC" / "split" / "212"
    _write_authors_layout(split_dir / "0", assignment, truth)
    out = tmp_path / "imported"
    assert cli_main(["train", "--slides", str(slides), "--labels", str(labels), "--out", str(out),
                     "--split-dir", str(split_dir), *FAST]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["repeats"] == 1 and doc["test"]["accuracy"]["n"] == 1
    assert doc["test"]["accuracy"]["sd"] is None  # one repeat: no SD
    assert _read_split(out / "repeat-0" / "splits.csv") == assignment
    row = next(csv.DictReader(open(out / "repeats-summary.csv")))
    assert row["metric"] == "accuracy" and row["sd"] == "" and row["mean"] != ""
