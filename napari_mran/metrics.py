"""Classification metrics of slide-level predictions (numpy only, strict-JSON friendly).

Definitions (docs/evaluation.md):

- accuracy = correct / n.
- For a *positive* class: precision = TP / (TP + FP), recall (sensitivity) =
  TP / (TP + FN), specificity = TN / (TN + FP), F1 = 2 TP / (2 TP + FP + FN).
- AUC: area under the ROC curve, computed from ranks (the Mann-Whitney U
  statistic): ``(sum of the ranks of the positives - n1 (n1 + 1) / 2) / (n1 n0)``
  with tied scores given their average rank, so a tie between a positive and a
  negative counts one half.  It equals the trapezoidal area under
  :func:`roc_curve`.
- Binary (two classes): the positive class is class 1; sensitivity is the recall
  of class 1, specificity the recall of class 0.
- Multi-class: every class is scored one-vs-rest (per class) and the macro
  average is the plain mean over the classes where the value is defined.

A value that is undefined (no positive sample, no predicted positive, a single
class present, a non-finite score) is ``None``, never NaN, so every result can go
through ``json.dumps(..., allow_nan=False)``.  Predictions are ``argmax`` of the
probabilities (ties go to the lowest class index).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "accuracy",
    "average_ranks",
    "binary_counts",
    "classification_metrics",
    "confusion_matrix",
    "f1_score",
    "precision",
    "predicted_classes",
    "recall",
    "roc_auc",
    "roc_curve",
    "sensitivity",
    "specificity",
]


# --------------------------------------------------------------------------- inputs


def _labels(y: Any, name: str = "y_true") -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind == "b":
        return arr.astype(np.int64)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(np.mod(arr, 1) == 0):
        return arr.astype(np.int64)
    raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")


def _pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} values but y_pred has {p.size}")
    return t, p


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else float(num) / float(den)


def _mean_defined(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


# --------------------------------------------------------------------------- counts


def binary_counts(y_true: Any, y_pred: Any, positive: int = 1) -> dict[str, int]:
    """``{"tp", "fp", "tn", "fn"}`` with *positive* as the positive class (one-vs-rest)."""
    t, p = _pair(y_true, y_pred)
    tp_mask, pp_mask = t == positive, p == positive
    return {
        "tp": int(np.sum(tp_mask & pp_mask)),
        "fp": int(np.sum(~tp_mask & pp_mask)),
        "tn": int(np.sum(~tp_mask & ~pp_mask)),
        "fn": int(np.sum(tp_mask & ~pp_mask)),
    }


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int | None = None) -> np.ndarray:
    """(C, C) int64 counts, ``[true class, predicted class]``."""
    t, p = _pair(y_true, y_pred)
    if n_classes is None:
        n_classes = int(max(t.max(initial=-1), p.max(initial=-1)) + 1)
    if t.size and (t.min() < 0 or p.min() < 0 or t.max() >= n_classes or p.max() >= n_classes):
        raise ValueError(f"class indices must be in [0, {n_classes})")
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


# --------------------------------------------------------------------------- threshold metrics


def accuracy(y_true: Any, y_pred: Any) -> float | None:
    """Fraction of correct predictions; None when there is no sample."""
    t, p = _pair(y_true, y_pred)
    return _ratio(int(np.sum(t == p)), t.size)


def precision(y_true: Any, y_pred: Any, positive: int = 1) -> float | None:
    """TP / (TP + FP); None when nothing is predicted positive."""
    c = binary_counts(y_true, y_pred, positive)
    return _ratio(c["tp"], c["tp"] + c["fp"])


def recall(y_true: Any, y_pred: Any, positive: int = 1) -> float | None:
    """TP / (TP + FN) of class *positive*; None when the class has no sample."""
    c = binary_counts(y_true, y_pred, positive)
    return _ratio(c["tp"], c["tp"] + c["fn"])


def sensitivity(y_true: Any, y_pred: Any) -> float | None:
    """Recall of class 1 (binary)."""
    return recall(y_true, y_pred, positive=1)


def specificity(y_true: Any, y_pred: Any, positive: int = 1) -> float | None:
    """TN / (TN + FP) for class *positive* one-vs-rest; in the binary case the recall of class 0."""
    c = binary_counts(y_true, y_pred, positive)
    return _ratio(c["tn"], c["tn"] + c["fp"])


def f1_score(y_true: Any, y_pred: Any, positive: int = 1) -> float | None:
    """2 TP / (2 TP + FP + FN) (= harmonic mean of precision and recall); None when
    the class is neither present nor predicted."""
    c = binary_counts(y_true, y_pred, positive)
    return _ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"])


# --------------------------------------------------------------------------- ranking metrics


def average_ranks(values: Any) -> np.ndarray:
    """1-based ranks of *values* in increasing order; tied values share their average rank."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return np.zeros(0, np.float64)
    uniq, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])  # 0-based start of each tie group
    avg = first + (counts + 1) / 2.0  # average of the ranks first+1 .. first+count
    return avg[inverse]


