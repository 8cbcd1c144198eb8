"""The tifffile -> zarr -> dask backend.

This is the only module of the package that reads slides with tifffile or opens
tifffile's zarr store (the API of both moved between releases: keep the churn
here).  Two read paths:

* ``read_level_region``: the hot path used by analysis.  It computes the file
  tiles (or strips) covering a region, reads their bytes with ``os.pread`` (no
  shared file position, so any number of threads may read at once) and decodes
  them with tifffile's per-page decoder (imagecodecs releases the GIL) in a
  thread pool.  No dask graph, no zarr chunk cache.
* ``dask_level``: a lazy dask array over tifffile's zarr store, chunked on the
  file's tiles, for napari display.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..errors import (CorruptSlideError, ResourceLimitError, SlideError,
                      UnsupportedFormatError, UnsupportedPixelsError)
from . import _metadata as md
from ._pixels import PixelConversion, choose_conversion

#: Largest uncompressed tile/strip we agree to decode (a decompression-bomb guard).
MAX_SEGMENT_BYTES = 256 * 2**20
#: Largest associated image (label/macro/thumbnail) we agree to decode.
MAX_ASSOCIATED_BYTES = 64 * 2**20

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


#: Distinct tifffile messages kept per slide; further ones are counted in one line.
MAX_LOG_MESSAGES = 20
_TIFF_REPR = re.compile(r"<tifffile\.(\w+)[^>]*>\s*")
_NUMBER = re.compile(r"\d+")
_LOG_LOCK = threading.Lock()
_ACTIVE: list["_LogCapture"] = []  # captures whose slide is inside a tifffile call
_LOCAL = threading.local()


def _clean(message: str) -> str:
    """A tifffile message without object reprs: ``<tifffile.TiffFile 'a.tif'> x`` -> ``x``,
    ``<tifffile.TiffPage 3 @1234> x`` -> ``TiffPage: x``."""
    text = _TIFF_REPR.sub(lambda m: "" if m.group(1) == "TiffFile" else f"{m.group(1)}: ",
                          message)
    return " ".join(text.split())[:300]


class _LogCapture:
    """tifffile's WARNING/ERROR log records for one slide, counted per distinct message.

    Messages that differ only in numbers (offsets, page or IFD indexes) count as one;
    the first one is kept as the text shown.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[bool, str], list] = {}  # (is error, key) -> [text, count]

    def add(self, record: logging.LogRecord) -> None:
        text = _clean(record.getMessage())
        key = (record.levelno >= logging.ERROR, _NUMBER.sub("#", text))
        with self._lock:
            if key not in self._seen and len(self._seen) >= MAX_LOG_MESSAGES:
                key = (key[0], "")
                text = "further distinct messages"
            self._seen.setdefault(key, [text, 0])[1] += 1

    def lines(self, errors: bool = False) -> list[str]:
        """One line per distinct message: ``text`` or ``text (xN)``."""
        with self._lock:
            items = [v for (is_error, _), v in self._seen.items() if is_error == errors]
        return [text + (f" (x{n})" if n > 1 else "") for text, n in items]

    @contextmanager
    def active(self):
        """Route tifffile's records to this capture while the block runs (see _LogRouter)."""
        previous = getattr(_LOCAL, "capture", None)
        _LOCAL.capture = self
        with _LOG_LOCK:
            _ACTIVE.append(self)
        try:
            yield self
        finally:
            with _LOG_LOCK:
                _ACTIVE.remove(self)
            _LOCAL.capture = previous


