"""The "Review" panel: mark bags and patches of the shown result as agree / disagree /
a class label (docs/gui.md "Review marks"; the marks: napari_mran.review).

``ReviewPanel(viewer).set_shown(shown)`` adds the result's review-marks Labels layer
(:mod:`..review_layer`) and follows it; ``set_shown(None)`` saves and removes it.
Marks are saved atomically into the results store 1.5 s after the last change, on
Save, and whenever the result goes, the panel is hidden or the layer is removed; a
save that is refused keeps the marks in memory and, when the result goes, writes them
beside the store (``<store>.unsaved-reviews-<time>.json``): nothing is lost.
"""

from __future__ import annotations

from napari.layers import Layer
from napari.utils import notifications
from qtpy.QtCore import QSettings, Qt, QTimer, Signal
from qtpy.QtGui import QKeySequence
from qtpy.QtWidgets import (QButtonGroup, QComboBox, QFormLayout, QHBoxLayout, QLabel,
                            QLineEdit, QPushButton, QRadioButton, QShortcut, QVBoxLayout,
                            QWidget)

from ...errors import MRANError
from ...review import Reviews, default_reviewer
from ..review_layer import ReviewSession, legend, write_recovery

#: keyboard shortcuts while the panel is visible (napari's own keys they replace:
#: Labels' L "pick" stays on 5; A / D of Points and Shapes layers)
KEYS = {"agree": "A", "disagree": "D", "label": "L", "bag": "Shift+B", "patch": "Shift+P"}
#: on the review layer (its own undo/redo keys, so they undo marks)
UNDO_KEY, REDO_KEY = "Ctrl+Z", "Ctrl+Shift+Z"
AUTOSAVE_MS = 1500
SETTINGS_REVIEWER = "review/reviewer"


