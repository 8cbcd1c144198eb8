"""Stain handling in training: ``train --stain-normalize`` fits a reference on the
training cohort, normalises every bag with it and stores it in the checkpoint
(``model.stain_reference``); ``--stain-augment hed`` jitters the training bags
reproducibly; analysis uses the model's or a user's reference (``slide_stain``)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from napari_mran.cli import main
from napari_mran.errors import AnalysisError, CheckpointError
from napari_mran.inference.stain import BUILTIN_SOURCE, CHECKPOINT_SOURCE, StainWarning, slide_stain
from napari_mran.model import load_model, save_model
from napari_mran.stain import StainReference, default_reference
from napari_mran.stain.user import read_stain_reference
from napari_mran.synthetic import make_cohort

FAST = ["--width", "0.0625", "--max-bags-per-slide", "1", "--folds", "3", "--batch-size", "2",
        "--workers", "2", "--epochs", "1", "-q"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort")
    return folder, make_cohort(folder, 6, seed=4, width=2048, height=2048)


def _train(cohort, run, *extra):
    folder, labels = cohort
    assert main(["train", "--slides", str(folder), "--labels", str(labels), "--out", str(run),
                 *FAST, *extra]) == 0
    return run


@pytest.fixture(scope="module")
def normalised(cohort, tmp_path_factory):
    return _train(cohort, tmp_path_factory.mktemp("runs") / "norm", "--stain-normalize",
                  "macenko", "--stain-augment", "hed")


def _train_paths(run, folder):
    with open(run / "splits.csv") as fh:
        return [str(folder / r["slide"]) for r in csv.DictReader(fh) if r["split"] == "train"]


def test_the_cohort_reference_is_stored_in_the_model_and_checkpoint(normalised, cohort):
    import torch

    from napari_mran.training.stain import cohort_reference

    model = load_model(normalised / "model.safetensors")
    doc = model.stain_reference
    assert doc["method"] == "macenko"
    ref = StainReference.from_dict(doc["reference"])
    paths = _train_paths(normalised, cohort[0])
    # fitted on the training slides only, and nothing else
    assert ref.n_images == len(paths) >= 1 and "training cohort" in ref.fitted_on
    assert doc == cohort_reference("macenko", paths)
    assert ref.stains().tolist() != default_reference("macenko").stains().tolist()
    saved = torch.load(normalised / "checkpoint.pt", weights_only=True)
    assert json.loads(saved["stain_reference"]) == doc
    prov = model.config.provenance
    assert prov["stain"]["normalize"] == "macenko"
    assert prov["stain"]["augment"]["method"] == "hed" and prov["stain"]["augment"]["sigma"] == 0.05
    assert prov["train_config"]["stain_augment"] == "hed"
    assert load_model("demo").stain_reference is None


def test_training_and_analysis_normalise_a_bag_alike(normalised, cohort):
    """The training reader's bag equals analysis's (slide_stain with the model's reference)."""
    from napari_mran.inference.reading import plan_reads, read_bag, tissue_lowres
    from napari_mran.slide import open_slide
    from napari_mran.training.data import BagReader, slide_bags
    from napari_mran.training.splits import read_labels

    folder, labels = cohort
    model = load_model(normalised / "model.safetensors")
    item = read_labels(labels, folder)[0]
    sb = slide_bags(item, folder, normalised / "bags", bag_px=2048, tissue_method="reference")
    reader = BagReader(bag_px=2048, input_px=1024, workers=1)
    reader.method, reader.stain_reference = "macenko", model.stain_reference
    (train_img,), _ = next(reader.batches([(sb.path, sb.boxes[0], False, 0)], 1))
    reader.close()
    with open_slide(sb.path) as slide:
        img, valid, _ = tissue_lowres(slide)
        apply, info = slide_stain("macenko", img, valid, model.stain_reference)
        raw = read_bag(slide, sb.boxes[0], plan_reads(slide, 2048, 1024))[0]
    assert info["reference_source"] == CHECKPOINT_SOURCE
    assert info["reference"] == model.stain_reference["reference"]
    np.testing.assert_array_equal(train_img, apply(raw))
    assert np.abs(train_img.astype(int) - raw).mean() > 0.5  # it did change the bag


def test_hed_augmentation_is_seeded_and_reproducible(cohort, normalised, tmp_path):
    from napari_mran.training.config import TrainConfig
    from napari_mran.training.stain import augment_seeds

    cfg = TrainConfig(stain_augment="hed", seed=3)
    assert augment_seeds(cfg, 1, 5) == augment_seeds(cfg, 1, 5)
    assert augment_seeds(cfg, 1, 5) != augment_seeds(cfg, 2, 5)
    assert augment_seeds(TrainConfig(), 1, 3) == [None] * 3
    again = _train(cohort, tmp_path / "again", "--stain-normalize", "macenko",
                   "--stain-augment", "hed")
    plain = _train(cohort, tmp_path / "plain", "--stain-normalize", "macenko")
    a, b, c = (load_model(r / "model.safetensors").state_dict() for r in (normalised, again, plain))
    assert all(bool((a[k] == b[k]).all()) for k in a)  # same seed: the same weights
    assert any(not bool((a[k] == c[k]).all()) for k in a if a[k].is_floating_point())


def test_resume_keeps_the_reference(normalised, cohort, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(normalised, run)
    before = load_model(run / "model.safetensors").stain_reference
    folder, labels = cohort
    assert main(["train", "--slides", str(folder), "--labels", str(labels), "--out", str(run),
                 *FAST[:-3], "--epochs", "2", "-q", "--resume", "--stain-normalize", "macenko",
                 "--stain-augment", "hed"]) == 0
    capsys.readouterr()
    assert load_model(run / "model.safetensors").stain_reference == before
    # other stain options are other options: refused on resume
    assert main(["train", "--slides", str(folder), "--labels", str(labels), "--out", str(run),
                 *FAST[:-3], "--epochs", "3", "-q", "--resume"]) == 2
    assert "options differ" in capsys.readouterr().err


def test_train_stain_option_errors(cohort, tmp_path, capsys):
    folder, labels = cohort
    base = ["train", "--slides", str(folder), "--labels", str(labels), *FAST]
    assert main([*base, "--out", str(tmp_path / "a"), "--stain-augment-sigma", "0.2"]) == 2
    assert "need --stain-augment hed" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "b"), "--stain-augment", "hed",
                 "--stain-augment-bias", "1"]) == 2
    assert "stain_augment_bias" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_checkpoint_stain_metadata_round_trip_and_refusals(tmp_path):
    from napari_mran.model import MRAN, MRANConfig

    model = MRAN(MRANConfig(width=0.0625))
    doc = {"method": "reinhard", "reference": default_reference("reinhard").to_dict()}
    model.stain_reference = doc
    save_model(model, tmp_path / "m.safetensors")
    assert load_model(tmp_path / "m.safetensors").stain_reference == doc
    model.stain_reference = {"method": "vahadane", "reference": {}}
    with pytest.raises(CheckpointError, match="stain_reference"):
        save_model(model, tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()
    from safetensors.torch import load_file, save_file

    meta = {"format": "napari-mran", "format_version": "1",
            "mran_config": MRANConfig(width=0.0625).to_json(), "stain_reference": "{not json"}
    save_file(load_file(tmp_path / "m.safetensors"), tmp_path / "hostile.safetensors", meta)
    with pytest.raises(CheckpointError, match="hostile.safetensors.*stain_reference"):
        load_model(tmp_path / "hostile.safetensors")


@pytest.fixture(scope="module")
def lowres(cohort):
    from napari_mran.inference.reading import tissue_lowres
    from napari_mran.slide import open_slide

    with open_slide(cohort[0] / "slide_0000.svs") as slide:
        img, valid, _ = tissue_lowres(slide)
    return img, valid


def test_slide_stain_picks_and_records_its_reference(lowres, tmp_path):
    img, valid = lowres
    model_doc = {"method": "macenko", "reference": StainReference(
        "macenko", stain_matrix=((0.6, 0.7, 0.3), (0.2, 0.9, 0.4)),
        max_concentrations=(1.5, 1.0), fitted_on="cohort").to_dict()}
    _, info = slide_stain("macenko", img, valid)
    assert info["reference_source"] == BUILTIN_SOURCE
    _, info = slide_stain("macenko", img, valid, model_doc)
    assert info["reference_source"] == CHECKPOINT_SOURCE and info["reference"]["fitted_on"] == "cohort"
    _, info = slide_stain("reinhard", img, valid, model_doc)  # another method: built-in
    assert info["reference_source"] == BUILTIN_SOURCE and "trained with macenko" in info["note"]
    user = tmp_path / "ref.json"
    user.write_text(json.dumps(default_reference("macenko").to_dict()))
    _, info = slide_stain("macenko", img, valid, model_doc, user=user)  # the user's wins
    assert info["reference_source"] == f"user: {user}"
    with pytest.warns(StainWarning, match="--stain-normalize macenko"):
        apply, info = slide_stain("off", img, valid, model_doc)
    assert apply is None and "trained on macenko-normalised" in info["note"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert slide_stain("off", img, valid) == (None, {"method": "off"})
    with pytest.raises(AnalysisError, match="ref.json.*a macenko stain reference"):
        slide_stain("reinhard", img, valid, user=user)


def test_user_reference_files(cohort, lowres, tmp_path):
    from PIL import Image

    img, _ = lowres
    png = tmp_path / "region.png"
    Image.fromarray(np.ascontiguousarray(img[..., :3])).save(png)
    from_png = read_stain_reference(png, "reinhard")
    assert "user: region.png (image region" in from_png.fitted_on
    assert read_stain_reference(png, "reinhard") is from_png  # fitted once
    from_slide = read_stain_reference(cohort[0] / "slide_0000.svs", "reinhard")
    assert "smallest level" in from_slide.fitted_on
    # the region and the slide's smallest level are the same pixels (no glass lost)
    assert np.allclose(from_png.mean(), from_slide.mean(), atol=0.02)
    model_doc = tmp_path / "model_ref.json"
    model_doc.write_text(json.dumps({"method": "reinhard", "reference": from_png.to_dict()}))
    assert read_stain_reference(model_doc, "reinhard") == from_png
    (tmp_path / "junk.svs").write_bytes(b"not a slide at all")
    glass = tmp_path / "glass.png"
    Image.fromarray(np.full((64, 64, 3), 245, np.uint8)).save(glass)
    for bad, why in ((tmp_path / "junk.svs", "not a readable slide"),
                     (tmp_path / "missing.png", "cannot read"),
                     (glass, "cannot fit a stain reference")):
        with pytest.raises(ValueError, match=f"{bad.name}.*{why}"):
            read_stain_reference(bad, "macenko")


def test_a_full_resolution_region_on_a_reduced_slide_is_a_warning(cohort, lowres, tmp_path):
    """A PNG region is fitted at its own resolution, a slide's stains at its smallest level:
    used together on a slide whose smallest level is reduced (downsample > 2) that is one
    StainWarning naming the file, recorded in provenance; a slide reference (fitted on its
    own smallest level), a JSON reference or a one-level slide is not."""
    from PIL import Image

    img, valid = lowres
    png = tmp_path / "region.png"
    Image.fromarray(np.ascontiguousarray(img[..., :3])).save(png)
    for method in ("macenko", "reinhard"):
        with pytest.warns(StainWarning, match="region.png was fitted at its own resolution"):
            _, info = slide_stain(method, img, valid, user=png, downsample=16.0)
        assert "downsample 16" in info["note"]
    slide = cohort[0] / "slide_0000.svs"
    ref_json = tmp_path / "ref.json"
    ref_json.write_text(json.dumps(default_reference("macenko").to_dict()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for user, downsample in ((png, 1.0), (png, None), (slide, 16.0), (ref_json, 16.0)):
            _, info = slide_stain("macenko", img, valid, user=user, downsample=downsample)
            assert "note" not in info, (user, downsample)


def test_cli_analysis_with_a_normalised_checkpoint(normalised, cohort, tmp_path, capsys):
    """From the command line: the checkpoint's training-cohort reference is used when asked
    for, and analysing without normalisation is one ``warning:`` line on stderr."""
    from napari_mran.results import SlideResult

    folder, _ = cohort
    slide = _train_paths(normalised, folder)[0]
    model = str(normalised / "model.safetensors")
    assert main(["analyze", slide, "--model", model, "--out", str(tmp_path / "a"), "--export",
                 "", "--stain-normalize", "macenko", "--json", "-q"]) == 0
    out = capsys.readouterr()
    store = json.loads(out.out)["slides"][0]["outputs"]["store"]
    info = SlideResult.load(store).provenance["stain_normalization"]
    assert info["reference_source"] == CHECKPOINT_SOURCE and "warning:" not in out.err
    # the real command (pytest would catch the warning): one line on stderr
    proc = subprocess.run([sys.executable, "-m", "napari_mran", "analyze", slide, "--model",
                           model, "--out", str(tmp_path / "b"), "--export", "", "-q"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "stain" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "macenko" in lines[0], lines
