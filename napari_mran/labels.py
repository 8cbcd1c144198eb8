"""labels.csv: the one reader of slide labels (training, evaluation)."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import LabelsError

_MAX_LABELS_BYTES = 64 << 20


def read_labels_table(labels_csv: str | os.PathLike, slides_dir: str | os.PathLike,
                      class_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Parse and check ``labels.csv``; LabelsError names the file, line and reason.

    ``class_names`` (a model's classes) bounds the labels; without it any integer >= 0
    is accepted (training derives the classes from the labels).

    Returns one dict per row: ``slide`` (as written), ``path`` (absolute), ``label``
    (int), ``case`` (str; the slide itself when the column is absent or empty), ``line``.
    """
    path = Path(labels_csv).expanduser()
    root = Path(slides_dir).expanduser()
    if not root.is_dir():
        raise LabelsError(f"{root}: slides folder not found (or not a folder)")
    if not path.is_file():
        raise LabelsError(f"{path}: labels file not found (or not a file)")
    try:
        if path.stat().st_size > _MAX_LABELS_BYTES:
            raise LabelsError(f"{path}: labels file is larger than {_MAX_LABELS_BYTES >> 20} MiB")
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LabelsError(f"{path}: not UTF-8 text (save the labels as UTF-8 CSV)") from None
    except OSError as exc:
        raise LabelsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    try:
        header = next(reader)
    except StopIteration:
        raise LabelsError(f"{path}: empty file (expected a header: slide,label,case)") from None
    except csv.Error as exc:
        raise LabelsError(f"{path}: line 1: {exc}") from None
    cols = [h.strip().lower() for h in header]
    for need in ("slide", "label"):
        if need not in cols:
            raise LabelsError(f"{path}: line 1: no {need!r} column (header is {header}; "
                              "expected slide,label,case)")
    i_slide, i_label = cols.index("slide"), cols.index("label")
    i_case = cols.index("case") if "case" in cols else None
    n_classes = len(class_names) if class_names is not None else None
    root_abs = os.path.abspath(root)
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    missing: list[str] = []
    try:
        for line_no, raw in enumerate(reader, start=2):
            if not raw or all(not c.strip() for c in raw):
                continue
            where = f"{path}: line {line_no}"
            if len(raw) < len(cols):
                raw = raw + [""] * (len(cols) - len(raw))
            slide = raw[i_slide].strip()
            label_text = raw[i_label].strip()
            if not slide:
                raise LabelsError(f"{where}: empty slide name")
            if os.path.isabs(slide) or slide.startswith(("~", "\\")):
                raise LabelsError(f"{where}: slide {slide!r} must be a path relative to {root}")
            full = os.path.normpath(os.path.join(root_abs, slide))
            if os.path.commonpath([root_abs, full]) != root_abs:
                raise LabelsError(f"{where}: slide {slide!r} points outside {root}")
            try:
                label = int(label_text)
            except ValueError:
                hint = "" if n_classes is None else \
                    f" (0..{n_classes - 1} = {', '.join(class_names)})"
                raise LabelsError(f"{where}: label {label_text!r} is not an integer class "
                                  f"index{hint}") from None
            if label < 0:
                raise LabelsError(f"{where}: label {label} is negative")
            if n_classes is not None and label >= n_classes:
                raise LabelsError(f"{where}: label {label} is out of range for the model's "
                                  f"{n_classes} classes (0..{n_classes - 1} = "
                                  f"{', '.join(class_names)})")
            if full in seen:
                raise LabelsError(f"{where}: slide {slide!r} is listed twice "
                                  f"(also on line {seen[full]})")
            seen[full] = line_no
            if not os.path.isfile(full):
                missing.append(f"line {line_no}: {slide}")
            case = raw[i_case].strip() if i_case is not None else ""
            rows.append({"slide": slide, "path": full, "label": label,
                         "case": case or slide, "line": line_no})
    except csv.Error as exc:
        raise LabelsError(f"{path}: line {reader.line_num}: {exc}") from None
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise LabelsError(f"{path}: slide file not found in {root}: "
                          + "; ".join(missing[:5]) + more)
    if not rows:
        raise LabelsError(f"{path}: no slides listed")
    return rows
