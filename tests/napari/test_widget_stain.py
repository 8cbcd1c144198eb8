"""The widget's stain-normalisation setting in a real viewer: the analysis it starts
normalises (recorded in provenance, with the reference the user chose); a missing
reference file is a notification before anything runs, and one that cannot be read or
fitted (read in the worker, not on the GUI thread) a notification when the run fails."""

from __future__ import annotations

import pytest
import tifffile
from napari.utils import notifications
from PIL import Image
from qtpy.QtCore import Qt

from napari_mran._napari.sample_data import sample_slide_path
from datafiles import shared
from docking import open_and_dock


def test_stain_normalisation_from_the_widget(make_napari_viewer, qtbot, monkeypatch, tmp_path):
    viewer = make_napari_viewer(show=True)
    widget = open_and_dock(viewer, qtbot, sample_slide_path())
    settings = widget.settings
    assert settings.options().stain_normalize == "off"  # the default
    errors: list[str] = []
    monkeypatch.setattr(notifications, "show_error", errors.append)

    # a reference file that does not exist: a notification at once, no run
    settings.stain_combo.setCurrentIndex(settings.stain_combo.findData("macenko"))
    settings.stain_ref.setText(str(tmp_path / "missing.png"))
    qtbot.mouseClick(widget.runner.analyze_btn, Qt.MouseButton.LeftButton)
    assert not widget.is_running and errors and "missing.png" in errors[-1]

    # a reference file that is not an image: read in the worker (the GUI thread reads
    # no pixels); its error is a notification naming the file, and no layer is left
    layers_before = [layer.name for layer in viewer.layers]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"no image here")
    settings.stain_ref.setText(str(bad))
    errors.clear()
    qtbot.mouseClick(widget.runner.analyze_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not widget.is_running, timeout=60000)
    assert errors and str(bad) in errors[-1] and "not a readable image" in errors[-1], errors
    assert widget.runner.last_error is not None and str(bad) in widget.runner.last_error
    assert [layer.name for layer in viewer.layers] == layers_before

    # a real H&E region as the reference: the analysis normalises to it
    region = tmp_path / "ref.png"
    Image.fromarray(tifffile.imread(sample_slide_path())[1000:1600, 1000:1800]).save(region)
    settings.stain_ref.setText(str(region))
    errors.clear()
    qtbot.mouseClick(widget.runner.analyze_btn, Qt.MouseButton.LeftButton)
    assert widget.is_running and not settings.stain_combo.isEnabled()  # locked while running
    qtbot.waitUntil(lambda: not widget.is_running, timeout=120000)
    assert widget.runner.last_error is None and not errors, (widget.runner.last_error, errors)
    info = widget.runner.last_outcome.result.provenance["stain_normalization"]
    assert info["method"] == "macenko"
    assert info["reference_source"] == f"user: {region}"
    assert settings.stain_combo.isEnabled()
    with pytest.raises(ValueError, match="stain_normalize"):  # a reference needs a method
        settings.stain_combo.setCurrentIndex(settings.stain_combo.findData("off"))
        settings.options()


