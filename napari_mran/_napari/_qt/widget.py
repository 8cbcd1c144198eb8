"""The "Analyze slide" dock widget: runs MRAN on a slide layer and shows where it looked.

A thin Qt front end over the headless core, composed of panels:

* :class:`.slide_picker.SlidePicker` and :class:`.model_picker.ModelPicker`: what to
  analyse, with what;
* :class:`.run_panel.RunPanel`: Analyze / Cancel and progress; the analysis is
  :func:`napari_mran.analysis.analyze_slide` in a napari ``create_worker`` thread
  (:func:`..jobs.analysis_job`), its events come back to the main thread, where
  :class:`..run.Run` paints them into the run's layers (only the main thread touches
  layers); Cancel sets an event the worker checks after every batch, the half-painted
  layers are then removed;
* :class:`.settings_panel.SettingsPanel` (the Settings tab): the analysis options;
* :class:`.result_panel.ResultPanel`, :class:`.faith_panel.FaithfulnessPanel` and
  Export… (the Result tab): the result shown (:class:`..shown.Shown`, from a run or
  opened with the ``.mran.zarr`` reader) and its display.

Layers are made by :mod:`..layers` (also used by the readers), rasters by
:meth:`SlideResult.heatmap`, files by :mod:`napari_mran.export`.
"""

from __future__ import annotations

import os

