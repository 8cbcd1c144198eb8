"""labels.csv: the one reader of slide labels (training, evaluation)."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator, Sequence
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
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text), _dialect(text))
    columns = _columns(reader, path)
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    missing: list[str] = []
    try:
        for line_no, raw in enumerate(reader, start=2):
            if not raw or all(not c.strip() for c in raw):
                continue
            row = _row(raw, columns, f"{path}: line {line_no}", root, class_names)
            if row["path"] in seen:
                raise LabelsError(f"{path}: line {line_no}: slide {row['slide']!r} is listed "
                                  f"twice (also on line {seen[row['path']]})")
            seen[row["path"]] = row["line"] = line_no
            if not os.path.isfile(row["path"]):
                missing.append(f"line {line_no}: {row['slide']}")
            rows.append(row)
    except csv.Error as exc:
        raise LabelsError(f"{path}: line {reader.line_num}: {exc}") from None
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise LabelsError(f"{path}: slide file not found in {root}: "
                          + "; ".join(missing[:5]) + more)
    if not rows:
        raise LabelsError(f"{path}: no slides listed")
    return rows


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise LabelsError(f"{path}: labels file not found (or not a file)")
    try:
        if path.stat().st_size > _MAX_LABELS_BYTES:
            raise LabelsError(f"{path}: labels file is larger than {_MAX_LABELS_BYTES >> 20} MiB")
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LabelsError(f"{path}: not UTF-8 text (save the labels as UTF-8 CSV)") from None
    except OSError as exc:
        raise LabelsError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _dialect(text: str) -> type[csv.Dialect] | csv.Dialect:
    """Comma, semicolon or tab separated (as sniffed), else Excel's CSV."""
    try:
        return csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        return csv.excel


def _columns(reader: Iterator[list[str]], path: Path) -> tuple[int, int, int | None, int]:
    """``(slide, label, case or None, number of columns)`` from the header line."""
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
    return (cols.index("slide"), cols.index("label"),
            cols.index("case") if "case" in cols else None, len(cols))


def _row(raw: list[str], columns: tuple[int, int, int | None, int], where: str, root: Path,
         class_names: Sequence[str] | None) -> dict[str, Any]:
    """One checked row: ``slide``, ``path``, ``label``, ``case`` (``line`` added later)."""
    i_slide, i_label, i_case, n_cols = columns
    if len(raw) < n_cols:
        raw = raw + [""] * (n_cols - len(raw))
    slide = raw[i_slide].strip()
    if not slide:
        raise LabelsError(f"{where}: empty slide name")
    if os.path.isabs(slide) or slide.startswith(("~", "\\")):
        raise LabelsError(f"{where}: slide {slide!r} must be a path relative to {root}")
    root_abs = os.path.abspath(root)
    full = os.path.normpath(os.path.join(root_abs, slide))
    if os.path.commonpath([root_abs, full]) != root_abs:
        raise LabelsError(f"{where}: slide {slide!r} points outside {root}")
    label = _label(raw[i_label].strip(), where, class_names)
    case = raw[i_case].strip() if i_case is not None else ""
    return {"slide": slide, "path": full, "label": label, "case": case or slide}


def _label(text: str, where: str, class_names: Sequence[str] | None) -> int:
    n = len(class_names) if class_names is not None else None
    shown = "" if n is None else f"0..{n - 1} = {', '.join(class_names or ())}"
    try:
        label = int(text)
    except ValueError:
        raise LabelsError(f"{where}: label {text!r} is not an integer class "
                          f"index{f' ({shown})' if shown else ''}") from None
    if label < 0:
        raise LabelsError(f"{where}: label {label} is negative")
    if n is not None and label >= n:
        raise LabelsError(f"{where}: label {label} is out of range for the model's "
                          f"{n} classes ({shown})")
    return label
