"""Case-level, stratified, reproducible train/validation/test splits."""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import LabelsError
from ..labels import read_labels_table


@dataclass(frozen=True)
class LabelledSlide:
    slide: str      # path relative to the slides folder (as written in labels.csv)
    label: int
    case: str


def read_labels(labels_csv: str | os.PathLike, slides_dir: str | os.PathLike,
                ) -> list[LabelledSlide]:
    """Rows of ``labels.csv`` (slide,label,case) checked by :func:`napari_mran.labels.read_labels_table`."""
    return [LabelledSlide(r["slide"], r["label"], r["case"])
            for r in read_labels_table(labels_csv, slides_dir)]



def _cases_by_label(rows: list[LabelledSlide]
                    ) -> tuple[dict[str, list[LabelledSlide]], dict[int, list[str]]]:
    """The slides of each case, and the cases (sorted) of each label; a case with slides
    of several labels counts under its majority label (ties: the lower label)."""
    cases: dict[str, list[LabelledSlide]] = {}
    for r in rows:
        cases.setdefault(r.case, []).append(r)
    by_label: dict[int, list[str]] = {}
    for case, members in sorted(cases.items()):
        labels = [m.label for m in members]
        majority = max(set(labels), key=lambda v: (labels.count(v), -v))
        by_label.setdefault(majority, []).append(case)
    return cases, by_label

def make_splits(rows: list[LabelledSlide], *, n_folds: int = 5, fold: int = 0, seed: int = 0,
                ) -> dict[str, list[LabelledSlide]]:
    """Split by case, stratified by label: fold ``fold`` is the test set, the next fold
    (cyclically) the validation set, the rest training. Reproducible from ``seed``.

    With fewer than 3 cases per label the split still never puts one case in two sets;
    folds may then be empty for a label (a warning-worthy cohort, not an error).
    """
    if n_folds < 3:
        raise LabelsError(f"n_folds must be >= 3 (train/val/test), got {n_folds}")
    if not 0 <= fold < n_folds:
        raise LabelsError(f"fold must be in 0..{n_folds - 1}, got {fold}")
    cases, by_label = _cases_by_label(rows)
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    offset = 0
    for label in sorted(by_label):
        names = by_label[label]
        order = rng.permutation(len(names))
        for j, k in enumerate(order):
            fold_of[names[k]] = (j + offset) % n_folds
        offset += len(names)  # keep folds balanced in size across labels
    val_fold = (fold + 1) % n_folds
    out: dict[str, list[LabelledSlide]] = {"train": [], "val": [], "test": []}
    for case, members in sorted(cases.items()):
        f = fold_of[case]
        key = "test" if f == fold else "val" if f == val_fold else "train"
        out[key].extend(members)
    return out


def read_split_file(path: str | os.PathLike, rows: list[LabelledSlide]) -> dict[str, list[LabelledSlide]]:
    """A user split: CSV ``slide,split`` with split in train/val/test; checks cases stay together."""
    by_slide = {r.slide: r for r in rows}
    out: dict[str, list[LabelledSlide]] = {"train": [], "val": [], "test": []}
    with open(path, newline="") as fh:
        for i, row in enumerate(csv.DictReader(fh), start=2):
            split = (row.get("split") or "").strip()
            if split not in out:
                raise LabelsError(f"{path}:{i}: split must be train, val or test, got {split!r}")
            slide = (row.get("slide") or "").strip()
            if slide not in by_slide:
                raise LabelsError(f"{path}:{i}: slide {slide!r} is not in the labels file")
            out[split].append(by_slide[slide])
    case_split: dict[str, str] = {}
    for split, members in out.items():
        for m in members:
            if case_split.setdefault(m.case, split) != split:
                raise LabelsError(f"{path}: case {m.case!r} appears in more than one split")
    if not out["train"]:
        raise LabelsError(f"{path}: the training split is empty")
    return out


def write_splits(splits: dict[str, list[LabelledSlide]], path: str | os.PathLike) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slide", "split", "label", "case"])
        for split, members in splits.items():
            for m in members:
                w.writerow([m.slide, split, m.label, m.case])


# --------------------------------------------------------------------------- repeated ratio splits

PARTS = ("train", "val", "test")


def parse_ratio(value) -> tuple[int, int, int]:
    """``"3:1:1"`` (or a sequence of three numbers) -> (3, 1, 1): train:val:test, three
    positive integers. LabelsError with the reason otherwise."""
    text = value if isinstance(value, str) else ":".join(str(v) for v in value)
    parts = [p.strip() for p in str(text).split(":")]
    bad = (f"split ratio must be three positive integers train:val:test, e.g. 3:1:1 or "
           f"2:1:2; got {text!r}")
    if len(parts) != 3:
        raise LabelsError(f"{bad} ({len(parts)} part{'s' if len(parts) != 1 else ''})")
    out = []
    for p in parts:
        if not p.isdigit() or int(p) <= 0:  # isdigit: no sign, no decimal point, no blank
            raise LabelsError(f"{bad} ({p!r} is not a positive integer)")
        out.append(int(p))
    return out[0], out[1], out[2]


