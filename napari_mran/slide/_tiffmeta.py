"""What a TIFF's tags and descriptions say about the slide (tifffile objects in).

:func:`tiff_metadata` collects the properties shown to users, the MPP candidates (each
named by its source, validated later by ``_metadata.validate_mpp``) and the objective
power; :func:`vendor_of` names the scanner format.  The parsing itself is in
:mod:`._metadata` (pure functions of strings and numbers).
"""

from __future__ import annotations

from typing import Any, TypeAlias

from . import _metadata as md

__all__ = ["MppCandidate", "tiff_metadata", "vendor_of"]

#: (source, mpp x or None, mpp y or None)
MppCandidate: TypeAlias = tuple[str, float | None, float | None]

_VENDOR_FLAGS = (("is_svs", "aperio"), ("is_ndpi", "hamamatsu"), ("is_philips", "philips"),
                 ("is_scn", "leica"), ("is_bif", "ventana"), ("is_qpi", "qptiff"),
                 ("is_ome", "ome"), ("is_imagej", "imagej"))


def vendor_of(tif: Any) -> str:
    """The format of a tifffile ``TiffFile`` (``"aperio"``, ...), else ``"generic-tiff"``."""
    for flag, name in _VENDOR_FLAGS:
        if getattr(tif, flag, False):
            return name
    return "generic-tiff"


def tiff_metadata(tif: Any, page0: Any) -> tuple[dict[str, str], list[MppCandidate], float | None]:
    """(properties, MPP candidates, objective power) of a tifffile ``TiffFile`` whose
    level-0 page is ``page0``; candidates in order of preference."""
    props: dict[str, str] = {}
    mpp_candidates: list[MppCandidate] = []
    desc = page0.description or ""
    if desc:
        props["tiff.ImageDescription"] = desc[:4096]
    for tag in ("Make", "Model", "Software", "DateTime"):
        t = page0.tags.get(tag)
        if t is not None:
            props[f"tiff.{tag}"] = str(t.value)
    objective = _vendor_metadata(tif, page0, desc, props, mpp_candidates)
    resolution = _resolution_mpp(page0, props)
    if resolution is not None:
        mpp_candidates.append(resolution)
    return props, mpp_candidates, objective


def _vendor_metadata(tif: Any, page0: Any, desc: str, props: dict[str, str],
                     mpp_candidates: list[MppCandidate]) -> float | None:
    """Add what the vendor's description or private tags say; return the objective power."""
    objective: float | None = None
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
    return objective


def _resolution_mpp(page0: Any, props: dict[str, str]) -> MppCandidate | None:
    """The MPP of the TIFF resolution tags (recording the unit in ``props``), or None."""
    xres, yres = page0.tags.get("XResolution"), page0.tags.get("YResolution")
    unit = page0.tags.get("ResolutionUnit")
    if xres is None or unit is None:
        return None
    u = int(unit.value)
    mx = md.resolution_to_mpp(md.to_float(xres.value), u)
    my = md.resolution_to_mpp(md.to_float(yres.value), u) if yres is not None else mx
    props["tiff.ResolutionUnit"] = str(u)
    if mx is not None or my is not None:
        return ("TIFF resolution tags", mx, my)
    return None
