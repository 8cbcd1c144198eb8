"""The ground truth of a synthetic slide: its tumour mask and what is read from it.

The mask is the tumour field sampled at the centre of each ``MASK_DOWNSAMPLE`` x
``MASK_DOWNSAMPLE`` block of level 0 (1 = tumour), written as ``<stem>.mask.tif``;
:func:`tumour_bag_labels` integrates it exactly over boxes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import tifffile
from numpy.typing import ArrayLike

from ._info import NODE, SyntheticSlideInfo, fmt

if TYPE_CHECKING:
    from ._scene import Scene

__all__ = ["block_areas", "ground_truth", "read_mask", "tumour_bag_labels", "write_mask"]

#: a ground-truth mask: the slide's info, the path of a ``.mask.tif``, or
#: ``(mask array, level-0 width, level-0 height)``
MaskSource: TypeAlias = SyntheticSlideInfo | str | os.PathLike[str] | tuple[Any, int, int]


Box: TypeAlias = tuple[int, int, int, int]


def ground_truth(scene: Scene, band_rows: int = 64) -> tuple[np.ndarray, tuple[Box, ...], float]:
    """Mask at 1/16 (uint8), per-region block boxes, tissue fraction."""
    W, H = scene.width, scene.height
    nbx, nby = -(-W // NODE), -(-H // NODE)
    mask = np.zeros((nby, nbx), np.uint8)
    n_reg = len(scene.tumour_blobs) if scene.tumour_blobs is not None else 0
    boxes = [[nbx, nby, -1, -1] for _ in range(n_reg)]
    tissue_blocks = 0
    for b0 in range(0, nby, band_rows):
        b1 = min(nby, b0 + band_rows)
        X = (np.arange(0, nbx + 1, dtype=np.float64) * NODE)[None, :]
        Y = (np.arange(b0, b1 + 1, dtype=np.float64) * NODE)[:, None]
        avg = lambda a: 0.25 * (a[:-1, :-1] + a[:-1, 1:] + a[1:, :-1] + a[1:, 1:])  # noqa: E731
        tis = avg(np.broadcast_to(scene.tissue_distance(X, Y), (b1 - b0 + 1, nbx + 1)).astype(np.float32))
        inside = tis > 0
        tissue_blocks += int(inside.sum())
        if n_reg:
            parts = scene.tumour_parts(X, Y)
            tum = np.maximum.reduce([np.broadcast_to(p, (b1 - b0 + 1, nbx + 1)) for p in parts])
            band = (avg(tum.astype(np.float32)) > 0) & inside
            mask[b0:b1] = band
            for i, p in enumerate(parts):
                reg = (avg(np.broadcast_to(p, tum.shape).astype(np.float32)) > 0) & band
                if reg.any():
                    rows = np.nonzero(reg.any(1))[0]
                    cols = np.nonzero(reg.any(0))[0]
                    bx = boxes[i]
                    bx[0] = min(bx[0], int(cols[0]))
                    bx[2] = max(bx[2], int(cols[-1]))
                    bx[1] = min(bx[1], int(rows[0]) + b0)
                    bx[3] = max(bx[3], int(rows[-1]) + b0)
    px_boxes: list[Box] = []
    for bx in boxes:
        if bx[2] >= 0:
            px_boxes.append((bx[0] * NODE, bx[1] * NODE,
                             min(W, (bx[2] + 1) * NODE), min(H, (bx[3] + 1) * NODE)))
    return mask, tuple(px_boxes), tissue_blocks / float(nbx * nby)


def block_areas(n: int, size: int) -> np.ndarray:
    """Widths (px) of the n mask blocks along an axis of ``size`` pixels."""
    w = np.full(n, float(NODE))
    w[-1] = size - NODE * (n - 1)
    return w


def write_mask(path: Path, mask: np.ndarray, width: int, height: int, mpp: float) -> None:
    """Write the mask as a zlib TIFF whose description records the downsample and size."""
    desc = (f"napari-mran synthetic tumour mask: 1 = tumour, 0 = not; "
            f"downsample={NODE}; width={width}; height={height}; mpp={fmt(mpp)}")
    tifffile.imwrite(path, mask, compression="zlib", metadata=None, description=desc,
                     resolution=(1e4 / (mpp * NODE),) * 2, resolutionunit="CENTIMETER",
                     photometric="minisblack")


def read_mask(mask: SyntheticSlideInfo | str | os.PathLike[str]) -> tuple[np.ndarray, int, int, int]:
    """Read a ground-truth mask: (mask uint8, level-0 width, level-0 height, downsample).

    ``mask`` is a :class:`SyntheticSlideInfo` or the path of a ``.mask.tif``.
    """
    if isinstance(mask, SyntheticSlideInfo):
        arr = tifffile.imread(mask.mask_path)
        return arr, mask.width, mask.height, mask.mask_downsample
    with tifffile.TiffFile(mask) as tf:
        page = tf.pages.first
        arr = page.asarray()
        meta: dict[str, str] = {}
        for part in (page.description or "").split(";"):
            if "=" in part:
                k, v = part.split("=", 1)
                meta[k.strip().rsplit(" ", 1)[-1]] = v.strip()
    ds = int(meta.get("downsample", NODE))
    w = int(meta.get("width", arr.shape[1] * ds))
    h = int(meta.get("height", arr.shape[0] * ds))
    return arr, w, h, ds


def tumour_bag_labels(mask: MaskSource, boxes: ArrayLike) -> np.ndarray:
    """Fraction of each level-0 box covered by tumour in the ground-truth mask.

    ``mask``: a :class:`SyntheticSlideInfo`, the path of a ``.mask.tif``, or a
    ``(mask_array, width, height)`` tuple (mask at 1/16 of level 0).
    ``boxes``: array-like (N, 4) of ``x0, y0, x1, y1`` in level-0 pixels.
    Returns float64 (N,) in [0, 1]; the part of a box outside the slide counts
    as not tumour, and an empty box gives 0.  Partial coverage of the 16 px
    mask blocks is integrated exactly (the mask is piecewise constant).
    """
    if isinstance(mask, tuple):
        arr, W, H = mask[0], int(mask[1]), int(mask[2])
        ds = NODE
    else:
        arr, W, H, ds = read_mask(mask)
    arr = np.asarray(arr) > 0
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not len(b):
        return np.zeros(0)
    ny, nx = arr.shape
    # corner coordinates of the blocks (the last block may be partial)
    xs = np.minimum(np.arange(nx + 1, dtype=np.float64) * ds, W)
    ys = np.minimum(np.arange(ny + 1, dtype=np.float64) * ds, H)
    wx, wy = np.diff(xs), np.diff(ys)
    # summed-area table of tumour area at block corners; the integral of a
    # piecewise-constant image is bilinear inside each block
    S = np.zeros((ny + 1, nx + 1))
    S[1:, 1:] = np.cumsum(np.cumsum(arr * wy[:, None] * wx[None, :], 0), 1)

    def integral(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x = np.clip(x, 0, xs[-1])
        y = np.clip(y, 0, ys[-1])
        i = np.clip(np.searchsorted(xs, x, side="right") - 1, 0, nx - 1)
        j = np.clip(np.searchsorted(ys, y, side="right") - 1, 0, ny - 1)
        fx = np.where(wx[i] > 0, (x - xs[i]) / np.where(wx[i] > 0, wx[i], 1), 0)
        fy = np.where(wy[j] > 0, (y - ys[j]) / np.where(wy[j] > 0, wy[j], 1), 0)
        return ((S[j, i] * (1 - fx) + S[j, i + 1] * fx) * (1 - fy)
                + (S[j + 1, i] * (1 - fx) + S[j + 1, i + 1] * fx) * fy)

    x0, y0, x1, y1 = (b[:, i] for i in range(4))
    x0, x1 = np.minimum(x0, x1), np.maximum(x0, x1)
    y0, y1 = np.minimum(y0, y1), np.maximum(y0, y1)
    covered = integral(x1, y1) - integral(x0, y1) - integral(x1, y0) + integral(x0, y0)
    area = (x1 - x0) * (y1 - y0)
    out = np.where(area > 0, covered / np.where(area > 0, area, 1), 0.0)
    return np.clip(out, 0.0, 1.0)
