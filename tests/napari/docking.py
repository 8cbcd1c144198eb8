"""Test helper: open a slide in a viewer and dock the Analyze slide widget, ready to run
(the bundled demo model picked, results not saved, torch.compile off)."""

from __future__ import annotations


def open_and_dock(viewer, qtbot, path):
    from napari_mran._napari._qt import widget as W

    viewer.open(str(path), plugin="napari-mran")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-mran", "Analyze slide")
    assert isinstance(widget, W.AnalyzeSlideWidget)
    qtbot.waitUntil(lambda: widget._env is not None, timeout=30000)
    # the bundled demo model is picked by default
    qtbot.waitUntil(lambda: widget.models.model is not None, timeout=30000)
    widget.settings.save_check.setChecked(False)
    widget.settings.compile_combo.setCurrentIndex(2)
    return widget
