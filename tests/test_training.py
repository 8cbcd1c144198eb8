"""Training on a tiny synthetic cohort: splits, events, outputs, and exact resume."""

from __future__ import annotations

import json

import pytest
import torch

from napari_mran import OutputExistsError
from napari_mran.cli import main as cli_main
from napari_mran.model import load_model
from napari_mran.synthetic import make_cohort
from napari_mran._events import collect as drain
from napari_mran.training import (LabelledSlide, LabelsError, TrainConfig, make_splits,
                                  read_labels, train)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    labels = make_cohort(out, 6, seed=3, width=4096, height=2048)
    return out, labels


CFG = dict(epochs=2, width=0.0625, n_folds=3, fold=0, workers=2, max_bags_per_slide=1,
           batch_size=2, lr=1e-3, seed=5)




def test_splits_keep_cases_together_and_are_reproducible():
    rows = [LabelledSlide(f"s{i}.svs", i % 2, f"case{i // 2}") for i in range(20)]
    a = make_splits(rows, n_folds=5, fold=1, seed=7)
    b = make_splits(rows, n_folds=5, fold=1, seed=7)
    assert a == b
    assert sorted(r.slide for part in a.values() for r in part) == sorted(r.slide for r in rows)
    where = {}
    for split, members in a.items():
        for m in members:
            assert where.setdefault(m.case, split) == split
    assert {r.label for r in a["test"]} == {0, 1}  # stratified
    assert make_splits(rows, n_folds=5, fold=1, seed=8) != a


def test_labels_errors(tmp_path):
    bad = tmp_path / "labels.csv"
    bad.write_text("slide,label\nx.svs,one\n")
    with pytest.raises(LabelsError, match="not an integer"):
        read_labels(bad, tmp_path)
    bad.write_text("slide,label\nx.svs,1\n")
    with pytest.raises(LabelsError, match="not found"):
        read_labels(bad, tmp_path)


def test_train_resume_equals_uninterrupted(cohort, tmp_path):
    slides, labels = cohort
    events, summary = drain(train(slides, labels, tmp_path / "full", TrainConfig(**CFG)))
    stages = [e.stage for e in events]
    assert stages.count("epoch") == 2 and "upstream" in stages and "downstream" in stages
    run = tmp_path / "full"
    for name in ("model.safetensors", "checkpoint.pt", "metrics.jsonl", "metrics.png",
                 "splits.csv", "train_config.json"):
        assert (run / name).is_file(), name
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert 0 <= lines[-1]["train"]["accuracy"] <= 1
    model = load_model(run / "model.safetensors")
    prov = model.config.provenance
    assert prov["best_epoch"] == summary.best_epoch and prov["train_config"]["seed"] == 5
    assert model.config.width == 0.0625 and list(model.config.class_names) == ["normal", "tumour"]

    # interrupted after epoch 1 (generator closed), then resumed in the same folder
    part = tmp_path / "part"
    gen = train(slides, labels, part, TrainConfig(**CFG))
    for ev in gen:
        if ev.stage == "epoch":
            break
    gen.close()
    with pytest.raises(OutputExistsError):
        next(train(slides, labels, part, TrainConfig(**CFG)))
    with pytest.raises(Exception, match="differ"):
        next(train(slides, labels, part, TrainConfig(**{**CFG, "lr": 5e-4}), resume=True))
    events2, summary2 = drain(train(slides, labels, part, TrainConfig(**CFG), resume=True))
    assert events2[0].stage == "prepare" and "resumed" in events2[1].message
    a = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(part / "checkpoint.pt", weights_only=True)["model"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
    la = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert la[-1]["upstream_loss"] == pytest.approx(lb[-1]["upstream_loss"], rel=1e-5)


def test_cli_train_and_bad_input(cohort, tmp_path, capsys):
    slides, labels = cohort
    rc = cli_main(["train", "--slides", str(slides), "--labels", str(labels), "--out",
                   str(tmp_path / "cli"), "--epochs", "1", "--width", "0.0625", "--folds", "3",
                   "--max-bags-per-slide", "1", "--batch-size", "2", "--quiet"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"].endswith("model.safetensors") and out["best_epoch"] == 1
    rc = cli_main(["train", "--slides", str(slides), "--labels", str(tmp_path / "nope.csv"),
                   "--out", str(tmp_path / "x")])
    assert rc == 2 and "nope.csv" in capsys.readouterr().err


def test_sigkill_then_resume_from_the_cli(cohort, tmp_path):
    """Kill -9 the CLI after its first checkpoint, resume: same weights as uninterrupted."""
    import os
    import signal
    import subprocess
    import sys
    import time

    slides, labels = cohort
    args = ["--slides", str(slides), "--labels", str(labels), "--epochs", "2", "--width", "0.0625",
            "--folds", "3", "--fold", "0", "--workers", "2", "--max-bags-per-slide", "1",
            "--batch-size", "2", "--lr", "1e-3", "--seed", "5", "--quiet"]
    full, part = tmp_path / "full", tmp_path / "killed"
    cmd = [sys.executable, "-m", "napari_mran", "train", *args]
    # every run in a fresh process, so all three see the same torch threading set-up
    subprocess.run([*cmd, "--out", str(full)], check=True, capture_output=True)
    proc = subprocess.Popen([*cmd, "--out", str(part)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (part / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (part / "checkpoint.pt").exists()
    subprocess.run([*cmd, "--out", str(part), "--resume"], check=True, capture_output=True)
    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(part / "checkpoint.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 1
    for k in a["model"]:
        assert torch.allclose(a["model"][k].float(), b["model"][k].float(), atol=1e-6), k
    lines = (part / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
