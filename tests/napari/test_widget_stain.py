"""The widget's stain-normalisation setting in a real viewer: the analysis it starts
normalises (recorded in provenance, with the reference the user chose), and a bad
reference file is a notification before anything runs."""

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

    # a reference file that is not an image: a notification, no run
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"no image here")
    settings.stain_combo.setCurrentIndex(settings.stain_combo.findData("macenko"))
    settings.stain_ref.setText(str(bad))
    qtbot.mouseClick(widget.runner.analyze_btn, Qt.MouseButton.LeftButton)
    assert not widget.is_running and errors and str(bad) in errors[-1]

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
