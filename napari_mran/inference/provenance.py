"""What a result records about how it was made: software versions and the slide file."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..slide import Slide


def versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def slide_provenance(slide: Slide) -> dict[str, Any]:
    from ..slide import file_fingerprint

    props = getattr(slide, "properties", {}) or {}
    info: dict[str, Any] = {"path": os.path.abspath(slide.path), "vendor": slide.vendor,
                            "level0_size": list(slide.dimensions),
                            "backend": props.get("mran.backend"),
                            # how the stored pixels became 8-bit RGB (reliability row 9)
                            "pixel_conversion": props.get("mran.pixel-conversion")}
    try:
        info["bytes"], info["sha256_first_mb"] = file_fingerprint(slide.path)
    except OSError as exc:
        info["stat_error"] = str(exc)
    return info
