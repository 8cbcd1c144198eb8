"""metrics: exact values computed by hand, ties, undefined cases, strict JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_mran import metrics as M

# Binary example worked by hand (docs/evaluation.md uses the same numbers):
# y      = 0    0    1     1    1    0
# p(1)   = 0.1  0.4  0.35  0.8  0.4  0.6
# pred   = 0    0    0     1    0    1        (argmax of [1 - p, p])
# TP = 1 (#3), FP = 1 (#5), FN = 2 (#2, #4), TN = 2 (#0, #1)
# AUC: pairs (pos, neg) with pos > neg count 1, ties 1/2:
#   0.35 -> 1, 0.8 -> 3, 0.4 -> 1 + 0.5 = 1.5  => 5.5 / 9
Y = np.array([0, 0, 1, 1, 1, 0])
P1 = np.array([0.1, 0.4, 0.35, 0.8, 0.4, 0.6])
PROBS = np.stack([1 - P1, P1], axis=1)


def test_binary_hand_computed():
    pred = M.predicted_classes(PROBS)
    assert pred.tolist() == [0, 0, 0, 1, 0, 1]
    assert M.binary_counts(Y, pred) == {"tp": 1, "fp": 1, "tn": 2, "fn": 2}
    assert M.accuracy(Y, pred) == 0.5
    assert M.precision(Y, pred) == 0.5
    assert M.sensitivity(Y, pred) == pytest.approx(1 / 3)
    assert M.specificity(Y, pred) == pytest.approx(2 / 3)
    assert M.recall(Y, pred, positive=0) == pytest.approx(2 / 3)  # specificity = recall of 0
    assert M.f1_score(Y, pred) == pytest.approx(0.4)  # 2PR/(P+R) = 2*.5*(1/3)/(5/6)
    assert M.roc_auc(Y, P1) == pytest.approx(5.5 / 9)


def test_roc_curve_hand_computed():
    fpr, tpr, thr = M.roc_curve(Y, P1)
    # sorted: 0.8 P | 0.6 N | 0.4 N, 0.4 P (tie) | 0.35 P | 0.1 N
    np.testing.assert_allclose(tpr, [0, 1 / 3, 1 / 3, 2 / 3, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 2 / 3, 2 / 3, 1])
    assert thr[0] == np.inf and thr[1:].tolist() == [0.8, 0.6, 0.4, 0.35, 0.1]
    assert np.trapezoid(tpr, fpr) == pytest.approx(11 / 18)


def test_classification_metrics_binary():
    m = M.classification_metrics(Y, PROBS, ["normal", "tumour"])
    assert m["average"] == "binary" and m["n"] == 6
    assert m["support"] == {"normal": 3, "tumour": 3}
    assert m["accuracy"] == 0.5 and m["precision"] == 0.5
    assert m["sensitivity"] == pytest.approx(1 / 3) and m["specificity"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(0.4) and m["auc"] == pytest.approx(5.5 / 9)
    assert m["confusion_matrix"] == [[2, 1], [2, 1]]
    # the AUC of class 0 one-vs-rest is the same ranking reversed
    assert m["per_class"]["normal"]["auc"] == pytest.approx(5.5 / 9)
    json.dumps(m, allow_nan=False)


def test_multiclass_hand_computed():
    y = np.array([0, 1, 2, 2, 1, 0])
    probs = np.array([
        [0.7, 0.2, 0.1],   # -> 0 ok
        [0.1, 0.6, 0.3],   # -> 1 ok
        [0.2, 0.5, 0.3],   # -> 1 (true 2)
        [0.1, 0.1, 0.8],   # -> 2 ok
        [0.3, 0.3, 0.4],   # -> 2 (true 1)
        [0.5, 0.4, 0.1],   # -> 0 ok
    ])
    m = M.classification_metrics(y, probs, ["a", "b", "c"])
    assert m["average"] == "macro" and m["accuracy"] == pytest.approx(4 / 6)
    a, b, c = m["per_class"]["a"], m["per_class"]["b"], m["per_class"]["c"]
    assert (a["precision"], a["recall"], a["specificity"], a["f1"], a["auc"]) == (1, 1, 1, 1, 1)
    assert (b["precision"], b["recall"], b["f1"]) == (0.5, 0.5, 0.5)
    assert b["specificity"] == 0.75
    assert b["auc"] == pytest.approx(6 / 8)        # 0.6 beats 4 negatives, 0.3 beats 2
    assert c["auc"] == pytest.approx(6.5 / 8)      # 0.3 ties one negative at 0.3
    assert (c["precision"], c["recall"], c["specificity"]) == (0.5, 0.5, 0.75)
    assert m["macro"]["auc"] == pytest.approx((1 + 0.75 + 0.8125) / 3)
    assert m["macro"]["f1"] == pytest.approx(2 / 3)
    assert m["macro"]["specificity"] == pytest.approx(2.5 / 3)
    assert m["auc"] == m["macro"]["auc"] and m["sensitivity"] == m["macro"]["recall"]
    assert m["confusion_matrix"] == [[2, 0, 0], [0, 1, 1], [0, 1, 1]]


def test_undefined_values_are_none_not_nan():
    y = np.array([1, 1, 1])
    probs = np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    m = M.classification_metrics(y, probs)
    assert m["auc"] is None and m["specificity"] is None  # no negative sample
    assert m["sensitivity"] == pytest.approx(1 / 3)
    assert M.roc_curve(y, probs[:, 1]) is None
    assert M.precision([0, 0], [0, 0]) is None and M.f1_score([0, 0], [0, 0]) is None
    assert M.accuracy([], []) is None
    assert M.roc_auc([0, 1], [0.5, float("nan")]) is None
    empty = M.classification_metrics(np.zeros(0, int), np.zeros((0, 2)))
    assert empty["n"] == 0 and empty["accuracy"] is None and empty["auc"] is None
    text = json.dumps([m, empty], allow_nan=False)
    assert "NaN" not in text


def test_all_ties_and_perfect():
    assert M.roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert M.roc_auc([0, 0, 1], [0.1, 0.2, 0.9]) == 1.0
    assert M.roc_auc([0, 0, 1], [0.9, 0.8, 0.1]) == 0.0
    np.testing.assert_array_equal(M.average_ranks([3, 1, 3, 2]), [3.5, 1, 3.5, 2])


def test_bad_inputs():
    with pytest.raises(ValueError, match="integer"):
        M.accuracy([0.5, 1], [0, 1])
    with pytest.raises(ValueError, match="2 values|has 2"):
        M.accuracy([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        M.classification_metrics([0, 2], [[0.1, 0.9], [0.9, 0.1]])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 6)), min_size=2, max_size=30))
def test_auc_equals_pair_count_and_curve_area(data):
    y = np.array([int(a) for a, _ in data])
    s = np.array([b / 6 for _, b in data])  # few distinct values: many ties
    auc = M.roc_auc(y, s)
    pos, neg = s[y == 1], s[y == 0]
    if pos.size == 0 or neg.size == 0:
        assert auc is None
        return
    pairs = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
    assert math.isclose(auc, pairs / (pos.size * neg.size), rel_tol=1e-12, abs_tol=1e-12)
    fpr, tpr, _ = M.roc_curve(y, s)
    assert math.isclose(np.trapezoid(tpr, fpr), auc, rel_tol=1e-9, abs_tol=1e-12)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert fpr[-1] == 1 and tpr[-1] == 1
