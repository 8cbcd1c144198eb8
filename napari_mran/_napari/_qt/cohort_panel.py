"""The "Cohort review" dock widget: the slides of a ``predict`` output folder in a
sortable, filterable table; selecting a row shows that slide with its attention layers
(and removes the previous slide's).

The rows come from :class:`..cohort.CohortTable` (predictions.csv at once, the per-store
details in a worker thread); a row's store and slide are read in a worker
(:func:`..cohort.load_slide_view`); the layers the panel added for the previous row are
updated in place with the new slide's data (one per event-loop turn, so the viewer keeps
redrawing), the others removed or added.  Only layers this panel added are ever changed
or removed.
"""

from __future__ import annotations

import os

from napari.qt.threading import create_worker
from napari.utils import notifications
from qtpy.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt, Signal
from qtpy.QtGui import QBrush, QColor, QKeySequence
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QShortcut,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from .. import keys
from ..cohort import COLUMNS, CohortReviewError, CohortTable, RowFilter, SlideView, load_slide_view
from ..swap import Swap
from .perf import glyph_prewarm_steps, in_turns, prewarm_layer_types

#: the keyboard shortcuts of next / previous slide (napari binds neither)
NEXT_KEY, PREVIOUS_KEY = "Ctrl+Shift+Down", "Ctrl+Shift+Up"
SORT_ROLE = Qt.ItemDataRole.UserRole
#: Re-insert the topmost result layer on every row instead of updating it in place (the
#: Analyze widget used to adopt a result only from an inserted layer; it now also follows
#: ``layer.events.metadata``, so every layer is updated in place: docs/performance.md,
#: "Cohort review: browsing").
ANNOUNCE_BY_INSERT = False
_PROBLEM = QBrush(QColor(230, 90, 90))
_FROZEN = False


def freeze_startup_objects() -> None:
    """Once per process, when a cohort folder is first opened (napari, Qt and the
    plugin loaded; torch too when the Analyze dock is open): move every object alive to the garbage collector's permanent
    generation.  Without it, a full collection now and then scans those ~hundreds of MB
    of long-lived objects and stalls the event loop 250-370 ms while browsing
    (docs/performance.md, "Cohort review: browsing").  Objects freed by reference
    counting are freed as before; only cyclic garbage among the frozen objects stays.
    ``NAPARI_MRAN_NO_GC_FREEZE=1`` turns it off."""
    global _FROZEN
    if not _FROZEN and not os.environ.get("NAPARI_MRAN_NO_GC_FREEZE"):
        import gc

        gc.freeze()  # (no collection first: that alone is a 250 ms stall; what garbage
        _FROZEN = True  # is alive now stays, once)


class CohortModel(QAbstractTableModel):
    """The rows of a :class:`CohortTable` for a QTableView."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.table: CohortTable | None = None

    def set_table(self, table: CohortTable | None) -> None:
        self.beginResetModel()
        self.table = table
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()):  # noqa: B008, N802 - Qt's signature
        return 0 if self.table is None or parent.isValid() else len(self.table)

    def columnCount(self, parent=QModelIndex()):  # noqa: B008, N802
        return 0 if parent.isValid() else len(COLUMNS)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if self.table is None or not index.isValid():
            return None
        row, key = self.table.rows[index.row()], COLUMNS[index.column()][0]
        if role == Qt.ItemDataRole.DisplayRole:
            return row.text(key)
        if role == SORT_ROLE:
            return row.sort_key(key)
        if role == Qt.ItemDataRole.ToolTipRole:
            return f"{row.slide}\n{row.status_text()}"
        if role == Qt.ItemDataRole.ForegroundRole and row.error:
            return _PROBLEM
        return None

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section][1]
        return None

    def row_changed(self, i: int) -> None:
        self.dataChanged.emit(self.index(i, 0), self.index(i, len(COLUMNS) - 1))


class CohortProxy(QSortFilterProxyModel):
    """Sorting by each column's sort key; filtering by a :class:`RowFilter`."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.row_filter = RowFilter()
        self.setSortRole(SORT_ROLE)
        self.setDynamicSortFilter(True)

    def set_filter(self, row_filter: RowFilter) -> None:
        self.row_filter = row_filter
        self.invalidateFilter()

    def filterAcceptsRow(self, source_row, source_parent):  # noqa: N802 - Qt's name
        table = self.sourceModel().table
        return table is not None and self.row_filter.accepts(table.rows[source_row])

    def lessThan(self, left, right):  # noqa: N802 - Qt's name
        a, b = left.data(SORT_ROLE), right.data(SORT_ROLE)
        if a[0] != b[0]:  # unknown values (a failed slide's) last in either order
            descending = self.sortOrder() == Qt.SortOrder.DescendingOrder
            return a[0] > b[0] if descending else a[0] < b[0]
        return a < b


