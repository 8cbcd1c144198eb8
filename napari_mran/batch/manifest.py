"""``mran-cohort.json``: what made the stores of a cohort folder (model sha256,
options, slide paths -> store names), and finding a slide's store by it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..vocab import STORE_SUFFIX, file_stem
from .common import now
from .outputs import write_json

__all__ = ["MANIFEST_FORMAT", "MANIFEST_NAME", "MANIFEST_VERSION", "find_store",
           "read_manifest", "write_manifest"]

MANIFEST_NAME = "mran-cohort.json"
MANIFEST_FORMAT = "napari-mran-cohort"
MANIFEST_VERSION = 1


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """Our manifest; None when absent; ``{}`` when the file is not ours (or unreadable)."""
    path = folder / MANIFEST_NAME
    if not os.path.lexists(path):
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        return {}
    return data


def write_manifest(out: Path, model_path: str, model_sha: str, options: dict[str, Any],
                   slides: list[str], names: list[str], summary: dict[str, Any] | None) -> None:
    """Write (atomically) the manifest of *out*: the slides of this run added to those
    of earlier runs whose stores are still there."""
    previous = read_manifest(out) or {}
    entries = {e["abspath"]: e for e in previous.get("slides", [])
               if isinstance(e, dict) and isinstance(e.get("abspath"), str)
               and os.path.lexists(out / str(e.get("store", "")))}
    for s, n in zip(slides, names):
        entries[s] = {"abspath": s, "name": os.path.basename(s), "store": n}
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "updated": now(),
        "model": {"path": model_path, "sha256": model_sha},
        "options": options,
        "slides": list(entries.values()),
        "last_run": summary,
    }
    write_json(out / MANIFEST_NAME, manifest, overwrite=True)


def find_store(results_dir: str | os.PathLike, slide: str | os.PathLike) -> Path | None:
    """The store of *slide* in a folder written by ``predict_cohort`` (its manifest
    first, then ``<stem>.mran.zarr``), or None.  The store is not verified here."""
    folder = Path(results_dir)
    abspath = os.path.abspath(slide)
    manifest = read_manifest(folder)
    if manifest is not None:
        for entry in manifest.get("slides", []):
            if isinstance(entry, dict) and entry.get("abspath") == abspath:
                name = entry.get("store")
                if isinstance(name, str) and "/" not in name and "\\" not in name:
                    return folder / name
    candidate = folder / ((file_stem(abspath) or "slide") + STORE_SUFFIX)
    return candidate if os.path.lexists(candidate) else None
