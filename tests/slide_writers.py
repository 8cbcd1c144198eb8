"""Writers for slides made at test time (tifffile), and byte-level edits of TIFFs."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image


def aperio_description(width: int, height: int, tile: int, mpp: float | str | None,
                       level_of: tuple[int, int] | None = None) -> str:
    head = "Aperio Image Library v12.0.0\r\n"
    if level_of is None:
        head += f"{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) JPEG/RGB Q=90"
    else:
        w0, h0 = level_of
        head += f"{w0}x{h0} -> {width}x{height} - ({tile}x{tile}) JPEG/RGB Q=90"
    fields = ["AppMag = 20"]
    if mpp is not None:
        fields.append(f"MPP = {mpp}")
    return head + "|" + "|".join(fields)


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return image
    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((max(1, w // factor), max(1, h // factor)),
                                                    Image.Resampling.BOX))


def write_svs_pyramid(path, image: np.ndarray, downsamples=(1, 2, 4), tile=256,
                      mpp: float | str | None = 0.5, quality=90, thumbnail=True) -> Path:
    """Aperio-like pyramid: one page per level, JPEG tiles (OpenSlide and tifffile read it)."""
    h0, w0 = image.shape[:2]
    with tifffile.TiffWriter(path) as tw:
        for i, f in enumerate(downsamples):
            lvl = downsample(image, f)
            desc = aperio_description(lvl.shape[1], lvl.shape[0], tile, mpp,
                                      None if i == 0 else (w0, h0))
            tw.write(lvl, tile=(tile, tile), photometric="rgb", compression="jpeg",
                     compressionargs={"level": quality}, description=desc,
                     subfiletype=0 if i == 0 else 1, metadata=None)
            if i == 0 and thumbnail:
                # real SVS files hold a stripped thumbnail as page 1
                thumb = downsample(image, max(1, max(h0, w0) // 256))
                tw.write(thumb, photometric="rgb", compression="jpeg", rowsperstrip=16,
                         description=aperio_description(thumb.shape[1], thumb.shape[0], tile,
                                                        mpp, (w0, h0)), metadata=None)
    return Path(path)


def write_generic_pyramid(path, image: np.ndarray, downsamples=(1, 2, 4), tile=64,
                          compression="zlib", photometric=None, extrasamples=None,
                          resolution=None, resolutionunit=None, bigtiff=False) -> Path:
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
        for i, f in enumerate(downsamples):
            lvl = image if f == 1 else image[::f, ::f]
            tw.write(lvl, tile=(tile, tile), compression=compression, photometric=photometric,
                     extrasamples=extrasamples, subfiletype=0 if i == 0 else 1,
                     resolution=resolution, resolutionunit=resolutionunit, metadata=None)
    return Path(path)


# ----------------------------------------------------------------- byte edits
def ifd_offsets(path) -> list[int]:
    """Offsets of the main-chain IFDs of a classic little-endian TIFF."""
    data = Path(path).read_bytes()
    assert data[:4] == b"II*\x00"
    offs, off = [], struct.unpack("<I", data[4:8])[0]
    while off:
        offs.append(off)
        n = struct.unpack("<H", data[off:off + 2])[0]
        off = struct.unpack("<I", data[off + 2 + 12 * n: off + 6 + 12 * n])[0]
    return offs


def set_next_ifd(path, page: int, target: int) -> None:
    """Point page ``page``'s next-IFD offset at byte ``target`` (classic LE TIFF)."""
    data = bytearray(Path(path).read_bytes())
    off = ifd_offsets(path)[page]
    n = struct.unpack("<H", data[off:off + 2])[0]
    data[off + 2 + 12 * n: off + 6 + 12 * n] = struct.pack("<I", target)
    Path(path).write_bytes(bytes(data))


def find_tag(path, page: int, code: int) -> tuple[int, int, int, int]:
    """(entry offset, type, count, value/offset field) of tag ``code`` in a page."""
    data = Path(path).read_bytes()
    off = ifd_offsets(path)[page]
    n = struct.unpack("<H", data[off:off + 2])[0]
    for i in range(n):
        e = off + 2 + 12 * i
        c, t, cnt, val = struct.unpack("<HHII", data[e:e + 12])
        if c == code:
            return e, t, cnt, val
    raise KeyError(code)


def patch(path, offset: int, raw: bytes) -> None:
    data = bytearray(Path(path).read_bytes())
    data[offset:offset + len(raw)] = raw
    Path(path).write_bytes(bytes(data))
