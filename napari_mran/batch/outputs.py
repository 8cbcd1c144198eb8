"""Strict, atomic CSV and JSON outputs of batch runs (formula-safe text, NaN as empty
cells or null) and the ``model`` column they share."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["DEMO_MODEL_LABEL", "model_label", "predicted", "write_csv", "write_json"]

#: the ``model`` column of predictions.csv for results of the bundled demo model
DEMO_MODEL_LABEL = "DEMO model (trained on synthetic slides; not for diagnosis)"


def model_label(model_path: str | None, is_demo: bool) -> str:
    """The ``model`` column: the checkpoint's file name, or the demo model's warning."""
    return DEMO_MODEL_LABEL if is_demo else os.path.basename(model_path or "")


def predicted(probs: Sequence[float] | None) -> int | None:
    """The index of the most probable class (ties: the lowest), or None."""
    if not probs:
        return None
    import numpy as np

    return int(np.argmax(probs))


def _fmt(value: Any) -> str:
    import numpy as np

    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if not np.isfinite(value):
            return ""
        return np.format_float_positional(np.float32(value), unique=True, trim="-")
    return str(value)


def write_csv(path: Path, header: list[str], rows: list[list[Any]], *, overwrite: bool) -> None:
    """Atomic CSV; text cells escaped against formula injection, NaN as empty cells."""
    from .._atomic import atomic_file
    from ..export.table import csv_safe

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([csv_safe(h) for h in header])
    for row in rows:
        # text is escaped (formula injection); numbers are never altered
        writer.writerow([csv_safe(x) if isinstance(x, str) else _fmt(x) for x in row])
    with atomic_file(path, "w", overwrite=overwrite, newline="") as fh:
        fh.write(buf.getvalue())


def write_json(path: Path, obj: Any, *, overwrite: bool) -> None:
    """Atomic strict JSON (NaN/Inf -> null)."""
    from .._atomic import atomic_file
    from ..results import strict_json

    clean, _ = strict_json(obj)
    with atomic_file(path, "w", overwrite=overwrite) as fh:
        fh.write(json.dumps(clean, indent=2, allow_nan=False, ensure_ascii=False) + "\n")
