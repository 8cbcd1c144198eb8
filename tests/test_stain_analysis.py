"""Issue 13 point 1 (API and CLI): ``--stain-normalize`` maps each bag's stains to the
reference before the model, is recorded, and is part of the reuse key."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_mran.analysis import predict_slide
from napari_mran.cli import main
from napari_mran.inference import AnalysisOptions
from napari_mran.inference.stain import StainWarning
from napari_mran.model import load_model
from napari_mran.slide import open_slide
from slide_writers import write_svs_pyramid


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """A real H&E crop (two bags) and the same crop with a scanner-like colour cast."""
    import tifffile

    from napari_mran._napari.sample_data import sample_slide_path

    rgb = tifffile.imread(sample_slide_path())[:2048, :]  # 2048 x 2220
    od = -np.log((rgb.astype(np.float64) + 1) / 256)
    cast = np.clip(256 * np.exp(-od * np.array([0.75, 1.25, 0.8])) - 1, 0, 255).astype(np.uint8)
    d = tmp_path_factory.mktemp("stain")
    return (write_svs_pyramid(d / "orig.svs", rgb, downsamples=(1, 4)),
            write_svs_pyramid(d / "cast.svs", cast, downsamples=(1, 4)))


@pytest.fixture(scope="module")
def demo():
    return load_model("demo")


def test_normalisation_is_recorded_and_changes_the_input(slides, demo):
    orig, _ = slides
    with open_slide(orig) as slide:
        plain = predict_slide(slide, demo)
        norm = predict_slide(slide, demo, stain_normalize="macenko")
    info = norm.provenance["stain_normalization"]
    assert info["method"] == "macenko" and info["source_fitted_on"] == "the slide's smallest level"
    assert info["reference"]["method"] == "macenko" and info["source"] is not None
    assert plain.provenance["stain_normalization"] == {"method": "off"}
    assert not np.allclose(plain.patch_attention, norm.patch_attention)
    json.dumps(info, allow_nan=False)


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_a_colour_cast_matters_less_after_normalisation(slides, demo, method):
    """The same tissue with a colour cast: its patch attention moves less from the
    original's when both are normalised than when neither is."""
    orig, cast = slides

    def attention(path, how):
        with open_slide(path) as slide:
            return predict_slide(slide, demo, stain_normalize=how).patch_attention

    before = np.abs(attention(cast, "off") - attention(orig, "off")).mean()
    after = np.abs(attention(cast, method) - attention(orig, method)).mean()
    assert after < before, (method, before, after)


