"""A second analysis of the same slide in a real window (Xvfb): it replaces the first
result (removed one layer per event-loop turn at the end), its layers were added hidden
and not made active, then shown; the top-bags layer is visible from the start."""

from __future__ import annotations

from test_widget import _analyse, _widget, cmu_crop, tissue_slide  # noqa: F401

from napari_mran._napari import keys as K
from napari_mran._napari import layers as L


def test_second_run_replaces_the_first(make_napari_viewer, qtbot, tissue_slide, tiny_model):
    viewer = make_napari_viewer(show=True)
    viewer.open(str(tissue_slide), plugin="napari-mran")
    w = _widget(viewer, qtbot, tiny_model)
    w.settings.save_check.setChecked(False)
    _analyse(qtbot, w)
    first = list(viewer.layers)[1:]
    first_result = first[0].metadata[K.RESULT]
    seen, active = {}, []

    def at_first_bag(event):  # the second run's layers, while it runs
        if getattr(event, "stage", "") == "bags" and not seen:
            seen.update({role: ly.visible for role, ly in w.runner.run.layers.items()})
            active.append(viewer.layers.selection.active is w.runner.run.layers[
                L.ROLES["patch"]])

    w.runner.analyze_btn.click()
    w.runner.run.worker.yielded.connect(at_first_bag)
    qtbot.waitUntil(lambda: not w.is_running, timeout=90000)
    # while running: tissue, patch and the (empty) top bags shown, bag and cell hidden;
    # the patch layer active (made so at launch, not by each insert)
    assert seen == {L.TISSUE_ROLE: True, L.ROLES["bag"]: False, L.ROLES["patch"]: True,
                    L.ROLES["cell"]: False, L.TOP_ROLE: True}
    assert active == [True]
    layers = list(viewer.layers)
    assert len(layers) == 6 and not any(ly in layers for ly in first)
    result = w.runner.last_outcome.result
    assert result is not first_result
    assert all(ly.metadata[K.RESULT] is result for ly in layers[1:])
    assert [L.layer_role(ly.metadata) for ly in layers] == [L.SLIDE_ROLE, *L.ROLE_ORDER]
    assert viewer.layers.selection.active is layers[3]  # the patch attention
    assert len(layers[-1].data) > 0 and layers[-1].text.visible
