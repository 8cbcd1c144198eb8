"""Heatmap rasters as pyramidal OME-TIFF and OME-Zarr (NGFF 0.4).

Both take the raster from :meth:`SlideResult.heatmap` (float32, NaN outside tissue
bags) and add half-resolution levels (NaN-aware 2 x 2 mean) until the smallest
level fits in one tile.  Pixel ``[0, 0]`` of the full-resolution level has its
top-left corner at the slide's level-0 origin; one heatmap pixel is ``scale``
level-0 px, i.e. ``scale * mpp`` µm.

Both carry the same napari-mran metadata (:func:`heatmap_metadata`): in the OME-XML
as a ``MapAnnotation`` of namespace ``napari-mran-heatmap`` (key ``napari_mran``,
a JSON text), in the OME-Zarr as the ``napari_mran`` attribute.  napari-mran's reader
finds its heatmaps by it (:func:`read_heatmap_metadata`).  A result of the demo model
says so in the image name, the description and that metadata (``model_is_demo``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from napari_mran._atomic import atomic_dir, atomic_path
from napari_mran.errors import ResultsError
from napari_mran.results import DEMO_MODEL_NOTE, Heatmap, SlideResult, strict_json

__all__ = [
    "HEATMAP_FORMAT",
    "export_ome_tiff",
    "export_ome_zarr",
    "heatmap_geometry",
    "heatmap_metadata",
    "ome_zarr_replace_check",
    "read_heatmap_levels",
    "read_heatmap_metadata",
]

HEATMAP_FORMAT = "napari-mran-heatmap"
#: Key of the OME MapAnnotation entry (and of the OME-Zarr attribute) holding the metadata.
METADATA_KEY = "napari_mran"


def heatmap_metadata(result: SlideResult, heatmap: Heatmap, n_levels: int) -> dict[str, Any]:
    """The napari-mran metadata of an exported heatmap (strict JSON)."""
    slide = result.provenance.get("slide")
    slide_path = slide.get("path") if isinstance(slide, dict) else None
    meta = {
        "format": HEATMAP_FORMAT,
        "version": 1,
        "level": heatmap.level,
        "weighting": heatmap.weighting,
        "value": heatmap.value,
        "class_index": heatmap.class_index,
        "class_name": heatmap.class_name,
        "scale_level0_px": list(heatmap.scale),
        "translate_level0_px": list(heatmap.translate),
        "mpp": None if heatmap.mpp is None else list(heatmap.mpp),
        "n_levels": n_levels,
        "downsampling": "NaN-aware 2x2 mean",
        "model_is_demo": result.model_is_demo,
        "slide_path": slide_path if isinstance(slide_path, str) else None,
        "slide": result.summary(),
    }
    if result.model_is_demo:
        meta["note"] = DEMO_MODEL_NOTE
    clean, _ = strict_json(meta)
    return clean


def _image_name(result: SlideResult, heatmap: Heatmap) -> str:
    return f"MRAN {heatmap.name}" + (" (demo model)" if result.model_is_demo else "")


def _description(result: SlideResult, heatmap: Heatmap) -> str:
    sy, sx = heatmap.scale
    text = (f"napari-mran {heatmap.name} heatmap of {result.slide_name or 'a slide'}: "
            f"one pixel = {sx:g} x {sy:g} level-0 slide pixels, pixel [0, 0] at the "
            "slide's origin; NaN = not analysed")
    if result.model_is_demo:
        text += f". {DEMO_MODEL_NOTE[0].upper()}{DEMO_MODEL_NOTE[1:]}"
    return text


# --------------------------------------------------------------------------- OME-TIFF


def _tifffile_write(
    path: Path, levels: list[np.ndarray], tile: int, px_um: tuple[float, float] | None, name: str,
    description: str = "", own: dict[str, Any] | None = None,
) -> None:
    """All tifffile calls: one pyramidal OME-TIFF, sub-resolutions in SubIFDs."""
    import json

    import tifffile

    base = levels[0]
    metadata: dict[str, Any] = {"axes": "YX", "Name": name}
    if description:
        metadata["Description"] = description
    if own is not None:
        value = {METADATA_KEY: json.dumps(own, ensure_ascii=False, allow_nan=False,
                                          separators=(",", ":"))}
        if own.get("model_is_demo"):
            value["model_is_demo"] = "true"
        metadata["MapAnnotation"] = {"Namespace": HEATMAP_FORMAT, "Value": value}
    options: dict[str, Any] = {
        "photometric": "minisblack",
        "tile": (tile, tile),
        "compression": "zlib",
        "maxworkers": 1,
    }
    resolution = None
    if px_um is not None:
        psy, psx = px_um
        metadata.update(
            PhysicalSizeX=psx, PhysicalSizeXUnit="µm", PhysicalSizeY=psy, PhysicalSizeYUnit="µm"
        )
        resolution = (1e4 / psx, 1e4 / psy)  # pixels per cm
        options["resolutionunit"] = "CENTIMETER"
    bigtiff = sum(a.nbytes for a in levels) > 2**31
    with tifffile.TiffWriter(path, bigtiff=bigtiff, ome=True) as tif:
        tif.write(
            base, subifds=len(levels) - 1, resolution=resolution, metadata=metadata, **options
        )
        for k, arr in enumerate(levels[1:], start=1):
            res = None if resolution is None else (resolution[0] / 2**k, resolution[1] / 2**k)
            tif.write(arr, subfiletype=1, resolution=res, **options)


def export_ome_tiff(result: SlideResult, path: str | os.PathLike, *, level: str = "patch",
                    weighting: str = "local", value: str = "attention", class_index: int | str = 1,
                    tile: int = 256, overwrite: bool = False) -> Path:
    """Write a heatmap as a tiled, pyramidal float32 OME-TIFF; return the path.

    PhysicalSizeX/Y (µm) are set when the result knows its MPP (heatmap pixel =
    ``scale * mpp``); the TIFF resolution tags say the same in pixels per cm.
    """
    if tile <= 0 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, not {tile}")
    heatmap = result.heatmap(level, weighting, value, class_index)
    pyramid = heatmap.pyramid(min_size=tile)
    own = heatmap_metadata(result, heatmap, len(pyramid))
    with atomic_path(path, overwrite=overwrite) as tmp:
        try:
            _tifffile_write(
                tmp, [h.data for h in pyramid], tile, heatmap.scale_um,
                _image_name(result, heatmap), _description(result, heatmap), own,
            )
        except (OSError, ResultsError):
            raise
        except Exception as exc:  # tifffile/imagecodecs errors
            raise ResultsError(
                f"{path}: cannot write the OME-TIFF ({type(exc).__name__}: {exc})"
            ) from exc
    return Path(path)


# --------------------------------------------------------------------------- OME-Zarr


def _zarr_write_ngff(
    folder: Path, levels: list[np.ndarray], chunk: int, attrs: dict[str, Any]
) -> None:
    """All zarr calls: an NGFF 0.4 image = zarr v2 group with arrays "0", "1", ..."""
    import numcodecs  # zarr's own dependency; NGFF 0.4 readers expect v2 codecs
    import zarr

    group = zarr.open_group(str(folder), mode="w", zarr_format=2)
    compressor = numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    for k, arr in enumerate(levels):
        chunks = (min(chunk, max(1, arr.shape[0])), min(chunk, max(1, arr.shape[1])))
        zarray = group.create_array(
            str(k),
            shape=arr.shape,
            dtype=arr.dtype,
            chunks=chunks,
            fill_value=np.nan,
            compressors=compressor,
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
        zarray[...] = arr
    group.attrs.update(attrs)  # last: the metadata that makes it an image


def export_ome_zarr(result: SlideResult, path: str | os.PathLike, *, level: str = "patch",
                    weighting: str = "local", value: str = "attention", class_index: int | str = 1,
                    chunk: int = 256, overwrite: bool = False) -> Path:
    """Write a heatmap as an OME-Zarr (NGFF 0.4, zarr v2) multiscale image; return the path.

    Axes ``y, x``; coordinateTransformations are ``scale`` + ``translation`` in
    micrometres when MPP is known, else in level-0 pixels.  The translation is the
    centre of pixel ``[0, 0]`` in a frame where level-0 slide pixel ``i`` is centred
    at ``i`` (times MPP): napari's convention, so the heatmap overlays a slide layer
    shown at ``scale = mpp`` (or 1) with no translate.  Written in a temporary
    folder and renamed; ``overwrite=True`` replaces only a previous export of ours.
    """
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, not {chunk}")
    heatmap = result.heatmap(level, weighting, value, class_index)
    pyramid = heatmap.pyramid(min_size=chunk)
    units = "um" if heatmap.mpp is not None else "px"
    datasets = []
    for k, h in enumerate(pyramid):
        scale, translate = h.layer_transform(units, pixel_centres=True)
        datasets.append(
            {
                "path": str(k),
                "coordinateTransformations": [
                    {"type": "scale", "scale": [float(v) for v in scale]},
                    {"type": "translation", "translation": [float(v) for v in translate]},
                ],
            }
        )
    axis_unit = {"unit": "micrometer"} if units == "um" else {}
    multiscales = [
        {
            "version": "0.4",
            "name": _image_name(result, heatmap),
            "axes": [
                {"name": "y", "type": "space", **axis_unit},
                {"name": "x", "type": "space", **axis_unit},
            ],
            "datasets": datasets,
            "type": "mean",
            "metadata": {"description": "NaN-aware 2x2 mean of the level above",
                         "image": _description(result, heatmap)},
        }
    ]
    own = heatmap_metadata(result, heatmap, len(pyramid))
    own["units"] = "micrometer" if units == "um" else "level-0 pixel"
    own["complete"] = True
    attrs, _ = strict_json({"multiscales": multiscales, METADATA_KEY: own})
    with atomic_dir(path, overwrite=overwrite, replace_check=ome_zarr_replace_check,
                    stale_check=_partial_ome_zarr_check) as tmp:
        try:
            _zarr_write_ngff(tmp, [h.data for h in pyramid], chunk, attrs)
        except (OSError, ResultsError):
            raise
        except Exception as exc:
            raise ResultsError(
                f"{path}: cannot write the OME-Zarr ({type(exc).__name__}: {exc})"
            ) from exc
    return Path(path)


_V2_FILE = re.compile(r"^(\.zgroup|\.zattrs|\d+/\.zarray|\d+/\.zattrs|\d+(/\d+)+)$")


def ome_zarr_replace_check(path: Path) -> str | None:
    """None if *path* is an OME-Zarr heatmap written by :func:`export_ome_zarr` and
    nothing else; otherwise the reason it must not be deleted."""
    import json

    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return "it is not a folder"
    try:
        attrs = json.loads((path / ".zattrs").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "it is not an OME-Zarr heatmap written by napari-mran (no readable .zattrs)"
    own = attrs.get("napari_mran") if isinstance(attrs, dict) else None
    if not isinstance(own, dict) or own.get("format") != HEATMAP_FORMAT:
        return "it is not an OME-Zarr heatmap written by napari-mran"
    foreign = []
    for root, dirs, files in os.walk(path):
        for d in dirs:
            if os.path.islink(os.path.join(root, d)):
                foreign.append(os.path.join(root, d))
        for f in files:
            rel = Path(root, f).relative_to(path).as_posix()
            if not _V2_FILE.match(rel):
                foreign.append(rel)
    if foreign:
        return "it holds files that are not part of the heatmap (" + ", ".join(foreign[:5]) + ")"
    return None


def _partial_ome_zarr_check(path: Path) -> str | None:
    """None when *path* (a stale ``.partial-`` folder of a killed export) holds only
    what :func:`export_ome_zarr` writes, so it may be deleted."""
    import json

    if path.is_symlink() or not path.is_dir():
        return "it is not a folder"
    if (path / ".zattrs").is_file():
        try:
            attrs = json.loads((path / ".zattrs").read_text(encoding="utf-8"))
            if attrs.get(METADATA_KEY, {}).get("format") != HEATMAP_FORMAT:
                raise ValueError("foreign")
        except (OSError, ValueError, AttributeError):
            return "it is not an OME-Zarr heatmap written by napari-mran"
    for root, dirs, files in os.walk(path):
        if any(os.path.islink(os.path.join(root, d)) for d in dirs):
            return "it holds a symbolic link"
        for f in files:
            rel = Path(root, f).relative_to(path).as_posix()
            m = _ZARR_TEMP.match(rel)
            if not _V2_FILE.match(m["base"] if m else rel):
                return f"it holds files that are not part of a heatmap ({rel})"
    return None


# zarr's own temporary names (<key>.<uuid4 hex>.partial) inside a killed export
_ZARR_TEMP = re.compile(r"^(?P<base>.+?)\.[0-9a-f]{32}\.partial$")


# --------------------------------------------------------------------------- reading back


def read_heatmap_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """napari-mran's metadata of a heatmap written by :func:`export_ome_tiff` or
    :func:`export_ome_zarr`, or None for any other file or folder (never raises)."""
    import json

    path = Path(path)
    try:
        if path.is_dir():
            attrs = json.loads((path / ".zattrs").read_text(encoding="utf-8"))
            own = attrs.get(METADATA_KEY) if isinstance(attrs, dict) else None
        elif path.is_file():
            own = _ome_tiff_metadata(path)
        else:
            return None
    except Exception:  # noqa: BLE001 - anything unreadable is simply not ours
        return None
    if not isinstance(own, dict) or own.get("format") != HEATMAP_FORMAT:
        return None
    return own


def _ome_tiff_metadata(path: Path) -> dict[str, Any] | None:
    import json
    import xml.etree.ElementTree as ET

    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.is_ome:
            return None
        xml = tif.ome_metadata
    if not xml or HEATMAP_FORMAT not in xml:
        return None
    root = ET.fromstring(xml)
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] != "MapAnnotation" or el.get("Namespace") != HEATMAP_FORMAT:
            continue
        for m in el.iter():
            if m.tag.rsplit("}", 1)[-1] == "M" and m.get("K") == METADATA_KEY:
                return json.loads(m.text or "")
    return None


def read_heatmap_levels(path: str | os.PathLike) -> list[Any]:
    """The pyramid levels of a heatmap export, full resolution first: numpy arrays
    (OME-TIFF, read now) or lazy zarr arrays (OME-Zarr)."""
    import json

    path = Path(path)
    if path.is_dir():
        import zarr

        attrs = json.loads((path / ".zattrs").read_text(encoding="utf-8"))
        group = zarr.open_group(str(path), mode="r")
        return [group[d["path"]] for d in attrs["multiscales"][0]["datasets"]]
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return [np.asarray(level.asarray()) for level in tif.series[0].levels]


def heatmap_geometry(meta: dict[str, Any]) -> Heatmap:
    """An empty :class:`Heatmap` with the level-0 geometry recorded in *meta* (for
    placing the export over its slide)."""
    mpp = meta.get("mpp")
    try:
        sy, sx = (float(v) for v in meta["scale_level0_px"])
        ty, tx = (float(v) for v in meta["translate_level0_px"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultsError(f"heatmap metadata: no (y, x) scale and translate "
                           f"({type(exc).__name__}: {exc})") from None
    return Heatmap(
        data=np.zeros((0, 0), np.float32),
        scale=(sy, sx),
        translate=(ty, tx),
        level=str(meta.get("level", "bag")),
        weighting=str(meta.get("weighting", "local")),
        value=str(meta.get("value", "attention")),
        class_index=meta.get("class_index"),
        class_name=meta.get("class_name"),
        mpp=None if mpp is None else (float(mpp[0]), float(mpp[1])),
    )
