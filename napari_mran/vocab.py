"""The project's vocabularies, each defined once.

CLI choices, widget combo boxes, API validation and docs all take their words from
here, so that a device, a tissue method or an export kind is spelled one way
everywhere.  Pure Python: importing this module imports nothing heavy.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Sequence
from enum import StrEnum

__all__ = [
    "AMP_MODES", "AmpMode", "COLOUR_SCALINGS", "DEVICES", "EDGE_POLICIES", "EXPORT_KINDS",
    "EdgePolicy", "ExportKind", "LEVELS", "Level", "OPENSLIDE_ONLY_EXTENSIONS",
    "PIXELS_PER_BAG", "SLIDE_EXTENSIONS", "STAIN_NORMALIZATIONS", "STORE_SUFFIX",
    "TISSUE_METHODS", "TissueMethod",
    "WEIGHTINGS", "Weighting", "check_choice", "export_kind", "file_stem", "parse_device",
    "store_names",
]


class AmpMode(StrEnum):
    """Reduced precision of the CNN: ``auto`` = bf16/fp16 autocast on CUDA only."""

    AUTO = "auto"
    BF16 = "bf16"
    FP16 = "fp16"
    OFF = "off"


class TissueMethod(StrEnum):
    """How tissue bags are found (docs/edge-bags.md, napari_mran.tissue)."""

    REFERENCE = "reference"  # the authors' white rule at <= 4x on candidate bags (fast)
    EXACT = "exact"          # the same rule on level-0 pixels of every bag
    OTSU = "otsu"            # saturation + Otsu on the smallest level


class EdgePolicy(StrEnum):
    """Partial bags at the right and bottom edges of a slide (docs/edge-bags.md)."""

    PAD = "pad"    # analysed, white background outside the slide (default)
    DROP = "drop"  # left out, as the authors did


class Level(StrEnum):
    """The three scales of MRAN's attention."""

    BAG = "bag"
    PATCH = "patch"
    CELL = "cell"


class Weighting(StrEnum):
    """Local attention (gamma, alpha, beta) or global (gamma, gamma*alpha, gamma*alpha*beta)."""

    LOCAL = "local"
    GLOBAL = "global"


class ExportKind(StrEnum):
    """What ``napari-mran export`` / the Export dialog can write (CLI spelling)."""

    GEOJSON = "geojson"
    CSV = "csv"
    OME_TIFF = "ome-tiff"
    OME_ZARR = "ome-zarr"
    PROVENANCE = "provenance"
    OVERVIEW = "overview"
    REVIEWS = "reviews"  # a store's review marks (docs/review.md)


AMP_MODES = tuple(m.value for m in AmpMode)
TISSUE_METHODS = tuple(m.value for m in TissueMethod)
EDGE_POLICIES = tuple(m.value for m in EdgePolicy)
LEVELS = tuple(m.value for m in Level)
WEIGHTINGS = tuple(m.value for m in Weighting)
EXPORT_KINDS = tuple(m.value for m in ExportKind)
#: stain normalisation of the bags before the model (docs/stain.md)
STAIN_NORMALIZATIONS = ("off", "macenko", "reinhard")
#: how the attention layers' colours are scaled in napari
COLOUR_SCALINGS = ("minmax", "percentile", "fixed")
#: devices by name; ``cuda:N`` picks one GPU (parse_device)
DEVICES = ("auto", "cpu", "cuda", "mps")
#: heatmap pixels per bag side at each level (8 x 8 patches of 4 x 4 cells)
PIXELS_PER_BAG = {"bag": 1, "patch": 8, "cell": 32}

#: results stores end with this
STORE_SUFFIX = ".mran.zarr"
#: files only the OpenSlide backend reads (multi-file or non-TIFF formats)
OPENSLIDE_ONLY_EXTENSIONS = (".mrxs", ".vms", ".vmu", ".dcm", ".bif", ".svslide", ".scn")
#: what a folder of slides is searched for (``predict FOLDER``, the napari reader)
SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".qptiff", ".btf",
                    *OPENSLIDE_ONLY_EXTENSIONS)
#: multi-dot endings that form one extension for file stems
_STEM_SUFFIXES = (".ome.tiff", ".ome.tif", STORE_SUFFIX)

_CUDA_N = re.compile(r"cuda:(\d{1,3})")


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """``value`` as a string when it is one of ``choices``; ValueError naming them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def parse_device(text: object) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (``gpu`` means ``cuda``);
    ValueError otherwise.  Whether the device exists is checked when it is used."""
    value = str(text).strip().lower() if isinstance(text, str) else text
    if value == "gpu":
        return "cuda"
    if isinstance(value, str) and (value in DEVICES or _CUDA_N.fullmatch(value)):
        return value
    raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, not {text!r}")


def export_kind(text: str) -> ExportKind:
    """``"ome_tiff"``, ``"OME-TIFF"`` ... -> ExportKind; ValueError naming the kinds."""
    key = str(text).strip().lower().replace("_", "-")
    try:
        return ExportKind(key)
    except ValueError:
        raise ValueError(f"unknown export format {text!r}; choose from "
                         f"{', '.join(EXPORT_KINDS)}") from None


def file_stem(path: str | os.PathLike) -> str:
    """File name without its extension (``.ome.tif(f)`` and ``.mran.zarr`` count as one)."""
    name = os.path.basename(os.fspath(path).rstrip("/\\"))
    for ext in _STEM_SUFFIXES:
        if name.lower().endswith(ext):
            return name[: -len(ext)] or name
    return os.path.splitext(name)[0] or name


def store_names(slides: Sequence[str | os.PathLike]) -> list[str]:
    """``<stem>.mran.zarr`` per slide -- the one store-naming policy (CLI, cohort, widget).

    Stems shared by several slides (compared case-insensitively) get ``-<8 hex of the
    SHA-1 of the absolute path>``, so a name depends neither on the order nor on the
    other slides."""
    stems = [file_stem(s) or "slide" for s in slides]
    counts = Counter(s.casefold() for s in stems)
    names = []
    for path, stem in zip(slides, stems):
        if counts[stem.casefold()] > 1:
            digest = hashlib.sha1(os.path.abspath(os.fspath(path)).encode("utf-8",
                                                                         "surrogateescape"))
            stem = f"{stem}-{digest.hexdigest()[:8]}"
        names.append(stem + STORE_SUFFIX)
    return names
