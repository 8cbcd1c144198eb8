"""Evaluate a model on labelled slides, with the attention-faithfulness experiment.

``evaluate(model, slides_dir, labels_csv, out_dir, options, ...)`` is a generator of
:class:`EvaluationEvent` returning a report dict (code: :mod:`napari_mran.batch.evaluate`
and :mod:`napari_mran.batch.report`).  It writes into *out_dir*:

- ``predictions.csv``: slide, case, label, class probabilities, predicted class;
- ``metrics.json``: slide-level (and case-level) metrics, strict JSON
  (:func:`napari_mran.metrics.classification_metrics`);
- ``roc.png``: the ROC curve(s), drawn with matplotlib's Agg canvas (no pyplot);
- ``faithfulness.json`` / ``faithfulness.md``: accuracy, AUC and agreement with the
  full-slide prediction after re-predicting every slide from only its top-k bags and
  top-m patches (:mod:`napari_mran.faithfulness`), one table cell per (k, m).

``labels.csv`` has a header with the columns ``slide`` (path relative to
*slides_dir*), ``label`` (integer class index) and optionally ``case`` (patient /
case id; slides of one case are also scored together).  See docs/evaluation.md.
"""

from __future__ import annotations

from .batch.evaluate import (EVALUATION_FILES, METRICS_FORMAT, EvaluationEvent, evaluate,
                             run_evaluation)
from .batch.report import faithfulness_markdown
from .errors import LabelsError
from .labels import read_labels_table as read_labels  # public name kept

__all__ = [
    "EVALUATION_FILES",
    "EvaluationEvent",
    "LabelsError",
    "evaluate",
    "faithfulness_markdown",
    "read_labels",
    "run_evaluation",
]