def test_key_and_cli(slides, tmp_path, capsys):
    assert "stain_normalize" not in AnalysisOptions().key()  # old stores stay reusable
    assert AnalysisOptions(stain_normalize="reinhard").key()["stain_normalize"] == "reinhard"
    with pytest.raises(ValueError, match="stain_normalize"):
        AnalysisOptions(stain_normalize="vahadane")
    orig, _ = slides
    out = tmp_path / "o"
    assert main(["analyze", str(orig), "--model", "demo", "--out", str(out), "--export", "",
                 "--stain-normalize", "reinhard", "--json", "-q"]) == 0
    from napari_mran.results import SlideResult

    store = json.loads(capsys.readouterr().out)["slides"][0]["outputs"]["store"]
    assert SlideResult.load(store).provenance["stain_normalization"]["method"] == "reinhard"
    assert main(["analyze", str(orig), "--model", "demo", "--out", str(tmp_path / "p"),
                 "--stain-normalize", "magic"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--stain-normalize" in err[0]


def test_a_user_reference_file(slides, tmp_path, capsys):
    """``--stain-reference`` (a region saved as PNG): fitted once, used, recorded, in the
    reuse key, with a warning that it was fitted at another resolution; a bad file or a reference without a method is a one-line error, exit 2,
    before anything is written."""
    import tifffile
    from PIL import Image

    from napari_mran._napari.sample_data import sample_slide_path
    from napari_mran.results import SlideResult

    region = tmp_path / "ref.png"
    Image.fromarray(tifffile.imread(sample_slide_path())[1000:1600, 1000:1800]).save(region)
    orig, _ = slides
    opts = AnalysisOptions(stain_normalize="macenko", stain_reference=str(region))
    assert opts.key()["stain_reference"] != AnalysisOptions(stain_normalize="macenko").key().get(
        "stain_reference")
    with pytest.raises(ValueError, match="stain_normalize"):
        AnalysisOptions(stain_reference=str(region))
    out = tmp_path / "o"
    # a full-resolution region on a slide fitted on its reduced smallest level: a
    # StainWarning (one "warning:" line from the real command) and a provenance note
    with pytest.warns(StainWarning, match="ref.png was fitted at its own resolution"):
        assert main(["analyze", str(orig), "--model", "demo", "--out", str(out), "--export",
                     "", "--stain-normalize", "macenko", "--stain-reference", str(region),
                     "--json", "-q"]) == 0
    captured = capsys.readouterr()
    store = json.loads(captured.out)["slides"][0]["outputs"]["store"]
    info = SlideResult.load(store).provenance["stain_normalization"]
    assert info["reference_source"] == f"user: {region}"
    assert info["reference"]["method"] == "macenko"
    assert "downsample 4" in info["note"]  # docs/stain.md, "Resolution"
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    for extra in (["--stain-normalize", "macenko", "--stain-reference", str(bad)],
                  ["--stain-reference", str(region)]):
        target = tmp_path / "never"
        assert main(["analyze", str(orig), "--model", "demo", "--out", str(target), *extra]) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
        assert len(err) == 1 and "stain" in err[0] and not target.exists(), err


def test_normalisation_on_the_model_device_agrees_with_the_decode_threads(slides, demo,
                                                                          monkeypatch):
    """On a GPU the bags are normalised on the device (torch) inside the runner; forced
    here on the CPU, it gives the numpy decode-thread result to within uint8 rounding."""
    import napari_mran.inference.stain as stain_mod

    orig, _ = slides
    with open_slide(orig) as slide:
        threads = predict_slide(slide, demo, stain_normalize="macenko", compile=False)
        monkeypatch.setattr(stain_mod, "on_model_device", lambda dev: True)
        device = predict_slide(slide, demo, stain_normalize="macenko", compile=False)
    assert threads.provenance["stain_normalization"]["applied"].startswith("in the decode")
    assert device.provenance["stain_normalization"]["applied"].startswith("on the model's")
    np.testing.assert_allclose(device.slide_probs, threads.slide_probs, atol=0.02)
    np.testing.assert_allclose(device.patch_attention, threads.patch_attention, atol=2e-3)
    with open_slide(orig) as slide:  # and it does normalise: unlike no normalisation
        plain = predict_slide(slide, demo, compile=False)
    assert np.abs(plain.patch_attention - threads.patch_attention).max() > \
        5 * np.abs(device.patch_attention - threads.patch_attention).max()


def test_preview_is_the_analysis_normalisation_of_the_smallest_level(tmp_path):
    """``inference.stain.preview`` (the widget's *Preview*): the smallest level normalised
    with the same fit and reference as the analysis records.  On a synthetic tumour slide
    as scanner-b shows it, the preview is nearer the unshifted slide's preview than the
    two slides are to each other (same tissue, seed 7; mean |difference| over the tissue
    14.7 -> 10.7 grey levels: the blue cast goes, 24 -> 8.5, the red channel stays ~14
    darker); "off" has nothing to show."""
    from napari_mran.inference.reading import tissue_lowres
    from napari_mran.inference.stain import preview, slide_stain
    from napari_mran.synthetic import make_slide

    out = {}
    for shift in (None, "scanner-b"):
        info = make_slide(tmp_path / f"{shift}.svs", 4096, 4096, True, 7, tumour_fraction=0.3,
                          stain_shift=shift)
        with open_slide(info.path) as slide:
            out[shift] = preview(slide, "macenko"), tissue_lowres(slide)
            if shift is None:
                with pytest.raises(ValueError, match="choose a stain normalisation"):
                    preview(slide, "off")
    (rgb, info, downsample), (img, valid, lowres_ds) = out["scanner-b"]
    assert rgb.shape == img.shape[:2] + (3,) and rgb.dtype == np.uint8
    assert downsample == tuple(float(v) for v in lowres_ds) and downsample[0] >= 16
    normaliser, expected_info = slide_stain("macenko", img, valid)
    assert np.array_equal(rgb, normaliser(np.ascontiguousarray(np.asarray(img)[..., :3])))
    assert info == expected_info and info["source_fitted_on"] == "the slide's smallest level"
    (plain_rgb, _, _), (plain_img, _, _) = out[None]
    tissue = (-np.log((np.asarray(plain_img)[..., :3] + 1.0) / 256)).mean(-1) > 0.16
    before = np.abs(np.asarray(img)[..., :3].astype(int) - plain_img[..., :3])[tissue].mean()
    after = np.abs(rgb.astype(int) - plain_rgb)[tissue].mean()
    assert after < 0.8 * before, (before, after)