def test_stain_preview_layer(make_napari_viewer, qtbot, monkeypatch, tmp_path):
    """Settings > Stain normalisation > Preview: off until a method is chosen; then the
    slide's smallest level normalised as the analysis would (same fit, same reference,
    provenance in the layer's metadata) lies exactly over the slide; glass stays glass;
    a second preview replaces the layer; a bad reference is a notification naming it."""
    import numpy as np

    from napari_mran._napari import keys
    from napari_mran._napari._qt.stain_preview import META, SUFFIX, preview_layer_kwargs
    from napari_mran._napari.frame import SlideFrame
    from napari_mran.inference.reading import tissue_lowres
    from napari_mran.inference.stain import slide_stain

    viewer = make_napari_viewer(show=True)
    widget = open_and_dock(viewer, qtbot, sample_slide_path())
    settings = widget.settings
    errors: list[str] = []
    monkeypatch.setattr(notifications, "show_error", errors.append)
    assert not settings.preview_btn.isEnabled()  # "off": nothing to preview
    settings.stain_combo.setCurrentIndex(settings.stain_combo.findData("macenko"))
    assert settings.preview_btn.isEnabled()
    slide_layer = widget.slides.current()
    name = f"{slide_layer.name} {SUFFIX}"
    n_layers = len(viewer.layers)
    qtbot.mouseClick(settings.preview_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: name in viewer.layers and not widget.stain_preview.running,
                    timeout=60000)
    layer = viewer.layers[name]
    assert len(viewer.layers) == n_layers + 1 and layer.rgb
    # the same pixels as the analysis's normaliser makes of the smallest level
    slide = slide_layer.metadata[keys.SLIDE]
    img, valid, _ = tissue_lowres(slide)
    normaliser, info = slide_stain("macenko", img, valid)
    expected = normaliser(np.ascontiguousarray(np.asarray(img)[..., :3]))
    assert np.array_equal(np.asarray(layer.data), expected)
    assert layer.metadata[META]["reference_source"] == info["reference_source"] == "built-in CMU-1"
    original = np.asarray(img)[..., :3]
    glass = original.min(-1) >= 250
    assert glass.any() and np.array_equal(np.asarray(layer.data)[glass], original[glass])
    assert np.abs(np.asarray(layer.data).astype(int) - original).mean() > 1  # it changed
    # laid over the slide (a one-level slide: pixel for pixel) ...
    assert np.allclose(layer.scale, slide_layer.scale[-2:])
    assert np.allclose(layer.translate, slide_layer.translate[-2:])
    # ... and a reduced smallest level too: 32 px of 0.5 um -> 16 um pixels whose first
    # centre is level-0 pixel 15.5's
    kw = preview_layer_kwargs(SlideFrame((0.5, 0.5), (0.0, 0.0), "um"), (32.0, 32.0), "p", {})
    assert kw["scale"] == (16.0, 16.0) and kw["translate"] == (7.75, 7.75)
    # Reinhard: the same layer, replaced in place
    settings.stain_combo.setCurrentIndex(settings.stain_combo.findData("reinhard"))
    qtbot.mouseClick(settings.preview_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not widget.stain_preview.running
                    and viewer.layers[name].metadata[META]["method"] == "reinhard", timeout=60000)
    assert len(viewer.layers) == n_layers + 1 and not errors
    # a reference that is not an image: a notification naming it, the layer kept
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"no image here")
    settings.stain_ref.setText(str(bad))
    qtbot.mouseClick(settings.preview_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not widget.stain_preview.running and bool(errors), timeout=60000)
    assert str(bad) in errors[-1] and name in viewer.layers


def test_stain_preview_of_a_slide_that_cannot_be_fitted(make_napari_viewer, qtbot, monkeypatch):
    """A fluorescence slide from another scanner (Hamamatsu NDPI, DAPI: not H&E): its
    stains cannot be fitted, so the preview is the slide unchanged, with a warning naming
    the file and the reason (not a silent no-op)."""
    import numpy as np

    from napari_mran._napari import keys
    from napari_mran._napari._qt.stain_preview import SUFFIX
    from napari_mran.inference.reading import tissue_lowres

    path = shared("ndpi/test3-DAPI-2-387.ndpi")
    viewer = make_napari_viewer(show=True)
    widget = open_and_dock(viewer, qtbot, path)
    warned: list[str] = []
    monkeypatch.setattr(notifications, "show_warning", warned.append)
    settings = widget.settings
    settings.stain_combo.setCurrentIndex(settings.stain_combo.findData("macenko"))
    qtbot.mouseClick(settings.preview_btn, Qt.MouseButton.LeftButton)
    slide_layer = widget.slides.current()
    name = f"{slide_layer.name} {SUFFIX}"
    qtbot.waitUntil(lambda: name in viewer.layers and not widget.stain_preview.running,
                    timeout=60000)
    assert widget.stain_preview.last_error is None
    msg = next(m for m in warned if "stain preview of" in m)
    assert str(path) in msg and "could not be fitted" in msg and "negative absorbance" in msg
    img, _valid, _ = tissue_lowres(slide_layer.metadata[keys.SLIDE])
    assert np.array_equal(np.asarray(viewer.layers[name].data), np.asarray(img)[..., :3])
