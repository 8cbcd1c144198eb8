"""Streaming the reduced pyramid levels out of level 0 (:class:`Cascade`).

Each level-0 tile's 2x area reduction feeds a cascade of band buffers that produces
every reduced level in the same pass; tiles of reduced levels are JPEG-encoded as soon
as they are complete and spooled to a temporary file until their page is written.
Memory is therefore a few tiles plus a few bands of width ``width / 2**k``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import IO

import numpy as np

__all__ = ["THUMBNAIL_MAX", "Cascade", "reduce2"]

THUMBNAIL_MAX = 1024  # largest side of the (Aperio-style) stripped thumbnail page


def reduce2(a: np.ndarray) -> np.ndarray:
    """2x2 area average (rounded) of a uint8 (h, w, 3) array with even h and w."""
    h, w = a.shape[0] // 2, a.shape[1] // 2
    rows = a.reshape(h, 2, w * 6)
    s = np.add(rows[:, 0], rows[:, 1], dtype=np.uint16).reshape(h, w, 6)
    s = np.add(s[..., :3], s[..., 3:])
    s += 2
    s >>= 2
    return s.astype(np.uint8)


class Cascade:
    """Turns level-0 tiles (row-major) into all reduced levels, streaming.

    Level k >= 1 is assembled one band (``tile`` rows) at a time from 2x area
    reductions of level k-1; a completed band is cut into tiles, JPEG-encoded
    and spooled to ``spool``; levels small enough for the thumbnail are also
    kept whole in memory.
    """

    def __init__(self, dims: list[tuple[int, int]], T: int,
                 encode: Callable[[np.ndarray], bytes], spool: IO[bytes]) -> None:
        self.dims, self.T, self.encode, self.spool = dims, T, encode, spool
        self.cols = [-(-w // T) for w, _ in dims]
        self.rows = [-(-h // T) for _, h in dims]
        # bands[k]: the band of level k being assembled (bands[0] unused: level 0 comes whole)
        self.bands = [np.zeros((0, 0, 3), np.uint8)] + [np.zeros((T, self.cols[k] * T, 3), np.uint8)
                                                         for k in range(1, len(dims))]
        self.band_index = [0] * len(dims)  # next band of each level to complete
        self.index: list[list[tuple[int, int]]] = [[] for _ in dims]  # spool (offset, length)
        self.keep = {k: np.zeros((h, w, 3), np.uint8) for k, (w, h) in enumerate(dims)
                     if max(w, h) <= THUMBNAIL_MAX}

    def add_level0_tile(self, row: int, col: int, tile: np.ndarray,
                        reduced: np.ndarray | None) -> None:
        """Take level-0 tile (row, col) (row-major order) and its 2x reduction."""
        T = self.T
        if 0 in self.keep:
            w, h = self.dims[0]
            y, x = row * T, col * T
            self.keep[0][y:y + T, x:x + T] = tile[:min(T, h - y), :min(T, w - x)]
        if len(self.dims) > 1:
            assert reduced is not None  # every tile of a multi-level pyramid comes reduced
            half = T // 2
            self.bands[1][(row % 2) * half:(row % 2 + 1) * half, col * half:(col + 1) * half] = reduced
            if col == self.cols[0] - 1:
                self._finish_input_band(1, row)

    def _finish_input_band(self, k: int, src_row: int) -> None:
        """Level k-1 band ``src_row`` has been fed into level k's band."""
        last = src_row == self.rows[k - 1] - 1
        if src_row % 2 == 1 or last:
            half = self.T // 2
            band = self.bands[k]
            if src_row % 2 == 0:  # only the top half came: replicate (outside the image)
                band[half:] = band[half - 1:half]
            filled = self.cols[k - 1] * half
            if filled < band.shape[1]:
                band[:, filled:] = band[:, filled - 1:filled]
            self._emit(k, band)

    def _emit(self, k: int, band: np.ndarray) -> None:
        """Encode and spool the tiles of a completed band of level k; feed level k+1."""
        T = self.T
        r = self.band_index[k]
        self.band_index[k] += 1
        for c in range(self.cols[k]):
            data = self.encode(np.ascontiguousarray(band[:, c * T:(c + 1) * T]))
            self.index[k].append((self.spool.tell(), len(data)))
            self.spool.write(data)
        if k in self.keep:
            w, h = self.dims[k]
            y = r * T
            self.keep[k][y:y + T] = band[:min(T, h - y), :w]
        if k + 1 < len(self.dims):
            half = T // 2
            red = reduce2(band)
            self.bands[k + 1][(r % 2) * half:(r % 2 + 1) * half, :red.shape[1]] = red
            self._finish_input_band(k + 1, r)

    def tiles(self, k: int) -> Iterator[bytes]:
        """The encoded tiles of level k >= 1, in order (read back from the spool)."""
        for off, n in self.index[k]:
            self.spool.seek(off)
            yield self.spool.read(n)
        self.spool.seek(0, os.SEEK_END)

    def thumbnail(self) -> np.ndarray:
        """The largest level small enough for the thumbnail page, whole."""
        return self.keep[min(self.keep)]
