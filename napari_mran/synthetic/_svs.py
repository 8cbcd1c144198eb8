"""Writing a slide as an Aperio-SVS-like pyramidal JPEG TIFF.

Level 0 is rendered and encoded tile by tile in a thread pool and streamed to
tifffile; the reduced levels come out of the same pass (:class:`._cascade.Cascade`).
The file holds level 0, a stripped thumbnail page and the reduced levels at
downsamples 2, 4, 8, ... down to the first level that fits in one tile, with Aperio
descriptions, as tifffile and OpenSlide expect of an SVS file.
"""

from __future__ import annotations

import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import imagecodecs
import numpy as np
import tifffile

from ._cascade import Cascade, reduce2
from ._info import fmt

if TYPE_CHECKING:
    from ._scene import Scene

__all__ = ["Encoder", "level_dims", "write_svs"]

_APERIO_HEADER = "Aperio Image Library v12.0.0"

#: one encoded level-0 tile, its 2x reduction (None for a one-level pyramid), the pixels
_Rendered: TypeAlias = tuple[bytes, np.ndarray | None, np.ndarray]


class Encoder:
    """JPEG encoding of RGB tiles: Aperio-style RGB, or YCbCr 4:2:0."""

    def __init__(self, quality: int, colorspace: str) -> None:
        self.quality = int(quality)
        self.rgb = colorspace == "rgb"

    def __call__(self, tile: np.ndarray) -> bytes:
        if self.rgb:
            data = imagecodecs.jpeg8_encode(tile, level=self.quality, colorspace="RGB",
                                            outcolorspace="RGB")
        else:
            data = imagecodecs.jpeg8_encode(tile, level=self.quality, colorspace="RGB",
                                            outcolorspace="YCBCR", subsampling=(2, 2))
        # jpeg8_encode returns bytes (typed bytes | bytearray); bytes() of bytes is no copy
        return bytes(data)


def level_dims(width: int, height: int, tile: int) -> list[tuple[int, int]]:
    """(width, height) of each pyramid level, halving (rounded up) until one fits a tile."""
    dims = [(width, height)]
    while max(dims[-1]) > tile:
        w, h = dims[-1]
        dims.append(((w + 1) // 2, (h + 1) // 2))
    return dims


def write_svs(out: Path, scene: Scene, dims: list[tuple[int, int]], *, mpp: float,
              stem: str, seed: int, tumour: bool, quality: int, colorspace: str,
              workers: int) -> None:
    """Write the pyramid of ``scene`` (levels ``dims``) to ``out``.

    ``stem``, ``seed`` and ``tumour`` are recorded in the level-0 description."""
    width, height, T = scene.width, scene.height, scene.tile
    rgb = colorspace == "rgb"
    encode = Encoder(quality, colorspace)
    mag = 10.0 / mpp
    desc0 = (f"{_APERIO_HEADER}\r\n{width}x{height} [0,0 {width}x{height}] ({T}x{T}) "
             f"JPEG/{'RGB' if rgb else 'YCC'} Q={quality}|AppMag = {fmt(mag)}|MPP = {fmt(mpp)}"
             f"|Filename = {stem}|Synthetic = napari-mran|Seed = {seed}"
             f"|Tumour = {int(bool(tumour))}")
    raw_total = 3 * sum(w * h for w, h in dims)
    bigtiff = raw_total * (1.5 if quality > 95 else 1.0) > 0.9 * 2 ** 32
    common: dict[str, Any] = dict(dtype=np.uint8, photometric="rgb", compression="jpeg",
                                  metadata=None, resolutionunit="CENTIMETER")
    if rgb:
        common.update(compressionargs={"outcolorspace": "RGB"}, subsampling=(1, 1))
    else:
        common.update(subsampling=(2, 2))

    with tempfile.TemporaryFile(dir=out.parent) as spool, \
            ThreadPoolExecutor(max_workers=workers) as pool:
        cascade = Cascade(dims, T, encode, spool)
        with tifffile.TiffWriter(out, bigtiff=bigtiff) as tw:
            tw.write(_level0_tiles(scene, encode, cascade, pool, workers, len(dims) > 1),
                     shape=(height, width, 3), tile=(T, T), description=desc0,
                     resolution=(1e4 / mpp, 1e4 / mpp), subfiletype=0, **common)
            thumb = cascade.thumbnail()
            th, tw_ = thumb.shape[:2]
            tw.write(thumb, photometric="rgb", compression="jpeg",
                     compressionargs={"level": quality}, metadata=None,
                     description=f"{_APERIO_HEADER}\r\n{width}x{height} -> {tw_}x{th} - "
                                 f"|AppMag = {fmt(mag)}|MPP = {fmt(mpp)}",
                     resolution=(1e4 * tw_ / (mpp * width),) * 2,
                     resolutionunit="CENTIMETER")
            for k in range(1, len(dims)):
                w, h = dims[k]
                ds = 2 ** k
                desc = (f"{_APERIO_HEADER}\r\n{width}x{height} [0,0 {width}x{height}] "
                        f"({T}x{T}) -> {w}x{h} JPEG/{'RGB' if rgb else 'YCC'} Q={quality}")
                tw.write(cascade.tiles(k), shape=(h, w, 3), tile=(T, T), description=desc,
                         resolution=(1e4 / (mpp * ds), 1e4 / (mpp * ds)), subfiletype=0,
                         **common)


def _level0_tiles(scene: Scene, encode: Encoder, cascade: Cascade, pool: ThreadPoolExecutor,
                  workers: int, reduce_needed: bool) -> Iterator[bytes]:
    """The encoded level-0 tiles in row-major order, rendered ahead in ``pool`` (at most
    3 per worker pending); each tile also goes into ``cascade``."""
    T = scene.tile
    n_cols, n_rows = -(-scene.width // T), -(-scene.height // T)

    def work(idx: int) -> _Rendered:
        r, c = divmod(idx, n_cols)
        t = scene.render_tile(c * T, r * T, T)
        return encode(t), (reduce2(t) if reduce_needed else None), t

    pending: deque[Future[_Rendered]] = deque()
    nxt = 0
    total = n_cols * n_rows
    done = 0
    while done < total:
        while nxt < total and len(pending) < 3 * workers:
            pending.append(pool.submit(work, nxt))
            nxt += 1
        data, red, t = pending.popleft().result()
        r, c = divmod(done, n_cols)
        cascade.add_level0_tile(r, c, t, red)
        done += 1
        yield data
