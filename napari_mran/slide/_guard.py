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
from ..vocab import OPENSLIDE_ONLY_EXTENSIONS  # re-exported: defined once, in vocab

__all__ = ["MAX_PAGES", "MAX_TAGS_PER_IFD", "OPENSLIDE_ONLY_EXTENSIONS", "TiffStructure",
           "check_path", "sniff", "walk_ifds"]

#: Most pages a slide may have (real slides have < 100; z-stacks a few hundred).
MAX_PAGES = 4096
#: Most tags one IFD may have (real files have < 100).
MAX_TAGS_PER_IFD = 1024

# bytes per value of each TIFF field type (1..18)
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4,
               12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_SUBIFDS_TAG = 330


@dataclass
class TiffStructure:
    """What the IFD walk found."""

    bigtiff: bool
    byteorder: str
    n_pages: int
    file_size: int
    warnings: list[str] = field(default_factory=list)
    n_subifds: int = 0  # distinct SubIFDs (pyramid levels of OME/tifffile pyramids)


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
    """Walk the main IFD chain and the SubIFD trees of a TIFF/BigTIFF file.

    Raises CorruptSlideError for loops, offsets past the end of the file, empty
    IFDs, unwritten (zero) SubIFD offsets and tags whose data lies past the end of
    the file; ResourceLimitError for more than ``max_pages`` pages and SubIFDs (or
    SubIFD references) in all, or ``max_tags`` tags in one IFD.  Reads each IFD
    once (entries only, not tag data), so time and memory are bounded by the caps.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        reader = _IfdReader(fh, path, size, max_tags=max_tags, max_refs=max_pages)
        main, roots = _walk_main_chain(reader, max_pages)
        n_sub = _walk_subifds(reader, main, roots, max_pages)
    return TiffStructure(bigtiff=reader.bigtiff, byteorder=reader.bo, n_pages=len(main),
                         file_size=size, warnings=reader.warnings, n_subifds=n_sub)


def _walk_main_chain(reader: "_IfdReader", max_pages: int) -> tuple[dict[int, int], list]:
    """Follow the next-IFD pointers from the header; return {offset: page index} and
    the (SubIFD offset, page index) pairs the pages list."""
    main: dict[int, int] = {}
    roots: list[tuple[int, int]] = []
    offset = reader.first
    while offset:
        if offset in main:
            raise CorruptSlideError(
                reader.path, f"the IFD chain loops back to offset {offset} (page "
                f"{main[offset]}, after page {len(main) - 1}); the file is damaged or hostile")
        if len(main) >= max_pages:
            raise ResourceLimitError(
                reader.path, f"more than {max_pages} pages in the IFD chain; refusing")
        index = main[offset] = len(main)
        offset, subifds = reader.read(offset, f"page {index}")
        roots.extend((sub, index) for sub in subifds)
    if not main:
        raise CorruptSlideError(reader.path, "the TIFF has no pages")
    return main, roots


def _walk_subifds(reader: "_IfdReader", main: dict[int, int], roots: list[tuple[int, int]],
                  max_pages: int) -> int:
    """Depth-first walk of the SubIFD trees; return how many distinct SubIFDs there are.

    A SubIFD's children are the IFD its next pointer names and the SubIFDs it lists.
    tifffile lists every pyramid level in the SubIFDs tag *and* chains each level to
    the next, so an IFD reached again after its walk finished is shared, not a loop.
    Reaching an IFD still on the current path is a loop; reaching a main-chain page
    is refused too (a cycle when that page is the parent or before it).
    """
    on_path: set[int] = set()
    done: set[int] = set()

    def enter(offset: int, page: int):
        if offset in main:
            k = main[offset]
            how = "loops back into" if k <= page else "points into"
            raise CorruptSlideError(
                reader.path, f"a SubIFD of page {page} {how} the main IFD chain (page {k} "
                f"at byte {offset}); the file is damaged or hostile")
        if len(main) + len(done) + len(on_path) >= max_pages:
            raise ResourceLimitError(
                reader.path, f"more than {max_pages} pages including SubIFDs; refusing")
        on_path.add(offset)
        nxt, subifds = reader.read(offset, f"SubIFD at byte {offset} (page {page})")
        return iter(([nxt] if nxt else []) + subifds)

    for root, page in roots:
        if root in done:
            continue
        stack = [(root, enter(root, page))]
        while stack:
            offset, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                on_path.discard(offset)
                done.add(offset)
            elif child in on_path:
                raise CorruptSlideError(
                    reader.path, f"the SubIFD chain of page {page} loops back to offset {child}; "
                    "the file is damaged or hostile")
            elif child not in done:
                stack.append((child, enter(child, page)))
    return len(done)


class _IfdReader:
    """Reads and checks single IFDs of an open TIFF/BigTIFF (entries, not tag data)."""

    def __init__(self, fh, path: str, size: int, *, max_tags: int, max_refs: int):
        self.fh, self.path, self.size = fh, path, size
        self.max_tags, self.max_refs = max_tags, max_refs
        self.refs = 0  # SubIFD offsets listed so far, in all IFDs
        self.warnings: list[str] = []
        header = fh.read(16)
        if len(header) < 8:
            raise CorruptSlideError(path, f"TIFF header cut short ({size} bytes)")
        bo = self.bo = "<" if header[:2] == b"II" else ">"
        self.bigtiff = struct.unpack(bo + "H", header[2:4])[0] == 43
        if self.bigtiff:
            if len(header) < 16:
                raise CorruptSlideError(path, "BigTIFF header cut short")
            offsize = struct.unpack(bo + "H", header[4:6])[0]
            if offsize != 8:
                raise CorruptSlideError(path, f"BigTIFF offset size {offsize} is not 8")
            self.first = struct.unpack(bo + "Q", header[8:16])[0]
            self.count_fmt, self.entry_size, self.off_fmt = "Q", 20, "Q"
        else:
            self.first = struct.unpack(bo + "I", header[4:8])[0]
            self.count_fmt, self.entry_size, self.off_fmt = "H", 12, "I"
        self.count_size = struct.calcsize(self.count_fmt)
        self.off_size = struct.calcsize(self.off_fmt)  # values this small sit in the entry

    def read(self, offset: int, what: str) -> tuple[int, list[int]]:
        """Check the IFD at ``offset``; return (next IFD offset, SubIFD offsets it lists)."""
        bo, size = self.bo, self.size
        if offset < 8 or offset + self.count_size > size:
            where = "inside the file header" if offset < 8 else "past the end of the file"
            raise CorruptSlideError(
                self.path, f"{what} starts at byte {offset}, {where} ({size}-byte file, "
                "truncated?)")
        self.fh.seek(offset)
        count = struct.unpack(bo + self.count_fmt, self.fh.read(self.count_size))[0]
        if count == 0:
            raise CorruptSlideError(self.path, f"{what} at byte {offset} has no tags")
        if count > self.max_tags:
            raise ResourceLimitError(
                self.path, f"{what} declares {count} tags (limit {self.max_tags}); refusing "
                "a hostile or damaged file")
        nbytes = count * self.entry_size + self.off_size
        if offset + self.count_size + nbytes > size:
            raise CorruptSlideError(
                self.path, f"{what} at byte {offset} runs past the end of the file "
                "(truncated?)")
        raw = self.fh.read(nbytes)
        subifds: list[int] = []
        for i in range(count):
            entry = raw[i * self.entry_size:(i + 1) * self.entry_size]
            found = self._check_entry(entry, what)
            if found is not None:
                subifds = found
        return struct.unpack(bo + self.off_fmt, raw[-self.off_size:])[0], subifds

    def _check_entry(self, entry: bytes, what: str) -> list[int] | None:
        """Check that a tag's data lies inside the file; return the offsets of a SubIFDs tag."""
        bo, off_size = self.bo, self.off_size
        if self.count_fmt == "H":
            code, dtype, n = struct.unpack(bo + "HHI", entry[:8])
        else:
            code, dtype, n = struct.unpack(bo + "HHQ", entry[:12])
        tsize = _TYPE_SIZES.get(dtype)
        if tsize is None:
            self.warnings.append(f"{what}: tag {code} has unknown type {dtype}")
            return None
        total = tsize * n
        inline = total <= off_size
        value_off = None if inline else struct.unpack(bo + self.off_fmt, entry[-off_size:])[0]
        if value_off is not None and value_off + total > self.size:
            raise CorruptSlideError(
                self.path, f"{what}: tag {code} claims {n} values ({total} bytes at byte "
                f"{value_off}), past the end of the {self.size}-byte file")
        if code != _SUBIFDS_TAG or dtype not in (4, 13, 16, 18) or n == 0:
            return None
        self.refs += n
        if self.refs > self.max_refs:
            raise ResourceLimitError(
                self.path, f"{what} lists {n} SubIFDs ({self.refs} SubIFD references in "
                f"all, limit {self.max_refs}); refusing a hostile or damaged file")
        if inline:
            data = entry[-off_size:][:total]
        else:
            pos = self.fh.tell()
            self.fh.seek(value_off)
            data = self.fh.read(total)
            self.fh.seek(pos)
        offsets = list(struct.unpack(bo + ("I" if tsize == 4 else "Q") * n, data))
        if 0 in offsets:
            raise CorruptSlideError(
                self.path, f"{what} lists SubIFD {offsets.index(0)} at offset 0 (never "
                "written: the file is incomplete)")
        return offsets


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
