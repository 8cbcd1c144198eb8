"""Small pieces every batch module uses: its error, time stamps, OS error wording,
canonical JSON and the analysis options of a run."""

from __future__ import annotations

import datetime as _dt
import errno
import json
from collections.abc import Mapping
from typing import Any

from ..errors import AnalysisError, MRANError
from ..inference.options import AnalysisOptions

__all__ = ["CohortError", "fold_options", "json_normal", "now", "os_reason"]


class CohortError(MRANError):
    """The cohort run cannot start (bad slide list, unreachable scheduler, ...)."""


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def os_reason(exc: OSError) -> str:
    """Why an OS call failed, in words a user can act on."""
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied or read-only location"
    return exc.strerror or str(exc)


def json_normal(obj: Any) -> Any:
    """*obj* as strict JSON would read it back (sorted keys, NaN -> null)."""
    from ..results import strict_json

    clean, _ = strict_json(obj)
    return json.loads(json.dumps(clean, sort_keys=True, allow_nan=False))


def fold_options(options: AnalysisOptions | None, legacy: Mapping[str, Any]) -> AnalysisOptions:
    """*options* (default: the defaults) with the keyword arguments of the former
    signature (``device=``, ``batch_size=``, ``edge=``, ...) folded in; None values
    leave an option as it is.  TypeError for a name that is not an option,
    AnalysisError for a bad value."""
    if options is not None and not isinstance(options, AnalysisOptions):
        raise TypeError(f"options must be an AnalysisOptions, not {type(options).__name__}")
    names = set(AnalysisOptions.__dataclass_fields__)
    unknown = sorted(set(legacy) - names)
    if unknown:
        raise TypeError(f"unknown analysis option(s): {', '.join(unknown)}")
    given = {k: v for k, v in legacy.items() if v is not None}
    try:
        return (options or AnalysisOptions()).replace(**given)
    except ValueError as exc:
        raise AnalysisError(f"bad analysis option: {exc}") from None
