"""The tifffile -> zarr -> dask backend.

This is the only module of the package that reads slides with tifffile or opens
tifffile's zarr store (the API of both moved between releases: keep the churn
here, with its helpers ``_tiles``, ``_tiffmeta`` and ``_tifflog``).  Two read paths:

* ``read_level_region``: the hot path used by analysis.  It computes the file
  tiles (or strips) covering a region, reads their bytes with ``os.pread`` (no
  shared file position, so any number of threads may read at once) and decodes
  them with tifffile's per-page decoder (imagecodecs releases the GIL) in a
  thread pool (``_tiles.TiffLevel.decode_tile``).  No dask graph, no zarr chunk cache.
* ``dask_level``: a lazy dask array over tifffile's zarr store, chunked on the
  file's tiles, for napari display.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import (CorruptSlideError, ResourceLimitError, SlideError,
                      UnsupportedFormatError, UnsupportedPixelsError)
from ._pixels import PixelConversion, choose_conversion
from ._tifflog import LogCapture
from ._tiffmeta import tiff_metadata, vendor_of
from ._tiles import (JPEG_COMPRESSIONS, MAX_SEGMENT_BYTES, RegionRead, TiffLevel, decode_pool,
                     enum_name, jpeg_tail_damage)

if TYPE_CHECKING:
    import dask.array

__all__ = ["JPEG_COMPRESSIONS", "MAX_ASSOCIATED_BYTES", "MAX_SEGMENT_BYTES", "RegionRead",
           "TiffBackend", "decode_pool", "jpeg_tail_damage"]

#: Largest associated image (label/macro/thumbnail) we agree to decode.
MAX_ASSOCIATED_BYTES = 64 * 2**20


class TiffBackend:
    """A slide read through tifffile."""

    name = "tifffile"

    def __init__(self, path: str, file_size: int, n_pages_walked: int):
        import tifffile  # local: keeps `import napari_mran` light

        self.path = path
        self.warnings: list[str] = []
        self._log = LogCapture()
        with self._log.active():
            try:
                self._tif = tifffile.TiffFile(path)
            except tifffile.TiffFileError as exc:
                raise CorruptSlideError(path, f"not a readable TIFF: {exc}") from None
            try:
                self._setup(file_size, n_pages_walked)
            except BaseException:
                self._tif.close()
                raise
        errors = self._log.lines(errors=True)
        if errors:
            self._tif.close()
            raise CorruptSlideError(
                path, "tifffile reported damage while opening: " + "; ".join(errors[:3]))
        self._fd = os.open(path, os.O_RDONLY)
        self._closed = False

    # ------------------------------------------------------------------ set-up
    def _setup(self, file_size: int, n_pages_walked: int) -> None:
        tif = self._tif
        n_pages = len(tif.pages)
        if n_pages != n_pages_walked:
            raise CorruptSlideError(
                self.path, f"the file declares {n_pages_walked} pages but only "
                f"{n_pages} could be parsed (damaged or truncated)")
        if not tif.series:
            raise UnsupportedFormatError(self.path, "the TIFF holds no image series")
        series = tif.series[0]
        self.vendor = vendor_of(tif)
        self._series = series
        axes = series.axes
        shape = series.shape
        extra = {a: n for a, n in zip(axes, shape) if a not in "YXS" and n > 1}
        if extra:
            dims = " x ".join(f"{n} {a}" for a, n in extra.items())
            raise UnsupportedPixelsError(
                self.path, f"the image has extra dimensions ({dims}, axes {axes}, "
                f"{series.dtype}); only 2-D RGB or grey slides are supported")
        pages = self._pyramid_pages(series)
        self._levels = self._sorted_levels(pages, file_size)
        page0 = self._levels[0].page
        self.conversion: PixelConversion = self._pixel_conversion(page0)
        # decode one tile, so unknown codecs and damaged data fail at open with a clear
        # reason rather than later in a viewer thread
        self._levels[-1].check_decodable(self._tif.filehandle.fileno(), self.path,
                                         "the smallest level")
        self.properties, self.mpp_candidates, self.objective_power = tiff_metadata(tif, page0)
        orientation = page0.tags.get("Orientation")
        if orientation is not None and orientation.value not in (1, None):
            self.warnings.append(
                f"TIFF Orientation tag is {orientation.value}: pixels are shown as stored "
                "(not rotated), as OpenSlide does")

    def _pyramid_pages(self, series: Any) -> list[Any]:
        """The keyframes of the pyramid levels, in file order (with the tifffile series
        and level index of each in ``_level_series``)."""
        tif = self._tif
        pages = [lvl.keyframe for lvl in series.levels]
        self._level_series = [(series, i) for i in range(len(pages))]
        self._series_as_levels: set[int] = set()
        if tif.is_svs:
            # Aperio files keep a stripped thumbnail as page 1 and stripped label/macro
            # images last. Writers that omit the thumbnail shift tifffile's naming, so a
            # *tiled* page it calls Thumbnail/Label/Macro is a pyramid level (OpenSlide
            # reads it so too) unless its description says label or macro.
            for s in tif.series[1:]:
                desc = (s.keyframe.description or "").lower()
                if s.keyframe.is_tiled and "label" not in desc and "macro" not in desc:
                    pages.append(s.keyframe)
                    self._level_series.append((s, 0))
                    self._series_as_levels.add(id(s))
        return pages

    def _sorted_levels(self, pages: list[Any], file_size: int) -> list[TiffLevel]:
        """The levels by size, largest first, without empty levels and levels not
        smaller than the one before (each skipped with a warning)."""
        levels = []
        for i, page in enumerate(pages):
            if page.imagewidth == 0 or page.imagelength == 0:
                if i == 0:
                    raise CorruptSlideError(
                        self.path, f"level 0 has zero size ({page.imagewidth} x "
                        f"{page.imagelength})")
                self.warnings.append(f"level {i} has zero size: skipped")
                continue
            levels.append(TiffLevel.from_page(page, i, file_size, self.path))
            levels[-1].source = self._level_series[i]
        # order by size, largest first, dropping levels not smaller than the previous one
        levels.sort(key=lambda lv: -lv.width * lv.height)
        kept = [levels[0]]
        for lv in levels[1:]:
            if lv.width < kept[-1].width or lv.height < kept[-1].height:
                if lv.width <= kept[-1].width and lv.height <= kept[-1].height:
                    kept.append(lv)
                    continue
            self.warnings.append(
                f"a pyramid level of {lv.width} x {lv.height} is not smaller than the "
                "one before it: skipped")
        if [id(a.page) for a in kept] != [id(p) for p in pages][:len(kept)]:
            self.warnings.append("pyramid levels were reordered by size")
        return kept

    def _pixel_conversion(self, page0: Any) -> PixelConversion:
        """How level-0 pixels become RGB uint8 (windowed from the smallest level for
        samples wider than 8 bits); UnsupportedPixelsError when they cannot."""
        conv = choose_conversion(page0.dtype, page0.samplesperpixel,
                                 enum_name(page0.photometric), len(page0.extrasamples))
        if isinstance(conv, str):
            raise UnsupportedPixelsError(self.path, conv)
        if np.dtype(page0.dtype).itemsize > 1:
            conv = replace(conv, window=self._window_from_smallest())
        if conv.kind == "rgb" and page0.samplesperpixel != 3:
            raise UnsupportedPixelsError(self.path, "unexpected sample count")
        return conv

    def _window_from_smallest(self) -> tuple[float, float]:
        lv = self._levels[-1]
        raw = self._read_raw(len(self._levels) - 1)
        if lv.page.samplesperpixel > 1 and raw.ndim == 3:
            raw = raw[..., :3] if lv.page.samplesperpixel >= 3 else raw[..., :1]
        lo, hi = np.percentile(raw, [0.5, 99.5])
        if hi <= lo:
            hi = lo + 1
        return float(lo), float(hi)

    def _read_raw(self, level: int) -> np.ndarray:
        lv = self._levels[level]
        nbytes = lv.width * lv.height * lv.page.samplesperpixel * np.dtype(lv.page.dtype).itemsize
        if nbytes > MAX_ASSOCIATED_BYTES:
            raise ResourceLimitError(self.path, f"level {level} is too large to read whole")
        return lv.page.asarray()

    # --------------------------------------------------------------- accessors
    def log_warnings(self) -> list[str]:
        """tifffile's warnings so far (opening and reading), one line per distinct message."""
        return [f"tifffile: {line}" for line in self._log.lines()]

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return [(lv.width, lv.height) for lv in self._levels]

    def level_tile_size(self, level: int) -> tuple[int, int]:
        lv = self._levels[level]
        return lv.seg_w, lv.seg_h

    def level_missing_fraction(self, level: int) -> float:
        lv = self._levels[level]
        return float((lv.counts == 0).mean()) if len(lv.counts) else 0.0

    def associated_names(self) -> list[str]:
        names = []
        for s in self._tif.series[1:]:
            if s.name and s.name.lower() in ("label", "macro", "thumbnail", "map", "overview"):
                if id(s) in self._series_as_levels:
                    continue
                names.append(s.name.lower())
        return names

    def associated(self, name: str) -> np.ndarray:
        with self._log.active():
            return self._associated(name)

    def _associated(self, name: str) -> np.ndarray:
        for s in self._tif.series[1:]:
            if s.name and s.name.lower() == name and id(s) not in self._series_as_levels:
                nbytes = int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize
                if nbytes > MAX_ASSOCIATED_BYTES:
                    raise ResourceLimitError(self.path, f"associated image {name!r} is too large")
                page = s.keyframe
                conv = choose_conversion(s.dtype, page.samplesperpixel,
                                         enum_name(page.photometric), len(page.extrasamples))
                try:
                    raw = s.asarray()
                except Exception as exc:  # noqa: BLE001
                    raise CorruptSlideError(self.path, f"associated image {name!r} cannot be "
                                            f"decoded: {type(exc).__name__}: {exc}") from None
                if isinstance(conv, str):
                    raise UnsupportedPixelsError(self.path, f"associated image {name!r}: {conv}")
                return conv(raw)
        raise KeyError(name)

    # --------------------------------------------------------------- hot path
    def read_level_region(self, level: int, x: int, y: int, w: int, h: int,
                          *, on_error: str = "raise") -> RegionRead:
        """Read (h, w, 3) uint8 at ``level`` from level pixel (x, y); outside is white.

        on_error: ``"raise"`` raises CorruptSlideError on the first tile that fails
        to decode (or whose bytes are damaged, see ``TiffLevel.damage``); ``"record"``
        paints it white, marks it invalid and lists it.
        """
        with self._log.active():
            return self._read_level_region(level, x, y, w, h, on_error)

    def _read_level_region(self, level: int, x: int, y: int, w: int, h: int,
                           on_error: str) -> RegionRead:
        if self._closed:
            raise SlideError(self.path, "the slide is closed")
        lv = self._levels[level]
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        x1, y1 = min(x + w, lv.width), min(y + h, lv.height)
        x0c, y0c = max(x, 0), max(y, 0)
        if x1 <= x0c or y1 <= y0c:
            return RegionRead(out, None)
        if not lv.direct:
            return self._read_via_zarr(level, x, y, w, h, out)
        tx0, tx1 = x0c // lv.seg_w, (x1 - 1) // lv.seg_w
        ty0, ty1 = y0c // lv.seg_h, (y1 - 1) // lv.seg_h
        jobs = [(tx, ty) for ty in range(ty0, ty1 + 1) for tx in range(tx0, tx1 + 1)]
        valid = None
        missing = 0
        failures: list[str] = []
        results = (map(lambda j: self._decode_into(lv, j, x, y, out), jobs) if len(jobs) <= 2
                   else decode_pool().map(lambda j: self._decode_into(lv, j, x, y, out), jobs))
        for (tx, ty), status in zip(jobs, results):
            if status is None:
                continue
            if status != "missing" and on_error == "raise":
                raise CorruptSlideError(self.path, f"level {level} tile ({tx}, {ty}): {status}")
            if valid is None:
                valid = np.ones((h, w), dtype=bool)
            sx0, sy0 = tx * lv.seg_w, ty * lv.seg_h
            valid[max(sy0 - y, 0):max(min(sy0 + lv.seg_h, y1) - y, 0),
                  max(sx0 - x, 0):max(min(sx0 + lv.seg_w, x1) - x, 0)] = False
            if status == "missing":
                missing += 1
            else:
                failures.append(f"level {level} tile ({tx}, {ty}): {status}")
        return RegionRead(out, valid, missing, failures or None)

    def _decode_into(self, lv: TiffLevel, job: tuple[int, int], x: int, y: int,
                     out: np.ndarray) -> str | None:
        """Decode one tile and paste its overlap with the region; return a failure or None."""
        tx, ty = job
        seg = lv.decode_tile(self._fd, ty * lv.n_seg_x + tx)
        if isinstance(seg, str):
            return seg
        seg = self.conversion(seg)
        sx0, sy0 = tx * lv.seg_w, ty * lv.seg_h
        # overlap of the tile (clipped to the image) with the region, in level px
        ox0, oy0 = max(sx0, x), max(sy0, y)
        ox1 = min(sx0 + seg.shape[1], lv.width, x + out.shape[1])
        oy1 = min(sy0 + seg.shape[0], lv.height, y + out.shape[0])
        if ox1 > ox0 and oy1 > oy0:
            out[oy0 - y:oy1 - y, ox0 - x:ox1 - x] = seg[oy0 - sy0:oy1 - sy0, ox0 - sx0:ox1 - sx0]
        return None

    def _read_via_zarr(self, level: int, x: int, y: int, w: int, h: int,
                       out: np.ndarray) -> RegionRead:
        arr = self._zarr_level(level)
        lv = self._levels[level]
        x0c, y0c = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, lv.width), min(y + h, lv.height)
        try:
            block = np.asarray(arr[y0c:y1, x0c:x1])
        except Exception as exc:  # noqa: BLE001
            raise CorruptSlideError(self.path, f"level {level} cannot be decoded: "
                                    f"{type(exc).__name__}: {exc}") from None
        out[y0c - y:y1 - y, x0c - x:x1 - x] = self.conversion(block)
        return RegionRead(out, None)

    # ------------------------------------------------------------- display path
    def _zarr_level(self, level: int) -> Any:
        """tifffile's zarr store of a level, opened once (a zarr array)."""
        import zarr

        lv = self._levels[level]
        cache = self.__dict__.setdefault("_zarr_cache", {})
        if level not in cache:
            series, index = lv.source
            self._tif.filehandle.set_lock(True)
            store = series.aszarr(level=index)
            cache[level] = zarr.open(store, mode="r")
        return cache[level]

    def dask_level(self, level: int) -> dask.array.Array:
        """Lazy (h, w, 3) uint8 dask array of a level, chunked on the file's tiles."""
        import dask.array as da

        with self._log.active():
            z = self._zarr_level(level)
        arr = da.map_blocks(self._block_reader(level, z), dtype=z.dtype,
                            chunks=da.core.normalize_chunks(z.chunks, z.shape),
                            meta=np.empty((0,) * z.ndim, z.dtype))
        if self.conversion.is_identity:
            return arr
        conv = self.conversion
        if arr.ndim == 2:
            return arr.map_blocks(conv, dtype=np.uint8, new_axis=2,
                                  chunks=arr.chunks + ((3,),))
        arr = arr.rechunk({2: -1})
        return arr.map_blocks(conv, dtype=np.uint8, chunks=arr.chunks[:2] + ((3,),))

    def _block_reader(self, level: int, z: Any) -> Callable[..., np.ndarray]:
        """The dask block function of a level: one block of tifffile's zarr store.

        A block that fails to decode raises CorruptSlideError naming the file, level
        and tile, as ``read_level_region(on_error="raise")`` does; so does a tile whose
        bytes are damaged in a way its decoder does not report (a JPEG cut short:
        checked before decoding, one 64-byte pread per tile).
        """
        lv = self._levels[level]
        tiles = lv.direct and tuple(z.chunks[:2]) == (lv.seg_h, lv.seg_w)

        def read(block_info: Any = None) -> np.ndarray:
            info = block_info[None]
            cy, cx = info["chunk-location"][:2]
            where = f"level {level} {'tile' if tiles else 'chunk'} ({cx}, {cy})"
            if self._closed:
                raise SlideError(self.path, "the slide is closed")
            if tiles and lv.jpeg:
                index = cy * lv.n_seg_x + cx
                nbytes, offset = int(lv.counts[index]), int(lv.offsets[index])
                if nbytes:
                    tail = os.pread(self._fd, min(nbytes, 64), offset + max(nbytes - 64, 0))
                    damage = jpeg_tail_damage(tail, nbytes, lv.spliced)
                    if damage:
                        raise CorruptSlideError(self.path, f"{where}: {damage}")
            try:
                with self._log.active():
                    return np.asarray(z[tuple(slice(a, b) for a, b in info["array-location"])])
            except Exception as exc:  # noqa: BLE001 - mapped to our error
                raise CorruptSlideError(self.path, f"{where}: {type(exc).__name__}: "
                                        f"{exc}".strip()) from None

        return read

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)
            self._tif.close()