from napari.qt.threading import create_worker
from napari.utils import notifications
from qtpy.QtCore import Qt, QThreadPool, QTimer
from qtpy.QtWidgets import (
    QApplication,
    QComboBox,
    QDialog,
    QFormLayout,
    QPushButton,
    QScrollArea,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ...roi import RoiError
from .. import keys
from ..hover import install_hover, watch_viewer
from ..jobs import probe_environment
from ..roi_layers import shapes_layer_names, with_region
from ..shown import (
    Shown,
    apply_display,
    apply_opacity,
    find_shown,
    results_in,
    show_top_bags,
    zoom_to_bag,
)
from ..storage import default_results_folder
from .export import ExportDialog, Exporter
from .faith_panel import FaithfulnessPanel
from .gl_guard import install as install_gl_guard
from .model_picker import ModelPicker
from .perf import glyph_prewarm_steps, in_turns, prewarm_layer_types
from .result_panel import ResultPanel
from .review_panel import ReviewPanel
from .run_panel import RunPanel
from .settings_panel import SettingsPanel
from .slide_picker import SlidePicker
from .stain_preview import StainPreview


class AnalyzeSlideWidget(QWidget):
    """Dock widget "Analyze slide" (napari-mran)."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        # napari hands plugin widgets a PublicOnlyProxy of the viewer; every object read
        # through it is a new proxy, so layer identity (which layers this run created,
        # which slide layer is active) would break, and each access inspects the caller's
        # frame.  The widget only uses public API, on the real viewer.
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self._shown: Shown | None = None
        self._env: dict | None = None
        self.exporter = Exporter(self)
        self._build_ui()

        ev = self.viewer.layers.events
        ev.inserted.connect(self._on_layer_inserted)
        ev.removed.connect(self._on_layer_removed)
        ev.inserted.connect(self._refresh_slides)
        ev.removed.connect(self._refresh_slides)
        ev.inserted.connect(self._refresh_regions)
        ev.removed.connect(self._refresh_regions)
        self.viewer.layers.selection.events.active.connect(self._on_active_changed)
        watch_viewer(self.viewer)
        self.destroyed.connect(lambda *_: self._cancel_silently())
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self._cancel_silently)
            app.aboutToQuit.connect(self._save_reviews)

        install_gl_guard()  # (also done on plugin activation; idempotent)
        self._refresh_slides()
        self._refresh_regions()
        self._adopt_existing_results()
        # pre-warm while the viewer is idle (docs/gui.md, Responsiveness)
        self.warmed_up = False
        in_turns([prewarm_layer_types, *glyph_prewarm_steps(self.viewer)],
                 lambda: setattr(self, "warmed_up", True))
        self._probe_worker = create_worker(probe_environment, _ignore_errors=True)
        self._probe_worker.returned.connect(self._on_probe)
        self._probe_worker.start()

    # ------------------------------------------------------------------ UI building
    def _build_ui(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea(self)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        outer.addWidget(scroll)
        body = QWidget()
        scroll.setWidget(body)
        self.setMinimumWidth(340)
        col = QVBoxLayout(body)

        self.settings = SettingsPanel()
        self.stain_preview = StainPreview(self.viewer)
        self.settings.preview_btn.clicked.connect(self.preview_stain)
        # -- what to analyse, with what, and the run (always visible)
        self.slides = SlidePicker(self.viewer)
        self.slides.changed.connect(self._on_slide_changed)
        col.addWidget(self.slides)
        self.models = ModelPicker()
        self.models.changed.connect(self._update_enabled)
        self.models.chosen.connect(lambda model: self.settings.set_bag_px(model.config.bag_px))
        top = QFormLayout()
        top.addRow("Model", self.models)
        col.addLayout(top)
        self.results = ResultPanel(self.viewer)
        self.runner = RunPanel(self.viewer, self.results.display, self._show_result_of_run,
                               self.results.show_limits)
        self.runner.analyze_btn.clicked.connect(self.start_analysis)
        self.runner.running_changed.connect(self._update_enabled)
        col.addWidget(self.runner)

        self.tabs = QTabWidget()
        col.addWidget(self.tabs)
        self.tabs.addTab(self.settings, "Settings")
        self.tabs.addTab(self._result_tab(), "Result")
        self.review = ReviewPanel(self.viewer)  # review marks on the result shown
        self.tabs.addTab(self.review, "Review")
        col.addStretch(1)
        self._update_faith()
        # combo boxes may shrink below their longest entry; the panel then fits its dock
        for combo in body.findChildren(QComboBox):
            combo.setSizeAdjustPolicy(
                QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(6)
        self._body, self._scroll = body, scroll
        QTimer.singleShot(0, self._fit_width)

    def _result_tab(self) -> QWidget:
        self.result_tab = QWidget()
        col = QVBoxLayout(self.result_tab)
        self.results.display_changed.connect(self._apply_display)
        self.results.opacity_changed.connect(self._apply_opacity)
        self.results.top_k_changed.connect(self._apply_top_k)
        self.results.row_chosen.connect(self.zoom_to_rank)
        col.addWidget(self.results)
        self.faith = FaithfulnessPanel()
        self.faith.button.clicked.connect(self.start_faithfulness)
        col.addWidget(self.faith)
        self.export_btn = QPushButton("Export…")
        self.export_btn.setToolTip("QuPath GeoJSON, CSV, OME-TIFF / OME-Zarr heatmaps and "
                                   "the provenance record")
        self.export_btn.clicked.connect(self.open_export_dialog)
        self.export_btn.setEnabled(False)
        self.exporter.busy.connect(lambda busy: self.export_btn.setEnabled(not busy))
        col.addWidget(self.export_btn)
        col.addStretch(1)
        return self.result_tab

    def showEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        QTimer.singleShot(0, self._fit_width)  # sizes are right once styled and shown

    def _fit_width(self, *_args) -> None:
        """At least as wide as the content of the widest tab (no horizontal scrolling)."""
        current = self.tabs.currentIndex()
        need = 0
        self.tabs.blockSignals(True)
        for i in range(self.tabs.count()):
            self.tabs.setCurrentIndex(i)
            self._body.layout().activate()
            need = max(need, self._body.minimumSizeHint().width())
        self.tabs.setCurrentIndex(current)
        self.tabs.blockSignals(False)
        self.setMinimumWidth(need + self._scroll.verticalScrollBar().sizeHint().width() + 4)

    # ------------------------------------------------------------------ state
    def _on_probe(self, info: dict) -> None:
        self._env = info
        self.settings.show_devices(info)
        self.models.show_demo_availability(info)
        self._update_faith()
        self._update_enabled()

    def _update_enabled(self) -> None:
        running = self.runner.is_running
        slide = self.slides.current()
        if slide is None:
            why = "Open a slide first"
        elif self.models.model is None:
            why = self.models.waiting_why()
        elif running:
            why = "An analysis is running"
        else:
            why = f"Analyse {slide.name} with MRAN"
        self.runner.set_ready(slide is not None and self.models.model is not None, why)
        self.models.set_editable(not running)
        self.settings.set_editable(not running)
        self.slides.set_editable(not running)

    def _update_faith(self) -> None:
        self.faith.update_state(self._env, self._shown)

    def _refresh_slides(self, *_args) -> None:
        self.slides.refresh(locked=self.runner.is_running)

    def _on_active_changed(self, event=None) -> None:
        if not self.runner.is_running:
            self.slides.follow_active()

    def _on_slide_changed(self) -> None:
        ly = self.slides.current()
        if ly is not None:
            self.settings.follow_slide(ly.metadata[keys.SLIDE])
        self._update_enabled()

    @property
    def is_running(self) -> bool:
        return self.runner.is_running

    def current_slide_layer(self):
        return self.slides.current()

    def set_model(self, model, label: str = "model") -> None:
        """Use an already loaded model (scripts and tests)."""
        self.models.set_model(model, label)

    # ------------------------------------------------------------------ analysis
    def start_analysis(self) -> None:
        """Analyze button: create the (empty) result layers, then run analyze_slide in a
        worker thread."""
        if self.runner.is_running:
            return
        slide_layer, model = self.slides.current(), self.models.model
        if slide_layer is None or model is None:
            notifications.show_warning("napari-mran: choose a slide layer and a model first")
            return
        slide = slide_layer.metadata[keys.SLIDE]
        try:
            options = self.settings.options()
        except ValueError as exc:
            notifications.show_error(f"napari-mran: {exc}")
            return
        if options.bag_um is not None and slide.mpp is None:
            notifications.show_error("napari-mran: a bag size in µm needs the slide's MPP, "
                                     "which is unknown")
            return
        try:  # "Analyse inside": a Shapes layer's region (docs/roi.md)
            options = with_region(options, self.viewer.layers, self.settings.region_layer(),
                                  slide_layer)
        except RoiError as exc:
            notifications.show_error(f"napari-mran: {exc}")
            return
        self.runner.start(slide_layer, model, options, self.settings.save_folder(slide.path))

    def preview_stain(self) -> None:
        """Settings > Stain normalisation > Preview: the current slide's smallest level
        normalised as the analysis would, as a layer over the slide (worker thread)."""
        slide_layer = self.slides.current()
        method = self.settings.stain_combo.currentData()
        if slide_layer is None or method == "off":
            notifications.show_warning("napari-mran: choose a slide layer and a stain "
                                       "normalisation to preview")
            return
        try:
            options = self.settings.options()  # the reference file exists
        except ValueError as exc:
            notifications.show_error(f"napari-mran: {exc}")
            return
        model = self.models.model
        self.stain_preview.start(slide_layer, slide_layer.metadata[keys.SLIDE], method,
                                 getattr(model, "stain_reference", None),
                                 options.stain_reference)

    def _refresh_regions(self, *_args) -> None:
        """The "Analyse inside" choices: the viewer's Shapes layers (docs/roi.md)."""
        self.settings.set_region_layers(shapes_layer_names(self.viewer.layers))

    def cancel_analysis(self) -> None:
        """Cancel button: stop after the current batch; the half layers are removed."""
        self.runner.cancel()

    def _cancel_silently(self) -> None:
        """Widget closing or napari quitting: cancel a running analysis and let every
        worker thread of ours finish, so no worker outlives its Qt signals (that aborts
        the interpreter at exit)."""
        self.runner.cancel_silently()
        QThreadPool.globalInstance().waitForDone(30_000)

    def _save_reviews(self) -> None:
        """napari quitting: unsaved review marks are saved (or written beside the store)."""
        try:
            self.review.close_session()
        except RuntimeError:  # the panel's Qt object is already gone
            pass

    # ------------------------------------------------------------------ result shown
    def _adopt_existing_results(self) -> None:
        results = results_in(self.viewer)
        if results:
            self._adopt(results[-1])

    def _on_layer_inserted(self, event) -> None:
        # a layer given another result later (the Cohort review dock reuses its layers)
        event.value.events.metadata.connect(self._on_layer_metadata)
        self._follow_result_of(event.value)

    def _on_layer_metadata(self, event) -> None:
        self._follow_result_of(event.source)

    def _follow_result_of(self, layer) -> None:
        """A layer now holding a result that is not the shown one (opened with the
        reader, or a cohort row shown in reused layers): adopt it once all its layers
        are in (the next event-loop turn); never a layer of the running analysis."""
        result = (layer.metadata or {}).get(keys.RESULT)
        if result is None or (self._shown is not None and self._shown.result is result):
            return
        run = self.runner.run
        if run is not None and any(ly is layer for ly in run.layers.values()):
            return
        QTimer.singleShot(0, lambda r=result: self._adopt(r))

    def _adopt(self, result) -> None:
        if self._shown is not None and self._shown.result is result:
            return
        shown = find_shown(self.viewer, result)
        if shown is not None:
            self._show_result(shown)

    def _on_layer_removed(self, event) -> None:
        shown = self._shown
        if shown is None:
            return
        if not shown.forget(event.value):
            self._shown = None
            self.review.set_shown(None)
            self.results.clear()
            self.export_btn.setEnabled(False)
        self._update_faith()

    def _show_result_of_run(self, shown: Shown) -> None:
        self._show_result(shown, refresh_layers=False)  # the run's last steps set them

    def _show_result(self, shown: Shown, refresh_layers: bool = True) -> None:
        self._shown = shown
        self.tabs.setCurrentWidget(self.result_tab)
        if shown.slide_layer is not None:  # hovering the slide itself shows the scores too
            slide_layer = shown.slide_layer

            def result_of_slide():
                s = self._shown
                return s.result if s is not None and s.slide_layer is slide_layer else None

            install_hover(slide_layer, shown.frame, result_of_slide)
        self.results.show_prediction(shown.result)
        self.export_btn.setEnabled(True)
        self._update_faith()
        self._apply_display(refresh_data=refresh_layers)
        self.results.fill_top_table(shown.result)
        self.review.set_shown(shown)

    def _apply_display(self, *_args, refresh_data: bool = True) -> None:
        """Weighting, colour scaling and top-X % of the shown result's attention layers
        (``refresh_data=False``: the layers already show them; update the panel only)."""
        if self._shown is None:
            return
        limits = apply_display(self._shown, self.results.display(), refresh_data)
        self.results.show_limits(limits)
        self.results.show_caption()

    def _apply_opacity(self, opacity: float) -> None:
        if self._shown is not None:
            apply_opacity(self._shown, opacity)

    def _apply_top_k(self, k: int) -> None:
        if self._shown is None:
            return
        show_top_bags(self._shown, self.viewer, k)
        self.results.fill_top_table(self._shown.result)

    def zoom_to_rank(self, row: int) -> None:
        """Centre the camera on the bag of *row* of the top-bags list and fit it."""
        index = self.results.bag_of_row(row)
        if self._shown is not None and index is not None:
            zoom_to_bag(self.viewer, self._shown, index)

    # ------------------------------------------------------------------ faithfulness
    def start_faithfulness(self) -> None:
        check = (self._env or {}).get("faithfulness")
        shown = self._shown
        if check is None or shown is None or shown.slide_layer is None:
            return
        model = shown.model or self.models.model
        if model is None:
            notifications.show_warning(
                "napari-mran: choose the model that produced this result first")
            return
        self.faith.start(check, shown.slide_layer.metadata[keys.SLIDE], model, shown.result,
                         self.settings.device(), on_end=self._update_faith)
        self._update_faith()

    # ------------------------------------------------------------------ export
    def open_export_dialog(self) -> None:
        if self._shown is None:
            return
        dlg = ExportDialog(self, self._default_export_folder(), self._shown.result.slide_name,
                           store=self._shown.results_path())
        if dlg.exec() == QDialog.DialogCode.Accepted:
            self.export(dlg.folder(), dlg.selected())

    def _default_export_folder(self) -> str:
        shown = self._shown
        path = (shown.result.provenance.get("slide") or {}).get("path") if shown else None
        chosen = self.settings.folder_edit.text().strip()
        return chosen or str(default_results_folder(path or os.getcwd()))

    def export(self, folder: str | os.PathLike, kinds: list[str]):
        """Write the chosen exports of the shown result in a worker (the weighting shown);
        asks before replacing existing files.  Returns the worker, or None."""
        if self._shown is None or not kinds:
            return None
        return self.exporter.export(self._shown.result, folder, kinds,
                                    self.results.weighting(), store=self._shown.results_path())
