"""The file tiles (or strips) of one TIFF pyramid level, and reading them one by one.

:class:`TiffLevel` holds where a level's tiles lie in the file; :meth:`TiffLevel.decode_tile`
reads one tile with ``os.pread`` (no shared file position, so any number of threads may
read at once) and decodes it with tifffile's per-page decoder (imagecodecs releases the
GIL) in :func:`decode_pool`; :meth:`TiffLevel.check_decodable` tries one tile at open.
JPEG tiles cut short decode to grey without an error, so their last bytes are checked
first (:func:`jpeg_tail_damage`).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CorruptSlideError, ResourceLimitError, UnsupportedFormatError

__all__ = ["JPEG_COMPRESSIONS", "MAX_SEGMENT_BYTES", "RegionRead", "TiffLevel", "decode_pool",
           "enum_name", "jpeg_tail_damage"]

#: Largest uncompressed tile/strip we agree to decode (a decompression-bomb guard).
MAX_SEGMENT_BYTES = 256 * 2**20

#: TIFF compressions whose tiles are JPEG streams decoded by libjpeg, which fills a
#: stream cut short with grey and reports no error (JPEG, DNG JPEG, Aperio, lossy JPEG).
JPEG_COMPRESSIONS = frozenset({7, 99, 33007, 34892})
_EOI = b"\xff\xd9"
_RST = frozenset(bytes((0xFF, 0xD0 + k)) for k in range(8))

_POOL_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None


def decode_pool() -> ThreadPoolExecutor:
    """Module-wide pool that decodes tiles (imagecodecs releases the GIL)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 2),
                                       thread_name_prefix="mran-decode")
        return _POOL


def jpeg_tail_damage(tail: bytes, nbytes: int, spliced: bool = False) -> str | None:
    """Why a JPEG-coded tile of ``nbytes`` bytes is cut short, judged from its last
    (up to 64) bytes ``tail``; None when it ends as a JPEG stream must.

    A JPEG stream ends with the EOI marker (FF D9); a restart interval spliced onto a
    shared header (NDPI, ``spliced``) ends with EOI or a restart marker (FF D0-D7).
    Inside entropy-coded data every FF byte is followed by 00 (or a restart marker),
    so a stream cut anywhere ends without these two bytes.  Zero padding after the
    marker is tolerated.  Costs a 2-byte compare per tile.
    """
    end = tail[-2:]
    if end == _EOI or (spliced and end in _RST):
        return None
    end = tail.rstrip(b"\x00")[-2:]
    if end == _EOI or (spliced and end in _RST):
        return None
    return (f"JPEG data cut short ({nbytes} bytes, no end-of-image marker): "
            "damaged tile or byte count")


def enum_name(value: Any) -> str:
    """The upper-case name of a tifffile enum value (or of its text)."""
    return getattr(value, "name", str(value)).upper()


@dataclass
class RegionRead:
    """Pixels of one region plus what could not be read."""

    pixels: np.ndarray              # (h, w, 3) uint8
    valid: np.ndarray | None        # (h, w) bool, None when every pixel has data
    missing_tiles: int = 0          # zero-length tiles (no data)
    failed_tiles: list[str] | None = None  # reasons of tiles that failed to decode or are damaged


