"""Bag labels from review marks, for ``napari-mran finetune`` (docs/cli.md, "finetune").

A reviewed results store gives its slide (``provenance["slide"]["path"]``), its bag
boxes, the model's bag predictions and the review marks.  Each **bag** mark becomes a
bag label:

* ``label`` -> that class;
* ``agree`` -> the class the model predicted for the bag (argmax of the store's
  ``bag_probs``);
* ``disagree`` -> the other class when the result has two classes; with more classes a
  disagree says what the bag is not, not what it is: no label (counted as skipped).

**Patch** marks are not used (counted as ignored): a patch mark says nothing about the
other 63 patches of its bag, and the upstream loss supervises whole bags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MRANError

__all__ = ["ReviewedSlide", "bag_label", "reviewed_slides", "attach_slide_labels"]


@dataclass
class ReviewedSlide:
    """One reviewed store: its slide, all its bags and the labels its marks give."""

    store: Path
    slide_path: str
    boxes: np.ndarray                  # (N, 4) every bag of the store (level-0 px)
    gamma: np.ndarray                  # (N,) the store's bag attention
    labels: dict[int, int]             # bag index -> class index, from the marks
    record: dict[str, Any]             # what the model's provenance lists of this review
    slide_label: int | None = None     # from --labels, when given
    warnings: list[str] = field(default_factory=list)


def bag_label(mark: str, label: str | None, bag_probs: np.ndarray,
              class_names: list[str]) -> int | None:
    """The class a bag mark gives its bag (None: no label, see the module doc)."""
    if mark == "label":
        return class_names.index(str(label))
    predicted = int(np.argmax(bag_probs))
    if mark == "agree":
        return predicted
    if mark == "disagree" and len(class_names) == 2:
        return 1 - predicted
    return None


def _analysed_stain(provenance: dict[str, Any]) -> str:
    """The stain normalisation the store's analysis used ("off" for older stores)."""
    info = provenance.get("stain_normalization") if isinstance(provenance, dict) else None
    return str(info.get("method", "off")) if isinstance(info, dict) else "off"


def stain_mismatches(slides: list[ReviewedSlide], method: str) -> list[str]:
    """A warning per store analysed with another stain normalisation than *method*: the
    bags fine-tuned on would not look like the bags the pathologist reviewed."""
    return [f"{s.store}: analysed with --stain-normalize "
            f"{s.record['analysed_stain_normalize']}, fine-tuned with {method}"
            for s in slides if s.record["analysed_stain_normalize"] != method]


def _slide_path(store: Path, provenance: dict[str, Any]) -> str:
    slide = provenance.get("slide") if isinstance(provenance, dict) else None
    path = slide.get("path") if isinstance(slide, dict) else None
    if not isinstance(path, str):
        raise MRANError(f"{store}: the store does not record its slide's path")
    if not os.path.isfile(path):
        raise MRANError(f"{store}: its slide {path} is missing (moved or deleted?)")
    return path


def _model_sha(provenance: dict[str, Any]) -> str | None:
    model = provenance.get("model") if isinstance(provenance, dict) else None
    sha = model.get("sha256") if isinstance(model, dict) else None
    return sha if isinstance(sha, str) else None


def _check_model(store: Path, marks: list[Any], store_sha: str | None, base_sha: str,
                 allow_other_model: bool) -> list[str]:
    """Warnings (or, without *allow_other_model*, an error) when the marks or the store
    were made with another model than the one being fine-tuned."""
    theirs = sorted({m.model_sha256 or "unknown" for m in marks} | {store_sha or "unknown"})
    if theirs == [base_sha]:
        return []
    text = (f"{store}: its results and review marks were made with model(s) "
            f"{', '.join(s[:12] + '...' for s in theirs)}, not the model being fine-tuned "
            f"({base_sha[:12]}...)")
    if not allow_other_model:
        raise MRANError(text + "; pass --allow-other-model to use them anyway")
    return [text]


