"""Optional OpenSlide backend (openslide-python + openslide-bin).

Used automatically for formats tifffile cannot read (DICOM-WSI, MIRAX, VMS...).
OpenSlide handles are dead after their first error, so we re-open after one.
"""

from __future__ import annotations

import threading

import numpy as np

from ..errors import CorruptSlideError, SlideError, UnsupportedFormatError
from . import _metadata as md
from ._tiles import RegionRead


def available() -> bool:
    try:
        import openslide  # noqa: F401
    except Exception:  # noqa: BLE001 - missing library or binary
        return False
    return True


class OpenSlideBackend:
    name = "openslide"

    def __init__(self, path: str):
        import openslide

        self.path = path
        self._lock = threading.Lock()
        try:
            self._osr = openslide.OpenSlide(path)
        except openslide.OpenSlideUnsupportedFormatError:
            raise UnsupportedFormatError(path, "OpenSlide does not recognise this format") from None
        except Exception as exc:  # noqa: BLE001 - OpenSlideError etc.
            raise CorruptSlideError(path, f"OpenSlide cannot open it: {exc}") from None
        self.warnings: list[str] = []
        props = dict(self._osr.properties)
        self.properties = {k: str(v) for k, v in props.items()}
        self.vendor = props.get("openslide.vendor", "openslide")
        mx = md.to_float(props.get("openslide.mpp-x"))
        my = md.to_float(props.get("openslide.mpp-y"))
        self.mpp_candidates = [("OpenSlide openslide.mpp-x/y", mx, my)] if (mx or my) else []
        self.objective_power = md.to_float(props.get("openslide.objective-power"))
        from ._pixels import PixelConversion
        self.conversion = PixelConversion(kind="rgba", samples=4, dtype="uint8")
        self._closed = False

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return [(w, h) for w, h in self._osr.level_dimensions]

    def level_tile_size(self, level: int) -> tuple[int, int]:
        p = self._osr.properties
        return (int(p.get(f"openslide.level[{level}].tile-width", 512)),
                int(p.get(f"openslide.level[{level}].tile-height", 512)))

    def level_missing_fraction(self, level: int) -> float:
        return 0.0

    def associated_names(self) -> list[str]:
        return [n.lower() for n in self._osr.associated_images]

    def associated(self, name: str) -> np.ndarray:
        for k, img in self._osr.associated_images.items():
            if k.lower() == name:
                return self.conversion(np.asarray(img.convert("RGBA")))
        raise KeyError(name)

    def _reopen(self) -> None:
        import openslide

        try:
            self._osr.close()
        except Exception:  # noqa: BLE001
            pass
        self._osr = openslide.OpenSlide(self.path)

    def read_level_region(self, level: int, x: int, y: int, w: int, h: int,
                          *, on_error: str = "raise") -> RegionRead:
        if self._closed:
            raise SlideError(self.path, "the slide is closed")
        down = self._osr.level_downsamples[level]
        loc = (int(round(x * down)), int(round(y * down)))
        try:
            with self._lock:
                rgba = np.asarray(self._osr.read_region(loc, level, (w, h)))
        except Exception as exc:  # noqa: BLE001
            with self._lock:
                self._reopen()  # the handle is dead after an error
            reason = f"OpenSlide read failed: {exc}"
            if on_error == "raise":
                raise CorruptSlideError(self.path, f"level {level} region at {loc}: {reason}") from None
            return RegionRead(np.full((h, w, 3), 255, np.uint8), np.zeros((h, w), bool),
                              failed_tiles=[reason])
        alpha = rgba[..., 3]
        valid = None
        lw, lh = self.level_dimensions[level]
        inside = np.zeros((h, w), bool)
        inside[max(-y, 0):max(min(lh - y, h), 0), max(-x, 0):max(min(lw - x, w), 0)] = True
        if (alpha[inside] == 0).any():
            valid = ~((alpha == 0) & inside)
        return RegionRead(self.conversion(rgba), valid,
                          missing_tiles=0 if valid is None else 1)

    def dask_level(self, level: int):
        import dask.array as da

        lw, lh = self.level_dimensions[level]
        cs = 512
        chunks = (tuple(min(cs, lh - i) for i in range(0, lh, cs)),
                  tuple(min(cs, lw - i) for i in range(0, lw, cs)), (3,))

        def block(block_info=None):
            (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
            return self.read_level_region(level, x0, y0, x1 - x0, y1 - y0,
                                          on_error="record").pixels

        return da.map_blocks(block, dtype=np.uint8, chunks=chunks)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._osr.close()