class ReviewPanel(QWidget):
    """Review marks of the shown result (its results store)."""

    #: the store path, after each successful save (the cohort table listens)
    saved = Signal(str)

    def __init__(self, napari_viewer, parent=None, settings: QSettings | None = None):
        super().__init__(parent)
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self.settings = settings if settings is not None else QSettings("napari-mran",
                                                                        "napari-mran")
        self.session: ReviewSession | None = None
        self.layer = None
        self.shown = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(AUTOSAVE_MS)
        self._timer.timeout.connect(self.save)
        self._build_ui()
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self._refresh()

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        col = QVBoxLayout(self)
        self.title = QLabel("No result shown: open a .mran.zarr store or analyse a slide")
        self.title.setWordWrap(True)
        self.warning = QLabel()
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet("QLabel { background: #a00000; color: white; "
                                   "font-weight: bold; padding: 4px; }")
        self.warning.hide()
        col.addWidget(self.title)
        col.addWidget(self.warning)
        form = QFormLayout()
        self.reviewer = QLineEdit(str(self.settings.value(SETTINGS_REVIEWER, "") or "")
                                  or default_reviewer())
        self.reviewer.setToolTip("Stored with every mark (remembered)")
        self.reviewer.editingFinished.connect(self._reviewer_changed)
        form.addRow("Reviewer", self.reviewer)
        form.addRow("Mark", self._mark_row())
        form.addRow("Marks on", self._mode_row())
        col.addLayout(form)
        self.legend = QLabel()
        col.addWidget(self.legend)
        col.addLayout(self._button_row())
        self.counts = QLabel()
        self.status = QLabel()
        self.status.setWordWrap(True)
        col.addWidget(self.counts)
        col.addWidget(self.status)
        col.addStretch(1)
        self._shortcuts()

    def _mark_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.marks = QButtonGroup(self)
        self.agree = QRadioButton("Agree")
        self.disagree = QRadioButton("Disagree")
        self.label = QRadioButton("Label:")
        self.classes = QComboBox()
        for b, what in ((self.agree, "agree"), (self.disagree, "disagree"),
                        (self.label, "label")):
            b.setToolTip(f"Mark {what} ({KEYS[what]})")
            self.marks.addButton(b)
            row.addWidget(b)
        row.addWidget(self.classes)
        self.agree.setChecked(True)
        self.marks.buttonToggled.connect(self._mark_changed)
        self.classes.currentIndexChanged.connect(self._mark_changed)
        return row

    def _mode_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.modes = QButtonGroup(self)
        self.bag_mode = QRadioButton("bag")
        self.patch_mode = QRadioButton("patch")
        self.bag_mode.setToolTip(f"A click or stroke marks whole bags ({KEYS['bag']})")
        self.patch_mode.setToolTip(f"A click or stroke marks single patches ({KEYS['patch']})")
        for b in (self.bag_mode, self.patch_mode):
            self.modes.addButton(b)
            row.addWidget(b)
        self.bag_mode.setChecked(True)
        self.modes.buttonToggled.connect(self._mode_changed)
        return row

    def _button_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.undo_btn = QPushButton("Undo")
        self.redo_btn = QPushButton("Redo")
        self.save_btn = QPushButton("Save")
        self.undo_btn.setToolTip(f"Undo the last mark or stroke ({UNDO_KEY} on the layer)")
        self.redo_btn.setToolTip(f"Redo ({REDO_KEY} on the layer)")
        self.save_btn.setToolTip("Save the marks into the results store now (they are also "
                                 f"saved {AUTOSAVE_MS / 1000:g} s after each change)")
        self.undo_btn.clicked.connect(self.undo)
        self.redo_btn.clicked.connect(self.redo)
        self.save_btn.clicked.connect(self.save)
        for b in (self.undo_btn, self.redo_btn, self.save_btn):
            row.addWidget(b)
        return row

    def _shortcuts(self) -> None:
        actions = {"agree": lambda: self.set_mark("agree"),
                   "disagree": lambda: self.set_mark("disagree"),
                   "label": lambda: self.set_mark("label"),
                   "bag": lambda: self.set_mode("bag"), "patch": lambda: self.set_mode("patch")}
        self._keys = []
        for what, slot in actions.items():
            sc = QShortcut(QKeySequence(KEYS[what]), self)
            sc.setContext(Qt.ShortcutContext.WindowShortcut)
            sc.activated.connect(slot)
            self._keys.append(sc)

    # ------------------------------------------------------------------ the result
    def set_shown(self, shown) -> None:
        """Review *shown* (a :class:`~napari_mran._napari.shown.Shown`), or nothing."""
        if shown is not None and self.shown is not None and shown.result is self.shown.result \
                and self.session is not None:
            return
        self.close_session()
        self.shown = shown
        if shown is not None and not self.isHidden():  # a hidden tab opens when shown
            self._open(shown)
        self._refresh()

    def _open(self, shown) -> None:
        path = shown.results_path()
        name = shown.result.slide_name or "slide"
        if not path:
            self.title.setText(f"{name}: not saved in a results store; save the result "
                               "(Export) and open the store to review it")
            return
        try:
            reviews = Reviews.load(path, shown.result)
        except (MRANError, OSError) as exc:
            self.title.setText(f"{name}: review marks not available")
            self._error(f"napari-mran: {exc}")
            return
        self.session = ReviewSession(reviews, shown.result, shown.frame, self.reviewer.text(),
                                     defer=lambda f: QTimer.singleShot(0, f))
        self.session.on_change.append(self._on_marks_changed)
        self.layer = Layer.create(*self.session.layer_data())
        self.viewer.layers.append(self.layer)
        self.session.attach(self.layer)
        self.viewer.layers.selection.active = self.layer
        self.title.setText(f"Reviewing {name} ({path})")
        self._fill_classes()
        self._mark_changed()
        self._mode_changed()

    def close_session(self) -> bool:
        """Save the marks (or write them beside the store when the save is refused),
        remove the review layer; True when nothing was left unsaved."""
        session, layer = self.session, self.layer
        self._timer.stop()
        ok = True
        if session is not None and session.reviews.dirty and not self.save():
            where = write_recovery(session.reviews)
            self._error(f"napari-mran: the review marks of {session.reviews.store} could not "
                        f"be saved into it; they are in {where}")
            ok = False
        self.session = self.layer = self.shown = None
        if session is not None:
            session.detach()
        if layer is not None and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)
        return ok

    def _on_layer_removed(self, event) -> None:
        if self.layer is not None and event.value is self.layer:
            self.layer = None
            self.close_session()
            self._refresh()

    # ------------------------------------------------------------------ marking
    def set_mark(self, mark: str, label: str | None = None) -> None:
        """The current mark (*label*: a class name; default the combo's)."""
        {"agree": self.agree, "disagree": self.disagree, "label": self.label}[mark].setChecked(True)
        if label is not None:
            self.classes.setCurrentText(label)

    def set_mode(self, mode: str) -> None:
        (self.bag_mode if mode == "bag" else self.patch_mode).setChecked(True)

    def undo(self) -> bool:
        return self.session is not None and self.session.undo()

    def redo(self) -> bool:
        return self.session is not None and self.session.redo()

    def save(self) -> bool:
        """Save the marks now; False (and the reason shown) when refused."""
        self._timer.stop()
        session = self.session
        if session is None:
            return True
        try:
            if session.reviews.dirty:
                session.reviews.save()
        except (MRANError, OSError) as exc:
            self.status.setText(f"NOT SAVED: {exc}")
            self.status.setStyleSheet("color: #ff5050; font-weight: bold;")
            self._error(f"napari-mran: {exc}")
            return False
        self.status.setStyleSheet("")
        self._refresh()
        store = str(session.reviews.store)
        self.saved.emit(store)
        self._tell_cohort(store)
        return True

    def _tell_cohort(self, store: str) -> None:
        """The Cohort review dock (if open) updates the row of *store*."""
        try:
            docks = list(self.viewer.window.dock_widgets.values())
        except AttributeError:  # a viewer without a window
            return
        for w in docks:
            refresh = getattr(w, "slide_reviewed", None)
            if callable(refresh) and w is not self:
                refresh(store)

    # ------------------------------------------------------------------ slots
    def _fill_classes(self) -> None:
        names = self.session.class_names if self.session else []
        self.classes.blockSignals(True)
        self.classes.clear()
        self.classes.addItems(names)
        self.classes.blockSignals(False)
        self.legend.setText(" ".join(
            f"<span style='color: rgb({int(r * 255)},{int(g * 255)},{int(b * 255)})'>■</span>"
            f" {v} {text}" for v, text, (r, g, b, _a) in legend(names)))

    def _mark_changed(self, *_args) -> None:
        if self.session is None:
            return
        button = self.marks.checkedButton()
        mark = {self.agree: "agree", self.disagree: "disagree"}.get(button, "label")
        label = self.classes.currentText() if mark == "label" else None
        if mark == "label" and not label:
            return
        self.session.set_current(mark, label)

    def _mode_changed(self, *_args) -> None:
        if self.session is not None:
            self.session.set_mode("bag" if self.bag_mode.isChecked() else "patch")

    def _reviewer_changed(self) -> None:
        name = self.reviewer.text().strip()
        if not name:
            self.reviewer.setText(default_reviewer())
            name = self.reviewer.text()
        self.settings.setValue(SETTINGS_REVIEWER, name)
        if self.session is not None:
            self.session.reviewer = name

    def _on_marks_changed(self) -> None:
        self._timer.start()
        self._refresh()

    def _refresh(self) -> None:
        s = self.session
        for w in (self.undo_btn, self.redo_btn, self.save_btn, self.agree, self.disagree,
                  self.label, self.classes, self.bag_mode, self.patch_mode):
            w.setEnabled(s is not None)
        if s is None:
            self.counts.setText("")
            self.warning.hide()
            return
        self.undo_btn.setEnabled(s.can_undo)
        self.redo_btn.setEnabled(s.can_redo)
        c = s.reviews.counts()
        self.counts.setText(f"{c['marks']} mark(s): {c['bags']} bag(s), {c['patches']} "
                            f"patch(es) | agree {c['agree']}, disagree {c['disagree']}, "
                            f"label {c['label']}")
        if not self.status.text().startswith("NOT SAVED") or not s.reviews.dirty:
            self.status.setText("unsaved changes" if s.reviews.dirty else "saved")
        warning = s.reviews.model_warning()
        self.warning.setText(f"⚠ {warning}" if warning else "")
        self.warning.setVisible(bool(warning))

    def _error(self, message: str) -> None:
        notifications.show_error(message)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt's name
        """The Review tab comes up: the review layer of the result shown appears (the
        layer is made only when the pathologist reviews, not for every result)."""
        super().showEvent(event)
        if self.shown is not None and self.session is None:
            self._open(self.shown)
            self._refresh()

    def hideEvent(self, event) -> None:  # noqa: N802 - Qt's name
        """The panel or its window goes: save what is unsaved."""
        if self.session is not None and self.session.reviews.dirty:
            self.save()
        super().hideEvent(event)