def _reviewed_slide(store: Path, model_cfg: Any, base_sha: str,
                    allow_other_model: bool) -> ReviewedSlide:
    from ..results import SlideResult
    from ..results.store import read_verified_attrs, review_record, store_checksum
    from ..review import Reviews

    result = SlideResult.load(store)
    marks = Reviews.load(store, result).marks
    if not marks:
        raise MRANError(f"{store}: the store has no review marks")
    if list(result.class_names) != list(model_cfg.class_names):
        raise MRANError(f"{store}: its classes ({', '.join(result.class_names)}) are not the "
                        f"model's ({', '.join(model_cfg.class_names)})")
    if int(result.bag_px) != int(model_cfg.bag_px):
        raise MRANError(f"{store}: its bags are {result.bag_px} px, the model's "
                        f"{model_cfg.bag_px} px")
    slide_path = _slide_path(store, result.provenance)
    warnings = _check_model(store, marks, _model_sha(result.provenance), base_sha,
                            allow_other_model)
    index = {tuple(int(v) for v in b): i for i, b in enumerate(result.boxes)}
    labels, skipped, patches = {}, 0, 0
    for m in marks:
        if m.level != "bag":
            patches += 1
            continue
        i = index[m.bag_box]
        c = bag_label(m.mark, m.label, result.bag_probs[i], list(result.class_names))
        if c is None:
            skipped += 1
        else:
            labels[i] = c
    record = {"store": str(store.resolve()), "slide": slide_path,
              "store_sha256": store_checksum(read_verified_attrs(store)),
              "marks_sha256": (review_record(store) or {}).get("sha256"),
              "analysed_stain_normalize": _analysed_stain(result.provenance),
              "reviewers": sorted({m.reviewer for m in marks}),
              "marks_model_sha256": sorted({m.model_sha256 or "unknown" for m in marks}),
              "counts": {"marks": len(marks), "bag_labels": len(labels),
                         "patch_marks_ignored": patches, "disagree_skipped": skipped,
                         "per_class": [sum(1 for c in labels.values() if c == k)
                                       for k in range(len(result.class_names))]}}
    return ReviewedSlide(store, slide_path, np.asarray(result.boxes, np.int64),
                         np.asarray(result.bag_attention, np.float32), labels, record,
                         warnings=warnings)


def reviewed_slides(stores: list[str | os.PathLike], model_cfg: Any, base_sha: str, *,
                    allow_other_model: bool = False) -> list[ReviewedSlide]:
    """The reviewed slides of *stores*; MRANError naming the store when one cannot be
    used (not a store, no marks, slide missing, other classes or bag size, marks of
    another model without *allow_other_model*) or when no mark gives a bag label."""
    if not stores:
        raise MRANError("no reviewed stores given")
    paths = [Path(s).expanduser() for s in stores]
    seen: set[Path] = set()
    out = []
    for p in paths:
        if not p.is_dir():
            raise MRANError(f"{p}: results store not found")
        if p.resolve() in seen:
            raise MRANError(f"{p}: the store is given twice")
        seen.add(p.resolve())
        out.append(_reviewed_slide(p, model_cfg, base_sha, allow_other_model))
    if not any(s.labels for s in out):
        raise MRANError(f"{', '.join(str(p) for p in paths)}: no review mark gives a bag "
                        "label (patch marks are not used; a disagree gives one only with "
                        "two classes)")
    return out


def attach_slide_labels(slides: list[ReviewedSlide], labels_csv: str | os.PathLike,
                        slides_dir: str | os.PathLike | None,
                        class_names: list[str]) -> int:
    """Give each reviewed slide its label from *labels_csv* (slides matched by their
    resolved file path; folder: *slides_dir*, default the CSV's); the number of slides
    labelled.  Slides of the CSV that were not reviewed are not used."""
    from ..labels import read_labels_table

    root = Path(slides_dir) if slides_dir is not None else Path(labels_csv).expanduser().parent
    rows = read_labels_table(labels_csv, root, class_names)
    by_path = {os.path.realpath(r["path"]): int(r["label"]) for r in rows}
    n = 0
    for s in slides:
        s.slide_label = by_path.get(os.path.realpath(s.slide_path))
        n += s.slide_label is not None
    return n