class _LogRouter(logging.Filter):
    """A filter on the ``tifffile`` logger, installed once.

    While one of our slides is inside a call into tifffile, the logger's WARNING and
    ERROR records are counted in that slide's capture and dropped (never printed raw,
    whatever logging the application configured); anyone else's records pass untouched.
    tifffile and zarr also decode in threads they start (zarr's I/O loop): records from
    a thread without a capture of its own go to the most recently activated one.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        capture = getattr(_LOCAL, "capture", None)
        if capture is None:
            with _LOG_LOCK:
                capture = _ACTIVE[-1] if _ACTIVE else None
        if capture is None:
            return True
        capture.add(record)
        return False


_ROUTER = _LogRouter()
logging.getLogger("tifffile").addFilter(_ROUTER)  # once: modules are imported once


@dataclass
class RegionRead:
    """Pixels of one region plus what could not be read."""

    pixels: np.ndarray              # (h, w, 3) uint8
    valid: np.ndarray | None        # (h, w) bool, None when every pixel has data
    missing_tiles: int = 0          # zero-length tiles (no data)
    failed_tiles: list[str] | None = None  # reasons of tiles that failed to decode or are damaged


@dataclass
class _Level:
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
    source: tuple = ()   # (tifffile series, level index in it) for the zarr store
    jpeg: bool = False   # tiles are JPEG streams: check their end (jpeg_tail_damage)
    spliced: bool = False  # JPEG tiles are restart intervals under a shared header (NDPI)

    def damage(self, data: bytes) -> str | None:
        """Why a tile's bytes are damaged although its decoder may not say so, or None."""
        return jpeg_tail_damage(data[-64:], len(data), self.spliced) if self.jpeg else None


