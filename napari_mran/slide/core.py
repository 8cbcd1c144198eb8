"""``open_slide`` and the backend-independent ``Slide`` object (OpenSlide-like API)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from functools import cached_property
from typing import Iterator

import numpy as np

from ..errors import (CorruptSlideError, MRANError, ResourceLimitError, SlideError,
                      UnsupportedFormatError)
from ..vocab import OPENSLIDE_ONLY_EXTENSIONS
from . import _guard
from . import _metadata as md
from ._tiles import RegionRead

#: Largest region ``read_region`` agrees to allocate (h * w * 3 bytes).
MAX_REGION_BYTES = 1024 * 2**20
#: Side of the smallest level napari should get; coarser levels are computed lazily.
DISPLAY_MIN_SIDE = 1024


def file_fingerprint(path: str | os.PathLike) -> tuple[int, str]:
    """(size in bytes, sha256 of the first MiB) of a slide file: cheap identity for
    provenance, caches and "is this the same slide" checks. Raises OSError."""
    import hashlib

    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        return size, hashlib.sha256(fh.read(2**20)).hexdigest()


def open_slide(path: str | os.PathLike, *, mpp: float | tuple[float, float] | None = None,
               backend: str = "auto") -> "Slide":
    """Open a whole-slide image lazily (nothing but metadata is decoded).

    Parameters
    ----------
    path : the slide file (SVS, NDPI, OME-TIFF, generic tiled/BigTIFF pyramids,
        Philips/Ventana/Leica/QPTIFF where tifffile reads them; DICOM-WSI, MIRAX,
        VMS through the optional OpenSlide backend).
    mpp : override the µm/px of level 0 (a number, or (x, y)); recorded as the
        value used, with source ``"user"``.
    backend : ``"auto"`` (tifffile, else OpenSlide when installed), ``"tifffile"``
        or ``"openslide"``.

    Raises
    ------
    SlideError (or a subclass: UnsupportedFormatError, CorruptSlideError,
    ResourceLimitError, UnsupportedPixelsError) naming the file and the reason.
    """
    path = os.fspath(path)
    try:
        return Slide(path, mpp=mpp, backend=backend)
    except MRANError:
        raise
    except MemoryError:
        raise ResourceLimitError(path, "ran out of memory while opening the slide") from None
    except RecursionError:
        raise CorruptSlideError(path, "the file structure is too deeply nested") from None
    except OSError as exc:
        raise SlideError(path, f"cannot be read: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - every third-party failure maps onto ours
        raise CorruptSlideError(path, f"cannot be opened ({type(exc).__name__}: {exc})") from None


def _make_backend(path: str, backend: str):
    size = _guard.check_path(path)
    kind = _guard.sniff(path)
    ext = os.path.splitext(path)[1].lower()
    from . import _openslide

    if backend == "openslide" or (backend == "auto" and (kind == "dicom" or ext in OPENSLIDE_ONLY_EXTENSIONS)
                                  and kind not in ("tiff", "bigtiff")):
        if not _openslide.available():
            raise UnsupportedFormatError(
                path, f"{'a DICOM file' if kind == 'dicom' else 'this format'} needs the optional "
                "OpenSlide backend: pip install 'napari-mran[openslide]'")
        return _openslide.OpenSlideBackend(path)
    if kind not in ("tiff", "bigtiff"):
        what = "not a recognised slide format" if kind == "unknown" else f"it is {kind}, not a slide"
        raise UnsupportedFormatError(path, what)
    structure = _guard.walk_ifds(path)
    from ._tiff import TiffBackend

    try:
        tb = TiffBackend(path, size, structure.n_pages)
    except UnsupportedFormatError:
        if backend == "auto" and _openslide.available():
            try:
                return _openslide.OpenSlideBackend(path)
            except SlideError:
                pass
        raise
    tb.warnings.extend(structure.warnings)
    return tb


class AssociatedImages(Mapping):
    """Label/macro/thumbnail images, decoded on first access (OpenSlide-like mapping)."""

    def __init__(self, backend):
        self._backend = backend
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._backend.associated_names():
            raise KeyError(name)
        if name not in self._cache:
            self._cache[name] = self._backend.associated(name)
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._backend.associated_names())

    def __len__(self) -> int:
        return len(self._backend.associated_names())


class Slide:
    """A whole-slide image opened lazily; use :func:`open_slide` to make one.

    Coordinates: ``(x0, y0)`` are level-0 pixels; sizes are ``(width, height)``;
    arrays are ``(y, x, 3)`` uint8 RGB.  Thread-safe for concurrent reads.
    Picklable: a pickled Slide stores its path and re-opens the file lazily in
    the process that unpickles it (dask.distributed workers).
    """

    def __init__(self, path: str, *, mpp=None, backend: str = "auto"):
        self.path = os.fspath(path)
        self._open_args = {"mpp": mpp, "backend": backend}
        self._backend = _make_backend(self.path, backend)
        try:
            self._init_metadata(mpp)
        except BaseException:
            self._backend.close()
            raise

    def _init_metadata(self, mpp_override) -> None:
        b = self._backend
        dims = b.level_dimensions
        w0, h0 = dims[0]
        self.level_dimensions: list[tuple[int, int]] = [(int(w), int(h)) for w, h in dims]
        self.level_count = len(dims)
        self.level_downsamples: list[float] = [
            ((w0 / w) + (h0 / h)) / 2.0 for (w, h) in self.level_dimensions]
        self.vendor: str = b.vendor
        self.objective_power: float | None = b.objective_power
        self._warnings: list[str] = list(b.warnings)
        self.mpp, self.mpp_source = self._choose_mpp(mpp_override, b.mpp_candidates)
        props = dict(b.properties)
        props.update({
            "mran.vendor": self.vendor,
            "mran.backend": b.name,
            "mran.level-count": str(self.level_count),
            "mran.pixel-conversion": b.conversion.describe(),
            "mran.mpp-source": self.mpp_source,
        })
        if self.mpp is not None:
            props["mran.mpp-x"], props["mran.mpp-y"] = (f"{self.mpp[0]:.6g}", f"{self.mpp[1]:.6g}")
        if self.objective_power is not None:
            props["mran.objective-power"] = f"{self.objective_power:g}"
        for i, (w, h) in enumerate(self.level_dimensions):
            props[f"mran.level[{i}].width"] = str(w)
            props[f"mran.level[{i}].height"] = str(h)
            props[f"mran.level[{i}].downsample"] = f"{self.level_downsamples[i]:.6g}"
            tw, th = b.level_tile_size(i)
            props[f"mran.level[{i}].tile-width"] = str(tw)
            props[f"mran.level[{i}].tile-height"] = str(th)
            missing = b.level_missing_fraction(i)
            if missing:
                self._warnings.append(f"level {i}: {missing:.1%} of tiles are missing (no data)")
        if self.warnings:
            props["mran.warnings"] = "\n".join(self.warnings)
        self.properties: dict[str, str] = props
        self.associated_images = AssociatedImages(b)

    def _choose_mpp(self, override, candidates) -> tuple[tuple[float, float] | None, str]:
        if override is not None:
            if isinstance(override, (int, float)):
                ox = oy = float(override)
            else:
                ox, oy = (float(v) for v in override)
            checked = md.validate_mpp(ox, oy, "the user", self._warnings)
            if checked is None:
                raise SlideError(self.path, f"the MPP given ({override}) is not a plausible "
                                 f"µm/px value ({md.MPP_MIN}-{md.MPP_MAX})")
            return checked, "user"
        for source, mx, my in candidates:
            checked = md.validate_mpp(mx, my, source, self._warnings)
            if checked is not None:
                return checked, source
        self._warnings.append("no valid MPP (µm/px) in the file: sizes are in pixels; "
                              "pass mpp= to set it")
        return None, "none"

    @property
    def warnings(self) -> list[str]:
        """What the reader noticed (metadata fallbacks, skipped levels, missing tiles),
        then tifffile's own log messages so far, opening and reading, one line per
        distinct message (``"tifffile: <message> (x12)"``); a new list on each access."""
        live = getattr(self._backend, "log_warnings", None)
        return self._warnings + (live() if live is not None else [])

    # ------------------------------------------------------------------ misc
    def __repr__(self) -> str:
        w, h = self.level_dimensions[0]
        mpp = "unknown" if self.mpp is None else f"{self.mpp[0]:.4g}"
        return (f"Slide({os.path.basename(self.path)!r}, {w} x {h} px, "
                f"{self.level_count} levels, mpp={mpp}, vendor={self.vendor})")

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._backend.close()

    def __reduce__(self):
        return (_reopen, (self.path, self._open_args))

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """Largest level index whose downsample is <= ``downsample`` (OpenSlide rule)."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * (1 + 1e-6):
                best = i
        return best

    def level_tile_size(self, level: int) -> tuple[int, int]:
        return self._backend.level_tile_size(level)

    # --------------------------------------------------------------- pixels
    def read_region(self, location: tuple[int, int], level: int,
                    size: tuple[int, int]) -> np.ndarray:
        """Read a region as an (h, w, 3) uint8 RGB array.

        ``location`` = (x0, y0) of the top-left pixel in **level-0** pixels,
        ``size`` = (w, h) in pixels of ``level`` (OpenSlide's convention).
        The region may extend past the slide's edges: pixels outside the image
        (and zero-length "missing" tiles) are filled with white (255, 255, 255);
        use :meth:`read_region_ex` to know which pixels had no data.
        A tile that fails to decode raises CorruptSlideError.
        """
        return self.read_region_ex(location, level, size, on_error="raise").pixels

    def read_region_ex(self, location: tuple[int, int], level: int, size: tuple[int, int],
                       *, on_error: str = "raise") -> RegionRead:
        """Like :meth:`read_region` but also returns which pixels had data.

        With ``on_error="record"`` tiles that fail to decode are painted white,
        marked invalid and listed in ``failed_tiles`` instead of raising.
        """
        if not 0 <= level < self.level_count:
            raise SlideError(self.path, f"level {level} does not exist "
                             f"(the slide has {self.level_count})")
        w, h = (int(v) for v in size)
        if w <= 0 or h <= 0:
            raise SlideError(self.path, f"region size must be positive, got {size}")
        if w * h * 3 > MAX_REGION_BYTES:
            raise ResourceLimitError(
                self.path, f"a {w} x {h} px region needs {w * h * 3 / 2**30:.1f} GiB "
                f"(limit {MAX_REGION_BYTES / 2**30:.1f} GiB); read it in pieces")
        down = self.level_downsamples[level]
        x = int(math.floor(location[0] / down))
        y = int(math.floor(location[1] / down))
        try:
            return self._backend.read_level_region(level, x, y, w, h, on_error=on_error)
        except MRANError:
            raise
        except MemoryError:
            raise ResourceLimitError(self.path, f"out of memory reading a {w} x {h} region") from None
        except Exception as exc:  # noqa: BLE001
            raise CorruptSlideError(self.path, f"reading level {level} failed: "
                                    f"{type(exc).__name__}: {exc}") from None

    def read_level(self, level: int) -> np.ndarray:
        """A whole (small) level as (h, w, 3) uint8; refuses levels over the region budget."""
        w, h = self.level_dimensions[level]
        return self.read_region((0, 0), level, (w, h))

    @property
    def smallest_level(self) -> int:
        return self.level_count - 1

    def get_thumbnail(self, max_size: int | tuple[int, int] = 512) -> np.ndarray:
        """An RGB thumbnail fitting in ``max_size`` (area-averaged from a small level)."""
        from PIL import Image

        if isinstance(max_size, int):
            max_size = (max_size, max_size)
        w0, h0 = self.level_dimensions[0]
        scale = max(w0 / max_size[0], h0 / max_size[1], 1.0)
        level = self.get_best_level_for_downsample(scale)
        lw, lh = self.level_dimensions[level]
        if lw * lh * 3 > MAX_REGION_BYTES:
            raise ResourceLimitError(self.path, "no pyramid level is small enough for a thumbnail")
        img = Image.fromarray(self.read_level(level))
        tw, th = max(1, round(w0 / scale)), max(1, round(h0 / scale))
        return np.asarray(img.resize((tw, th), Image.Resampling.BOX))

    # --------------------------------------------------------------- display
    @cached_property
    def levels(self) -> list:
        """The file's levels as lazy (y, x, 3) uint8 dask arrays chunked on its tiles."""
        return [self._backend.dask_level(i) for i in range(self.level_count)]

    @cached_property
    def display_levels(self) -> list:
        """``levels`` plus lazily computed 2x-downsampled levels until the smallest
        side is <= DISPLAY_MIN_SIDE (for slides stored without a full pyramid)."""
        import dask.array as da

        out = list(self.levels)
        # each computed level averages 2 x 2 pixels of the one before it, chunk by chunk,
        # so one displayed chunk never needs more than 2 x 2 chunks of its parent in memory
        while max(out[-1].shape[:2]) > DISPLAY_MIN_SIDE:
            prev = out[-1]
            h, w = (prev.shape[0] // 2) * 2, (prev.shape[1] // 2) * 2
            src = prev[:h, :w].rechunk((512, 512, 3))
            coarse = da.coarsen(np.mean, src, {0: 2, 1: 2})
            out.append(coarse.round().astype(np.uint8))
        if len(out) > self.level_count:
            self.properties["mran.display-levels-computed"] = str(len(out) - self.level_count)
        return out

    def summary(self) -> str:
        """A human-readable multi-line description."""
        lines = [repr(self)]
        for i, ((w, h), d) in enumerate(zip(self.level_dimensions, self.level_downsamples)):
            tw, th = self.level_tile_size(i)
            lines.append(f"  level {i}: {w} x {h} px, downsample {d:.3g}, tiles {tw} x {th}")
        lines.append(f"  MPP: {self.mpp} (source: {self.mpp_source}); objective: "
                     f"{self.objective_power}")
        lines.append(f"  pixel conversion: {self.properties['mran.pixel-conversion']}")
        lines.append(f"  associated images: {', '.join(self.associated_images) or 'none'}")
        for wmsg in self.warnings:
            lines.append(f"  warning: {wmsg}")
        return "\n".join(lines)


def _reopen(path: str, kwargs: dict) -> Slide:
    return _LazySlide(path, kwargs)


class _LazySlide(Slide):
    """A Slide re-created from a pickle: the file is opened on first use."""

    def __init__(self, path: str, kwargs: dict):  # noqa: D107 - no super().__init__ on purpose
        object.__setattr__(self, "_lazy", (path, kwargs))

    def __getattr__(self, name: str):
        lazy = self.__dict__.get("_lazy")
        if lazy is None:
            raise AttributeError(name)
        path, kwargs = lazy
        del self.__dict__["_lazy"]
        real = open_slide(path, **kwargs)
        self.__dict__.update(real.__dict__)
        return getattr(self, name)