def repeat_seed(seed: int, repeat: int) -> int:
    """The split seed of repeat ``repeat`` (0-based) of a run seeded ``seed``: a 32-bit value
    derived from both (numpy ``SeedSequence``), different for every repeat."""
    if int(seed) < 0 or int(repeat) < 0:
        raise LabelsError(f"seed and repeat must be >= 0, got {seed} and {repeat}")
    return int(np.random.SeedSequence([int(seed), int(repeat), 0x4D52]).generate_state(1)[0])


def _part_sizes(n: int, ratio: tuple[int, int, int], rotate: int) -> list[int]:
    """``n`` items in three parts by ``ratio``: largest remainders (ties rotated by
    ``rotate`` so that labels do not all round the same way), then every part gets at
    least one item when n >= 3 (one taken from the largest part)."""
    total = sum(ratio)
    exact = [n * r / total for r in ratio]
    sizes = [int(math.floor(x)) for x in exact]
    order = sorted(range(3), key=lambda k: (-(exact[k] - sizes[k]), (k - rotate) % 3))
    for k in order[: n - sum(sizes)]:
        sizes[k] += 1
    if n >= 3:
        for k in range(3):
            if sizes[k] == 0:
                big = max(range(3), key=lambda j: (sizes[j], -j))
                sizes[big] -= 1
                sizes[k] += 1
    return sizes


def ratio_split(rows: list[LabelledSlide], ratio, *, seed: int,
                ) -> dict[str, list[LabelledSlide]]:
    """One Monte-Carlo split train/val/test by ``ratio`` (e.g. (3, 1, 1)): by case (all
    slides of a case in one part), stratified by label (a case counts with its majority
    label), reproducible from ``seed``.

    For each label its cases are shuffled and cut into three parts whose sizes follow the
    ratio within rounding (largest remainders); when a label has >= 3 cases every part
    gets at least one of them. ``repeat_seed(seed, i)`` gives repeat i its own split.
    """
    ratio = parse_ratio(ratio)
    cases, by_label = _cases_by_label(rows)
    rng = np.random.default_rng(seed)
    part_of: dict[str, str] = {}
    for i, label in enumerate(sorted(by_label)):
        names = by_label[label]
        shuffled = [names[k] for k in rng.permutation(len(names))]
        sizes = _part_sizes(len(names), ratio, rotate=i)
        start = 0
        for part, size in zip(PARTS, sizes):
            for case in shuffled[start:start + size]:
                part_of[case] = part
            start += size
    out: dict[str, list[LabelledSlide]] = {p: [] for p in PARTS}
    for case, members in sorted(cases.items()):
        out[part_of[case]].extend(members)
    return out


# --------------------------------------------------------------------------- the authors' split CSVs

#: file of each part in one split folder of the authors' repository (csv/<cohort>/split/<ratio>/<i>/)
AUTHORS_SPLIT_FILES = {"train": "case_train.csv", "val": "case_val.csv", "test": "case_test.csv"}
_SAMPLE_TYPES = {"primary tumor": 1, "solid tissue normal": 0}
_MAX_SPLIT_BYTES = 1 << 30


@dataclass
class SplitImport:
    """One imported split folder: the parts, and how their ids met the labelled slides."""

    folder: str
    parts: dict[str, list[LabelledSlide]]
    n_ids: dict[str, int]                 # distinct slide ids per part in the authors' files
    unmatched: dict[str, list[str]]       # ids (file names) per part that match no slide
    unused: list[str]                     # labelled slides that are in no part
    matched_by: dict[str, int]            # "file name" / "stem" / "TCGA barcode" -> count
    n_bags: dict[str, int]                # slide -> rows (the authors' tissue bags) in the bag format

    def report(self, max_listed: int = 5) -> str:
        n_un = sum(len(v) for v in self.unmatched.values())
        lines = [f"{self.folder}: " + ", ".join(
            f"{p} {len(self.parts[p])} slides" for p in PARTS)
            + "; ids matched by " + ", ".join(f"{k} {v}" for k, v in self.matched_by.items() if v)]
        if n_un:
            names = [f"{p}: {i}" for p in PARTS for i in self.unmatched[p]]
            more = f" (and {len(names) - max_listed} more)" if len(names) > max_listed else ""
            lines.append(f"  {n_un} id(s) match no labelled slide: "
                         + "; ".join(names[:max_listed]) + more)
        if self.unused:
            more = f" (and {len(self.unused) - max_listed} more)" if len(self.unused) > max_listed else ""
            lines.append(f"  {len(self.unused)} labelled slide(s) are in no part (not used): "
                         + ", ".join(self.unused[:max_listed]) + more)
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"folder": self.folder, "n_slides": {p: len(self.parts[p]) for p in PARTS},
                "n_ids": dict(self.n_ids), "unmatched": {p: list(v) for p, v in self.unmatched.items()},
                "unused": list(self.unused), "matched_by": dict(self.matched_by)}


