"""The slides of a run: folders expanded, store names, file fingerprints."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..vocab import SLIDE_EXTENSIONS, store_names
from .common import CohortError, os_reason

__all__ = ["SLIDE_EXTENSIONS", "expand_slides", "slide_fingerprint", "store_names"]


def expand_slides(slides: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Absolute slide paths in order; a folder contributes its slide files (sorted,
    not recursive).  Duplicates are dropped.  CohortError names every missing path."""
    items = [slides] if isinstance(slides, (str, os.PathLike)) else list(slides)
    out: list[str] = []
    missing: list[str] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir() and p.suffix.lower() not in SLIDE_EXTENSIONS:
            found = sorted(q for q in p.iterdir()
                           if q.is_file() and not q.name.startswith(".")
                           and q.name.lower().endswith(SLIDE_EXTENSIONS))
            if not found:
                raise CohortError(f"{p}: folder holds no slide files "
                                  f"({', '.join(SLIDE_EXTENSIONS)})")
            out.extend(os.path.abspath(q) for q in found)
        elif os.path.lexists(p):
            out.append(os.path.abspath(p))
        else:
            missing.append(str(p))
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        shown = ", ".join(missing[:5]) + more
        raise CohortError(f"slide not found: {shown}")
    if not out:
        raise CohortError("no slides were given")
    return list(dict.fromkeys(out))


def slide_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """``{"name", "bytes", "sha256_first_mb"}`` of a slide file (what analysis records)."""
    from ..slide import file_fingerprint

    path = os.fspath(path)
    try:
        size, head = file_fingerprint(path)
    except OSError as exc:
        return {"name": os.path.basename(path), "bytes": None, "sha256_first_mb": None,
                "error": os_reason(exc)}
    return {"name": os.path.basename(path), "bytes": size, "sha256_first_mb": head}