@dataclass
class TiffLevel:
    """Where the tiles (or strips) of one pyramid level lie in the file."""

    page: Any            # tifffile.TiffPage (keyframe of the level)
    width: int
    height: int
    seg_w: int           # tile width, or image width for strips
    seg_h: int           # tile length, or rows per strip
    n_seg_x: int
    n_seg_y: int
    offsets: np.ndarray
    counts: np.ndarray
    direct: bool         # the pread+decode path applies (chunky, 2-D)
    source: tuple[Any, ...] = ()  # (tifffile series, level index in it) for the zarr store
    jpeg: bool = False   # tiles are JPEG streams: check their end (jpeg_tail_damage)
    spliced: bool = False  # JPEG tiles are restart intervals under a shared header (NDPI)

    def damage(self, data: bytes) -> str | None:
        """Why a tile's bytes are damaged although its decoder may not say so, or None."""
        return jpeg_tail_damage(data[-64:], len(data), self.spliced) if self.jpeg else None

    @classmethod
    def from_page(cls, page: Any, index: int, file_size: int, path: str) -> TiffLevel:
        """The tile layout of pyramid level ``index`` (``page`` its tifffile keyframe).

        ResourceLimitError for tiles or strips too large to decode; CorruptSlideError
        when tile data runs past the end of the ``file_size``-byte file ``path``."""
        if page.is_tiled:
            seg_w, seg_h = page.tilewidth, page.tilelength
        else:
            seg_w = page.imagewidth
            seg_h = min(page.rowsperstrip or page.imagelength, page.imagelength)
        spp = page.samplesperpixel
        itemsize = np.dtype(page.dtype).itemsize
        seg_bytes = seg_w * seg_h * spp * itemsize
        if seg_bytes > MAX_SEGMENT_BYTES:
            raise ResourceLimitError(
                path, f"level {index} stores {seg_w} x {seg_h} px per "
                f"{'tile' if page.is_tiled else 'strip'} ({seg_bytes / 2**20:.0f} MiB "
                f"decoded, limit {MAX_SEGMENT_BYTES / 2**20:.0f} MiB); refusing to "
                "decode it (re-save the slide as a tiled pyramid)")
        n_x = -(-page.imagewidth // seg_w)
        n_y = -(-page.imagelength // seg_h)
        offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        counts = np.asarray(page.databytecounts, dtype=np.int64)
        planar_separate = spp > 1 and enum_name(page.planarconfig) == "SEPARATE"
        direct = (not planar_separate and page.imagedepth == 1
                  and len(offsets) == n_x * n_y)
        if len(offsets) and int((offsets + counts).max()) > file_size:
            raise CorruptSlideError(
                path, f"level {index}: tile data runs past the end of the "
                f"{file_size}-byte file (truncated)")
        return cls(page=page, width=page.imagewidth, height=page.imagelength,
                   seg_w=seg_w, seg_h=seg_h, n_seg_x=n_x, n_seg_y=n_y,
                   offsets=offsets, counts=counts, direct=direct,
                   jpeg=int(page.compression) in JPEG_COMPRESSIONS,
                   spliced=page.jpegheader is not None)

    def decode_tile(self, fd: int, index: int) -> np.ndarray | str:
        """Read tile ``index`` from the open file ``fd`` and decode it (as stored, not
        converted); ``"missing"`` for a tile without data, else why it failed."""
        nbytes = int(self.counts[index])
        if nbytes == 0:
            return "missing"
        page = self.page
        try:
            data = os.pread(fd, nbytes, int(self.offsets[index]))
            if len(data) != nbytes:
                return "tile data cut short (truncated file)"
            damage = self.damage(data)
            if damage:
                return damage
            seg = page.decode(data, index, jpegtables=page.jpegtables,
                              jpegheader=page.jpegheader)[0]
        except Exception as exc:  # noqa: BLE001 - reported per tile
            return f"{type(exc).__name__}: {exc}".strip()
        if seg is None:
            return "missing"
        return seg.reshape(seg.shape[-3:]) if seg.ndim > 3 else seg

    def check_decodable(self, fd: int, path: str, what: str) -> None:
        """Decode the first tile that has data (of the open file ``fd``, the slide ``path``;
        ``what`` names this level in messages).

        UnsupportedFormatError when tifffile cannot decode the compression;
        CorruptSlideError when the tile is damaged or fails to decode."""
        page = self.page
        comp = enum_name(page.compression)
        try:
            codec = page.decode  # raises for compressions tifffile cannot decode
        except Exception as exc:  # noqa: BLE001 - mapped to our error
            raise UnsupportedFormatError(
                path, f"cannot decode its pixels (compression {comp}): "
                f"{type(exc).__name__}: {exc}") from None
        if not (self.direct and len(self.offsets) and (self.counts > 0).any()):
            return
        i = int(np.argmax(self.counts > 0))
        try:
            data = os.pread(fd, int(self.counts[i]), int(self.offsets[i]))
            damage = self.damage(data)
            if damage:
                raise CorruptSlideError(path, f"tile {i} of {what}: {damage}")
            codec(data, i, jpegtables=page.jpegtables, jpegheader=page.jpegheader)
        except CorruptSlideError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to our error
            if "compression" in str(exc).lower() or isinstance(exc, NotImplementedError):
                raise UnsupportedFormatError(
                    path, f"cannot decode its pixels (compression {comp}): "
                    f"{type(exc).__name__}: {exc}") from None
            raise CorruptSlideError(
                path, f"tile {i} of {what} cannot be decoded "
                f"({comp}): {type(exc).__name__}: {exc}") from None
