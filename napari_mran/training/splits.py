"""Case-level, stratified, reproducible train/validation/test splits."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

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
    cases: dict[str, list[LabelledSlide]] = {}
    for r in rows:
        cases.setdefault(r.case, []).append(r)
    by_label: dict[int, list[str]] = {}
    for case, members in sorted(cases.items()):
        labels = [m.label for m in members]
        majority = max(set(labels), key=lambda v: (labels.count(v), -v))
        by_label.setdefault(majority, []).append(case)
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
