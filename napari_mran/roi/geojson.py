"""Regions from GeoJSON as QuPath exports annotations (File > Export objects as
GeoJSON): a FeatureCollection, one Feature, a list of Features or a bare geometry;
Polygon and MultiPolygon geometries in level-0 pixels (docs/roi.md)."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from typing import Any

from .region import Region, RoiError, make_region

__all__ = ["AREA_TYPES", "read_geojson", "region_from_geojson"]

AREA_TYPES = ("Polygon", "MultiPolygon")
#: QuPath 0.2's object ids (before ``properties.objectType``)
_QUPATH_IDS = {"PathAnnotationObject": "annotation", "PathDetectionObject": "detection",
               "PathCellObject": "cell", "PathTileObject": "tile",
               "PathTMACoreObject": "tma-core"}
UNCLASSIFIED = "(unclassified)"


def _object_type(feature: dict[str, Any]) -> str:
    props = feature.get("properties")
    kind = props.get("objectType") if isinstance(props, dict) else None
    if isinstance(kind, str):
        return kind.lower()
    fid = feature.get("id")
    return _QUPATH_IDS.get(fid, "annotation") if isinstance(fid, str) else "annotation"


def _class_name(feature: dict[str, Any]) -> str:
    """QuPath's classification: {"name": ..., "color": [...]}, or the older plain string."""
    props = feature.get("properties")
    cls = props.get("classification") if isinstance(props, dict) else None
    if isinstance(cls, dict):
        cls = cls.get("name")
    return cls if isinstance(cls, str) and cls else UNCLASSIFIED


def _features(doc: Any, source: str) -> list[dict[str, Any]]:
    items: Any
    if isinstance(doc, list):
        items = doc
    elif isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        items = doc.get("features")
        if not isinstance(items, list):
            raise RoiError(f"{source}: a FeatureCollection without a 'features' list")
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        items = [doc]
    elif isinstance(doc, dict) and isinstance(doc.get("type"), str) and "coordinates" in doc \
            or isinstance(doc, dict) and doc.get("type") == "GeometryCollection":
        items = [{"type": "Feature", "geometry": doc, "properties": {}}]
    else:
        raise RoiError(f"{source}: not GeoJSON (expected a FeatureCollection, a Feature, a "
                       "list of Features or a geometry)")
    feats = []
    for k, item in enumerate(items):
        if isinstance(item, dict) and item.get("type") != "Feature" and "coordinates" in item:
            item = {"type": "Feature", "geometry": item, "properties": {}}
        if not isinstance(item, dict) or item.get("type") != "Feature":
            raise RoiError(f"{source}: item {k + 1} is not a GeoJSON Feature")
        feats.append(item)
    return feats


def _polygons(geom: Any, label: str, out: list, labels: list, skipped: Counter) -> None:
    """Append the polygons (lists of rings) of a geometry; count the non-areas."""
    if not isinstance(geom, dict):
        return
    kind = geom.get("type")
    if kind == "GeometryCollection":
        for g in geom.get("geometries") or []:
            _polygons(g, label, out, labels, skipped)
    elif kind == "Polygon":
        out.append(geom.get("coordinates") or [])
        labels.append(label)
    elif kind == "MultiPolygon":
        for k, poly in enumerate(geom.get("coordinates") or []):
            out.append(poly or [])
            labels.append(f"{label} part {k + 1}")
    else:
        skipped[str(kind)] += 1


def region_from_geojson(doc: Any, source: str, classes: Iterable[str] = ()) -> Region:
    """The annotations' polygons of a parsed GeoJSON document (``classes``: keep only
    annotations of these QuPath classes; "(unclassified)" names the unclassified)."""
    wanted = tuple(dict.fromkeys(c.strip() for c in classes if c.strip()))
    polys: list = []
    labels: list[str] = []
    found: Counter = Counter()
    ignored: Counter = Counter()
    not_areas: Counter = Counter()
    for k, feat in enumerate(_features(doc, source)):
        kind = _object_type(feat)
        if kind != "annotation":
            ignored[kind] += 1
            continue
        name = _class_name(feat)
        before = len(polys)
        _polygons(feat.get("geometry"), f"feature {k + 1} ({name})", polys, labels, not_areas)
        if len(polys) > before:
            found[name] += 1
            if wanted and name not in wanted:
                del polys[before:], labels[before:]
    notes = [f"ignored {n} {kind} object(s) (only annotations are regions)"
             for kind, n in sorted(ignored.items())]
    notes += [f"ignored {n} {kind} geometr{'y' if n == 1 else 'ies'} (not an area)"
              for kind, n in sorted(not_areas.items())]
    if not polys:
        if wanted and found:
            have = ", ".join(f"{c} ({n})" for c, n in sorted(found.items()))
            raise RoiError(f"{source}: no annotation of class {', '.join(wanted)}; the "
                           f"classes found are: {have}")
        why = "; ".join(notes) if notes else "the file holds no features"
        raise RoiError(f"{source}: no polygon annotations ({why})")
    return make_region(polys, source, wanted, notes, labels)


def read_geojson(path: str | os.PathLike, classes: Iterable[str] = ()) -> Region:
    """The region of a GeoJSON file (QuPath's annotation export); RoiError naming the
    file and the reason when it cannot be used."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        raise RoiError(f"{source}: region file not found") from None
    except IsADirectoryError:
        raise RoiError(f"{source}: is a folder, not a GeoJSON file") from None
    except UnicodeDecodeError:
        raise RoiError(f"{source}: not JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise RoiError(f"{source}: not JSON (line {exc.lineno}: {exc.msg})") from None
    except OSError as exc:
        raise RoiError(f"{source}: cannot read ({exc.strerror or exc})") from None
    return region_from_geojson(doc, source, classes)
