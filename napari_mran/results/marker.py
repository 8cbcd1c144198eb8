"""The completion marker of a results store: written last, it holds the checksums of
every array and attribute (version 2: group attribute ``napari_mran_checksums``;
version 1: a ``COMPLETE.json`` file, arrays only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ResultsError
from .schema import ATTRS_KEY, CHECKSUMS_KEY, MARKER_NAME, RESULTS_FORMAT, RESULTS_VERSION
from .strict import canonical_sha256, short, strict_loads
from .zarr_io import zarr_update_attrs

__all__ = ["legacy_marker", "mark_complete", "marker_body", "verify_marker"]


def marker_body(arrays: dict[str, dict[str, Any]], own: dict[str, Any],
                provenance: dict[str, Any]) -> dict[str, Any]:
    """The completion marker of a version-2 store (without its own ``sha256``)."""
    return {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "arrays": arrays,
        "attributes": {
            ATTRS_KEY: {k: canonical_sha256(v) for k, v in own.items() if k != "complete"},
            "provenance": canonical_sha256(provenance),
        },
    }


def mark_complete(folder: Path, own: dict[str, Any], marker: dict[str, Any]) -> None:
    """The last write before the rename: attribute ``complete: true`` and the
    completion marker (with the checksum of its own canonical JSON), in one update of
    the group's zarr.json."""
    marker = {**marker, "sha256": canonical_sha256(marker)}
    zarr_update_attrs(folder, {ATTRS_KEY: {**own, "complete": True}, CHECKSUMS_KEY: marker})


def verify_marker(path: Path, attrs: dict[str, Any]) -> dict[str, Any]:
    """Check the version-2 completion marker and that it covers every attribute as
    written; return its ``arrays`` table."""
    own = attrs[ATTRS_KEY]
    marker = attrs.get(CHECKSUMS_KEY)
    if marker is None or own.get("complete") is not True:
        raise ResultsError(
            f"{path}: incomplete results store (no completion marker): the write was "
            "interrupted or the folder was copied partially; analyse the slide again"
        )
    table, hashes = _own_checksum(path, marker)
    extra = sorted(set(attrs) - {ATTRS_KEY, "provenance", CHECKSUMS_KEY})
    if extra:
        raise ResultsError(
            f"{path}: group attribute(s) {extra} were added after the store was written "
            "(not covered by its checksums)"
        )
    _check_own_attributes(path, own, hashes[ATTRS_KEY])
    if "provenance" not in attrs or canonical_sha256(attrs["provenance"]) != hashes.get(
        "provenance"
    ):
        raise ResultsError(
            f"{path}: attribute provenance does not match the store's checksum (edited or "
            "corrupt); run the analysis again"
        )
    return table


def _own_checksum(path: Path, marker: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The marker's ``arrays`` and ``attributes`` tables, once its own sha256 matches."""
    try:
        table = marker["arrays"]
        hashes = marker["attributes"]
        if (marker.get("format") != RESULTS_FORMAT or marker.get("version") != RESULTS_VERSION
                or not isinstance(table, dict) or not isinstance(hashes, dict)
                or not isinstance(hashes.get(ATTRS_KEY), dict)):
            raise ValueError("unexpected content")
        body = {k: marker[k] for k in ("format", "version", "arrays", "attributes")}
        ok = canonical_sha256(body) == marker.get("sha256")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ResultsError(
            f"{path}: corrupt completion marker (attribute {CHECKSUMS_KEY}: {exc})"
        ) from None
    if not ok:
        raise ResultsError(
            f"{path}: the completion marker does not match its own checksum (attribute "
            f"{CHECKSUMS_KEY} was edited or is corrupt)"
        )
    return table, hashes


def _check_own_attributes(path: Path, own: dict[str, Any], own_hashes: dict[str, Any]) -> None:
    """Every ``napari_mran`` attribute (but ``complete``) is listed and matches."""
    for key in sorted(set(own) | set(own_hashes)):
        if key == "complete":
            continue
        if key not in own_hashes:
            raise ResultsError(
                f"{path}: attribute {ATTRS_KEY}.{key} was added after the store was written "
                "(not covered by its checksums)"
            )
        if key not in own:
            raise ResultsError(f"{path}: attribute {ATTRS_KEY}.{key} is missing")
        if canonical_sha256(own[key]) != own_hashes[key]:
            raise ResultsError(
                f"{path}: attribute {ATTRS_KEY}.{key} does not match the store's checksum "
                f"(edited or corrupt: {short(own[key])}); run the analysis again"
            )


def legacy_marker(path: Path, own: dict[str, Any]) -> dict[str, Any]:
    """The ``arrays`` table of a version-1 store's COMPLETE.json."""
    marker_path = path / MARKER_NAME
    if not marker_path.is_file() or own.get("complete") is not True:
        raise ResultsError(f"{path}: incomplete version-1 results store (no {MARKER_NAME})")
    try:
        marker = strict_loads(marker_path.read_text(encoding="utf-8"))
        table = marker["arrays"]
        if marker.get("format") != RESULTS_FORMAT or not isinstance(table, dict):
            raise ValueError("unexpected content")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ResultsError(f"{path}: corrupt completion marker {MARKER_NAME} ({exc})") from exc
    return table
