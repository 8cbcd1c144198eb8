"""The "Analyze slide" dock widget: runs MRAN on a slide layer and shows where it looked.

A thin Qt front end over the headless core:

* the analysis is :func:`napari_mran.analysis.analyze_slide` (a generator of progress
  events) driven in a napari ``create_worker`` thread; its events come back to the main
  thread through the worker's ``yielded`` signal, and only the main thread touches layers;
* layers are made by :mod:`napari_mran._napari.layers` (also used by the results
  reader), rasters by :meth:`SlideResult.heatmap`, files by :mod:`napari_mran.export`;
* Cancel sets an event the worker checks after every batch; the worker then closes the
  analysis generator (its decode pool shuts down) and the half-painted layers are removed.

This is the only module of the package that imports Qt (qtpy).
"""

from __future__ import annotations

import html
import importlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Layer
from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..errors import MRANError, OutputExistsError
from ..export.plan import file_stem as slide_stem
from . import layers as L

# --------------------------------------------------------------------------- helpers
# (no Qt; they run in worker threads or are plain decisions the docs describe)

RESULTS_SUBFOLDER = "mran-results"
STORE_SUFFIX = ".mran.zarr"
REPAINT_INTERVAL_MS = 200
STEP_GAP_MS = 15


def default_results_folder(slide_path: str | os.PathLike) -> Path:
    """``<slide folder>/mran-results`` when that can be written, else the user cache.

    The bundled sample slides (inside the installed package) always use the cache.
    Nothing is ever written beside the user's files in any other place; the folder is
    shown in the panel before the analysis starts and can be changed there.
    """
    from .._paths import user_cache_dir

    here = Path(os.path.abspath(slide_path)).parent
    package = Path(os.path.abspath(__file__)).parents[1]
    if here == package or package in here.parents:  # bundled sample data
        return user_cache_dir() / "results"
    target = here / RESULTS_SUBFOLDER
    if target.is_dir():
        ok = os.access(target, os.W_OK | os.X_OK)
    else:
        ok = here.is_dir() and os.access(here, os.W_OK | os.X_OK)
    return target if ok else user_cache_dir() / "results"


def save_result_unique(result, folder: Path, stem: str) -> Path:
    """Save *result* as ``<stem>.mran.zarr`` in *folder*, or ``<stem>-2...`` if taken.

    Never replaces an existing store (two runs never share one output).
    """
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(1, 1000):
        path = folder / (f"{stem}{STORE_SUFFIX}" if k == 1 else f"{stem}-{k}{STORE_SUFFIX}")
        if os.path.lexists(path):
            continue
        try:
            return result.save(path, overwrite=False)
        except OutputExistsError:
            continue  # another run took the name between the check and the rename
    raise OutputExistsError(f"{folder}: no free name for {stem}{STORE_SUFFIX}")


@dataclass
class _Saving:
    """Yielded by the analysis job before it writes the results store."""

    path: str


@dataclass
class _Outcome:
    """Returned by the analysis job."""

    cancelled: bool = False
    result: Any = None
    saved: str | None = None
    save_error: str | None = None


def analysis_job(slide, model, options: dict, cancel: threading.Event,
                 save_folder: Path | None, stem: str, leave_one_core: bool = False):
    """Worker-thread generator: analyze_slide's events, then save; returns an _Outcome.

    Checks *cancel* after every event, so a cancel takes effect within one batch; the
    analysis generator is always closed here, in the worker thread.  With
    *leave_one_core*, torch and the decode threads use one CPU core less than there are
    (at least one), so the viewer stays responsive on small machines.
    """
    from ..analysis import analyze_slide

    if cancel.is_set():
        return _Outcome(cancelled=True)
    restore = None
    if leave_one_core:
        import torch

        cores = os.cpu_count() or 1
        restore = torch.get_num_threads()
        torch.set_num_threads(max(1, min(restore, cores - 1)))
        options = {"num_workers": max(1, min(8, cores - 1)), **options}
    gen = analyze_slide(slide, model, **options)
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                result = stop.value
                break
            if cancel.is_set():
                return _Outcome(cancelled=True)
            yield event
    finally:
        gen.close()
        if restore is not None:
            import torch

            torch.set_num_threads(restore)
    if cancel.is_set():
        return _Outcome(cancelled=True)
    outcome = _Outcome(result=result)
    if save_folder is not None:
        yield _Saving(str(save_folder))
        try:
            outcome.saved = str(save_result_unique(result, Path(save_folder), stem))
        except (MRANError, OSError) as exc:
            outcome.save_error = str(exc)
    return outcome


def probe_environment() -> dict:
    """Worker thread: devices torch can see, the demo model, the faithfulness check."""
    info: dict[str, Any] = {"cuda": None, "mps": False, "demo": None, "demo_path": None,
                            "faithfulness": None, "faithfulness_why": ""}
    try:
        import torch

        if torch.cuda.is_available():
            info["cuda"] = torch.cuda.get_device_name(0)
        mps = getattr(torch.backends, "mps", None)
        info["mps"] = bool(mps is not None and mps.is_available())
    except Exception as exc:  # noqa: BLE001
        info["torch_error"] = str(exc)
    try:
        from ..model import DEMO_MODEL_PATH

        info["demo_path"] = str(DEMO_MODEL_PATH)
        info["demo"] = DEMO_MODEL_PATH.is_file()
    except Exception as exc:  # noqa: BLE001
        info["demo"] = False
        info["demo_path"] = f"({exc})"
    info["faithfulness"], info["faithfulness_why"] = _find_faithfulness()
    return info


def _find_faithfulness():
    try:
        mod = importlib.import_module("napari_mran.faithfulness")
    except ImportError:
        return None, "napari_mran.faithfulness is not available in this installation"
    fn = getattr(mod, "restricted_prediction", None)
    if not callable(fn):
        return None, "napari_mran.faithfulness has no restricted_prediction()"
    return fn, ""


def load_model_job(spec: str):
    """Worker thread: ``load_model`` ("demo" or a checkpoint path)."""
    from ..model import load_model

    return load_model(spec)


def export_job(result, jobs: list[tuple[str, str, dict, bool]]) -> list[str]:
    """Worker thread: run the exporters; ``jobs`` = (kind, path, options, overwrite)."""
    from ..export.plan import ExportJob, write_export

    return [os.fspath(write_export(result, ExportJob(kind, Path(path), opts),
                                   overwrite=overwrite))
            for kind, path, opts, overwrite in jobs]


def model_summary(model) -> tuple[str, str]:
    """(short HTML, full tooltip text) describing a model's classes and provenance."""
    cfg = model.config
    prov = dict(cfg.provenance or {})
    source = getattr(model, "checkpoint_path", None)
    parts = [f"<b>classes</b>: {html.escape(', '.join(cfg.class_names))}",
             f"width {cfg.width:g}, bag {cfg.bag_px} px → {cfg.input_px} px input"]
    if prov:
        keys = ", ".join(sorted(prov)[:4])
        parts.append(f"provenance: {html.escape(keys)}" + (" …" if len(prov) > 4 else ""))
    else:
        parts.append("provenance: none recorded (untrained or test model?)")
    if getattr(model, "is_demo", False):
        parts.insert(0, "<span style='color:#e66'><b>DEMO model</b>: trained on synthetic "
                        "slides, not for diagnosis</span>")
    sha = getattr(model, "checkpoint_sha256", None)
    full = {"classes": list(cfg.class_names), "width": cfg.width, "bag_px": cfg.bag_px,
            "source": str(source) if source else None, "sha256": sha, "provenance": prov}
    return "<br>".join(parts), json.dumps(full, indent=1, default=str)[:4000]


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "–"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


def _gradient_pixmap(colormap: str, width: int = 140, height: int = 12) -> QPixmap:
    """A horizontal colour bar (low values left) of a napari colormap."""
    from napari.utils.colormaps import ensure_colormap

    rgba = ensure_colormap(colormap).map(np.linspace(0.0, 1.0, width))  # (width, 4) float
    row = (np.clip(rgba[:, :3], 0, 1) * 255).astype(np.uint8)           # (width, 3)
    rgb = np.ascontiguousarray(np.broadcast_to(row, (height, width, 3)))
    image = QImage(rgb.tobytes(), width, height, 3 * width, QImage.Format.Format_RGB888)
    return QPixmap.fromImage(image.copy())


def _set_top_bags(layer, rects: list, kw: dict, show_text: bool = True) -> None:
    """Replace the rectangles, features and metadata of a top-bags Shapes layer in place.

    ``show_text=False`` leaves the labels hidden (the first draw of text costs ~0.1 s:
    the caller shows them in a later event-loop turn).
    """
    layer.text.visible = False
    if len(layer.data):
        layer.data = []
    if rects:
        layer.add_rectangles(rects, edge_color=kw["edge_color"], face_color=kw["face_color"],
                             edge_width=kw["edge_width"])
    layer.features = kw["features"]
    layer.metadata = kw["metadata"]
    layer.refresh_text()
    layer.text.visible = show_text


