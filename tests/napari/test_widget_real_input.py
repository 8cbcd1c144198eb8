"""Issue 9 in the napari widget: input that is not brightfield H&E is refused with the
reason (and analysed with the override), the demo model is named in the layer names
and under the prediction, and the analysed fraction of the tissue is shown."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from qtpy.QtCore import Qt
from slide_writers import write_svs_pyramid

from napari_mran._napari import layers as L
from napari_mran._napari.sample_data import sample_slide_path
from napari_mran.model import load_model
from docking import open_and_dock


@pytest.fixture(scope="module")
def grey_slide(tmp_path_factory):
    rgb = tifffile.imread(sample_slide_path())[:2048, :2048]
    grey = (rgb.astype(np.float32) @ [0.299, 0.587, 0.114]).astype(np.uint8)
    return write_svs_pyramid(tmp_path_factory.mktemp("grey") / "grey.svs",
                             np.repeat(grey[..., None], 3, axis=2), downsamples=(1, 4))


def _analyse(qtbot, widget):
    qtbot.mouseClick(widget.runner.analyze_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not widget.is_running, timeout=90000)


def test_grey_slide_refused_with_reason_then_override(make_napari_viewer, qtbot, grey_slide):
    viewer = make_napari_viewer(show=True)
    widget = open_and_dock(viewer, qtbot, grey_slide)
    _analyse(qtbot, widget)
    assert widget.runner.last_error and "not a brightfield H&E image" in widget.runner.last_error
    assert "no colour" in widget.runner.progress_label.text()
    assert not [ly for ly in viewer.layers if "attention" in ly.name]  # nothing half-made
    widget.settings.allow_check.setChecked(True)
    _analyse(qtbot, widget)
    assert widget.runner.last_error is None and widget.runner.last_outcome.result is not None
    check = widget.runner.last_outcome.result.provenance["input_check"]
    assert check["overridden"] is True and check["passed"] is False


def test_demo_model_named_in_layers_and_prediction(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    widget = open_and_dock(viewer, qtbot, sample_slide_path())
    assert getattr(widget.models.model, "is_demo", False)
    assert "DEMO model" in widget.models.info.text()
    _analyse(qtbot, widget)
    assert widget.runner.last_error is None, widget.runner.last_error
    heat = [ly.name for ly in viewer.layers if "attention" in ly.name]
    assert heat and all(L.DEMO_TAG in n for n in heat)
    text = widget.results.prediction_label.text()
    assert "DEMO model" in text and "of the tissue analysed" in text and "edge bags: pad" in text


def test_checkpoint_model_is_not_called_demo(make_napari_viewer, qtbot, tmp_path):
    import torch

    from napari_mran.model import MRAN, MRANConfig

    torch.manual_seed(0)
    viewer = make_napari_viewer(show=True)
    widget = open_and_dock(viewer, qtbot, sample_slide_path())
    widget.set_model(MRAN(MRANConfig(width=0.125, class_names=["normal", "tumour"])).eval(),
                     "tiny")
    assert "DEMO" not in widget.models.info.text()
    _analyse(qtbot, widget)
    assert not [ly for ly in viewer.layers if L.DEMO_TAG in ly.name]
    assert "DEMO" not in widget.results.prediction_label.text()
    assert load_model("demo").is_demo