def _read_authors_part(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """{file name: label} and {file name: rows} of one of the authors' split files.

    Two layouts: bag rows ``wsi,bag_id,x,y,type`` (``wsi`` the slide path on their machine,
    ``type`` the label) as ``csv/<cohort>/split/...`` holds, or slide rows ``File
    Name,Sample Type`` (``Primary Tumor`` = 1, ``Solid Tissue Normal`` = 0, or an integer)
    as their ``sheet`` folders hold."""
    if not path.is_file():
        raise LabelsError(f"{path}: split file not found (a split folder holds "
                          f"{', '.join(AUTHORS_SPLIT_FILES.values())})")
    if path.stat().st_size > _MAX_SPLIT_BYTES:
        raise LabelsError(f"{path}: larger than {_MAX_SPLIT_BYTES >> 20} MiB")
    labels: dict[str, int] = {}
    rows: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip().lower() for h in next(reader, [])]
            if "wsi" in header and "type" in header:
                i_id, i_lab, kind = header.index("wsi"), header.index("type"), "bags"
            elif "file name" in header and "sample type" in header:
                i_id, i_lab, kind = header.index("file name"), header.index("sample type"), "sheet"
            else:
                raise LabelsError(f"{path}: line 1: expected the authors' columns wsi,bag_id,x,y,type "
                                  f"or File Name,Sample Type; got {header}")
            for line_no, raw in enumerate(reader, start=2):
                if not raw or all(not c.strip() for c in raw):
                    continue
                if len(raw) <= max(i_id, i_lab):
                    raise LabelsError(f"{path}: line {line_no}: {len(raw)} columns, expected "
                                      f"{len(header)}")
                name = raw[i_id].strip().replace("\\", "/").rsplit("/", 1)[-1]
                text = raw[i_lab].strip()
                if not name:
                    raise LabelsError(f"{path}: line {line_no}: empty slide id")
                if text.lower() in _SAMPLE_TYPES:
                    label = _SAMPLE_TYPES[text.lower()]
                else:
                    try:  # pandas may have written an integer column as 1.0
                        label = int(text) if text.lstrip("-").isdigit() else _integral(text)
                    except ValueError:
                        raise LabelsError(f"{path}: line {line_no}: label {text!r} is not an "
                                          "integer, 'Primary Tumor' or 'Solid Tissue Normal'") from None
                if labels.setdefault(name, label) != label:
                    raise LabelsError(f"{path}: line {line_no}: slide {name} has labels "
                                      f"{labels[name]} and {label}")
                rows[name] = rows.get(name, 0) + (1 if kind == "bags" else 0)
    except UnicodeDecodeError:
        raise LabelsError(f"{path}: not UTF-8 text") from None
    except csv.Error as exc:
        raise LabelsError(f"{path}: {exc}") from None
    except OSError as exc:
        raise LabelsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return labels, rows


def _integral(text: str) -> int:
    value = float(text)
    if not value.is_integer():
        raise ValueError(text)
    return int(value)


def _barcode(name: str) -> str:
    return name.split(".", 1)[0].upper()


def _slide_index(rows: list[LabelledSlide]) -> dict[str, dict[str, list[LabelledSlide]]]:
    """The labelled slides by file name, by name without extension and by TCGA barcode."""
    index: dict[str, dict[str, list[LabelledSlide]]] = {"file name": {}, "stem": {},
                                                        "TCGA barcode": {}}
    for r in rows:
        base = r.slide.replace("\\", "/").rsplit("/", 1)[-1]
        index["file name"].setdefault(base, []).append(r)
        index["stem"].setdefault(os.path.splitext(base)[0], []).append(r)
        index["TCGA barcode"].setdefault(_barcode(base), []).append(r)
    return index


def _match_id(index: dict[str, dict[str, list[LabelledSlide]]], name: str, path: Path,
              matched_by: dict[str, int]) -> LabelledSlide | None:
    """The labelled slide of the authors' id ``name`` (file name, else stem, else TCGA
    barcode; counted in ``matched_by``), None when none; an id that matches several
    slides is an error."""
    for how, keys in (("file name", name), ("stem", os.path.splitext(name)[0]),
                      ("TCGA barcode", _barcode(name))):
        found = index[how].get(keys, [])
        if len(found) > 1:
            raise LabelsError(f"{path}: id {name} matches {len(found)} labelled slides "
                              f"by {how} ({', '.join(f.slide for f in found[:3])}); "
                              "slide file names must be unique")
        if found:
            matched_by[how] += 1
            return found[0]
    return None


