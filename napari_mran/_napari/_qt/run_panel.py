"""Analyze / Cancel, the progress bar and line, and the Qt side of a run: the worker
thread, napari's activity-panel progress, the repaint timer and the GC pause.

What a run holds and paints is :class:`napari_mran._napari.run.Run` (no Qt); this
panel feeds it the worker's events on the main thread and ends it however it ends.
"""

from __future__ import annotations

import threading
import time

import numpy as np
from napari.qt.threading import create_worker
from napari.utils import notifications
from napari.utils import progress as napari_progress
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ...errors import MRANError
from ...inference import AnalysisOptions
from .. import layers as L
from .. import texts
from ..jobs import Outcome, Saving, analysis_job
from ..run import Run, RunState
from ..shown import show_scale_bar
from .perf import GcPause, in_turns

REPAINT_INTERVAL_MS = 200


class RunPanel(QWidget):
    """Runs one analysis at a time; *display()* gives the display settings for the
    layers, *show(shown)* receives the finished result, *show_limits(limits)* the
    colour-bar limits while painting."""

    #: a run started or ended (enable or disable the other controls)
    running_changed = Signal()

    def __init__(self, viewer, display, show, show_limits, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self._display, self._show, self._show_limits = display, show, show_limits
        self.run: Run | None = None
        self.last_outcome: Outcome | None = None
        self.last_error: str | None = None
        self._extras: dict[int, tuple] = {}  # id(run) -> (napari progress, GcPause)
        col = QVBoxLayout(self)
        col.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.analyze_btn = QPushButton("Analyze")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        row.addWidget(self.analyze_btn, 1)
        row.addWidget(self.cancel_btn)
        col.addLayout(row)
        self.progress_bar = QProgressBar()
        self._reset_bar()
        col.addWidget(self.progress_bar)
        self.progress_label = QLabel("Idle")
        self.progress_label.setWordWrap(True)
        col.addWidget(self.progress_label)
        self._repaint_timer = QTimer(self)
        self._repaint_timer.setInterval(REPAINT_INTERVAL_MS)
        self._repaint_timer.timeout.connect(self.paint_progress)

    @property
    def is_running(self) -> bool:
        return self.run is not None

    def set_ready(self, ready: bool, why: str) -> None:
        """Analyze enabled or not, and why (its tooltip)."""
        self.analyze_btn.setEnabled(ready and self.run is None)
        self.analyze_btn.setToolTip(why)
        self.cancel_btn.setEnabled(self.run is not None and
                                   self.run.state is RunState.RUNNING)

    def _reset_bar(self) -> None:
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("")

    # ------------------------------------------------------------------ starting
    def start(self, slide_layer, model, options: AnalysisOptions, folder) -> None:
        """Create the (empty) result layers, one per event-loop turn, then run
        analyze_slide in a worker thread."""
        run = Run(self.viewer, slide_layer, model, options)
        show_scale_bar(self.viewer, run.slide)
        run.worker = worker = create_worker(
            analysis_job, run.slide, model, options, run.cancel_event, folder,
            leave_one_core=True, _ignore_errors=True)
        self.run = run
        self.last_outcome = None
        self.last_error = None
        worker.yielded.connect(lambda ev, run=run: self._on_event(run, ev))
        worker.returned.connect(lambda out, run=run: self._on_returned(run, out))
        worker.errored.connect(lambda exc, run=run: self._on_errored(run, exc))
        worker.aborted.connect(lambda run=run: self._on_aborted(run))
        worker.finished.connect(lambda run=run: self._on_finished(run))
        self.progress_bar.setRange(0, 0)  # busy until the tissue is known
        self.progress_label.setText(f"Preparing the layers for {run.slide_name}…")
        self.running_changed.emit()
        # napari's progress bar (activity panel); its total is set when the tissue is known
        pbar = napari_progress(total=0, desc=f"MRAN {run.slide_name}: finding tissue")
        # The layers are made before the model starts, one per event-loop turn, while
        # the CPU is free: adding a layer (with its controls) and drawing it the first
        # time costs ~0.1 s here but 0.3-0.5 s on a 2-core machine busy with the model.
        run.hide_previous_results()
        layers = run.empty_layers(self._display())
        steps = [lambda r=role, t=tup: run.add_layer(r, t) for role, tup in layers]
        steps += [run.show_layer for _role, tup in layers if tup[1].get("visible", True)]

        def launch():
            if run.state is not RunState.RUNNING or run is not self.run:
                if run.state is RunState.CANCELLING:
                    self._on_returned(run, Outcome(cancelled=True))
                return
            self.progress_label.setText(f"Finding tissue in {run.slide_name}…")
            patch = run.layers.get(L.ROLES["patch"])
            if patch is not None:  # its controls and its hover text are the useful ones
                self.viewer.layers.selection.active = patch
            self._repaint_timer.start()
            worker.start()

        # from here on the run always ends through _end, which undoes this
        self._extras[id(run)] = (pbar, GcPause())
        in_turns(steps, launch)

    # ------------------------------------------------------------------ cancelling
    def cancel(self) -> None:
        """Cancel button: stop after the current batch; the half layers are removed."""
        if self.run is None or not self.run.request_cancel():
            return
        self.progress_label.setText("Cancelling after the current batch…")
        self.running_changed.emit()

    def cancel_silently(self) -> None:
        """Widget closing or napari quitting: cancel a running analysis and undo its
        GC pause (the worker threads are waited for by the widget)."""
        run = self.run
        if run is not None:
            run.cancel_event.set()
            _pbar, pause = self._extras.get(id(run), (None, None))
            if pause is not None:
                pause.release()

    # ------------------------------------------------------------------ events
    def _pbar(self, run: Run):
        return self._extras.get(id(run), (None, None))[0]

    def _on_event(self, run: Run, event) -> None:
        if run is not self.run or not run.state.live:
            return
        if isinstance(event, Saving):
            self.progress_label.setText(f"Saving the results store in {event.path}…")
            return
        stage = event.stage
        if stage == "tissue":
            self._on_tissue(run, event)
        elif stage == "bags":
            previous = run.on_bags(event)
            pbar = self._pbar(run)
            if pbar is not None and event.bags_done > previous:
                # napari's progress bar processes Qt events when updated: this run may
                # end (cancel from the activity panel) inside these two calls
                pbar.set_description(texts.bags_rate(run.slide_name, event))
                pbar.update(event.bags_done - previous)
                if not run.state.live:
                    return
            self.progress_bar.setRange(0, max(1, event.bags_total))
            self.progress_bar.setValue(event.bags_done)
            self.progress_label.setText(texts.bags_progress(event))
        elif stage == "slide":
            self.progress_label.setText("Slide-level attention (MIL) …")
        elif stage == "done":
            self.progress_label.setText(event.message)

    def _on_tissue(self, run: Run, event) -> None:
        """The tissue bags are known: size the progress bars, show the bags (pending)."""
        n = len(np.asarray(event.tissue_boxes).reshape(-1, 4))
        self.progress_bar.setFormat("%v / %m bags")
        self.progress_bar.setRange(0, max(1, n))
        self.progress_bar.setValue(0)
        self.progress_label.setText(f"{n} tissue bags; starting the model…")
        pbar = self._pbar(run)
        if pbar is not None:  # (may process Qt events, see _on_event)
            pbar.total = n
            pbar.set_description(f"MRAN {run.slide_name}")
            if not run.state.live:
                return
        run.on_tissue(event.tissue_boxes, getattr(event, "cell_tissue", None))

    def paint_progress(self) -> None:
        """Show what the running analysis painted since the last call."""
        if self.run is not None:
            self._show_limits(self.run.repaint(self._display().scaling))

    # ------------------------------------------------------------------ ending
    def _teardown(self, run: Run) -> None:
        """Remove the layers of *run*, show the hidden previous result again, end it."""
        self._repaint_timer.stop()
        run.teardown()
        self._end(run)

    def _end(self, run: Run) -> None:
        self._repaint_timer.stop()
        run.end()
        pbar, pause = self._extras.pop(id(run), (None, None))
        if pause is not None:
            pause.release()
        if pbar is not None:
            pbar.close()
        if self.run is run:
            self.run = None
        self.running_changed.emit()

    def _on_returned(self, run: Run, outcome: Outcome) -> None:
        if not run.state.live:
            return
        self.last_outcome = outcome
        if outcome is None or outcome.cancelled:
            self._reset_bar()
            self.progress_label.setText(f"Cancelled after {run.bags_done} bags; nothing kept.")
            self._teardown(run)
            notifications.show_info(f"napari-mran: analysis of {run.slide_name} cancelled")
            return
        run.state = RunState.ENDING
        self._repaint_timer.stop()  # from here on the layers show the final result
        display = self._display()
        # the final rasters and limits are built in a thread, off the event loop
        builder = create_worker(run.finish_data, outcome.result, outcome.saved, display,
                                _ignore_errors=True)
        builder.returned.connect(lambda by_role: self._show_steps(run, outcome, display,
                                                                  by_role))
        builder.errored.connect(lambda exc: run.state is RunState.ENDING
                                and self._finish_failed(run, exc))
        builder.start()

    def _show_steps(self, run: Run, outcome: Outcome, display, by_role: dict) -> None:
        """Update the run's layers with the final result, one step per event-loop turn."""
        if run.state is not RunState.ENDING:
            return
        try:
            steps = run.finish_steps(outcome.result, outcome.saved, display, self._show,
                                     by_role)
        except Exception as exc:  # noqa: BLE001 - keep the viewer consistent
            self._finish_failed(run, exc)
            return

        def guarded(step):
            def call():
                if run.state is not RunState.ENDING:
                    return
                try:
                    step()
                except Exception as exc:  # noqa: BLE001
                    self._finish_failed(run, exc)
            return call

        def done():
            if run.state is RunState.ENDING:
                self._finished(run, outcome)

        in_turns([guarded(st) for st in steps], done)

    def _finished(self, run: Run, outcome: Outcome) -> None:
        self._end(run)
        result = outcome.result
        self.progress_bar.setRange(0, max(1, run.bags_done))
        self.progress_bar.setValue(max(1, run.bags_done))
        if result.degraded:
            notifications.show_warning(
                f"napari-mran: {run.slide_name}: {len(result.failed_boxes)} bags could not "
                "be decoded; the result is marked degraded")
        if not outcome.saved and outcome.save_error:
            notifications.show_warning(
                f"napari-mran: the result was not saved: {outcome.save_error}. Use "
                "Export…, or choose another results folder and run again.")
        self.progress_label.setText(
            texts.done_message(result, outcome, time.perf_counter() - run.t_start))

    def _finish_failed(self, run: Run, exc: Exception) -> None:
        self.last_error = str(exc)
        self._teardown(run)
        notifications.show_error(
            f"napari-mran: cannot show the result of {run.slide_name}: {exc}")

    def _on_errored(self, run: Run, exc: Exception) -> None:
        if not run.state.live:
            return
        self._teardown(run)
        self.last_error = str(exc)
        self._reset_bar()
        reason = str(exc) if isinstance(exc, MRANError) else f"{type(exc).__name__}: {exc}"
        self.progress_label.setText(f"Failed: {reason}")
        notifications.show_error(
            f"napari-mran: the analysis of {run.slide_name} failed: {reason}")

    def _on_aborted(self, run: Run) -> None:
        """The worker was quit from napari's activity panel: same as Cancel."""
        gen = getattr(run.worker, "_gen", None)
        if gen is not None:  # close the job (and analyze_slide) off the main thread
            threading.Thread(target=gen.close, name="mran-close", daemon=True).start()
        self._on_returned(run, Outcome(cancelled=True))

    def _on_finished(self, run: Run) -> None:
        if run.state.live:  # no returned/errored (deleted worker)
            self._teardown(run)
