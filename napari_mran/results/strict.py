"""Strict JSON: plain JSON types only, no NaN/Inf, canonical text for checksums."""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any

import numpy as np

from ..errors import ResultsError

__all__ = ["canonical_sha256", "dumps", "short", "strict_json", "strict_loads"]


def strict_json(obj: Any, where: str = "") -> tuple[Any, list[str]]:
    """Copy *obj* into plain strict-JSON types; NaN/Inf become None.

    Returns ``(clean, replaced)`` where ``replaced`` lists the JSON pointers of the
    values that were non-finite.  numpy scalars/arrays, tuples and paths are
    converted; dict keys must be strings (numbers/bools are converted to strings).
    Anything else raises ResultsError naming the location.
    """
    replaced: list[str] = []

    def conv(value: Any, ptr: str) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, np.bool_):
            return bool(value)
        if isinstance(value, (int, np.integer)):
            return int(value)
        if isinstance(value, (float, np.floating)):
            f = float(value)
            if math.isfinite(f):
                return f
            replaced.append(ptr or "/")
            return None
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, np.ndarray):
            return conv(value.tolist(), ptr)
        if isinstance(value, dict):
            return {key: conv(v, f"{ptr}/{_escape_pointer(key)}")
                    for key, v in ((_key(k, where, ptr), v) for k, v in value.items())}
        if isinstance(value, (list, tuple)):
            return [conv(v, f"{ptr}/{i}") for i, v in enumerate(value)]
        raise ResultsError(
            f"{where}{ptr or '/'}: value of type {type(value).__name__} is not JSON-serialisable"
        )

    return conv(obj, ""), replaced


def _key(k: Any, where: str, ptr: str) -> str:
    """A dict key as a JSON object key (numbers and bools become strings)."""
    if isinstance(k, (bool, int, float, np.integer, np.floating)):
        k = str(k)
    if not isinstance(k, str):
        raise ResultsError(f"{where}{ptr}: key {k!r} is not a string; not JSON-serialisable")
    return k


def _escape_pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` refusing NaN/Infinity, non-ASCII kept."""
    return json.dumps(obj, allow_nan=False, ensure_ascii=False, **kwargs)


def strict_loads(text: str) -> Any:
    """``json.loads`` refusing NaN/Infinity (ValueError)."""
    def reject(constant: str) -> Any:
        raise ValueError(f"non-finite number {constant} (not strict JSON)")

    return json.loads(text, parse_constant=reject)


def canonical_sha256(obj: Any) -> str:
    """sha256 of the canonical JSON text of *obj* (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def short(value: Any, limit: int = 60) -> str:
    """*value* as JSON text, cut to *limit* characters (for messages)."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."
