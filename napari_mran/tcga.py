"""labels.csv for a folder of TCGA slides, from their file names (``napari-mran tcga-labels``).

A TCGA slide file is named after its barcode, e.g. ``TCGA-A1-A0SB-01Z-00-DX1.<uuid>.svs``
(GDC downloads put each file in a folder named after its file UUID)::

    TCGA-A1-A0SB-01Z-00-DX1
    |----------| ||
    case (12)    sample type: characters 14-15

* case = the first 12 characters (``TCGA-A1-A0SB``): the patient, used to keep all of a
  patient's slides in one split;
* sample type 01-09 = tumour (label 1), 10-19 = normal (label 0), 20-29 = control
  (skipped); any other code is skipped as unknown.

The result is the ``slide,label,case`` table that :func:`napari_mran.labels.read_labels_table`
reads (slide paths relative to the folder), with a report of every file left out and why:
not a slide file, not a TCGA name, control sample, unknown sample type, or a duplicate of
a slide already listed (the same barcode twice, e.g. downloaded twice).
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ._atomic import atomic_file
from .vocab import SLIDE_EXTENSIONS
from .errors import LabelsError

__all__ = [
    "SKIP_REASONS",
    "TcgaBarcode",
    "TcgaLabels",
    "TcgaRow",
    "TcgaSkip",
    "parse_tcga_name",
    "sample_kind",
    "tcga_labels",
    "write_labels_csv",
]

#: Why a file was left out: reason code -> explanation used in reports.
SKIP_REASONS = {
    "not_slide": "not a slide file (by its extension)",
    "not_tcga": "not a TCGA slide name (TCGA-XX-XXXX-<sample type>...)",
    "control": "control sample (sample type 20-29)",
    "unknown_type": "sample type neither tumour (01-09), normal (10-19) nor control (20-29)",
    "duplicate": "the same TCGA barcode as a slide already listed",
}

# TCGA-<TSS, 2>-<participant, 4>-<sample type, 2 digits><vial letter>...
_BARCODE = re.compile(r"^(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})-(\d{2})([A-Z])?(?:-[A-Z0-9-]*)?$")


@dataclass(frozen=True)
class TcgaBarcode:
    """What a TCGA file name says."""

    barcode: str       # the file name up to its first '.', upper case (TCGA-A1-A0SB-01Z-00-DX1)
    case: str          # first 12 characters (TCGA-A1-A0SB)
    sample_type: int   # characters 14-15 (1 = primary solid tumour, 11 = solid tissue normal, ...)

    @property
    def kind(self) -> str:
        """``"tumour"``, ``"normal"``, ``"control"`` or ``"unknown"``."""
        return sample_kind(self.sample_type)


def sample_kind(sample_type: int) -> str:
    """TCGA sample type code -> ``"tumour"`` (1-9), ``"normal"`` (10-19), ``"control"``
    (20-29) or ``"unknown"``."""
    if 1 <= sample_type <= 9:
        return "tumour"
    if 10 <= sample_type <= 19:
        return "normal"
    if 20 <= sample_type <= 29:
        return "control"
    return "unknown"


def parse_tcga_name(name: str) -> TcgaBarcode | None:
    """The barcode of a TCGA slide file name (any folder part is ignored), or None when
    the name does not start with a TCGA sample barcode."""
    barcode = os.path.basename(name).split(".", 1)[0].upper()
    match = _BARCODE.match(barcode)
    if match is None:
        return None
    return TcgaBarcode(barcode=barcode, case=match.group(1), sample_type=int(match.group(2)))


@dataclass(frozen=True)
class TcgaRow:
    """One labelled slide."""

    slide: str         # path relative to the folder, '/'-separated (as written in labels.csv)
    label: int
    case: str
    barcode: str
    sample_type: int


@dataclass(frozen=True)
class TcgaSkip:
    """One file left out."""

    slide: str         # path relative to the folder
    reason: str        # a key of SKIP_REASONS
    detail: str        # the explanation for this file


@dataclass
class TcgaLabels:
    """The labels of a folder of TCGA slides and what was left out."""

    folder: Path
    rows: list[TcgaRow] = field(default_factory=list)
    skipped: list[TcgaSkip] = field(default_factory=list)
    tumour_label: int = 1
    normal_label: int = 0

    def counts(self) -> dict[str, object]:
        """``{"slides", "tumour", "normal", "cases", "skipped": {reason: n}}``."""
        return {
            "slides": len(self.rows),
            "tumour": sum(1 for r in self.rows if r.label == self.tumour_label),
            "normal": sum(1 for r in self.rows if r.label == self.normal_label),
            "cases": len({r.case for r in self.rows}),
            "skipped": dict(Counter(s.reason for s in self.skipped)),
        }

    def report(self, max_listed: int = 10) -> str:
        """A human-readable summary: counts, then every skip reason with its files."""
        c = self.counts()
        head = (f"{self.folder}: {c['slides']} slides of {c['cases']} cases labelled "
                f"({c['tumour']} tumour = {self.tumour_label}, {c['normal']} normal = {self.normal_label}); "
                f"{len(self.skipped)} files skipped")
        lines = [head]
        for reason, text in SKIP_REASONS.items():
            items = [s for s in self.skipped if s.reason == reason]
            if not items:
                continue
            lines.append(f"  skipped, {text}: {len(items)}")
            for s in items[:max_listed]:
                lines.append(f"    {s.slide}: {s.detail}")
            if len(items) > max_listed:
                lines.append(f"    ... and {len(items) - max_listed} more")
        if self.rows and not (c["tumour"] and c["normal"]):
            lines.append("  note: only one class was found; training needs both tumour and normal slides")
        return "\n".join(lines)


def _files(folder: Path, recursive: bool) -> list[str]:
    """Relative '/'-separated paths of the files under folder (hidden names left out), sorted."""
    out: list[str] = []
    if recursive:
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            rel = os.path.relpath(root, folder)
            for name in files:
                if not name.startswith("."):
                    out.append(name if rel == "." else f"{Path(rel).as_posix()}/{name}")
    else:
        out = [p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    return sorted(out)


def tcga_labels(folder: str | os.PathLike, *, recursive: bool = True, tumour_label: int = 1,
                normal_label: int = 0) -> TcgaLabels:
    """Label the TCGA slide files under ``folder`` from their names.

    Args:
        folder: the slides folder (what ``napari-mran train --slides`` is given).
        recursive: also look in sub-folders (GDC downloads have one folder per file).
        tumour_label, normal_label: the class indices written for tumour (sample type
            01-09) and normal (10-19) slides; by default 1 and 0, matching the class names
            ``normal,tumour`` that training uses for two classes.

    Returns:
        :class:`TcgaLabels` with one row per slide (sorted by path) and one
        :class:`TcgaSkip` per file left out. Of several files with the same barcode the
        first by path is kept.

    Raises:
        LabelsError: the folder does not exist or the labels are not two distinct
            non-negative integers.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise LabelsError(f"{root}: slides folder not found (or not a folder)")
    for value in (tumour_label, normal_label):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise LabelsError(f"labels must be non-negative integers, got {value!r}")
    if tumour_label == normal_label:
        raise LabelsError(f"the tumour and normal labels must differ (both {tumour_label})")
    result = TcgaLabels(root, tumour_label=tumour_label, normal_label=normal_label)
    seen: dict[str, str] = {}
    for rel in _files(root, recursive):
        if not rel.lower().endswith(SLIDE_EXTENSIONS):
            result.skipped.append(TcgaSkip(rel, "not_slide", SKIP_REASONS["not_slide"]))
            continue
        parsed = parse_tcga_name(rel)
        if parsed is None:
            result.skipped.append(TcgaSkip(rel, "not_tcga", SKIP_REASONS["not_tcga"]))
            continue
        kind = parsed.kind
        if kind == "control":
            result.skipped.append(TcgaSkip(rel, "control", f"control sample (type {parsed.sample_type:02d})"))
            continue
        if kind == "unknown":
            detail = (f"unknown sample type {parsed.sample_type:02d} "
                      "(not 01-09 tumour, 10-19 normal or 20-29 control)")
            result.skipped.append(TcgaSkip(rel, "unknown_type", detail))
            continue
        if parsed.barcode in seen:
            result.skipped.append(TcgaSkip(rel, "duplicate", f"same barcode {parsed.barcode} as {seen[parsed.barcode]}"))
            continue
        seen[parsed.barcode] = rel
        label = tumour_label if kind == "tumour" else normal_label
        result.rows.append(TcgaRow(rel, label, parsed.case, parsed.barcode, parsed.sample_type))
    return result


def write_labels_csv(labels: TcgaLabels, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``slide,label,case`` (UTF-8, one row per slide) atomically to ``path``.

    Raises:
        LabelsError: there is no slide to write.
        OutputExistsError: ``path`` exists and ``overwrite`` is false.
        ResultsError: the file cannot be written (missing folder, read-only, ...).
    """
    if not labels.rows:
        raise LabelsError(f"{labels.folder}: no TCGA tumour or normal slide found; nothing to write\n"
                          + labels.report())
    path = Path(path).expanduser()
    with atomic_file(path, "w", overwrite=overwrite, newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slide", "label", "case"])
        for row in labels.rows:
            writer.writerow([row.slide, row.label, row.case])
    return path
