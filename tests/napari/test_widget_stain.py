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
