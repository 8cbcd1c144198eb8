"""Slide metadata parsing and validation (pure functions: strings and numbers in).

MPP (µm per level-0 pixel) is validated against a plausible range; anything
else is dropped with a warning that ends up in ``Slide.properties`` so every
output can say which value was used and where it came from.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

#: Plausible µm/px range for a slide scan (about 0.05-20 µm/px).
MPP_MIN = 0.05
MPP_MAX = 20.0
#: x/y MPP ratios beyond this are reported as anisotropic.
ANISOTROPY_TOLERANCE = 0.02

_UNIT_TO_UM = {"m": 1e6, "cm": 1e4, "mm": 1e3, "µm": 1.0, "um": 1.0, "\u03bcm": 1.0,
               "nm": 1e-3, "pm": 1e-6, "micron": 1.0, "microns": 1.0}


def parse_aperio_description(desc: str) -> dict[str, str]:
    """Key/values of an Aperio ImageDescription (``...|AppMag = 20|MPP = 0.499``)."""
    out: dict[str, str] = {}
    if not desc or not desc.startswith("Aperio"):
        return out
    parts = desc.split("|")
    first = parts[0].splitlines()
    if first:
        out["Header"] = " ".join(line.strip() for line in first if line.strip())
    for part in parts[1:]:
        if "=" in part:
            key, _, value = part.partition("=")
            out[key.strip()] = value.strip()
    return out


def parse_ome_pixels(xml: str) -> dict[str, str]:
    """PhysicalSizeX/Y (+units) and NominalMagnification from OME-XML (first image)."""
    out: dict[str, str] = {}
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return out
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag == "Pixels" and "PhysicalSizeX" not in out:
            for key in ("PhysicalSizeX", "PhysicalSizeY", "PhysicalSizeXUnit",
                        "PhysicalSizeYUnit", "SizeC", "SizeZ", "SizeT", "Type"):
                if key in el.attrib:
                    out[key] = el.attrib[key]
        elif tag == "Objective" and "NominalMagnification" in el.attrib:
            out.setdefault("NominalMagnification", el.attrib["NominalMagnification"])
    return out


def unit_to_um(unit: str | None) -> float | None:
    if unit is None:
        return 1.0  # OME default unit is µm
    return _UNIT_TO_UM.get(unit.strip())


def resolution_to_mpp(resolution: float | None, unit: int | None) -> float | None:
    """TIFF X/YResolution (pixels per unit) + ResolutionUnit (2 inch, 3 cm) -> µm/px."""
    if resolution is None or unit not in (2, 3):
        return None
    if not math.isfinite(resolution) or resolution <= 0:
        return None
    return (25400.0 if unit == 2 else 10000.0) / resolution


def to_float(value) -> float | None:
    """Best-effort float (tuple rationals included); None when not a finite number."""
    try:
        if isinstance(value, tuple) and len(value) == 2:
            num, den = value
            if not den:
                return None
            value = num / den
        out = float(value)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    return out if math.isfinite(out) else None


def validate_mpp(mpp_x: float | None, mpp_y: float | None,
                 source: str, warnings: list[str]) -> tuple[float, float] | None:
    """Validate a candidate MPP; return (x, y) or None, appending warnings."""
    if mpp_x is None and mpp_y is None:
        return None
    x = _plausible_mpp("x", mpp_y if mpp_x is None else mpp_x, source, warnings)
    if x is None:
        return None
    y = _plausible_mpp("y", mpp_x if mpp_y is None else mpp_y, source, warnings)
    if y is None:
        return None
    if abs(x / y - 1.0) > ANISOTROPY_TOLERANCE:
        warnings.append(
            f"MPP from {source} is anisotropic (x {x:g}, y {y:g} µm/px)")
    return (float(x), float(y))


def _plausible_mpp(name: str, value: float | None, source: str,
                   warnings: list[str]) -> float | None:
    """``value`` when it is a plausible MPP, else None with a warning."""
    if value is None or not math.isfinite(value) or value <= 0:
        warnings.append(f"MPP {name} from {source} is {value!r}: ignored")
        return None
    if not MPP_MIN <= value <= MPP_MAX:
        warnings.append(
            f"MPP {name} from {source} is {value:g} µm/px, outside the plausible "
            f"range {MPP_MIN}-{MPP_MAX}: ignored")
        return None
    return value


_PHILIPS_SPACING = re.compile(
    r'Name="DICOM_PIXEL_SPACING"[^>]*>\s*"?([0-9.eE+-]+)"?\s+"?([0-9.eE+-]+)"?')


def parse_philips_spacing(xml: str) -> tuple[float, float] | None:
    """First DICOM_PIXEL_SPACING (mm, row then column) of a Philips TIFF -> µm (x, y)."""
    m = _PHILIPS_SPACING.search(xml or "")
    if not m:
        return None
    row_mm, col_mm = to_float(m.group(1)), to_float(m.group(2))
    if row_mm is None or col_mm is None:
        return None
    return col_mm * 1000.0, row_mm * 1000.0