_PREWARMED = False


def _prewarm_layer_types() -> None:
    """Build one throw-away Points and Shapes layer while the viewer is idle.

    The first of each in a process costs ~0.35 s (module set-up), which would otherwise
    block the viewer when an analysis creates its layers.
    """
    global _PREWARMED
    if _PREWARMED:
        return
    _PREWARMED = True
    from napari.layers import Points, Shapes

    Points(np.zeros((1, 2)), symbol="square", face_color="transparent")
    Shapes([np.array([[0.0, 0.0], [1.0, 1.0]])], shape_type="rectangle",
           features={"rank": [1]}, text={"string": "#{rank}"})


#: Characters whose glyphs napari's text rendering builds on first use (~6 ms each on
#: a 2-core CPU): vispy's line-metrics probe ("ÅÉÑŐjgpqy") and the top-bag labels.
_PREWARM_GLYPHS = "ÅÉÑŐjgpqy #0123456789.=γ"


def _glyph_prewarm_steps(viewer) -> list:
    """Callables that build, one character each, the text glyphs the first draw of a
    Points/Shapes layer needs, so that it does not cost ~0.15 s when an analysis adds its
    layers.  Uses napari's canvas font (private API): best effort, nothing if it moved."""
    try:
        info = viewer.window._qt_viewer.canvas.font_info
        info = info() if callable(info) else info  # (a method in napari 0.9)
        font = info.font_manager.get_font(info.face)
    except Exception:  # noqa: BLE001 - napari internals changed: skip the pre-warming
        return []

    def load(char):
        try:
            font[char]
        except Exception:  # noqa: BLE001
            pass
    return [lambda c=c: load(c) for c in _PREWARM_GLYPHS]


class _GcPause:
    """Objects alive when an analysis starts are moved out of the garbage collector's
    reach (``gc.freeze``) until it ends (``gc.unfreeze``).

    With napari and torch loaded a full collection walks millions of objects: 0.2-0.3 s
    with the event loop blocked, at a moment the analysis' allocations choose.  Frozen,
    full collections during the run only walk what the run created.  Nested runs (one
    per widget) are counted; nothing stays frozen after the last one ends.  The price:
    an object that existed at the click and becomes *cyclic* garbage during the run (a
    layer the user deletes meanwhile) is freed when the run ends, not before.
    """

    depth = 0

    @classmethod
    def enter(cls) -> None:
        import gc

        if cls.depth == 0:
            gc.freeze()
        cls.depth += 1

    @classmethod
    def leave(cls) -> None:
        import gc

        if cls.depth <= 0:
            return
        cls.depth -= 1
        if cls.depth == 0:
            gc.unfreeze()


