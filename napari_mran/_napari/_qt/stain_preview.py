"""*Settings > Stain normalisation > Preview*: the current slide's smallest level
normalised exactly as the analysis would (the same slide-level fit and reference,
:func:`napari_mran.inference.stain.preview`), shown as an image layer over the slide.

The fit and the normalisation run in a worker thread; only the main thread touches
layers.  A second preview of the same slide replaces the layer's data in place.  Bad
input (a reference that cannot be read or fitted) is a notification naming the file; a
slide whose stains cannot be fitted (one stain, too little tissue, not H&E) is shown
unchanged with a warning naming the slide and the reason;
the notes analysis would record (a resolution mismatch, a model trained with another
method) come as napari's warning notifications, relayed from the worker.
"""

from __future__ import annotations

from typing import Any, Callable

from napari.qt.threading import create_worker
from napari.utils import notifications

from ...inference.stain import preview
from ..frame import SlideFrame
from ..layers import reusable, update_layer

SUFFIX = "stain preview"
META = "mran_stain_preview"


def preview_layer_kwargs(frame: SlideFrame, downsample: tuple[float, float], name: str,
                         info: dict[str, Any]) -> dict[str, Any]:
    """napari ``add_image`` keywords that lay a preview (one pixel = *downsample* level-0
    pixels) exactly over the slide in *frame*."""
    sx, sy = downsample
    return dict(name=name, rgb=True, contrast_limits=(0, 255),
                scale=(sy * frame.scale[0], sx * frame.scale[1]),
                translate=frame.to_world(0.5 * sx, 0.5 * sy), metadata={META: info},
                **frame.layer_units())


class StainPreview:
    """Start previews and show them (one at a time)."""

    def __init__(self, viewer, on_shown: Callable[[Any], None] | None = None):
        self.viewer, self.on_shown = viewer, on_shown
        self.worker: Any = None
        self.last_error: str | None = None

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, slide_layer, slide, method: str, reference: dict[str, Any] | None,
              user: str | None) -> bool:
        """Preview *method* on *slide* (shown in *slide_layer*); False if one is running."""
        if self.worker is not None:
            return False
        frame, name = SlideFrame.from_layer(slide_layer), f"{slide_layer.name} {SUFFIX}"
        self.last_error = None
        worker = create_worker(preview, slide, method, reference, user, _ignore_errors=True)
        worker.returned.connect(lambda out: self._show(out, frame, name, slide))
        worker.errored.connect(lambda exc: self._failed(slide, exc))
        worker.finished.connect(self._finished)
        self.worker = worker
        worker.start()
        return True

    def _show(self, out, frame: SlideFrame, name: str, slide) -> None:
        rgb, info, downsample = out
        if info.get("source") is None:  # not fitted: the preview is the slide unchanged
            notifications.show_warning(
                f"napari-mran: stain preview of {slide.path}: the slide's stains could not "
                f"be fitted on its smallest level, so it is shown unchanged; the analysis "
                f"would fit {info['source_fitted_on']}")
        kwargs = preview_layer_kwargs(frame, downsample, name, info)
        if name in self.viewer.layers and reusable(self.viewer.layers[name], "image", kwargs):
            layer = self.viewer.layers[name]
            update_layer(layer, rgb, kwargs, "image")
            layer.visible = True
        else:
            layer = self.viewer.add_image(rgb, **kwargs)
        if self.on_shown is not None:
            self.on_shown(layer)

    def _failed(self, slide, exc: Exception) -> None:
        self.last_error = str(exc)
        notifications.show_error(f"napari-mran: stain preview of {slide.path}: {exc}")

    def _finished(self) -> None:
        self.worker = None
