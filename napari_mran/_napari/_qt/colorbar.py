"""Colour bars with units for the attention layers (the Result tab).

One row per level: what the value is (its unit), the colormap's gradient drawn over a
checkerboard (a translucent ramp shows where the tissue shows through), and the contrast
limits at both ends.  A row follows its layer: a new colormap or contrast limits set in
napari's layer controls redraw it.  (napari's own canvas colour-bar overlay is not used:
napari 0.9.2 crashes on software GL drawing it after its layer is removed.)
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QGridLayout, QLabel, QWidget

from ...vocab import LEVELS, Level, Weighting
from ..colormaps import rgba_table

#: what the values of each level are, by weighting (the colour bar's unit line)
UNITS: dict[str, dict[str, str]] = {
    Weighting.LOCAL: {
        Level.BAG: "bag attention γ (softmax over the slide's bags)",
        Level.PATCH: "patch attention α (softmax over the 64 patches of a bag)",
        Level.CELL: "cell attention β (softmax over the 16 cells of a patch)",
    },
    Weighting.GLOBAL: {
        Level.BAG: "bag attention γ (softmax over the slide's bags)",
        Level.PATCH: "γ·α: share of the slide's attention per patch",
        Level.CELL: "γ·α·β: share of the slide's attention per cell",
    },
}
BAR_SIZE = (150, 12)


def gradient_pixmap(colormap, width: int = BAR_SIZE[0], height: int = BAR_SIZE[1]) -> QPixmap:
    """A horizontal colour bar (low values left) of a napari colormap (name or object),
    composited over a grey checkerboard so that its transparency shows."""
    rgba = rgba_table(colormap, width)                                   # (width, 4)
    yy, xx = np.mgrid[0:height, 0:width]
    checker = np.where(((yy // 4) + (xx // 4)) % 2 == 0, 0.95, 0.75)[..., None]
    alpha = rgba[None, :, 3:4]
    rgb = rgba[None, :, :3] * alpha + checker * (1.0 - alpha)
    img = np.ascontiguousarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))
    image = QImage(img.tobytes(), width, height, 3 * width, QImage.Format.Format_RGB888)
    return QPixmap.fromImage(image.copy())


class ColorBarRow:
    """The unit line, gradient and limits of one level (cells of a grid layout)."""

    def __init__(self, grid: QGridLayout, row: int, level: str):
        self.level = level
        self.unit = QLabel()
        self.unit.setWordWrap(True)
        self.bar, self.lo, self.hi = QLabel(), QLabel("–"), QLabel("–")
        self.bar.setFixedSize(*BAR_SIZE)
        self.hi.setAlignment(Qt.AlignmentFlag.AlignRight)
        grid.addWidget(self.unit, 2 * row, 0, 1, 3)
        grid.addWidget(self.lo, 2 * row + 1, 0)
        grid.addWidget(self.bar, 2 * row + 1, 1)
        grid.addWidget(self.hi, 2 * row + 1, 2)
        self.colormap_name: str | None = None
        self.limits: tuple[float, float] | None = None
        self.layer = None

    def set_colormap(self, colormap) -> None:
        name = getattr(colormap, "name", colormap)
        if name != self.colormap_name:
            self.colormap_name = name
            self.bar.setPixmap(gradient_pixmap(colormap))
            self.bar.setToolTip(f"colormap: {name}")

    def set_limits(self, lo, hi) -> None:
        self.limits = None if lo is None else (float(lo), float(hi))
        self.lo.setText("–" if lo is None else f"{lo:.3g}")
        self.hi.setText("–" if hi is None else f"{hi:.3g}")

    def set_unit(self, weighting: str) -> None:
        self.unit.setText(f"<small>{UNITS[weighting][self.level]}</small>")

    def follow(self, layer) -> None:
        """Redraw when *layer*'s colormap or contrast limits change (None: stop)."""
        if layer is self.layer:
            return
        if self.layer is not None:
            self.layer.events.contrast_limits.disconnect(self.refresh)
            self.layer.events.colormap.disconnect(self.refresh)
        self.layer = layer
        if layer is not None:
            layer.events.contrast_limits.connect(self.refresh)
            layer.events.colormap.connect(self.refresh)
            self.refresh()

    def refresh(self, *_args) -> None:
        """Show the followed layer's colormap and contrast limits."""
        if self.layer is not None:
            self.set_colormap(self.layer.colormap)
            self.set_limits(*self.layer.contrast_limits)


class ColorBars(QWidget):
    """The colour bars of the three attention levels, bag to cell."""

    def __init__(self, colormaps: dict[str, object], parent=None):
        super().__init__(parent)
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setColumnStretch(1, 1)
        self.rows = {lv: ColorBarRow(grid, i, lv) for i, lv in enumerate(LEVELS)}
        self.set_colormaps(colormaps)
        self.set_weighting(Weighting.LOCAL)

    def set_colormaps(self, colormaps: dict[str, object]) -> None:
        for level, cmap in colormaps.items():
            self.rows[level].set_colormap(cmap)

    def set_weighting(self, weighting: str) -> None:
        for row in self.rows.values():
            row.set_unit(weighting)

    def show_limits(self, limits: dict) -> None:
        for level, (lo, hi) in limits.items():
            self.rows[level].set_limits(lo, hi)

    def track(self, layers: dict[str, object]) -> None:
        """Follow the colormap and contrast limits of *layers* (level -> image layer)."""
        for level, row in self.rows.items():
            row.follow(layers.get(level))
