"""evaluate(): outputs (CSV, strict JSON, PNG, k/m table), store reuse, labels checks, CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from napari_mran.cohort import run_cohort
from napari_mran.errors import OutputExistsError
from napari_mran.evaluation import LabelsError, read_labels, run_evaluation
from napari_mran.model import MRAN, MRANConfig, save_model
from slide_writers import write_svs_pyramid

CLASSES = ["normal", "tumour"]


@pytest.fixture(scope="module")
def data(tmp_path_factory, cmu_pixels):
    """Four two-bag slides (4096 x 2048 px) in a folder tree, labels 0/1, two cases."""
    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(5)
    model = save_model(MRAN(MRANConfig(width=0.125, class_names=CLASSES)), root / "m.safetensors")
    slides = root / "slides"
    (slides / "batch2").mkdir(parents=True)
    crops = [(0, 0), (900, 100), (500, 150), (300, 40)]
    rels = ["s0.svs", "s1.svs", "batch2/s2.svs", "batch2/s3.svs"]
    for rel, (y, x) in zip(rels, crops):
        a = cmu_pixels[y:y + 2048, x:x + 2048]
        img = np.concatenate([a, np.ascontiguousarray(a[::-1])], axis=1)
        write_svs_pyramid(slides / rel, img, downsamples=(1, 2, 4, 16), tile=256, mpp=0.5)
    labels = root / "labels.csv"
    labels.write_text("slide,label,case\n"
                      "s0.svs,0,P1\ns1.svs,1,P2\nbatch2/s2.svs,0,P1\nbatch2/s3.svs,1,P3\n")
    return {"root": root, "model": str(model), "slides": slides, "labels": labels, "rels": rels}


@pytest.fixture(scope="module")
def evaluated(data):
    """predict two slides into a results folder, then evaluate all four (2 reused)."""
    results = data["root"] / "results"
    run_cohort([data["slides"] / "s0.svs", data["slides"] / "batch2" / "s2.svs"], data["model"],
               results, workers=1)
    out = data["root"] / "eval"
    report = run_evaluation(data["model"], data["slides"], data["labels"], out,
                            k_list=(1, "all"), m_list=(4,), results_dir=results)
    return {"out": out, "report": report, "results": results}


def no_nan(text):
    def refuse(token):
        raise ValueError(f"non-strict JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def test_outputs(data, evaluated):
    out, report = evaluated["out"], evaluated["report"]
    assert report["n_slides"] == 4 and report["n_evaluated"] == 4 and not report["failed"]
    assert report["sources"] == {"reused": 2, "analysed": 2}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["predictions.csv", "metrics.json", "roc.png", "faithfulness.json", "faithfulness.md"])
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["slide"] for r in rows] == data["rels"]
    assert [r["label"] for r in rows] == ["0", "1", "0", "1"]
    assert [r["source"] for r in rows] == ["reused", "analysed", "reused", "analysed"]
    for r in rows:
        assert float(r["prob_normal"]) + float(r["prob_tumour"]) == pytest.approx(1, abs=1e-5)
        assert r["predicted_name"] in CLASSES and r["correct"] in ("true", "false")
    metrics = no_nan((out / "metrics.json").read_text())
    sm = metrics["slide_metrics"]
    assert sm["n"] == 4 and sm["support"] == {"normal": 2, "tumour": 2}
    for key in ("accuracy", "auc", "f1", "precision", "sensitivity", "specificity"):
        assert key in sm
    assert metrics["case_metrics"]["available"] is True and metrics["case_metrics"]["n"] == 3
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_faithfulness_table(data, evaluated):
    out, report = evaluated["out"], evaluated["report"]
    table = report["faithfulness"]
    assert table["k_list"] == [1, "all"] and table["m_list"] == [4, "all"]
    cells = {(r["k"], r["m"]): r for r in table["rows"]}
    assert set(cells) == {(1, 4), (1, "all"), ("all", 4), ("all", "all")}
    full = cells[("all", "all")]
    assert full["agreement"] == 1.0 and full["mean_abs_change"] == pytest.approx(0, abs=1e-6)
    assert full["accuracy"] == table["full"]["accuracy"] and full["mean_bags_used"] == 2
    assert cells[(1, 4)]["mean_bags_used"] == 1
    fj = no_nan((out / "faithfulness.json").read_text())
    assert len(fj["per_slide"]) == 4
    for s in fj["per_slide"]:
        restricted = {(c["k"], c["m"]): c for c in s["restricted"]}
        np.testing.assert_allclose(restricted[("all", "all")]["slide_probs"], s["full"],
                                   atol=1e-6)
    md = (out / "faithfulness.md").read_text()
    assert "| k \\ m | 4 | all |" in md and "## AUC" in md and "| 1 |" in md


def test_reused_store_equals_fresh_analysis(data, evaluated, tmp_path):
    fresh = run_evaluation(data["model"], data["slides"], data["labels"], tmp_path / "fresh",
                           k_list=("all",), m_list=())
    assert fresh["sources"] == {"analysed": 4}
    with open(evaluated["out"] / "predictions.csv", newline="") as a, \
            open(tmp_path / "fresh" / "predictions.csv", newline="") as b:
        for ra, rb in zip(csv.DictReader(a), csv.DictReader(b)):
            assert float(ra["prob_tumour"]) == pytest.approx(float(rb["prob_tumour"]), abs=1e-5)


def test_existing_outputs_are_not_overwritten(data, evaluated):
    with pytest.raises(OutputExistsError, match="metrics.json"):
        run_evaluation(data["model"], data["slides"], data["labels"], evaluated["out"])


@pytest.mark.parametrize("text, match", [
    ("slide,label\ns0.svs,2\n", "line 2: label 2 is out of range"),
    ("slide,label\ns0.svs,tumour\n", "line 2: label 'tumour' is not an integer"),
    ("name,label\ns0.svs,1\n", "no 'slide' column"),
    ("slide,label\nmissing.svs,1\n", "slide file not found .*line 2: missing.svs"),
    ("slide,label\n../m.safetensors,1\n", "points outside"),
    ("slide,label\ns0.svs,1\n./s0.svs,0\n", "line 3: slide './s0.svs' is listed twice"),
    ("slide,label\n", "no slides listed"),
    ("", "empty file"),
])
def test_labels_are_checked(data, tmp_path, text, match):
    p = tmp_path / "labels.csv"
    p.write_text(text)
    with pytest.raises(LabelsError, match=match) as err:
        read_labels(p, data["slides"], CLASSES)
    assert str(p) in str(err.value)


def test_labels_with_bom_semicolons_and_no_case(data, tmp_path):
    p = tmp_path / "labels.csv"
    p.write_bytes("\ufeffSlide;Label\ns0.svs;1\nbatch2/s3.svs;0\n".encode())
    rows = read_labels(p, data["slides"], CLASSES)
    assert [(r["slide"], r["label"], r["case"]) for r in rows] == [
        ("s0.svs", 1, "s0.svs"), ("batch2/s3.svs", 0, "batch2/s3.svs")]


def cli(argv):
    from napari_mran.cli import main

    return main(argv)


def test_cli_evaluate(data, evaluated, tmp_path, capsys):
    labels = tmp_path / "two.csv"
    labels.write_text("slide,label,case\ns0.svs,0,a\nbatch2/s2.svs,1,b\n")
    out = tmp_path / "out"
    code = cli(["evaluate", "--model", data["model"], "--slides", str(data["slides"]),
                "--labels", str(labels), "--out", str(out), "--results",
                str(evaluated["results"]), "--k", "1", "all", "--m", "all"])
    assert code == 0
    captured = capsys.readouterr()
    assert "2 of 2 slides evaluated" in captured.out and "roc_png" in captured.out
    bad = tmp_path / "bad.csv"
    bad.write_text("slide,label\ns0.svs,7\n")
    code = cli(["evaluate", "--model", data["model"], "--slides", str(data["slides"]),
                "--labels", str(bad), "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {bad}: line 2") and "Traceback" not in err