def _ask_overwrite(parent, paths: list[str]) -> bool:
    shown = "\n".join(paths[:8]) + ("\n…" if len(paths) > 8 else "")
    answer = QMessageBox.question(
        parent, "Replace existing files?",
        f"{len(paths)} file(s) already exist:\n\n{shown}\n\nReplace them?",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes


# --------------------------------------------------------------------------- state

@dataclass
class _Run:
    """A running analysis (main-thread state)."""

    worker: Any
    cancel: threading.Event
    slide_layer: Any
    slide_name: str
    frame: L.SlideFrame
    model: Any
    t_start: float
    options: dict
    layers: dict[str, Any] = field(default_factory=dict)      # role -> layer
    rasters: dict[str, np.ndarray] = field(default_factory=dict)  # level -> raster
    bag_px: int = 0
    box_index: dict[tuple[int, int], int] = field(default_factory=dict)
    colors: np.ndarray | None = None
    hidden: list[tuple[Any, bool]] = field(default_factory=list)  # previous results, hidden
    pbar: Any = None
    bags_done: int = 0
    dirty: bool = False
    state: str = "running"                     # running / cancelling / ending / over
    gc_paused: bool = False                    # holds a _GcPause until the run ends


@dataclass
class _Shown:
    """The result the panel controls (from a run or opened with the reader)."""

    result: Any
    layers: dict[str, Any]
    frame: L.SlideFrame
    slide_layer: Any = None
    model: Any = None


# --------------------------------------------------------------------------- widget

class AnalyzeSlideWidget(QWidget):
    """Dock widget "Analyze slide" (napari-mran)."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        # napari hands plugin widgets a PublicOnlyProxy of the viewer; every object read
        # through it is a new proxy, so layer identity (which layers this run created,
        # which slide layer is active) would break, and each access inspects the caller's
        # frame.  The widget only uses public API, on the real viewer.
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self._run: _Run | None = None
        self._shown: _Shown | None = None
        self._models: dict[int, Any] = {}          # combo index -> loaded model
        self._model = None
        self._model_loading = None
        self._env: dict | None = None
        self._folder_edited = False
        self._export_worker = None
        self._faith_worker = None
        self.confirm_overwrite = lambda paths: _ask_overwrite(self, paths)
        self.last_outcome: _Outcome | None = None
        self.last_error: str | None = None

        self._build_ui()
        self._repaint_timer = QTimer(self)
        self._repaint_timer.setInterval(REPAINT_INTERVAL_MS)
        self._repaint_timer.timeout.connect(self._repaint)

        ev = self.viewer.layers.events
        ev.inserted.connect(self._on_layer_inserted)
        ev.removed.connect(self._on_layer_removed)
        ev.inserted.connect(self._refresh_slides)
        ev.removed.connect(self._refresh_slides)
        self.viewer.layers.selection.events.active.connect(self._on_active_changed)
        L.watch_viewer(self.viewer)
        self.destroyed.connect(lambda *_: self._cancel_silently())
        from qtpy.QtWidgets import QApplication

        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self._cancel_silently)

        from ._widget_gl import install as install_gl_guard

        install_gl_guard()  # (also done on plugin activation; idempotent)
        self._refresh_slides()
        self._adopt_existing_results()
        QTimer.singleShot(0, _prewarm_layer_types)
        self._in_turns(_glyph_prewarm_steps(self.viewer))
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

        # -- what to analyse, with what (always visible)
        top = QFormLayout()
        col.addLayout(top)
        self.slide_combo = QComboBox()
        self.slide_combo.setToolTip("The slide layer to analyse (defaults to the active one)")
        self.slide_combo.currentIndexChanged.connect(self._on_slide_changed)
        top.addRow("Slide", self.slide_combo)
        self.slide_hint = QLabel()
        self.slide_hint.setWordWrap(True)
        top.addRow(self.slide_hint)
        row = QHBoxLayout()
        self.model_combo = QComboBox()
        self.model_combo.addItem("Demo model (checking…)", "demo")
        self.model_combo.addItem("Checkpoint file…", "browse")
        self.model_combo.activated.connect(self._on_model_activated)
        row.addWidget(self.model_combo, 1)
        self.model_browse = QPushButton("File…")
        self.model_browse.setToolTip("Choose an MRAN checkpoint (.safetensors, or a reference "
                                     ".pt/.pth; pickles are opened weights-only)")
        self.model_browse.clicked.connect(self._browse_model)
        row.addWidget(self.model_browse)
        top.addRow("Model", row)
        self.model_info = QLabel("No model loaded")
        self.model_info.setWordWrap(True)
        self.model_info.setTextFormat(Qt.TextFormat.RichText)
        top.addRow(self.model_info)

        # -- run (always visible)
        row = QHBoxLayout()
        self.analyze_btn = QPushButton("Analyze")
        self.analyze_btn.clicked.connect(self.start_analysis)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel_analysis)
        row.addWidget(self.analyze_btn, 1)
        row.addWidget(self.cancel_btn)
        col.addLayout(row)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("")
        col.addWidget(self.progress_bar)
        self.progress_label = QLabel("Idle")
        self.progress_label.setWordWrap(True)
        col.addWidget(self.progress_label)

        self.tabs = QTabWidget()
        col.addWidget(self.tabs)

        # -- settings tab
        box = QWidget()
        form = QFormLayout(box)
        self.device_combo = QComboBox()
        for text, data in (("Auto", "auto"), ("CPU", "cpu"), ("GPU (CUDA)", "cuda"),
                           ("Apple GPU (MPS)", "mps")):
            self.device_combo.addItem(text, data)
        self.device_info = QLabel("looking for devices…")
        self.device_info.setWordWrap(True)
        form.addRow("Device", self.device_combo)
        form.addRow("", self.device_info)

        brow = QHBoxLayout()
        self.bag_px = QSpinBox()
        self.bag_px.setRange(256, 16384)
        self.bag_px.setSingleStep(256)
        self.bag_px.setValue(2048)
        self.bag_um = QDoubleSpinBox()
        self.bag_um.setRange(50.0, 10000.0)
        self.bag_um.setDecimals(1)
        self.bag_um.setValue(1024.0)
        self.bag_um.setSuffix(" µm")
        self.bag_um.setVisible(False)
        self.bag_unit = QComboBox()
        self.bag_unit.addItem("px", "px")
        self.bag_unit.addItem("µm", "um")
        self.bag_unit.setToolTip("µm makes 20x and 40x scans give the same physical bags "
                                 "(needs the slide's MPP)")
        self.bag_unit.currentIndexChanged.connect(self._on_bag_unit)
        brow.addWidget(self.bag_px, 1)
        brow.addWidget(self.bag_um, 1)
        brow.addWidget(self.bag_unit)
        form.addRow("Bag size", brow)

        self.tissue_combo = QComboBox()
        self.tissue_combo.addItem("reference", "reference")
        self.tissue_combo.addItem("exact (level 0)", "exact")
        self.tissue_combo.addItem("Otsu", "otsu")
        self.tissue_combo.setToolTip("reference: MRAN's white-fraction rule per bag; Otsu: "
                                     "an Otsu threshold on the low-resolution slide")
        form.addRow("Tissue", self.tissue_combo)

        self.edge_combo = QComboBox()
        self.edge_combo.addItem("pad (whole tissue)", "pad")
        self.edge_combo.addItem("drop (authors' rule)", "drop")
        self.edge_combo.setToolTip("Partial bags at the right and bottom edges: pad = analysed "
                                   "with white outside the slide; drop = left out, as the "
                                   "MRAN authors did (exact reproduction)")
        form.addRow("Edge bags", self.edge_combo)
        self.allow_check = QCheckBox("analyse input that is not brightfield H&E")
        self.allow_check.setToolTip("By default a slide that fails the brightfield H&E check "
                                    "(fluorescence, grey, other stains) is refused; the "
                                    "override is recorded in provenance")
        form.addRow("Input check", self.allow_check)

        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(0, 256)
        self.batch_spin.setSpecialValueText("auto")
        self.batch_spin.setValue(0)
        self.batch_spin.setToolTip("Bags per forward pass (auto: 2 on CPU, by free memory "
                                   "on a GPU; halved automatically on out-of-memory)")
        form.addRow("Batch size", self.batch_spin)

        self.compile_combo = QComboBox()
        for text, data in (("auto", "auto"), ("on", True), ("off", False)):
            self.compile_combo.addItem(text, data)
        self.compile_combo.setToolTip("torch.compile the CNN (auto: on CPU for slides with "
                                      ">= 64 bags; the first batch then takes longer)")
        form.addRow("torch.compile", self.compile_combo)

        self.save_check = QCheckBox("save (.mran.zarr) in:")
        self.save_check.setChecked(True)
        form.addRow("Results", self.save_check)
        frow = QHBoxLayout()
        self.folder_edit = QLineEdit()
        self.folder_edit.setToolTip("Default: a 'mran-results' folder beside the slide if "
                                    "that is writable, else the napari-mran cache folder")
        self.folder_edit.textEdited.connect(self._on_folder_edited)
        self.folder_btn = QPushButton("…")
        self.folder_btn.setMaximumWidth(30)
        self.folder_btn.clicked.connect(self._browse_folder)
        frow.addWidget(self.folder_edit, 1)
        frow.addWidget(self.folder_btn)
        form.addRow("", frow)
        self.tabs.addTab(box, "Settings")

        # -- result tab
        self.result_box = QWidget()
        rl = QVBoxLayout(self.result_box)
        self.prediction_label = QLabel("No result yet")
        self.prediction_label.setWordWrap(True)
        self.prediction_label.setTextFormat(Qt.TextFormat.RichText)
        rl.addWidget(self.prediction_label)

        form = QFormLayout()
        wrow = QVBoxLayout()
        self.weight_local = QRadioButton("local (α, β)")
        self.weight_global = QRadioButton("global (γα, γαβ)")
        self.weight_local.setChecked(True)
        self.weight_local.setToolTip("Attention within its bag (patch α) or patch (cell β)")
        self.weight_global.setToolTip("Attention weighted by its bag (γα) and patch (γαβ): "
                                      "comparable across the whole slide")
        self._weight_group = QButtonGroup(self)
        self._weight_group.addButton(self.weight_local)
        self._weight_group.addButton(self.weight_global)
        self.weight_local.toggled.connect(self._apply_display)
        wrow.addWidget(self.weight_local)
        wrow.addWidget(self.weight_global)
        form.addRow("Weighting", wrow)

        self.scaling_combo = QComboBox()
        for text, data in (("min–max of this slide", "minmax"),
                           ("1–99th percentile", "percentile"),
                           ("fixed 0–1 (compare slides)", "fixed")):
            self.scaling_combo.addItem(text, data)
        self.scaling_combo.currentIndexChanged.connect(self._apply_display)
        form.addRow("Colour scale", self.scaling_combo)

        self.opacity_slider = QSlider(Qt.Orientation.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(int(L.DEFAULT_OPACITY * 100))
        self.opacity_slider.valueChanged.connect(self._apply_opacity)
        form.addRow("Opacity", self.opacity_slider)

        self.top_percent = QDoubleSpinBox()
        self.top_percent.setRange(0.5, 100.0)
        self.top_percent.setDecimals(1)
        self.top_percent.setValue(100.0)
        self.top_percent.setSuffix(" %")
        self.top_percent.setToolTip("Show only the highest X % of each attention layer "
                                    "(100 % = everything)")
        self.top_percent.valueChanged.connect(self._apply_display)
        form.addRow("Show only top", self.top_percent)

        self.top_k = QSpinBox()
        self.top_k.setRange(1, 200)
        self.top_k.setValue(10)
        self.top_k.valueChanged.connect(self._apply_top_k)
        form.addRow("Top bags", self.top_k)
        rl.addLayout(form)

        # colour bars of the three attention layers (napari's canvas colour-bar overlay
        # is not used: napari 0.9.2 segfaults drawing after such a layer is removed)
        grid = QGridLayout()
        self.colorbars = {}
        for row, level in enumerate(L.LEVELS):
            name = QLabel(L.ROLES[level].replace(" attention", ""))
            bar = QLabel()
            bar.setPixmap(_gradient_pixmap(L.COLORMAPS[level], 110, 12))
            bar.setFixedSize(110, 12)
            bar.setToolTip(f"{L.ROLES[level]}: colormap {L.COLORMAPS[level]}")
            lo, hi = QLabel("–"), QLabel("–")
            hi.setAlignment(Qt.AlignmentFlag.AlignRight)
            grid.addWidget(name, row, 0)
            grid.addWidget(lo, row, 1)
            grid.addWidget(bar, row, 2)
            grid.addWidget(hi, row, 3)
            grid.setColumnStretch(2, 1)
            self.colorbars[level] = (bar, lo, hi)
        rl.addLayout(grid)
        self.colorbar_label = QLabel()
        self.colorbar_label.setWordWrap(True)
        self.colorbar_label.setTextFormat(Qt.TextFormat.RichText)
        rl.addWidget(self.colorbar_label)

        self.top_table = QTableWidget(0, 4)
        self.top_table.setHorizontalHeaderLabels(["#", "γ", "P(class)", "x, y (px)"])
        self.top_table.verticalHeader().setVisible(False)
        self.top_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.top_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.top_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.top_table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.top_table.setMinimumHeight(160)
        self.top_table.setToolTip("Bags by bag attention γ, highest first; click one to "
                                  "zoom to it")
        self.top_table.cellClicked.connect(lambda r, _c: self.zoom_to_rank(r))
        self.top_table.currentCellChanged.connect(lambda r, *_: self.zoom_to_rank(r))
        rl.addWidget(self.top_table)

        frow = QHBoxLayout()
        self.faith_k = QSpinBox()
        self.faith_k.setRange(1, 1000)
        self.faith_k.setValue(10)
        self.faith_m = QSpinBox()
        self.faith_m.setRange(1, 64)
        self.faith_m.setValue(8)
        self.faith_btn = QPushButton("Re-predict from the top bags")
        self.faith_btn.clicked.connect(self.start_faithfulness)
        frow.addWidget(QLabel("bags"))
        frow.addWidget(self.faith_k)
        frow.addWidget(QLabel("patches"))
        frow.addWidget(self.faith_m)
        rl.addWidget(QLabel("Faithfulness: re-predict the slide from its top bags and, in "
                            "each, its top patches only"), 0)
        rl.itemAt(rl.count() - 1).widget().setWordWrap(True)
        rl.addLayout(frow)
        rl.addWidget(self.faith_btn)
        self.faith_label = QLabel()
        self.faith_label.setWordWrap(True)
        rl.addWidget(self.faith_label)

        self.export_btn = QPushButton("Export…")
        self.export_btn.setToolTip("QuPath GeoJSON, CSV, OME-TIFF / OME-Zarr heatmaps and the "
                                   "provenance record")
        self.export_btn.clicked.connect(self.open_export_dialog)
        rl.addWidget(self.export_btn)
        rl.addStretch(1)
        self.tabs.addTab(self.result_box, "Result")
        col.addStretch(1)
        self._set_result_enabled(False)
        self._set_faith_state()
        # combo boxes may shrink below their longest entry; the panel then fits its dock
        for combo in body.findChildren(QComboBox):
            combo.setSizeAdjustPolicy(
                QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(6)
        self.folder_edit.setMinimumWidth(80)
        self._body, self._scroll = body, scroll
        QTimer.singleShot(0, self._fit_width)

    def showEvent(self, event) -> None:
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

    # ------------------------------------------------------------------ probing
    def _on_probe(self, info: dict) -> None:
        self._env = info
        cuda, mps = info.get("cuda"), info.get("mps")
        found = [f"CUDA: {cuda}"] if cuda else []
        if mps:
            found.append("Apple MPS")
        self.device_info.setText("found: " + (", ".join(found) if found else "CPU only"))
        model = self.device_combo.model()
        model.item(2).setEnabled(bool(cuda))
        model.item(3).setEnabled(bool(mps))
        if info.get("torch_error"):
            self.device_info.setText(f"torch unavailable: {info['torch_error']}")
        item = self.model_combo.model().item(0)
        if info.get("demo"):
            self.model_combo.setItemText(0, "Demo model (bundled)")
            item.setEnabled(True)
            item.setToolTip(info.get("demo_path") or "")
            if self._model is None and self.model_combo.currentIndex() == 0:
                self._load_model_spec("demo", 0)
        else:
            self.model_combo.setItemText(0, "Demo model (not bundled)")
            item.setEnabled(False)
            item.setToolTip("The demo checkpoint is not part of this installation "
                            f"(expected {info.get('demo_path')}); choose a checkpoint file")
            if self._model is None:
                self.model_info.setText("The demo model is not bundled in this installation: "
                                        "choose a checkpoint file (Browse…).")
        self._set_faith_state()
        self._update_enabled()

    # ------------------------------------------------------------------ slides
    def _slide_layers(self) -> list:
        return [ly for ly in self.viewer.layers if "mran_slide" in (ly.metadata or {})]

    def _refresh_slides(self, *_args) -> None:
        slides = self._slide_layers()
        current = self.current_slide_layer()
        self.slide_combo.blockSignals(True)
        self.slide_combo.clear()
        self._slide_list = slides
        for ly in slides:
            self.slide_combo.addItem(ly.name)
        if slides:
            active = self.viewer.layers.selection.active
            ids = [id(ly) for ly in slides]
            if id(active) in ids and self._run is None:
                pick = active  # default: the slide the user is looking at
            else:
                pick = current if id(current) in ids else slides[-1]
            self.slide_combo.setCurrentIndex(ids.index(id(pick)))
        self.slide_combo.blockSignals(False)
        self.slide_combo.setEnabled(bool(slides) and self._run is None)
        if slides:
            self.slide_hint.setText("")
            self.slide_hint.setVisible(False)
        else:
            self.slide_hint.setVisible(True)
            self.slide_hint.setText(
                "<i>No slide open. Open one with File ▸ Open (SVS, NDPI, OME-TIFF, tiled "
                "TIFF…) or File ▸ Open Sample ▸ MRAN.</i>")
        self._on_slide_changed()

    def current_slide_layer(self):
        i = self.slide_combo.currentIndex()
        slides = getattr(self, "_slide_list", [])
        if not 0 <= i < len(slides):
            return None
        ly = slides[i]
        return ly if ly in self.viewer.layers else None

    def _on_active_changed(self, event=None) -> None:
        active = self.viewer.layers.selection.active
        slides = getattr(self, "_slide_list", [])
        idx = next((i for i, ly in enumerate(slides) if ly is active), None)
        if self._run is None and idx is not None and idx != self.slide_combo.currentIndex():
            self.slide_combo.setCurrentIndex(idx)

    def _on_slide_changed(self, *_args) -> None:
        ly = self.current_slide_layer()
        if ly is not None:
            slide = ly.metadata["mran_slide"]
            if not self._folder_edited:
                self.folder_edit.setText(str(default_results_folder(slide.path)))
            has_mpp = slide.mpp is not None
            self.bag_unit.model().item(1).setEnabled(has_mpp)
            if not has_mpp and self.bag_unit.currentData() == "um":
                self.bag_unit.setCurrentIndex(0)
            self.bag_unit.setToolTip("" if has_mpp else "This slide has no MPP: bag size in "
                                     "level-0 pixels only")
        self._update_enabled()

    def _on_bag_unit(self, *_args) -> None:
        um = self.bag_unit.currentData() == "um"
        self.bag_px.setVisible(not um)
        self.bag_um.setVisible(um)

    def _on_folder_edited(self, *_args) -> None:
        self._folder_edited = True

    def _browse_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for results",
                                                  self.folder_edit.text())
        if folder:
            self.folder_edit.setText(folder)
            self._folder_edited = True

    # ------------------------------------------------------------------ models
    def set_model(self, model, label: str = "model") -> None:
        """Use an already loaded model (scripts and tests)."""
        idx = self.model_combo.count()
        self.model_combo.addItem(label, "object")
        self._models[idx] = model
        self.model_combo.setCurrentIndex(idx)
        self._use_model(model)

    def _use_model(self, model) -> None:
        self._model = model
        self._model_loading = None
        short, full = model_summary(model)
        self.model_info.setText(short)
        self.model_info.setToolTip(full)
        self.bag_px.setValue(int(model.config.bag_px))
        self._update_enabled()

    def _on_model_activated(self, index: int) -> None:
        data = self.model_combo.itemData(index)
        if data == "browse":
            self._browse_model()
        elif data == "demo":
            self._load_model_spec("demo", index)
        elif data == "object":
            self._use_model(self._models[index])
        else:  # a checkpoint path
            if index in self._models:
                self._use_model(self._models[index])
            else:
                self._load_model_spec(data, index)

    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "MRAN checkpoint", "",
            "MRAN checkpoints (*.safetensors *.pt *.pth *.ckpt);;All files (*)")
        if not path:
            self._restore_model_selection()
            return
        self.open_checkpoint(path)

    def open_checkpoint(self, path: str) -> None:
        idx = self.model_combo.findData(path)
        if idx < 0:
            idx = self.model_combo.count()
            self.model_combo.addItem(os.path.basename(path), path)
            self.model_combo.setItemData(idx, path, Qt.ItemDataRole.ToolTipRole)
        self.model_combo.setCurrentIndex(idx)
        self._load_model_spec(path, idx)

    def _restore_model_selection(self) -> None:
        for idx, model in self._models.items():
            if model is self._model:
                self.model_combo.setCurrentIndex(idx)
                return

    def _load_model_spec(self, spec: str, index: int) -> None:
        self._model = None
        self.model_info.setText(f"Loading {html.escape(os.path.basename(spec))}…")
        self._update_enabled()
        worker = create_worker(load_model_job, spec, _ignore_errors=True)
        self._model_loading = worker

        def done(model, worker=worker):
            if self._model_loading is not worker:
                return
            self._models[index] = model
            self._use_model(model)

        def failed(exc, worker=worker):
            if self._model_loading is not worker:
                return
            self._model_loading = None
            self.model_info.setText(f"<span style='color:#e66'>Cannot load the model: "
                                    f"{html.escape(str(exc))}</span>")
            show_error(f"napari-mran: cannot load the model: {exc}")
            self._update_enabled()

        worker.returned.connect(done)
        worker.errored.connect(failed)
        worker.start()

    # ------------------------------------------------------------------ enabling
    def _update_enabled(self) -> None:
        running = self._run is not None
        slide = self.current_slide_layer()
        ready = slide is not None and self._model is not None and not running
        self.analyze_btn.setEnabled(ready)
        if slide is None:
            why = "Open a slide first"
        elif self._model is None:
            why = "Choose a model first" if self._model_loading is None else "Loading the model…"
        elif running:
            why = "An analysis is running"
        else:
            why = f"Analyse {slide.name} with MRAN"
        self.analyze_btn.setToolTip(why)
        self.cancel_btn.setEnabled(running and self._run.state == "running")
        for w in (self.model_combo, self.model_browse, self.device_combo, self.bag_px,
                  self.bag_um, self.bag_unit, self.tissue_combo, self.edge_combo,
                  self.allow_check, self.batch_spin, self.compile_combo, self.save_check, self.folder_edit, self.folder_btn):
            w.setEnabled(not running)
        self.slide_combo.setEnabled(not running and self.slide_combo.count() > 0)

    def _set_result_enabled(self, on: bool) -> None:
        for w in (self.weight_local, self.weight_global, self.scaling_combo,
                  self.opacity_slider, self.top_percent, self.top_k, self.top_table,
                  self.export_btn):
            w.setEnabled(on)
        self._set_faith_state()

    def _set_faith_state(self) -> None:
        fn = (self._env or {}).get("faithfulness")
        if self._env is None:
            ok, why = False, "checking whether the faithfulness check is available…"
        elif fn is None:
            ok, why = False, self._env.get("faithfulness_why") or "not available"
        elif self._shown is None:
            ok, why = False, "analyse a slide (or open a result) first"
        elif self._shown.slide_layer is None:
            ok, why = False, "the slide of this result is not open"
        elif self._faith_worker is not None:
            ok, why = False, "running…"
        else:
            ok, why = True, ("Re-run the slide-level prediction from only the top-k bags "
                             "and their top-m patches: if attention is faithful, the "
                             "prediction hardly changes")
        for w in (self.faith_btn, self.faith_k, self.faith_m):
            w.setEnabled(ok)
            w.setToolTip(why)

    # ------------------------------------------------------------------ analysis
    def analysis_options(self) -> dict:
        opts: dict[str, Any] = {
            "tissue_method": self.tissue_combo.currentData(),
            "edge": self.edge_combo.currentData(),
            "allow_non_brightfield": self.allow_check.isChecked(),
            "device": self.device_combo.currentData(),
            "batch_size": self.batch_spin.value() or "auto",
            "compile": self.compile_combo.currentData(),
        }
        if self.bag_unit.currentData() == "um":
            opts["bag_um"] = float(self.bag_um.value())
        else:
            opts["bag_px"] = int(self.bag_px.value())
        return opts

    def start_analysis(self) -> None:
        """Analyze button: create the (empty) result layers, then run analyze_slide in a
        worker thread."""
        if self._run is not None:
            return
        slide_layer = self.current_slide_layer()
        if slide_layer is None or self._model is None:
            show_warning("napari-mran: choose a slide layer and a model first")
            return
        slide = slide_layer.metadata["mran_slide"]
        folder = Path(self.folder_edit.text()).expanduser() if self.save_check.isChecked() else None
        if folder is not None and not str(folder).strip():
            folder = default_results_folder(slide.path)
        options = self.analysis_options()
        if "bag_um" in options and slide.mpp is None:
            show_error("napari-mran: a bag size in µm needs the slide's MPP, which is unknown")
            return
        cancel = threading.Event()
        name = os.path.basename(slide.path)
        if getattr(self._model, "is_demo", False):  # the layer names say so
            name += f" {L.DEMO_TAG}"
        worker = create_worker(analysis_job, slide, self._model, options, cancel, folder,
                               slide_stem(slide.path), leave_one_core=True, _ignore_errors=True)
        run = _Run(worker=worker, cancel=cancel, slide_layer=slide_layer, slide_name=name,
                   frame=L.SlideFrame.from_layer(slide_layer), model=self._model,
                   t_start=time.perf_counter(), options=options)
        self._run = run
        self.last_outcome = None
        self.last_error = None
        worker.yielded.connect(lambda ev, run=run: self._on_event(run, ev))
        worker.returned.connect(lambda out, run=run: self._on_returned(run, out))
        worker.errored.connect(lambda exc, run=run: self._on_errored(run, exc))
        worker.aborted.connect(lambda run=run: self._on_aborted(run))
        worker.finished.connect(lambda run=run: self._on_finished(run))
        self.progress_bar.setRange(0, 0)  # busy until the tissue is known
        self.progress_label.setText(f"Preparing the layers for {name}…")
        self._update_enabled()
        # napari's progress bar (activity panel); its total is set when the tissue is known
        run.pbar = napari_progress(total=0, desc=f"MRAN {name}: finding tissue")

        # The layers are made before the model starts, one per event-loop turn, while
        # the CPU is free: adding a layer (with its controls) and drawing it the first
        # time costs ~0.1 s here but 0.3-0.5 s on a 2-core machine busy with the model.
        steps = [lambda r=role, t=tup: self._add_run_layer(run, r, t)
                 for role, tup in self._empty_run_layers(run, slide, options)]

        def launch():
            if run.state != "running" or run is not self._run:
                if run.state == "cancelling":
                    self._on_returned(run, _Outcome(cancelled=True))
                return
            self.progress_label.setText(f"Finding tissue in {name}…")
            patch = run.layers.get(L.ROLES["patch"])
            if patch is not None:  # its controls and its hover text are the useful ones
                self.viewer.layers.selection.active = patch
            self._repaint_timer.start()
            worker.start()

        # from here on the run always ends through _end_run, which undoes this
        _GcPause.enter()
        run.gc_paused = True
        self._in_turns(steps, launch)

    def _empty_run_layers(self, run: _Run, slide, options: dict) -> list[tuple[str, tuple]]:
        """(role, layer-data tuple) of every layer of a run, empty (NaN / no shapes)."""
        if "bag_um" in options:  # the same rounding as analyze_slide; checked at "tissue"
            run.bag_px = round(options["bag_um"] / slide.mpp[0])
        else:
            run.bag_px = int(options.get("bag_px") or self._model.config.bag_px)
        size = tuple(int(v) for v in slide.dimensions)
        # previous results of this slide: hidden now, removed when this run succeeds
        for ly in list(self.viewer.layers):
            md = ly.metadata or {}
            if md.get(L.META_ROLE) and md.get("mran_slide_path") and \
                    os.path.abspath(md["mran_slide_path"]) == os.path.abspath(slide.path):
                run.hidden.append((ly, bool(ly.visible)))
                ly.visible = False
        meta = {"mran_run": "in progress", "mran_slide_path": os.path.abspath(slide.path),
                "mran_frame": run.frame}
        out = [(L.TISSUE_ROLE, L.tissue_points_data(
            np.zeros((0, 4)), run.frame, f"{run.slide_name} {L.TISSUE_ROLE}",
            {**meta, L.META_ROLE: L.TISSUE_ROLE}, size=run.bag_px * run.frame.scale[1]))]
        scaling = self.scaling_combo.currentData()
        for level in L.LEVELS:
            run.rasters[level] = L.empty_raster(level, size, run.bag_px)
            out.append((L.ROLES[level], L.heatmap_layer_data(
                run.rasters[level], level, run.bag_px, run.frame,
                f"{run.slide_name} {L.ROLES[level]}",
                {**meta, L.META_ROLE: L.ROLES[level], "mran_weighting": "local"},
                scaling=scaling, opacity=self.opacity_slider.value() / 100.0,
                visible=(level == "patch"))))
        top = L.empty_top_bags_data(run.frame, run.bag_px, f"{run.slide_name} {L.TOP_ROLE}",
                                    {**meta, L.META_ROLE: L.TOP_ROLE})
        # hidden (and so not drawn) while it is empty: the first draw of a Shapes layer
        # costs ~0.15 s here, better spent when the result is in
        top[1]["visible"] = False
        out.append((L.TOP_ROLE, top))
        return out

    def _add_run_layer(self, run: _Run, role: str, tup: tuple) -> None:
        if run.state != "running" or run is not self._run:
            return
        layer = Layer.create(*tup)
        run.layers[role] = layer
        self.viewer.layers.append(layer)

    def cancel_analysis(self) -> None:
        """Cancel button: stop after the current batch; the half layers are removed."""
        run = self._run
        if run is None or run.state != "running":
            return
        run.state = "cancelling"
        run.cancel.set()
        self.progress_label.setText("Cancelling after the current batch…")
        self._update_enabled()

    def _cancel_silently(self) -> None:
        """Widget closing or napari quitting: cancel a running analysis and let every
        worker thread of ours finish, so no worker outlives its Qt signals (that aborts
        the interpreter at exit)."""
        if self._run is not None:
            self._run.cancel.set()
            self._release_gc(self._run)
        from qtpy.QtCore import QThreadPool

        QThreadPool.globalInstance().waitForDone(30_000)

    @staticmethod
    def _release_gc(run: _Run) -> None:
        if run.gc_paused:
            run.gc_paused = False
            _GcPause.leave()

    @property
    def is_running(self) -> bool:
        return self._run is not None

    def _on_event(self, run: _Run, event) -> None:
        if run is not self._run or run.state in ("ending", "over"):
            return
        if isinstance(event, _Saving):
            self.progress_label.setText(f"Saving the results store in {event.path}…")
            return
        stage = event.stage
        if stage == "tissue":
            self._on_tissue(run, event)
        elif stage == "bags":
            if event.new is not None and run.rasters:
                L.paint_batch(run.rasters, run.bag_px, event.new.boxes,
                              event.new.patch_attention, event.new.cell_attention)
                for box in np.asarray(event.new.boxes).reshape(-1, 4):
                    i = run.box_index.get((int(box[0]), int(box[1])))
                    if i is not None and run.colors is not None:
                        run.colors[i] = L.BAG_DONE
                run.dirty = True
            previous, run.bags_done = run.bags_done, event.bags_done
            pbar = run.pbar
            if pbar is not None and event.bags_done > previous:
                # napari's progress bar processes Qt events when updated: this run may
                # end (cancel from the activity panel) inside these two calls
                pbar.set_description(f"MRAN {run.slide_name}: {event.bags_per_s:.2f} "
                                     f"bags/s, ETA {_fmt_eta(event.eta_s)}")
                pbar.update(event.bags_done - previous)
                if run.state != "running" and run.state != "cancelling":
                    return
            self.progress_bar.setRange(0, max(1, event.bags_total))
            self.progress_bar.setValue(event.bags_done)
            failed = f", {event.bags_failed} failed" if event.bags_failed else ""
            self.progress_label.setText(
                f"{event.bags_done} / {event.bags_total} bags{failed} · "
                f"{event.bags_per_s:.2f} bags/s · ETA {_fmt_eta(event.eta_s)}")
        elif stage == "slide":
            self.progress_label.setText("Slide-level attention (MIL) …")
        elif stage == "done":
            self.progress_label.setText(event.message)

    def _on_tissue(self, run: _Run, event) -> None:
        """The tissue bags are known: show them (pending) and size the progress bars."""
        boxes = np.asarray(event.tissue_boxes).reshape(-1, 4)
        n = len(boxes)
        self.progress_bar.setFormat("%v / %m bags")
        self.progress_bar.setRange(0, max(1, n))
        self.progress_bar.setValue(0)
        self.progress_label.setText(f"{n} tissue bags; starting the model…")
        pbar = run.pbar
        if pbar is not None:  # (may process Qt events, see _on_event)
            pbar.total = n
            pbar.set_description(f"MRAN {run.slide_name}")
            if run.state not in ("running", "cancelling"):
                return
        if n == 0:
            return
        bag_px = int(boxes[0, 2] - boxes[0, 0])
        if bag_px != run.bag_px:  # (cannot happen with the same rounding; stay correct)
            size = tuple(int(v) for v in run.slide_layer.metadata["mran_slide"].dimensions)
            run.bag_px = bag_px
            for level in L.LEVELS:
                run.rasters[level] = L.empty_raster(level, size, bag_px)
                layer = run.layers.get(L.ROLES[level])
                if layer is not None:
                    layer.data = run.rasters[level]
                    layer.scale, layer.translate = run.frame.heatmap_transform(
                        L.level_geometry(level, bag_px))
        run.box_index = {(int(b[0]), int(b[1])): i for i, b in enumerate(boxes)}
        run.colors = np.tile(np.asarray(L.BAG_PENDING, np.float32), (n, 1))
        tissue = run.layers.get(L.TISSUE_ROLE)
        if tissue is not None:
            data, kw, _kind = L.tissue_points_data(boxes, run.frame, tissue.name,
                                                   tissue.metadata, run.colors)
            tissue.data = data
            tissue.size = kw["size"]
            tissue.border_color = run.colors

    def _in_turns(self, steps, then=None) -> None:
        """Run *steps* one per event-loop turn, ~15 ms apart, so the viewer redraws and
        other events are handled in between."""
        steps = list(steps)

        def next_step():
            if steps:
                steps.pop(0)()
                QTimer.singleShot(STEP_GAP_MS, next_step)
            elif then is not None:
                then()

        # (the first step also waits one gap: the click or event that asked for the
        # steps is finished and drawn first, not run in the same turn)
        QTimer.singleShot(STEP_GAP_MS, next_step)

    def _repaint(self) -> None:
        run = self._run
        if run is None or not run.dirty:
            return
        run.dirty = False
        scaling = self.scaling_combo.currentData()
        for level in ("patch", "cell"):
            layer = run.layers.get(L.ROLES[level])
            if layer is None:
                continue
            raster = run.rasters[level]
            layer.data = raster
            layer.contrast_limits = L.contrast_limits(raster, scaling)
            self._set_colorbar(level, *layer.contrast_limits)
        tissue = run.layers.get(L.TISSUE_ROLE)
        if tissue is not None and run.colors is not None:
            tissue.border_color = run.colors

    def remove_layers(self, layers) -> None:
        """Remove those of *layers* still in the viewer (hidden first, so a partly
        removed set is never shown)."""
        pending = [ly for ly in layers if ly in self.viewer.layers]
        for ly in pending:
            ly.visible = False
        for ly in pending:
            if ly in self.viewer.layers:
                self.viewer.layers.remove(ly)

    def _teardown_run(self, run: _Run) -> None:
        """Remove the layers of *run*, show the hidden previous result again, end the run."""
        self._repaint_timer.stop()
        run.state = "ending"
        layers = list(run.layers.values())
        run.layers.clear()
        self.remove_layers(layers)
        for ly, was_visible in run.hidden:
            if ly in self.viewer.layers:
                ly.visible = was_visible
        self._end_run(run)

    def _end_run(self, run: _Run) -> None:
        self._repaint_timer.stop()
        run.state = "over"
        self._release_gc(run)
        pbar, run.pbar = run.pbar, None
        if pbar is not None:
            pbar.close()
        if self._run is run:
            self._run = None
        self._update_enabled()
        self.slide_combo.setEnabled(self.slide_combo.count() > 0)

    def _on_returned(self, run: _Run, outcome: _Outcome) -> None:
        if run.state in ("ending", "over"):
            return
        self.last_outcome = outcome
        if outcome is None or outcome.cancelled:
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(0)
            self.progress_bar.setFormat("")
            self.progress_label.setText(f"Cancelled after {run.bags_done} bags; nothing kept.")
            self._teardown_run(run)
            show_info(f"napari-mran: analysis of {run.slide_name} cancelled")
            return
        run.state = "ending"
        self._repaint_timer.stop()  # from here on the layers show the final result
        result = outcome.result
        try:
            steps = self._finish_steps(run, outcome)
        except Exception as exc:  # noqa: BLE001 - keep the viewer consistent
            self._finish_failed(run, exc)
            return

        def guarded(step):
            def call():
                if run.state != "ending":
                    return
                try:
                    step()
                except Exception as exc:  # noqa: BLE001
                    self._finish_failed(run, exc)
            return call

        def done():
            if run.state != "ending":
                return
            self._end_run(run)
            self.progress_bar.setRange(0, max(1, run.bags_done))
            self.progress_bar.setValue(max(1, run.bags_done))
            took = time.perf_counter() - run.t_start
            msg = f"Done in {took:.1f} s: {result.n_bags} bags"
            if result.degraded:
                msg += f" ({len(result.failed_boxes)} bags failed to decode: shown in red)"
                show_warning(f"napari-mran: {run.slide_name}: {len(result.failed_boxes)} bags "
                             "could not be decoded; the result is marked degraded")
            if outcome.saved:
                msg += f". Saved to {outcome.saved}"
            elif outcome.save_error:
                msg += ". NOT saved"
                show_warning(f"napari-mran: the result was not saved: {outcome.save_error}. "
                             "Use Export…, or choose another results folder and run again.")
            self.progress_label.setText(msg)

        self._in_turns([guarded(st) for st in steps], done)

    def _finish_failed(self, run: _Run, exc: Exception) -> None:
        self.last_error = str(exc)
        run.state = "ending"
        self._teardown_run(run)
        show_error(f"napari-mran: cannot show the result of {run.slide_name}: {exc}")

    def _finish_steps(self, run: _Run, outcome: _Outcome) -> list:
        """The final layer updates, one callable per event-loop turn."""
        result = outcome.result
        tuples = L.result_layer_data(
            result, run.frame, slide_name=run.slide_name, weighting=self._weighting(),
            scaling=self.scaling_combo.currentData(), top_k=self.top_k.value(),
            top_percent=self.top_percent.value(), opacity=self.opacity_slider.value() / 100.0,
            extra_metadata={"mran_results_path": outcome.saved,
                            "mran_slide_path": os.path.abspath(
                                run.slide_layer.metadata["mran_slide"].path)})
        order = [L.TISSUE_ROLE, *L.ROLES.values(), L.TOP_ROLE]
        by_role = {kw["metadata"][L.META_ROLE]: (data, kw, kind) for data, kw, kind in tuples}

        def update(role):
            data, kw, kind = by_role[role]
            layer = run.layers.get(role)
            if layer is None or layer not in self.viewer.layers:
                layer = Layer.create(data, kw, kind)
                # keep the bottom-to-top order even if the run ended before every
                # progressive layer was added
                below = [run.layers[r] for r in order[:order.index(role)]
                         if r in run.layers and run.layers[r] in self.viewer.layers]
                anchor = below[-1] if below else run.slide_layer
                index = (self.viewer.layers.index(anchor) + 1
                         if anchor in self.viewer.layers else len(self.viewer.layers))
                self.viewer.layers.insert(index, layer)
                run.layers[role] = layer
            elif kind == "image":
                layer.data = data
                layer.contrast_limits = kw["contrast_limits"]
                layer.metadata = kw["metadata"]
            elif kind == "points":
                layer.data = data
                layer.size = kw["size"]
                layer.border_color = kw["border_color"]
                layer.metadata = kw["metadata"]
            elif kind == "shapes":
                _set_top_bags(layer, data, kw, show_text=False)
            L.install_hover(layer, run.frame)

        def show_top_bags():
            layer = run.layers.get(L.TOP_ROLE)
            if layer is not None:
                layer.visible = True

        def show_top_labels():
            layer = run.layers.get(L.TOP_ROLE)
            if layer is not None:
                layer.text.visible = True

        def replace_previous():
            # the previous result of this slide (hidden since the start) is replaced
            self.remove_layers([ly for ly, _visible in run.hidden])
            run.hidden.clear()

        def show():
            self._show_result(_Shown(result=result, layers=dict(run.layers), frame=run.frame,
                                     slide_layer=run.slide_layer, model=run.model),
                              refresh_layers=False)  # the update steps set them already
            patch = run.layers.get(L.ROLES["patch"])
            if patch is not None:
                self.viewer.layers.selection.active = patch

        return [*(lambda r=r: update(r) for r in order if r in by_role), show_top_bags,
                show_top_labels,
                replace_previous, show]

    def _on_errored(self, run: _Run, exc: Exception) -> None:
        if run.state in ("ending", "over"):
            return
        self._teardown_run(run)
        self.last_error = str(exc)
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("")
        reason = str(exc) if isinstance(exc, MRANError) else f"{type(exc).__name__}: {exc}"
        self.progress_label.setText(f"Failed: {reason}")
        show_error(f"napari-mran: the analysis of {run.slide_name} failed: {reason}")

    def _on_aborted(self, run: _Run) -> None:
        """The worker was quit from napari's activity panel: same as Cancel."""
        gen = getattr(run.worker, "_gen", None)
        if gen is not None:  # close the job (and analyze_slide) off the main thread
            threading.Thread(target=gen.close, name="mran-close", daemon=True).start()
        self._on_returned(run, _Outcome(cancelled=True))

    def _on_finished(self, run: _Run) -> None:
        if run.state in ("running", "cancelling"):  # no returned/errored (deleted worker)
            self._teardown_run(run)

    # ------------------------------------------------------------------ result panel
    def _weighting(self) -> str:
        return "global" if self.weight_global.isChecked() else "local"

    def _adopt_existing_results(self) -> None:
        seen = {}
        for ly in self.viewer.layers:
            result = (ly.metadata or {}).get(L.META_RESULT)
            if result is not None:
                seen[id(result)] = result
        if seen:
            self._adopt(list(seen.values())[-1])

    def _on_layer_inserted(self, event) -> None:
        md = event.value.metadata or {}
        result = md.get(L.META_RESULT)
        if result is None or (self._shown is not None and self._shown.result is result):
            return
        if self._run is not None and any(ly is event.value for ly in self._run.layers.values()):
            return
        # a result opened with the reader: adopt it once all its layers are in
        QTimer.singleShot(0, lambda r=result: self._adopt(r))

    def _adopt(self, result) -> None:
        if self._shown is not None and self._shown.result is result:
            return
        group = {}
        frame = None
        for ly in self.viewer.layers:
            md = ly.metadata or {}
            if md.get(L.META_RESULT) is result and md.get(L.META_ROLE):
                group[md[L.META_ROLE]] = ly
                frame = frame or md.get("mran_frame")
        if not group:
            return
        slide_layer = None
        path = (result.provenance.get("slide") or {}).get("path")
        for ly in self._slide_layers():
            if path and os.path.abspath(ly.metadata["mran_slide"].path) == os.path.abspath(path):
                slide_layer = ly
        self._show_result(_Shown(result=result, layers=group,
                                 frame=frame or L.SlideFrame.from_result(result),
                                 slide_layer=slide_layer))

    def _on_layer_removed(self, event) -> None:
        shown = self._shown
        if shown is None:
            return
        for role, ly in list(shown.layers.items()):
            if ly is event.value:
                del shown.layers[role]
        if not any(r in shown.layers for r in L.ROLES.values()):
            self._shown = None
            self.prediction_label.setText("No result shown")
            self.top_table.setRowCount(0)
            self.colorbar_label.setText("")
            self._set_result_enabled(False)
        if shown.slide_layer is event.value:
            shown.slide_layer = None
            self._set_faith_state()

    def _show_result(self, shown: _Shown, refresh_layers: bool = True) -> None:
        self._shown = shown
        self.tabs.setCurrentWidget(self.result_box)
        if shown.slide_layer is not None:  # hovering the slide itself shows the scores too
            slide_layer = shown.slide_layer

            def result_of_slide():
                s = self._shown
                return s.result if s is not None and s.slide_layer is slide_layer else None

            L.install_hover(slide_layer, shown.frame, result_of_slide)
        result = shown.result
        probs = sorted(zip(result.class_names, result.slide_probs), key=lambda t: -t[1])
        top_name, top_p = probs[0]
        rows = "".join(
            f"<tr><td>{html.escape(n)}</td><td align='right'>{p:.3f}</td>"
            f"<td><span style='color:#3a8'>{'█' * round(20 * float(p))}</span></td></tr>"
            for n, p in probs)
        extra = " <span style='color:#e96'>(degraded: some bags failed)</span>" \
            if result.degraded else ""
        tissue = result.provenance.get("tissue") or {}
        cover = tissue.get("coverage")
        cover_text = "" if cover is None else (
            f" · {cover:.0%} of the tissue analysed (edge bags: {tissue.get('edge', 'drop')})")
        demo = ("<br><span style='color:#e66'><b>DEMO model</b>: trained on synthetic slides; "
                "a demonstration, not a diagnosis</span>") if L.result_is_demo(result) else ""
        self.prediction_label.setText(
            f"<b>Slide prediction: {html.escape(top_name)} ({top_p:.2f})</b>{extra}{demo}"
            f"<table>{rows}</table><small>{result.n_bags} bags of {result.bag_px} px"
            f"{cover_text} · {html.escape(result.slide_name)}</small>")
        self._set_result_enabled(True)
        self._apply_display(refresh_data=refresh_layers)
        self._fill_top_table()

    def _attention_layers(self):
        if self._shown is None:
            return []
        return [(lv, self._shown.layers[L.ROLES[lv]]) for lv in L.LEVELS
                if L.ROLES[lv] in self._shown.layers]

    def _apply_display(self, *_args, refresh_data: bool = True) -> None:
        """Weighting, colour scaling and top-X % of the shown result's attention layers
        (``refresh_data=False``: the layers already show them; update the panel only)."""
        shown = self._shown
        if shown is None:
            return
        weighting = self._weighting()
        scaling = self.scaling_combo.currentData()
        percent = float(self.top_percent.value())
        for level, layer in self._attention_layers():
            if refresh_data:
                full = shown.result.heatmap(level, weighting).data
                layer.data = L.keep_top_fraction(full, percent)
                layer.contrast_limits = L.contrast_limits(full, scaling)
                md = dict(layer.metadata)
                md.update({"mran_weighting": weighting, "mran_scaling": scaling,
                           "mran_top_percent": percent})
                layer.metadata = md
            self._set_colorbar(level, *layer.contrast_limits)
        self.colorbar_label.setText(
            f"<small>{self.scaling_combo.currentText()}, {weighting} weighting; "
            "no colour = no tissue analysed.</small>")

    def _set_colorbar(self, level: str, lo: float | None, hi: float | None) -> None:
        _bar, lo_label, hi_label = self.colorbars[level]
        lo_label.setText("–" if lo is None else f"{lo:.3g}")
        hi_label.setText("–" if hi is None else f"{hi:.3g}")

    def _apply_opacity(self, value: int) -> None:
        for _level, layer in self._attention_layers():
            layer.opacity = value / 100.0

    def _apply_top_k(self, *_args) -> None:
        shown = self._shown
        if shown is None:
            return
        data, kw, kind = L.top_bags_data(
            shown.result, shown.frame, self.top_k.value(),
            f"{shown.result.slide_name or 'slide'} {L.TOP_ROLE}",
            L.result_metadata(shown.result, L.TOP_ROLE, mran_frame=shown.frame,
                              mran_results_path=self._results_path()))
        layer = shown.layers.get(L.TOP_ROLE)
        if layer is None or layer not in self.viewer.layers:
            layer = Layer.create(data, kw, kind)
            self.viewer.layers.append(layer)
            shown.layers[L.TOP_ROLE] = layer
        else:
            _set_top_bags(layer, data, kw)
        L.install_hover(layer, shown.frame)
        self._fill_top_table()

    def _results_path(self):
        for ly in (self._shown.layers.values() if self._shown else []):
            p = (ly.metadata or {}).get("mran_results_path")
            if p:
                return p
        return None

    def _fill_top_table(self) -> None:
        shown = self._shown
        self.top_table.blockSignals(True)
        self.top_table.setRowCount(0)
        if shown is None:
            self.top_table.blockSignals(False)
            return
        result = shown.result
        ci = result.n_classes - 1
        self.top_table.setHorizontalHeaderLabels(
            ["#", "γ", f"P({result.class_names[ci]})", "x, y (px)"])
        order = result.top_bags(self.top_k.value())
        self.top_table.setRowCount(len(order))
        for r, i in enumerate(order):
            vals = [str(r + 1), f"{result.bag_attention[i]:.4f}",
                    f"{result.bag_probs[i, ci]:.3f}",
                    f"{int(result.boxes[i, 0])}, {int(result.boxes[i, 1])}"]
            for c, v in enumerate(vals):
                item = QTableWidgetItem(v)
                item.setData(Qt.ItemDataRole.UserRole, int(i))
                self.top_table.setItem(r, c, item)
        self.top_table.blockSignals(False)

    def zoom_to_rank(self, row: int) -> None:
        """Centre the camera on the bag of *row* of the top-bags list and fit it."""
        shown = self._shown
        if shown is None or row < 0 or row >= self.top_table.rowCount():
            return
        item = self.top_table.item(row, 0)
        i = int(item.data(Qt.ItemDataRole.UserRole))
        (y0, x0), (y1, x1) = shown.frame.box_to_world(shown.result.boxes[i])
        camera = self.viewer.scene.camera if hasattr(self.viewer, "scene") else self.viewer.camera
        camera.center = ((y0 + y1) / 2.0, (x0 + x1) / 2.0)
        h, w = (float(v) for v in self.viewer.canvas.size) if hasattr(self.viewer, "canvas") \
            else (600.0, 800.0)
        side = max(abs(y1 - y0), abs(x1 - x0), 1e-9)
        camera.zoom = 0.8 * min(h, w) / side

    # ------------------------------------------------------------------ faithfulness
    def start_faithfulness(self) -> None:
        fn = (self._env or {}).get("faithfulness")
        shown = self._shown
        if fn is None or shown is None or shown.slide_layer is None:
            return
        model = shown.model or self._model
        if model is None:
            show_warning("napari-mran: choose the model that produced this result first")
            return
        slide = shown.slide_layer.metadata["mran_slide"]
        k, m = self.faith_k.value(), self.faith_m.value()
        worker = create_worker(fn, slide, model, shown.result, k, m,
                               device=self.device_combo.currentData(), _ignore_errors=True)
        self._faith_worker = worker
        self.faith_label.setText(f"Re-predicting from the top {k} bags × {m} patches…")

        def done(value):
            self._faith_worker = None
            self.faith_label.setText(self._format_faith(value, shown.result, k, m))
            self._set_faith_state()

        def failed(exc):
            self._faith_worker = None
            self.faith_label.setText(f"Faithfulness check failed: {exc}")
            show_error(f"napari-mran: faithfulness check failed: {exc}")
            self._set_faith_state()

        worker.returned.connect(done)
        worker.errored.connect(failed)
        self._set_faith_state()
        worker.start()

    @staticmethod
    def _format_faith(value, result, k, m) -> str:
        """One line: restricted vs full slide probabilities."""
        probs = value.get("slide_probs") if isinstance(value, dict) else \
            getattr(value, "slide_probs", value)
        used = value.get("bags_used", k) if isinstance(value, dict) else k
        try:
            vals = [float(p) for p in np.ravel(np.asarray(probs, dtype=float))]
        except (TypeError, ValueError):
            return f"Top {k} bags × {m} patches: {value}"
        parts = [f"{n} {p:.3f} (all bags {f:.3f})"
                 for n, p, f in zip(result.class_names, vals, result.slide_probs)]
        return f"From the top {used} bags × {m} patches: " + ", ".join(parts)

    # ------------------------------------------------------------------ export
    def open_export_dialog(self) -> None:
        if self._shown is None:
            return
        dlg = ExportDialog(self, self._default_export_folder(), self._shown.result.slide_name)
        if dlg.exec() == QDialog.DialogCode.Accepted:
            self.export(dlg.folder(), dlg.selected())

    def _default_export_folder(self) -> str:
        shown = self._shown
        path = (shown.result.provenance.get("slide") or {}).get("path") if shown else None
        if self.folder_edit.text().strip():
            return self.folder_edit.text().strip()
        return str(default_results_folder(path or os.getcwd()))

    def export_plan(self, folder: str | os.PathLike, kinds: list[str]) -> list[tuple]:
        """(kind, path, options) of every file the chosen export kinds write
        (:func:`napari_mran.export.export_plan`, with the weighting shown)."""
        from ..export.plan import export_plan

        result = self._shown.result
        return [(job.kind, job.path, job.options)
                for job in export_plan(result, folder, kinds, weighting=self._weighting(),
                                       stem=slide_stem(result.slide_name or "slide"))]

    def export(self, folder: str | os.PathLike, kinds: list[str], *,
               wait: bool = False) -> Any:
        """Write the chosen exports in a worker; ask before replacing existing files."""
        if self._shown is None or not kinds:
            return None
        plan = self.export_plan(folder, kinds)
        existing = [str(p) for _k, p, _o in plan if os.path.lexists(p)]
        overwrite = False
        if existing:
            if not self.confirm_overwrite(existing):
                plan = [(k, p, o) for k, p, o in plan if str(p) not in existing]
                if not plan:
                    show_info("napari-mran: nothing exported (all files exist)")
                    return None
            else:
                overwrite = True
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            show_error(f"napari-mran: cannot create {folder}: {exc}")
            return None
        jobs = [(k, str(p), o, overwrite and str(p) in existing) for k, p, o in plan]
        worker = create_worker(export_job, self._shown.result, jobs, _ignore_errors=True)
        self._export_worker = worker
        self.export_btn.setEnabled(False)
        self.last_export: list[str] | str | None = None

        def done(paths):
            self.last_export = paths
            self._export_worker = None
            self.export_btn.setEnabled(True)
            show_info(f"napari-mran: exported {len(paths)} file(s) to {folder}")

        def failed(exc):
            self.last_export = str(exc)
            self._export_worker = None
            self.export_btn.setEnabled(True)
            show_error(f"napari-mran: export failed: {exc}")

        worker.returned.connect(done)
        worker.errored.connect(failed)
        worker.start()
        return worker


class ExportDialog(QDialog):
    """Choose a folder and what to export."""

    KINDS = (("geojson", "QuPath GeoJSON (bags, patches)"),
             ("csv", "CSV tables (bags, patches, cells)"),
             ("ome_tiff", "OME-TIFF heatmaps (bag, patch, cell)"),
             ("ome_zarr", "OME-Zarr heatmaps (bag, patch, cell)"),
             ("provenance", "Provenance record (JSON)"))

    def __init__(self, parent, folder: str, slide_name: str):
        super().__init__(parent)
        self.setWindowTitle(f"Export MRAN results of {slide_name}")
        lay = QVBoxLayout(self)
        row = QHBoxLayout()
        self.folder_edit = QLineEdit(folder)
        btn = QPushButton("…")
        btn.clicked.connect(self._browse)
        row.addWidget(QLabel("Folder"))
        row.addWidget(self.folder_edit, 1)
        row.addWidget(btn)
        lay.addLayout(row)
        self.checks = {}
        for kind, text in self.KINDS:
            cb = QCheckBox(text)
            cb.setChecked(kind in ("geojson", "csv", "provenance"))
            self.checks[kind] = cb
            lay.addWidget(cb)
        note = QLabel("<small>Heatmaps use the weighting shown in the panel. Existing files "
                      "are only replaced after you confirm.</small>")
        note.setWordWrap(True)
        lay.addWidget(note)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok |
                                   QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export folder", self.folder_edit.text())
        if folder:
            self.folder_edit.setText(folder)

    def folder(self) -> str:
        return self.folder_edit.text().strip()

    def selected(self) -> list[str]:
        return [k for k, cb in self.checks.items() if cb.isChecked()]
