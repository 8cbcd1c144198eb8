"""Whether the store at an output name may be skipped, must be replaced or set aside
(docs/reliability.md fact 11, rows 15, 17): never decided on mere existence."""

from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
from pathlib import Path
from typing import Any

from .slides import slide_fingerprint

__all__ = ["COHORT_KEY", "set_aside", "store_status"]

#: provenance block written into every store made by ``napari-mran predict``
COHORT_KEY = "cohort"


def _store_attrs(store: Path) -> dict[str, Any] | None:
    """The attributes of a folder's zarr.json when it claims to be one of our stores."""
    from ..results import ATTRS_KEY, RESULTS_FORMAT

    try:
        meta = json.loads((store / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    if not isinstance(attrs, dict):
        return None
    own = attrs.get(ATTRS_KEY)
    if not isinstance(own, dict) or own.get("format") != RESULTS_FORMAT:
        return None
    return attrs


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def store_status(store: str | os.PathLike, *, model_sha256: str | None,
                 options: dict[str, Any] | None, slide: str | os.PathLike | None
                 ) -> tuple[str, str]:
    """Classify an output name: ``(status, reason)``.

    ``missing``: nothing there.  ``foreign``: something that is not one of our stores
    (never touched).  ``invalid``: one of our stores that fails verification (partial,
    corrupt, modified).  ``different``: a verified store made by another model, with
    other options (when *options* is given: :meth:`AnalysisOptions.key`) or from
    another slide file.  ``valid``: verified and made the same way (safe to skip).
    """
    from ..results import verify_store

    store = Path(store)
    if not os.path.lexists(store):
        return "missing", ""
    if store.is_symlink() or not store.is_dir():
        return "foreign", "exists and is not a results store folder"
    attrs = _store_attrs(store)
    if attrs is None:
        return "foreign", "exists and is not a napari-mran results store"
    reason = verify_store(store)
    if reason is not None:
        return "invalid", reason
    why = _made_differently(_dict(attrs.get("provenance")), model_sha256, options, slide)
    return ("different", why) if why else ("valid", "")


def _made_differently(prov: dict[str, Any], model_sha256: str | None,
                      options: dict[str, Any] | None, slide: str | os.PathLike | None) -> str:
    """Why a verified store was made by another model, options or slide file ("" if not)."""
    block = prov.get(COHORT_KEY)
    stored_sha = _dict(block).get("model_sha256") or _dict(prov.get("model")).get("sha256")
    if model_sha256 is None or stored_sha != model_sha256:
        return f"was made by another model (sha256 {(stored_sha or 'unknown')[:12]}...)"
    if options is not None:
        if not isinstance(block, dict):
            return "was not made by napari-mran predict (its options are not recorded)"
        if block.get("options") != options:
            theirs = block.get("options") or {}
            diff = sorted(k for k in set(theirs) | set(options) if theirs.get(k) != options.get(k))
            return f"was made with other analysis options ({', '.join(diff)})"
    if slide is not None:
        fp = slide_fingerprint(slide)
        sp = _dict(prov.get("slide"))
        if (fp["bytes"] is None or sp.get("bytes") != fp["bytes"]
                or sp.get("sha256_first_mb") != fp["sha256_first_mb"]):
            return "was made from a different slide file (size or content differ)"
    return ""


def set_aside(store: Path) -> Path:
    """Rename an invalid store to ``<name>.invalid-<time>-<random>`` (never deleted)."""
    stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    target = store.with_name(f"{store.name}.invalid-{stamp}-{secrets.token_hex(2)}")
    os.rename(store, target)
    return target