class TiffBackend:
    """A slide read through tifffile."""

    name = "tifffile"

    def __init__(self, path: str, file_size: int, n_pages_walked: int):
        import tifffile  # local: keeps `import napari_mran` light

        self.path = path
        self.warnings: list[str] = []
        self._log = _LogCapture()
        with self._log.active():
            try:
                self._tif = tifffile.TiffFile(path)
            except tifffile.TiffFileError as exc:
                raise CorruptSlideError(path, f"not a readable TIFF: {exc}") from None
            try:
                self._setup(tifffile, file_size, n_pages_walked)
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
    def _setup(self, tifffile, file_size: int, n_pages_walked: int) -> None:
        tif = self._tif
        n_pages = len(tif.pages)
        if n_pages != n_pages_walked:
            raise CorruptSlideError(
                self.path, f"the file declares {n_pages_walked} pages but only "
                f"{n_pages} could be parsed (damaged or truncated)")
        if not tif.series:
            raise UnsupportedFormatError(self.path, "the TIFF holds no image series")
        series = tif.series[0]
        self.vendor = _vendor(tif)
        self._series = series
        axes = series.axes
        shape = series.shape
        extra = {a: n for a, n in zip(axes, shape) if a not in "YXS" and n > 1}
        if extra:
            dims = " x ".join(f"{n} {a}" for a, n in extra.items())
            raise UnsupportedPixelsError(
                self.path, f"the image has extra dimensions ({dims}, axes {axes}, "
                f"{series.dtype}); only 2-D RGB or grey slides are supported")
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
        levels = []
        for i, page in enumerate(pages):
            if page.imagewidth == 0 or page.imagelength == 0:
                if i == 0:
                    raise CorruptSlideError(
                        self.path, f"level 0 has zero size ({page.imagewidth} x "
                        f"{page.imagelength})")
                self.warnings.append(f"level {i} has zero size: skipped")
                continue
            levels.append(self._make_level(page, i, file_size))
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
        self._levels = kept
        page0 = kept[0].page
        conv = choose_conversion(page0.dtype, page0.samplesperpixel,
                                 _enum_name(page0.photometric), len(page0.extrasamples))
        if isinstance(conv, str):
            raise UnsupportedPixelsError(self.path, conv)
        self.conversion: PixelConversion = conv
        if np.dtype(page0.dtype).itemsize > 1:
            self.conversion = replace(conv, window=self._window_from_smallest())
        if self.conversion.kind == "rgb" and page0.samplesperpixel != 3:
            raise UnsupportedPixelsError(self.path, "unexpected sample count")
        self._check_first_tile()
        self.properties, self.mpp_candidates, self.objective_power = self._read_metadata()
        orientation = page0.tags.get("Orientation")
        if orientation is not None and orientation.value not in (1, None):
            self.warnings.append(
                f"TIFF Orientation tag is {orientation.value}: pixels are shown as stored "
                "(not rotated), as OpenSlide does")

    def _make_level(self, page, index: int, file_size: int) -> _Level:
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
                self.path, f"level {index} stores {seg_w} x {seg_h} px per "
                f"{'tile' if page.is_tiled else 'strip'} ({seg_bytes / 2**20:.0f} MiB "
                f"decoded, limit {MAX_SEGMENT_BYTES / 2**20:.0f} MiB); refusing to "
                "decode it (re-save the slide as a tiled pyramid)")
        n_x = -(-page.imagewidth // seg_w)
        n_y = -(-page.imagelength // seg_h)
        offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        counts = np.asarray(page.databytecounts, dtype=np.int64)
        planar_separate = spp > 1 and _enum_name(page.planarconfig) == "SEPARATE"
        direct = (not planar_separate and page.imagedepth == 1
                  and len(offsets) == n_x * n_y)
        if len(offsets) and int((offsets + counts).max()) > file_size:
            raise CorruptSlideError(
                self.path, f"level {index}: tile data runs past the end of the "
                f"{file_size}-byte file (truncated)")
        return _Level(page=page, width=page.imagewidth, height=page.imagelength,
                      seg_w=seg_w, seg_h=seg_h, n_seg_x=n_x, n_seg_y=n_y,
                      offsets=offsets, counts=counts, direct=direct,
                      jpeg=int(page.compression) in JPEG_COMPRESSIONS,
                      spliced=page.jpegheader is not None)

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

    def _check_first_tile(self) -> None:
        """Decode one tile of the smallest level, so unknown codecs and damaged data
        fail at open with a clear reason rather than later in a viewer thread."""
        lv = self._levels[-1]
        page = lv.page
        comp = _enum_name(page.compression)
        try:
            codec = page.decode  # raises for compressions tifffile cannot decode
        except Exception as exc:  # noqa: BLE001 - mapped to our error
            raise UnsupportedFormatError(
                self.path, f"cannot decode its pixels (compression {comp}): "
                f"{type(exc).__name__}: {exc}") from None
        if not (lv.direct and len(lv.offsets) and (lv.counts > 0).any()):
            return
        i = int(np.argmax(lv.counts > 0))
        try:
            data = os.pread(self._tif.filehandle.fileno(), int(lv.counts[i]), int(lv.offsets[i]))
            damage = lv.damage(data)
            if damage:
                raise CorruptSlideError(self.path, f"tile {i} of the smallest level: {damage}")
            codec(data, i, jpegtables=page.jpegtables, jpegheader=page.jpegheader)
        except CorruptSlideError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to our error
            if "compression" in str(exc).lower() or isinstance(exc, NotImplementedError):
                raise UnsupportedFormatError(
                    self.path, f"cannot decode its pixels (compression {comp}): "
                    f"{type(exc).__name__}: {exc}") from None
            raise CorruptSlideError(
                self.path, f"tile {i} of the smallest level cannot be decoded "
                f"({comp}): {type(exc).__name__}: {exc}") from None

    def _read_metadata(self) -> tuple[dict[str, str], list[tuple[str, float | None, float | None]], float | None]:
        tif, page0 = self._tif, self._levels[0].page
        props: dict[str, str] = {}
        mpp_candidates: list[tuple[str, float | None, float | None]] = []
        objective: float | None = None
        desc = page0.description or ""
        if desc:
            props["tiff.ImageDescription"] = desc[:4096]
        for tag in ("Make", "Model", "Software", "DateTime"):
            t = page0.tags.get(tag)
            if t is not None:
                props[f"tiff.{tag}"] = str(t.value)
        if tif.is_svs:
            aperio = md.parse_aperio_description(desc)
            props.update({f"aperio.{k}": v for k, v in aperio.items()})
            if "MPP" in aperio:
                v = md.to_float(aperio["MPP"])
                mpp_candidates.append(("Aperio description MPP", v, v))
            objective = md.to_float(aperio.get("AppMag"))
        if tif.is_ndpi:
            for k, v in (page0.ndpi_tags or {}).items():
                if isinstance(v, (str, int, float)) and k not in ("Comments",):
                    props[f"hamamatsu.{k}"] = str(v)
            objective = md.to_float((page0.ndpi_tags or {}).get("Magnification"))
        if tif.is_ome and tif.ome_metadata:
            ome = md.parse_ome_pixels(tif.ome_metadata)
            props.update({f"ome.{k}": v for k, v in ome.items()})
            fx, fy = md.to_float(ome.get("PhysicalSizeX")), md.to_float(ome.get("PhysicalSizeY"))
            ux = md.unit_to_um(ome.get("PhysicalSizeXUnit"))
            uy = md.unit_to_um(ome.get("PhysicalSizeYUnit"))
            if fx is not None or fy is not None:
                mpp_candidates.append((
                    "OME PhysicalSize",
                    None if fx is None or ux is None else fx * ux,
                    None if fy is None or uy is None else fy * uy))
            objective = objective or md.to_float(ome.get("NominalMagnification"))
        if tif.is_philips:
            spacing = md.parse_philips_spacing(desc)
            if spacing:
                mpp_candidates.append(("Philips DICOM_PIXEL_SPACING", *spacing))
        xres, yres, unit = page0.tags.get("XResolution"), page0.tags.get("YResolution"), page0.tags.get("ResolutionUnit")
        if xres is not None and unit is not None:
            u = int(unit.value)
            mx = md.resolution_to_mpp(md.to_float(xres.value), u)
            my = md.resolution_to_mpp(md.to_float(yres.value), u) if yres is not None else mx
            if mx is not None or my is not None:
                mpp_candidates.append(("TIFF resolution tags", mx, my))
            props["tiff.ResolutionUnit"] = str(u)
        return props, mpp_candidates, objective

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
                                         _enum_name(page.photometric), len(page.extrasamples))
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
        to decode (or whose bytes are damaged, see ``_Level.damage``); ``"record"``
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

    def _decode_into(self, lv: _Level, job: tuple[int, int], x: int, y: int,
                     out: np.ndarray) -> str | None:
        """Decode one tile and paste its overlap with the region; return a failure or None."""
        tx, ty = job
        index = ty * lv.n_seg_x + tx
        nbytes = int(lv.counts[index])
        if nbytes == 0:
            return "missing"
        page = lv.page
        try:
            data = os.pread(self._fd, nbytes, int(lv.offsets[index]))
            if len(data) != nbytes:
                return "tile data cut short (truncated file)"
            damage = lv.damage(data)
            if damage:
                return damage
            seg = page.decode(data, index, jpegtables=page.jpegtables,
                              jpegheader=page.jpegheader)[0]
        except Exception as exc:  # noqa: BLE001 - reported per tile
            return f"{type(exc).__name__}: {exc}".strip()
        if seg is None:
            return "missing"
        seg = seg.reshape(seg.shape[-3:]) if seg.ndim > 3 else seg
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
    def _zarr_level(self, level: int):
        import zarr

        lv = self._levels[level]
        cache = self.__dict__.setdefault("_zarr_cache", {})
        if level not in cache:
            series, index = lv.source
            self._tif.filehandle.set_lock(True)
            store = series.aszarr(level=index)
            cache[level] = zarr.open(store, mode="r")
        return cache[level]

    def dask_level(self, level: int):
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

    def _block_reader(self, level: int, z):
        """The dask block function of a level: one block of tifffile's zarr store.

        A block that fails to decode raises CorruptSlideError naming the file, level
        and tile, as ``read_level_region(on_error="raise")`` does; so does a tile whose
        bytes are damaged in a way its decoder does not report (a JPEG cut short:
        checked before decoding, one 64-byte pread per tile).
        """
        lv = self._levels[level]
        tiles = lv.direct and tuple(z.chunks[:2]) == (lv.seg_h, lv.seg_w)

        def read(block_info=None):
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


def _enum_name(value) -> str:
    return getattr(value, "name", str(value)).upper()


def _vendor(tif) -> str:
    for flag, name in (("is_svs", "aperio"), ("is_ndpi", "hamamatsu"), ("is_philips", "philips"),
                       ("is_scn", "leica"), ("is_bif", "ventana"), ("is_qpi", "qptiff"),
                       ("is_ome", "ome"), ("is_imagej", "imagej")):
        if getattr(tif, flag, False):
            return name
    return "generic-tiff"
