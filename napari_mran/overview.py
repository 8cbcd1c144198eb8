"""A PNG overview of one analysis: the slide thumbnail beside its bag/patch/cell attention.

Headless (matplotlib's Agg canvas, never pyplot), used by ``napari-mran analyze`` and
``make demo`` on machines without a display.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def write_overview(slide, result, path: str | os.PathLike, *, weighting: str = "global",
                   thumb_px: int = 768, overwrite: bool = False) -> Path:
    """Write ``path`` (PNG): thumbnail, bag, patch and cell attention over the slide.

    Atomic, and refuses to replace an existing file unless ``overwrite`` (OutputExistsError).
    """
    from ._atomic import atomic_path

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    thumb = slide.get_thumbnail(thumb_px)
    w0, h0 = slide.dimensions
    extent = (0, w0, h0, 0)  # level-0 px, y down
    fig = Figure(figsize=(16, 4.6), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    probs = ", ".join(f"{c} {p:.3f}" for c, p in zip(result.class_names, result.slide_probs))
    axes[0].imshow(thumb, extent=extent)
    axes[0].set_title(f"{Path(slide.path).name}\n{probs}", fontsize=9)
    for ax, level in zip(axes[1:], ("bag", "patch", "cell")):
        hm = result.heatmap(level, weighting=weighting if level != "bag" else "local")
        data = hm.data
        finite = data[np.isfinite(data)]
        vmax = float(np.percentile(finite, 99)) if finite.size else 1.0
        sy, sx = hm.scale
        ty, tx = hm.translate
        ext = (tx, tx + data.shape[1] * sx, ty + data.shape[0] * sy, ty)
        ax.imshow(thumb, extent=extent, alpha=0.45)
        im = ax.imshow(np.ma.masked_invalid(data), extent=ext, cmap="magma", vmin=0,
                       vmax=vmax if vmax > 0 else None, interpolation="nearest", alpha=0.85)
        ax.set_xlim(0, w0)
        ax.set_ylim(h0, 0)
        what = {"bag": "bag attention (gamma)",
                "patch": "patch attention (gamma x alpha)" if weighting == "global" else "patch attention (alpha)",
                "cell": "cell attention (gamma x alpha x beta)" if weighting == "global" else "cell attention (beta)"}
        ax.set_title(what[level], fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    note = "demo model trained on synthetic slides: not for diagnosis" \
        if result.provenance.get("model", {}).get("demo") else ""
    if note:
        fig.suptitle(note, fontsize=9, color="#a00")
    fig.tight_layout()
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