class CohortPanel(QWidget):
    """Dock widget "Cohort review" (napari-mran)."""

    #: emit with a results store path when its slide was reviewed (= slide_reviewed)
    reviewed = Signal(str)
    #: a row's layers are all in the viewer (its source row), or -1 when it failed
    row_shown = Signal(int)

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self.table: CohortTable | None = None
        self.shown_row: int | None = None
        self._layers: list = []       # layers this panel added (and only those)
        self._slides: list = []       # the open Slides of those layers
        self._token = 0               # the latest row asked for
        self._details_worker = None
        self._build_ui()
        self.reviewed.connect(self.slide_reviewed)
        self.destroyed.connect(lambda *_: self._stop_details())
        # the first Points/Shapes layer and text glyphs cost ~0.35 s: built while idle
        in_turns([prewarm_layer_types, *glyph_prewarm_steps(self.viewer)])

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        col = QVBoxLayout(self)
        top = QHBoxLayout()
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("predict output folder (predictions.csv)")
        self.folder_edit.returnPressed.connect(lambda: self.open_folder(self.folder_edit.text()))
        browse = QPushButton("Open…")
        browse.setToolTip("Choose the output folder of napari-mran predict")
        browse.clicked.connect(self._choose_folder)
        top.addWidget(self.folder_edit, 1)
        top.addWidget(browse)
        col.addLayout(top)
        col.addLayout(self._filter_row())
        self.model = CohortModel(self)
        self.proxy = CohortProxy(self)
        self.proxy.setSourceModel(self.model)
        self.view = QTableView()
        self.view.setModel(self.proxy)
        self.view.setSortingEnabled(True)
        self.view.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.view.verticalHeader().setVisible(False)
        self.view.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.view.selectionModel().currentRowChanged.connect(self._on_current)
        col.addWidget(self.view, 1)
        col.addLayout(self._step_row())
        self.status = QLabel("Open the output folder of napari-mran predict")
        self.status.setWordWrap(True)
        col.addWidget(self.status)

    def _filter_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("filter: slide name or class")
        self.only_degraded = QCheckBox("degraded")
        self.only_degraded.setToolTip("Only slides with failed bags")
        self.only_unreviewed = QCheckBox("unreviewed")
        self.only_unreviewed.setToolTip("Only slides without review marks")
        for w in (self.filter_edit, self.only_degraded, self.only_unreviewed):
            row.addWidget(w, 1 if w is self.filter_edit else 0)
        self.filter_edit.textChanged.connect(self._apply_filter)
        self.only_degraded.toggled.connect(self._apply_filter)
        self.only_unreviewed.toggled.connect(self._apply_filter)
        return row

    def _step_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.prev_btn = QPushButton("◀ Previous")
        self.prev_btn.setToolTip(f"Previous slide ({PREVIOUS_KEY})")
        self.prev_btn.clicked.connect(self.previous_slide)
        self.next_btn = QPushButton("Next ▶")
        self.next_btn.setToolTip(f"Next slide ({NEXT_KEY})")
        self.next_btn.clicked.connect(self.next_slide)
        row.addWidget(self.prev_btn)
        row.addWidget(self.next_btn)
        for key, slot in ((NEXT_KEY, self.next_slide), (PREVIOUS_KEY, self.previous_slide)):
            sc = QShortcut(QKeySequence(key), self)
            sc.setContext(Qt.ShortcutContext.WindowShortcut)
            sc.activated.connect(slot)
        return row

    def _choose_folder(self) -> None:
        start = self.folder_edit.text().strip() or os.getcwd()
        folder = QFileDialog.getExistingDirectory(self, "Predict output folder", start)
        if folder:
            self.open_folder(folder)

    def _apply_filter(self, *_args) -> None:
        self.proxy.set_filter(RowFilter(self.filter_edit.text(), self.only_degraded.isChecked(),
                                        self.only_unreviewed.isChecked()))
        self._show_count()

    def _show_count(self) -> None:
        if self.table is not None:
            self.status.setText(f"{self.proxy.rowCount()} of {len(self.table)} slides shown "
                                f"· {self.table.folder}")

    # ------------------------------------------------------------------ the cohort
    def open_folder(self, folder: str | os.PathLike) -> bool:
        """Show the cohort of a predict output folder; False (and a notification naming
        the file and the reason) when it is not one."""
        try:
            table = CohortTable.open(folder)
        except CohortReviewError as exc:
            notifications.show_error(f"napari-mran: {exc}")
            return False
        freeze_startup_objects()
        self._stop_details()
        self._token += 1
        self._remove_own()
        self.shown_row = None
        self.table = table
        self.folder_edit.setText(str(table.folder))
        self.model.set_table(table)
        self.view.resizeColumnsToContents()
        self._show_count()
        worker = create_worker(table.iter_details, _ignore_errors=True)
        worker.yielded.connect(lambda item, t=table: self._on_details(t, *item))
        self._details_worker = worker
        worker.start()
        return True

    def _on_details(self, table: CohortTable, index: int, details: dict) -> None:
        if table is self.table:
            table.apply_details(index, details)
            self.model.row_changed(index)

    def _stop_details(self) -> None:
        worker, self._details_worker = self._details_worker, None
        if worker is not None:
            worker.quit()

    def slide_reviewed(self, store_path: str) -> bool:
        """The slide of *store_path* was reviewed: read its review marks again and update
        its row.  False when the store is not in the cohort shown."""
        i = None if self.table is None else self.table.find(store_path)
        if i is None:
            return False
        self.table.refresh_reviews(i)
        self.model.row_changed(i)
        return True

    # ------------------------------------------------------------------ browsing
    def current_row(self) -> int | None:
        """The source row of the table's current index, or None."""
        index = self.view.currentIndex()
        return self.proxy.mapToSource(index).row() if index.isValid() else None

    def select_row(self, source_row: int) -> None:
        """Make *source_row* current (it opens; nothing when it is filtered out)."""
        index = self.proxy.mapFromSource(self.model.index(source_row, 0))
        if index.isValid():
            self.view.setCurrentIndex(index)

    def next_slide(self) -> None:
        self._step(+1)

    def previous_slide(self) -> None:
        self._step(-1)

    def _step(self, delta: int) -> None:
        n = self.proxy.rowCount()
        if n == 0:
            return
        current = self.view.currentIndex()
        row = 0 if not current.isValid() else min(max(current.row() + delta, 0), n - 1)
        self.view.setCurrentIndex(self.proxy.index(row, 0))

    def _on_current(self, current, _previous) -> None:
        if current.isValid():
            self.open_row(self.proxy.mapToSource(current).row())

    def open_row(self, i: int) -> None:
        """Show row *i*: its store and slide are read in a worker, then the previous
        slide's layers show the new one (updated in place where possible, :mod:`..swap`),
        one per event-loop turn."""
        self._token += 1
        token, row = self._token, self.table.rows[i]
        self.status.setText(f"Opening {row.name}…")
        worker = create_worker(load_slide_view, row, _ignore_errors=True)
        worker.returned.connect(lambda view: self._on_view(token, view))
        worker.errored.connect(lambda exc: self._on_open_error(token, i, exc))
        worker.start()

    def _on_view(self, token: int, view: SlideView) -> None:
        if token != self._token:  # another row was asked for meanwhile
            if view.slide is not None:
                view.slide.close()
            return
        if view.slide is not None:
            self._slides.append(view.slide)
        # the previous row's layers updated in place where the roles match (..swap)
        steps = Swap(self.viewer, self._layers, view.layers, ANNOUNCE_BY_INSERT).steps()
        in_turns([lambda f=f: token == self._token and f() for f in steps],
                 lambda: self._shown(token, view))

    def _on_open_error(self, token: int, i: int, exc: Exception) -> None:
        row = self.table.rows[i] if self.table is not None else None
        if token != self._token or row is None:
            return
        notifications.show_error(f"napari-mran: cannot show {row.name}: {exc}")
        self.table.mark_problem(i, f"{type(exc).__name__}: {exc}")
        self.model.row_changed(i)
        self.shown_row = None
        in_turns(self._removal_steps(), lambda: self._after_failure(token))

    def _after_failure(self, token: int) -> None:
        if token == self._token:
            self.status.setText("Not shown (see the row's status)")
            self.row_shown.emit(-1)

    def _shown(self, token: int, view: SlideView) -> None:
        if token != self._token:
            return
        self.shown_row = view.index
        self._close_unshown_slides()
        for message in view.warnings:
            notifications.show_warning(message)
        if view.problem:
            self.table.mark_problem(view.index, view.problem)
            self.model.row_changed(view.index)
        self.viewer.reset_view()
        row = self.table.rows[view.index]
        self.status.setText(f"{row.name}: {row.predicted or '—'} · {row.status_text()}")
        self.row_shown.emit(view.index)

    def _removal_steps(self) -> list:
        """Steps removing the layers this panel added (not those the user removed or
        added), then closing their slides."""
        layers, self._layers = self._layers, []
        slides, self._slides = self._slides, []
        steps = [lambda ly=ly: self._remove(ly) for ly in reversed(layers)]
        return steps + [lambda: [s.close() for s in slides]]

    def _close_unshown_slides(self) -> None:
        """Close the slides no layer of this panel shows any more (the reused slide layer
        now reads another one)."""
        shown = [ly.metadata.get(keys.SLIDE) for ly in self._layers]
        keep = [s for s in self._slides if any(s is x for x in shown)]
        for s in self._slides:
            if not any(s is k for k in keep):
                s.close()
        self._slides = keep

    def _remove(self, layer) -> None:
        if layer in self.viewer.layers:
            self.viewer.layers.remove(layer)

    def _remove_own(self) -> None:
        for step in self._removal_steps():
            step()
