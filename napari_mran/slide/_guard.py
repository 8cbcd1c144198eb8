"""Cheap structural checks made before any third-party reader sees a file.

tifffile loops for a long time on an IFD chain that forms a ring longer than
100 pages and skips (only logs) tags that point past the end of the file.  We
walk the IFD chain ourselves, with a visited set and caps, and refuse hostile
structure before tifffile parses it.  Pure stdlib: no tifffile here.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from ..errors import CorruptSlideError, ResourceLimitError, SlideError, UnsupportedFormatError

#: Most pages a slide may have (real slides have < 100; z-stacks a few hundred).
MAX_PAGES = 4096
#: Most tags one IFD may have (real files have < 100).
MAX_TAGS_PER_IFD = 1024

# bytes per value of each TIFF field type (1..18)
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4,
               12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_SUBIFDS_TAG = 330

#: File extensions only the OpenSlide backend can read (multi-file or non-TIFF formats).
OPENSLIDE_ONLY_EXTENSIONS = (".mrxs", ".vms", ".vmu", ".dcm", ".bif", ".svslide", ".scn")


@dataclass
class TiffStructure:
    """What the IFD walk found."""

    bigtiff: bool
    byteorder: str
    n_pages: int
    file_size: int
    warnings: list[str] = field(default_factory=list)


def sniff(path: str) -> str:
    """Return a coarse kind for the file from its first bytes.

    One of ``"tiff"``, ``"bigtiff"``, ``"dicom"``, or a description of what
    it is instead (``"zip"``, ``"png"``, ``"jpeg"``, ``"unknown"``...).
    """
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:4] in (b"II+\x00", b"MM\x00+"):
        return "bigtiff"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:4] == b"PK\x03\x04":
        return "a ZIP archive"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "a PNG image"
    if head[:3] == b"\xff\xd8\xff":
        return "a plain JPEG image"
    if head[:4] == b"%PDF":
        return "a PDF document"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "a GIF image"
    return "unknown"


def walk_ifds(path: str, *, max_pages: int = MAX_PAGES,
              max_tags: int = MAX_TAGS_PER_IFD) -> TiffStructure:
    """Walk the main IFD chain (and SubIFD offsets) of a TIFF/BigTIFF file.

    Raises CorruptSlideError for loops, offsets past the end of the file,
    empty IFDs and tags whose data lies past the end of the file;
    ResourceLimitError for more than ``max_pages`` pages or ``max_tags`` tags.
    Reads at most one IFD (entries only, not tag data) per page.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        header = fh.read(16)
        if len(header) < 8:
            raise CorruptSlideError(path, f"TIFF header cut short ({size} bytes)")
        bo = "<" if header[:2] == b"II" else ">"
        version = struct.unpack(bo + "H", header[2:4])[0]
        if version == 43:
            if len(header) < 16:
                raise CorruptSlideError(path, "BigTIFF header cut short")
            offsize = struct.unpack(bo + "H", header[4:6])[0]
            if offsize != 8:
                raise CorruptSlideError(path, f"BigTIFF offset size {offsize} is not 8")
            first = struct.unpack(bo + "Q", header[8:16])[0]
            count_fmt, count_size, entry_size, off_fmt = "Q", 8, 20, "Q"
        else:
            first = struct.unpack(bo + "I", header[4:8])[0]
            count_fmt, count_size, entry_size, off_fmt = "H", 2, 12, "I"
        off_size = struct.calcsize(off_fmt)
        inline = off_size  # values up to this many bytes are stored in the entry
        visited: set[int] = set()
        pending_subifds: list[int] = []
        warnings: list[str] = []
        offset = first
        n_pages = 0

        def read_ifd(offset: int, what: str) -> int:
            """Check one IFD; return the offset of the next one."""
            if offset in visited:
                raise CorruptSlideError(
                    path, f"the IFD chain loops back to offset {offset} ({what}); "
                    "the file is damaged or hostile")
            visited.add(offset)
            if offset < 8 or offset + count_size > size:
                raise CorruptSlideError(
                    path, f"{what} starts at byte {offset}, past the end of the "
                    f"{size}-byte file (truncated?)")
            fh.seek(offset)
            count = struct.unpack(bo + count_fmt, fh.read(count_size))[0]
            if count == 0:
                raise CorruptSlideError(path, f"{what} at byte {offset} has no tags")
            if count > max_tags:
                raise ResourceLimitError(
                    path, f"{what} declares {count} tags (limit {max_tags}); refusing "
                    "a hostile or damaged file")
            nbytes = count * entry_size + off_size
            if offset + count_size + nbytes > size:
                raise CorruptSlideError(
                    path, f"{what} at byte {offset} runs past the end of the file "
                    "(truncated?)")
            raw = fh.read(nbytes)
            for i in range(count):
                entry = raw[i * entry_size:(i + 1) * entry_size]
                if count_fmt == "H":
                    code, dtype, n = struct.unpack(bo + "HHI", entry[:8])
                else:
                    code, dtype, n = struct.unpack(bo + "HHQ", entry[:12])
                tsize = _TYPE_SIZES.get(dtype)
                if tsize is None:
                    warnings.append(f"{what}: tag {code} has unknown type {dtype}")
                    continue
                total = tsize * n
                if total > inline:
                    value_off = struct.unpack(bo + off_fmt, entry[-off_size:])[0]
                    if value_off + total > size:
                        raise CorruptSlideError(
                            path, f"{what}: tag {code} claims {n} values "
                            f"({total} bytes at byte {value_off}), past the end of the "
                            f"{size}-byte file")
                    if code == _SUBIFDS_TAG and dtype in (4, 13, 16, 18) and n <= max_pages:
                        fh_pos = fh.tell()
                        fh.seek(value_off)
                        fmt = "I" if tsize == 4 else "Q"
                        pending_subifds.extend(
                            struct.unpack(bo + fmt * n, fh.read(total)))
                        fh.seek(fh_pos)
                elif code == _SUBIFDS_TAG and n >= 1 and dtype in (4, 13, 16, 18):
                    fmt = "I" if tsize == 4 else "Q"
                    pending_subifds.extend(
                        struct.unpack(bo + fmt * n, entry[-off_size:][:total]))
            return struct.unpack(bo + off_fmt, raw[-off_size:])[0]

        while offset:
            n_pages += 1
            if n_pages > max_pages:
                raise ResourceLimitError(
                    path, f"more than {max_pages} pages in the IFD chain; refusing")
            offset = read_ifd(offset, f"page {n_pages - 1}")
        if n_pages == 0:
            raise CorruptSlideError(path, "the TIFF has no pages")
        # SubIFDs (OME-style pyramids): each may itself chain on.
        n_sub = 0
        while pending_subifds:
            sub = pending_subifds.pop()
            n_sub += 1
            if n_pages + n_sub > max_pages:
                raise ResourceLimitError(
                    path, f"more than {max_pages} pages including SubIFDs; refusing")
            nxt = read_ifd(sub, f"SubIFD {n_sub - 1}")
            if nxt:
                pending_subifds.append(nxt)
    return TiffStructure(bigtiff=version == 43, byteorder=bo, n_pages=n_pages,
                         file_size=size, warnings=warnings)


def check_path(path: str) -> int:
    """Check that ``path`` is a readable, non-empty regular file; return its size."""
    if not os.path.exists(path):
        raise SlideError(path, "no such file")
    if os.path.isdir(path):
        raise UnsupportedFormatError(path, "is a folder, not a slide file")
    if not os.path.isfile(path):
        raise UnsupportedFormatError(path, "is not a regular file")
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise SlideError(path, "permission denied (cannot read the file)") from None
    except OSError as exc:
        raise SlideError(path, f"cannot be opened: {exc.strerror or exc}") from None
    size = os.path.getsize(path)
    if size == 0:
        raise UnsupportedFormatError(path, "the file is empty (0 bytes)")
    return size