def _binary_scores(y_true: Any, scores: Any, positive: int) -> tuple[np.ndarray, np.ndarray] | None:
    t = _labels(y_true, "y_true")
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.shape != t.shape:
        raise ValueError(f"scores must be one value per sample ({t.size}), got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        return None
    pos = t == positive
    if pos.all() or not pos.any():
        return None
    return pos, s


def roc_auc(y_true: Any, scores: Any, positive: int = 1) -> float | None:
    """Area under the ROC curve of *scores* for class *positive* (one-vs-rest), from ranks.

    None when only one of positive / negative samples is present or a score is not finite.
    """
    pair = _binary_scores(y_true, scores, positive)
    if pair is None:
        return None
    pos, s = pair
    n1 = int(pos.sum())
    n0 = int(pos.size - n1)
    ranks = average_ranks(s)
    u = float(ranks[pos].sum()) - n1 * (n1 + 1) / 2.0
    return u / (n1 * n0)


def roc_curve(
    y_true: Any, scores: Any, positive: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """ROC curve ``(fpr, tpr, thresholds)`` for class *positive*, or None when undefined.

    One point per distinct score (highest first), preceded by (0, 0) at threshold
    +inf; the point at threshold ``t`` predicts positive when ``score >= t``.  Tied
    scores move the curve diagonally, so ``np.trapezoid(tpr, fpr) == roc_auc``.
    """
    pair = _binary_scores(y_true, scores, positive)
    if pair is None:
        return None
    pos, s = pair
    order = np.argsort(-s, kind="stable")
    s_sorted, pos_sorted = s[order], pos[order]
    # last index of each run of equal scores
    ends = np.flatnonzero(np.diff(s_sorted) != 0)
    ends = np.concatenate([ends, [s_sorted.size - 1]])
    tps = np.cumsum(pos_sorted)[ends]
    fps = (ends + 1) - tps
    tpr = np.concatenate([[0.0], tps / pos.sum()])
    fpr = np.concatenate([[0.0], fps / (~pos).sum()])
    thresholds = np.concatenate([[np.inf], s_sorted[ends]])
    return fpr, tpr, thresholds


# --------------------------------------------------------------------------- all together


def predicted_classes(probs: Any) -> np.ndarray:
    """``argmax`` over the last axis of (n, C) probabilities (ties -> lowest index)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be (n, C), got shape {p.shape}")
    if p.shape[0] == 0:
        return np.zeros(0, np.int64)
    return np.argmax(p, axis=1).astype(np.int64)


def classification_metrics(
    y_true: Any, probs: Any, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Every metric of a set of slide predictions as a strict-JSON dict.

    Parameters
    ----------
    y_true : (n,) int class indices.
    probs : (n, C) class probabilities (rows need not sum to 1; argmax is the prediction).
    class_names : C names (default ``class_0`` ...).

    Returns
    -------
    dict with ``n``, ``n_classes``, ``class_names``, ``support`` {name: count},
    ``accuracy``, ``auc``, ``f1``, ``precision``, ``sensitivity``, ``specificity``,
    ``average`` (``"binary"``: those refer to class 1 as positive; ``"macro"`` for
    C > 2: the macro averages, sensitivity = macro recall, specificity = macro
    specificity), ``per_class`` {name: {auc, f1, precision, recall, specificity,
    support}}, ``macro`` {auc, f1, precision, recall, specificity} and
    ``confusion_matrix`` (rows = true class, columns = predicted).
    """
    t = _labels(y_true, "y_true")
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != t.size:
        raise ValueError(f"probs must be (n={t.size}, C), got shape {p.shape}")
    n_classes = p.shape[1]
    if n_classes < 2:
        raise ValueError("need at least two classes")
    names = [f"class_{i}" for i in range(n_classes)] if class_names is None else list(class_names)
    if len(names) != n_classes:
        raise ValueError(f"{len(names)} class names for {n_classes} classes")
    if t.size and (t.min() < 0 or t.max() >= n_classes):
        raise ValueError(f"labels must be class indices in [0, {n_classes})")
    pred = predicted_classes(p)
    per_class: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(names):
        per_class[name] = {
            "auc": roc_auc(t, p[:, c], positive=c),
            "f1": f1_score(t, pred, positive=c),
            "precision": precision(t, pred, positive=c),
            "recall": recall(t, pred, positive=c),
            "specificity": specificity(t, pred, positive=c),
            "support": int(np.sum(t == c)),
        }
    macro = {
        key: _mean_defined([per_class[n][key] for n in names])
        for key in ("auc", "f1", "precision", "recall", "specificity")
    }
    out: dict[str, Any] = {
        "n": int(t.size),
        "n_classes": n_classes,
        "class_names": names,
        "support": {n: per_class[n]["support"] for n in names},
        "accuracy": accuracy(t, pred),
    }
    if n_classes == 2:  # class 1 is the positive class; specificity = recall of class 0
        average, chosen = "binary", {**per_class[names[1]],
                                     "specificity": per_class[names[0]]["recall"]}
    else:
        average, chosen = "macro", macro
    out.update(
        average=average,
        auc=chosen["auc"],
        f1=chosen["f1"],
        precision=chosen["precision"],
        sensitivity=chosen["recall"],
        specificity=chosen["specificity"],
    )
    out["per_class"] = per_class
    out["macro"] = macro
    out["confusion_matrix"] = confusion_matrix(t, pred, n_classes).tolist()
    return out
