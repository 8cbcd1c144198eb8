"""The faithfulness check: re-predict the slide from its top bags and, in each, its top
patches only (:func:`napari_mran.faithfulness.restricted_prediction`)."""

from __future__ import annotations

from napari.qt.threading import create_worker
from napari.utils import notifications
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSpinBox, QVBoxLayout, QWidget

from ..jobs import faithfulness_job
from ..texts import format_faith

READY = ("Re-run the slide-level prediction from only the top-k bags and their top-m "
         "patches: if attention is faithful, the prediction hardly changes")


class FaithfulnessPanel(QWidget):
    """k bags × m patches, a button and the outcome line."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.worker = None  # the check running, if any
        col = QVBoxLayout(self)
        col.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.k_spin = QSpinBox()
        self.k_spin.setRange(1, 1000)
        self.k_spin.setValue(10)
        self.m_spin = QSpinBox()
        self.m_spin.setRange(1, 64)
        self.m_spin.setValue(8)
        self.button = QPushButton("Re-predict from the top bags")
        row.addWidget(QLabel("bags"))
        row.addWidget(self.k_spin)
        row.addWidget(QLabel("patches"))
        row.addWidget(self.m_spin)
        title = QLabel("Faithfulness: re-predict the slide from its top bags and, in each, "
                       "its top patches only")
        title.setWordWrap(True)
        col.addWidget(title, 0)
        col.addLayout(row)
        col.addWidget(self.button)
        self.label = QLabel()
        self.label.setWordWrap(True)
        col.addWidget(self.label)

    def update_state(self, env: dict | None, shown) -> None:
        """Enabled when the check exists, a result with its slide is shown and no check
        runs; the tooltip says why not otherwise."""
        fn = (env or {}).get("faithfulness")
        if env is None:
            ok, why = False, "checking whether the faithfulness check is available…"
        elif fn is None:
            ok, why = False, env.get("faithfulness_why") or "not available"
        elif shown is None:
            ok, why = False, "analyse a slide (or open a result) first"
        elif shown.slide_layer is None:
            ok, why = False, "the slide of this result is not open"
        elif self.worker is not None:
            ok, why = False, "running…"
        else:
            ok, why = True, READY
        for w in (self.button, self.k_spin, self.m_spin):
            w.setEnabled(ok)
            w.setToolTip(why)

    def start(self, check, slide, model, result, device: str, on_end) -> None:
        """Run *check* in a worker; *on_end()* after it ended (either way)."""
        k, m = self.k_spin.value(), self.m_spin.value()
        worker = create_worker(faithfulness_job, check, slide, model, result, k, m, device,
                               _ignore_errors=True)
        self.worker = worker
        self.label.setText(f"Re-predicting from the top {k} bags × {m} patches…")

        def done(value):
            self.worker = None
            self.label.setText(format_faith(value, result, k, m))
            on_end()

        def failed(exc):
            self.worker = None
            self.label.setText(f"Faithfulness check failed: {exc}")
            notifications.show_error(f"napari-mran: faithfulness check failed: {exc}")
            on_end()

        worker.returned.connect(done)
        worker.errored.connect(failed)
        worker.start()
