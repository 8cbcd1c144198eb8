"""The slide row: which open slide layer to analyse (the active one by default)."""

from __future__ import annotations

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QFormLayout, QLabel, QWidget

from ..shown import slide_layers
from ..texts import NO_SLIDE_HINT


class SlidePicker(QWidget):
    """Combo box of the viewer's slide layers, with a hint when there is none."""

    #: the slide to analyse changed (or the list of slides was rebuilt)
    changed = Signal()

    def __init__(self, viewer, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self._slides: list = []
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        self.combo = QComboBox()
        self.combo.setToolTip("The slide layer to analyse (defaults to the active one)")
        self.combo.currentIndexChanged.connect(lambda *_: self.changed.emit())
        form.addRow("Slide", self.combo)
        self.hint = QLabel()
        self.hint.setWordWrap(True)
        form.addRow(self.hint)

    def current(self):
        """The chosen slide layer, or None."""
        i = self.combo.currentIndex()
        if not 0 <= i < len(self._slides):
            return None
        ly = self._slides[i]
        return ly if ly in self.viewer.layers else None

    def refresh(self, locked: bool) -> None:
        """Rebuild the list from the viewer's layers.  Keeps the chosen slide; picks the
        active layer when it is a slide, unless *locked* (an analysis runs)."""
        slides = slide_layers(self.viewer)
        current = self.current()
        self.combo.blockSignals(True)
        self.combo.clear()
        self._slides = slides
        for ly in slides:
            self.combo.addItem(ly.name)
        if slides:
            active = self.viewer.layers.selection.active
            ids = [id(ly) for ly in slides]
            if id(active) in ids and not locked:
                pick = active  # default: the slide the user is looking at
            else:
                pick = current if id(current) in ids else slides[-1]
            self.combo.setCurrentIndex(ids.index(id(pick)))
        self.combo.blockSignals(False)
        self.set_editable(not locked)
        self.hint.setVisible(not slides)
        self.hint.setText("" if slides else NO_SLIDE_HINT)
        self.changed.emit()

    def follow_active(self) -> None:
        """The active layer changed: choose it when it is one of the slides."""
        active = self.viewer.layers.selection.active
        idx = next((i for i, ly in enumerate(self._slides) if ly is active), None)
        if idx is not None and idx != self.combo.currentIndex():
            self.combo.setCurrentIndex(idx)

    def set_editable(self, on: bool) -> None:
        self.combo.setEnabled(on and self.combo.count() > 0)