def _check_import(folder: Path, parts: dict[str, list[LabelledSlide]],
                  unmatched: dict[str, list[str]], n_ids: dict[str, int],
                  wrong_label: list[str], allow_missing: bool) -> None:
    """The errors of an imported split folder: labels that differ from labels.csv, ids
    that match no slide (unless ``allow_missing``), a case in two parts, no training slide."""
    if wrong_label:
        more = f" and {len(wrong_label) - 5} more" if len(wrong_label) > 5 else ""
        raise LabelsError(f"{folder}: {len(wrong_label)} slide(s) have another label in the split "
                          f"files than in labels.csv: {'; '.join(wrong_label[:5])}{more} (the "
                          "authors use 1 = Primary Tumor, 0 = Solid Tissue Normal)")
    n_un = sum(len(v) for v in unmatched.values())
    if n_un and not allow_missing:
        listed = [f"{p}: {i}" for p in PARTS for i in unmatched[p]]
        more = f" and {len(listed) - 5} more" if len(listed) > 5 else ""
        raise LabelsError(f"{folder}: {n_un} of {sum(n_ids.values())} slide ids in the split files "
                          f"match no slide of labels.csv ({'; '.join(listed[:5])}{more}); "
                          "download those slides, or train without them (--allow-missing-slides, "
                          "API allow_missing=True)")
    case_part: dict[str, str] = {}
    for part in PARTS:
        for m in parts[part]:
            if case_part.setdefault(m.case, part) != part:
                raise LabelsError(f"{folder}: case {m.case!r} is in both {case_part[m.case]} and "
                                  f"{part} (check the case column of labels.csv)")
    if not parts["train"]:
        raise LabelsError(f"{folder}: no slide of the training part matches labels.csv")


def read_authors_split(folder: str | os.PathLike, rows: list[LabelledSlide], *,
                       allow_missing: bool = False) -> SplitImport:
    """One split folder of the authors' repository (``case_train.csv``, ``case_val.csv``,
    ``case_test.csv``) mapped onto the labelled slides ``rows``.

    An id (the file name of the slide on the authors' machine) matches the labelled slide
    whose file name is the same; else whose name without extension is the same; else
    whose TCGA barcode (the name up to its first '.') is the same, when that is unique.
    Ids that match no slide are an error (LabelsError listing them) unless
    ``allow_missing`` (then they are reported in :attr:`SplitImport.unmatched`). A label
    that differs from labels.csv, a slide in two parts, a case split across parts or an
    empty training part are errors.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LabelsError(f"{folder}: split folder not found (or not a folder)")
    index = _slide_index(rows)
    parts: dict[str, list[LabelledSlide]] = {p: [] for p in PARTS}
    unmatched: dict[str, list[str]] = {p: [] for p in PARTS}
    n_ids: dict[str, int] = {}
    matched_by = {k: 0 for k in index}
    n_bags: dict[str, int] = {}
    where: dict[str, str] = {}
    wrong_label: list[str] = []
    for part in PARTS:
        path = folder / AUTHORS_SPLIT_FILES[part]
        labels, counts = _read_authors_part(path)
        n_ids[part] = len(labels)
        for name in sorted(labels):
            hit = _match_id(index, name, path, matched_by)
            if hit is None:
                unmatched[part].append(name)
                continue
            if hit.slide in where:
                raise LabelsError(f"{folder}: slide {hit.slide} is in both {where[hit.slide]} "
                                  f"and {part}")
            where[hit.slide] = part
            if hit.label != labels[name]:
                wrong_label.append(f"{hit.slide} (labels.csv {hit.label}, "
                                   f"{path.name} {labels[name]})")
            parts[part].append(hit)
            if counts.get(name):
                n_bags[hit.slide] = counts[name]
    _check_import(folder, parts, unmatched, n_ids, wrong_label, allow_missing)
    unused = sorted(r.slide for r in rows if r.slide not in where)
    return SplitImport(str(folder), parts, n_ids, unmatched, unused, matched_by, n_bags)


def authors_split_folders(split_dir: str | os.PathLike) -> list[Path]:
    """The numbered split folders (``0``, ``1``, ...) of a split directory in the authors'
    layout, in numeric order; LabelsError when there are none."""
    root = Path(split_dir)
    if not root.is_dir():
        raise LabelsError(f"{root}: split directory not found (or not a folder)")
    found = sorted((int(p.name), p) for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    if not found:
        raise LabelsError(f"{root}: no numbered split folders (0/, 1/, ... each holding "
                          f"{', '.join(AUTHORS_SPLIT_FILES.values())}), as in the authors' "
                          "csv/<cohort>/split/<ratio>/")
    return [p for _, p in found]
