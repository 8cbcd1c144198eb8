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


# ----------------------------------------------------------------- SubIFD pyramids
def write_subifd_pyramid(path, image: np.ndarray, n_levels=3, tile=64, compression="jpeg",
                         ome=False, physical_size=None, resolution=None,
                         bigtiff=False) -> Path:
    """A pyramid as tifffile (and OME converters) store it: level 0 in the main IFD chain,
    levels 1.. as its SubIFDs (tifffile also chains each SubIFD to the next one).

    ``physical_size``: (value, unit) written as OME PhysicalSizeX/Y (needs ``ome=True``);
    ``resolution``: µm/px written as TIFF X/YResolution in centimetres.
    """
    photometric = "rgb" if image.ndim == 3 else "minisblack"
    common = dict(tile=(tile, tile), compression=compression, photometric=photometric)
    if resolution is not None:
        common.update(resolution=(1e4 / resolution, 1e4 / resolution),
                      resolutionunit="CENTIMETER")
    metadata = None
    if ome:
        metadata = {"axes": "YXS" if image.ndim == 3 else "YX"}
        if physical_size is not None:
            value, unit = physical_size
            metadata.update(PhysicalSizeX=value, PhysicalSizeY=value,
                            PhysicalSizeXUnit=unit, PhysicalSizeYUnit=unit)
    with tifffile.TiffWriter(path, ome=ome, bigtiff=bigtiff) as tw:
        tw.write(image, subifds=n_levels - 1, metadata=metadata, **common)
        for i in range(1, n_levels):
            tw.write(image[::2**i, ::2**i], subfiletype=1, metadata=None, **common)
    return Path(path)


def subifd_offsets(path, page: int = 0) -> list[int]:
    """The SubIFD offsets listed by main-chain page ``page`` (classic LE TIFF)."""
    data = Path(path).read_bytes()
    _, _, count, value = find_tag(path, page, 330)
    if count == 1:
        return [value]
    return list(struct.unpack(f"<{count}I", data[value:value + 4 * count]))


def set_next_at(path, ifd_offset: int, target: int) -> None:
    """Point the next-IFD offset of the IFD at byte ``ifd_offset`` at ``target``."""
    data = bytearray(Path(path).read_bytes())
    n = struct.unpack("<H", data[ifd_offset:ifd_offset + 2])[0]
    end = ifd_offset + 2 + 12 * n
    data[end:end + 4] = struct.pack("<I", target)
    Path(path).write_bytes(bytes(data))


def next_at(path, ifd_offset: int) -> int:
    """The next-IFD offset stored in the IFD at byte ``ifd_offset``."""
    data = Path(path).read_bytes()
    n = struct.unpack("<H", data[ifd_offset:ifd_offset + 2])[0]
    end = ifd_offset + 2 + 12 * n
    return struct.unpack("<I", data[end:end + 4])[0]


def set_tile_bytecount(path, page: int, index: int, nbytes: int) -> int:
    """Rewrite in place the TileByteCounts (or StripByteCounts) entry ``index`` of a
    main-chain page (classic LE TIFF); return the count it had."""
    data = Path(path).read_bytes()
    for code in (325, 279):
        try:
            entry, dtype, count, value = find_tag(path, page, code)
            break
        except KeyError:
            continue
    size, fmt = {3: (2, "<H"), 4: (4, "<I")}[dtype]
    at = entry + 8 if count * size <= 4 else value
    at += index * size
    old = struct.unpack(fmt, data[at:at + size])[0]
    patch(path, at, struct.pack(fmt, nbytes))
    return old


def set_description(path, page: int, text: str) -> None:
    """Give main-chain page ``page`` a new ImageDescription: the text is appended to the
    file and the tag's count and offset are pointed at it (classic LE TIFF)."""
    raw = text.encode() + b"\x00"
    end = Path(path).stat().st_size
    with open(path, "ab") as fh:
        fh.write(b"\x00" * (end % 2) + raw)
    entry, _, _, _ = find_tag(path, page, 270)
    patch(path, entry + 4, struct.pack("<II", len(raw), end + end % 2))


def rename_tag(path, page: int, code: int, new_code: int) -> None:
    """Change the code of tag ``code`` of main-chain page ``page`` (its value is kept)."""
    entry, _, _, _ = find_tag(path, page, code)
    patch(path, entry, struct.pack("<H", new_code))
