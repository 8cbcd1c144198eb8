"""``napari-mran finetune`` on real results stores with review marks: two shifted
synthetic slides analysed by the demo model, marks saved with ``Reviews``; the new
model's provenance, resume, slide labels, and the one-line errors (docs/cli.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_mran.cli import main
from napari_mran.model import load_model, sha256_of
from napari_mran.review import Reviews
from napari_mran.synthetic import make_slide
from napari_mran.training.finetune_marks import bag_label


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("ft")
    make_slide(d / "t.svs", 4096, 4096, True, 5, stain_shift="scanner-b")
    make_slide(d / "n.svs", 4096, 4096, False, 6, stain_shift="scanner-b")
    assert main(["analyze", str(d / "t.svs"), str(d / "n.svs"), "--model", "demo",
                 "--out", str(d / "an"), "--quiet"]) == 0
    stores = {k: d / "an" / f"{k}.mran.zarr" for k in ("t", "n")}
    rv = Reviews.load(stores["t"])
    rv.set_bag(0, "label", "tumour", reviewer="dr a")
    rv.set_bag(1, "agree", reviewer="dr b")
    rv.set_patch(2, 5, "label", "tumour", reviewer="dr a")  # patch marks: not used
    rv.save()
    rv = Reviews.load(stores["n"])
    rv.set_bag(0, "disagree", reviewer="dr a")
    rv.save()
    (d / "labels.csv").write_text("slide,label\nt.svs,1\nn.svs,0\n")
    (d / "unmarked").mkdir()
    shutil.copytree(stores["n"], d / "unmarked" / "n.mran.zarr", ignore=shutil.ignore_patterns("reviews"))
    return {"dir": d, **stores}


def _ft(reviewed, out: Path, *extra: str) -> int:
    return main(["finetune", "--model", "demo", "--reviewed", str(reviewed["t"]),
                 str(reviewed["n"]), "--out", str(out), "--epochs", "1", "--workers", "1",
                 "-q", *extra])


def test_bag_labels_from_marks():
    probs = np.array([0.8, 0.2])
    names = ["normal", "tumour"]
    assert bag_label("label", "tumour", probs, names) == 1
    assert bag_label("agree", None, probs, names) == 0      # the model's class
    assert bag_label("disagree", None, probs, names) == 1   # the other of two
    assert bag_label("disagree", None, np.array([0.5, 0.3, 0.2]), ["a", "b", "c"]) is None


def test_finetune_writes_a_model_whose_provenance_lists_the_reviews(reviewed, tmp_path, capsys):
    assert _ft(reviewed, tmp_path / "run") == 0
    summary = json.loads(capsys.readouterr().out)
    model = load_model(tmp_path / "run" / "model.safetensors")
    prov = model.config.provenance
    demo_sha = sha256_of(load_model("demo").checkpoint_path)
    assert prov["trained_by"].endswith("finetune")
    assert prov["base_model"]["sha256"] == demo_sha
    by_store = {Path(r["store"]).name: r for r in prov["reviews"]}
    t, n = by_store["t.mran.zarr"], by_store["n.mran.zarr"]
    assert t["reviewers"] == ["dr a", "dr b"] and n["reviewers"] == ["dr a"]
    assert t["counts"]["bag_labels"] == 2 and t["counts"]["patch_marks_ignored"] == 1
    assert n["counts"]["bag_labels"] == 1 and t["marks_model_sha256"] == [demo_sha]
    assert len(t["store_sha256"]) == 64 and len(t["marks_sha256"]) == 64
    assert t["slide"].endswith("t.svs")
    assert [r["bag_labels"] for r in summary["reviews"]] == [2, 1]
    demo = load_model("demo").state_dict()
    changed = [k for k, v in model.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, demo[k])]
    assert any(k.startswith("upstream.trunk") for k in changed)
    assert not any(k.startswith("downstream") for k in changed)  # no slide labels given


def test_slide_labels_add_the_downstream_loss(reviewed, tmp_path):
    out = tmp_path / "run"
    assert _ft(reviewed, out, "--labels", str(reviewed["dir"] / "labels.csv")) == 0
    history = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert history[0]["downstream_loss"] is not None


def test_freeze_backbone_keeps_the_trunk(reviewed, tmp_path):
    assert _ft(reviewed, tmp_path / "run", "--freeze-backbone") == 0
    tuned = load_model(tmp_path / "run" / "model.safetensors").state_dict()
    demo = load_model("demo").state_dict()
    trunk = [k for k in tuned if k.startswith("upstream.trunk")]
    assert trunk and all(torch.equal(tuned[k], demo[k]) for k in trunk)
    assert not torch.equal(tuned["upstream.classifier.weight"], demo["upstream.classifier.weight"])


def test_resume_reaches_the_weights_of_an_uninterrupted_run(reviewed, tmp_path):
    assert _ft(reviewed, tmp_path / "full", "--epochs", "2") == 0
    assert _ft(reviewed, tmp_path / "part") == 0                       # 1 epoch, "killed"
    assert _ft(reviewed, tmp_path / "part", "--epochs", "2", "--resume") == 0
    a = load_model(tmp_path / "full" / "model.safetensors").state_dict()
    b = load_model(tmp_path / "part" / "model.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len((tmp_path / "part" / "metrics.jsonl").read_text().splitlines()) == 2
    # a finished folder is not overwritten without --resume
    assert _ft(reviewed, tmp_path / "part") == 2


def _one_line_error(capsys, *needles: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for n in needles:
        assert n in err[0], err


def test_a_store_without_marks_is_an_error(reviewed, tmp_path, capsys):
    store = reviewed["dir"] / "unmarked" / "n.mran.zarr"
    assert main(["finetune", "--model", "demo", "--reviewed", str(store), "--out",
                 str(tmp_path / "run"), "-q"]) == 2
    _one_line_error(capsys, str(store), "no review marks")
    assert not (tmp_path / "run").exists()


def test_a_missing_slide_names_the_store_and_the_slide(reviewed, tmp_path, capsys):
    slide = reviewed["dir"] / "t.svs"
    moved = slide.with_suffix(".moved")
    slide.rename(moved)
    try:
        assert _ft(reviewed, tmp_path / "run") == 2
    finally:
        moved.rename(slide)
    _one_line_error(capsys, str(reviewed["t"]), str(slide), "missing")
    assert not (tmp_path / "run").exists()


def test_marks_made_on_another_model(reviewed, tmp_path, capsys):
    assert _ft(reviewed, tmp_path / "first") == 0
    other = str(tmp_path / "first" / "model.safetensors")
    capsys.readouterr()
    args = ["finetune", "--model", other, "--reviewed", str(reviewed["t"]), "--out",
            str(tmp_path / "run"), "--epochs", "1", "-q"]
    assert main(args) == 2
    _one_line_error(capsys, str(reviewed["t"]), "--allow-other-model")
    assert main(args + ["--allow-other-model"]) == 0
    assert "warning:" in capsys.readouterr().err


def test_fine_tuning_with_another_stain_normalisation_than_the_review_warns(reviewed, tmp_path,
                                                                           capsys):
    """The stores were analysed without normalisation: fine-tuning on Macenko-normalised
    bags says so for each store (the bags would not look like the ones reviewed)."""
    assert _ft(reviewed, tmp_path / "run", "--stain-normalize", "macenko") == 0
    out = capsys.readouterr()
    warned = json.loads(out.out)["warnings"]
    assert len(warned) == 2 and all("analysed with --stain-normalize off, fine-tuned with "
                                    "macenko" in w for w in warned)
    assert sum("warning:" in ln and "stain-normalize" in ln for ln in out.err.splitlines()) == 2
    prov = load_model(tmp_path / "run" / "model.safetensors").config.provenance
    assert {r["analysed_stain_normalize"] for r in prov["reviews"]} == {"off"}
