"""The outputs of an evaluation: predictions table, metrics, ROC curve and the
faithfulness table (docs/evaluation.md)."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .outputs import predicted, write_csv, write_json
from .records import SlideRecord

__all__ = ["case_metrics", "cell", "faithfulness_markdown", "faithfulness_table",
           "predictions_table", "roc_png", "sources", "write_report"]


def cell(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def faithfulness_markdown(table: dict[str, Any]) -> str:
    """Markdown tables (rows k, columns m) of accuracy, AUC and agreement."""
    ks, ms = table["k_list"], table["m_list"]
    cells = {(r["k"], r["m"]): r for r in table["rows"]}
    lines = [
        "# Faithfulness: predictions from the top-k bags and top-m patches only",
        "",
        f"{table['n_slides']} slides.  k = bags kept (highest bag attention gamma); "
        "m = patches kept per bag (highest patch attention alpha); "
        "`all` = no restriction (m = all: the model's own thresholded patch attention).  "
        f"Full-slide prediction: accuracy {cell(table['full']['accuracy'])}, "
        f"AUC {cell(table['full']['auc'])}.",
        "",
    ]
    for key, title in (("accuracy", "Accuracy"), ("auc", "AUC"),
                       ("agreement", "Agreement with the full-slide predicted class"),
                       ("mean_abs_change", "Mean |change| of the class probabilities "
                                           "(total variation) vs the full slide")):
        lines += [f"## {title}", "", "| k \\ m | " + " | ".join(str(m) for m in ms) + " |",
                  "|---" * (len(ms) + 1) + "|"]
        for k in ks:
            vals = [cell(cells[(k, m)][key]) if (k, m) in cells else "n/a" for m in ms]
            lines.append(f"| {k} | " + " | ".join(vals) + " |")
        lines.append("")
    lines += ["## Bags used (mean over slides; a slide with fewer than k bags uses all)", "",
              "| k | bags used |", "|---|---|"]
    for k in ks:
        used = [cells[(k, m)]["mean_bags_used"] for m in ms if (k, m) in cells]
        lines.append(f"| {k} | {cell(used[0] if used else None, 2)} |")
    lines.append("")
    return "\n".join(lines)


def roc_png(path: Path, labels: np.ndarray, probs: np.ndarray, class_names: list[str],
             overwrite: bool) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .._atomic import atomic_file
    from ..metrics import roc_auc, roc_curve

    fig = Figure(figsize=(5, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1)
    classes = [1] if len(class_names) == 2 else list(range(len(class_names)))
    drawn = 0
    for c in classes:
        curve = roc_curve(labels, probs[:, c], positive=c) if len(labels) else None
        if curve is None:
            continue
        fpr, tpr, _ = curve
        auc = roc_auc(labels, probs[:, c], positive=c)
        ax.plot(fpr, tpr, linewidth=2, label=f"{class_names[c]} (AUC {auc:.3f})")
        drawn += 1
    if drawn:
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "ROC undefined:\nneeds both positive and negative slides",
                ha="center", va="center")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(f"ROC, {len(labels)} slides" + (" (one-vs-rest)" if len(classes) > 1 else ""))
    fig.tight_layout()
    with atomic_file(path, "wb", overwrite=overwrite) as fh:
        fig.savefig(fh, format="png")


def case_metrics(records: list[SlideRecord], class_names: list[str]) -> dict[str, Any]:
    """Metrics of the cases (mean of their slides' probabilities), when some case has
    several slides of one label."""
    from ..metrics import classification_metrics

    by_case: dict[str, list[SlideRecord]] = defaultdict(list)
    for r in records:
        by_case[str(r.case)].append(r)
    if all(len(v) == 1 for v in by_case.values()):
        return {"available": False, "reason": "every case has one slide (same as slide level)"}
    mixed = sorted(c for c, v in by_case.items() if len({r.label for r in v}) > 1)
    if mixed:
        return {"available": False,
                "reason": f"cases with slides of different labels: {', '.join(mixed[:5])}"}
    labels = np.array([v[0].label for v in by_case.values()], np.int64)
    probs = np.array([np.array([r.probs for r in v], np.float64).mean(axis=0)
                      for v in by_case.values()])
    out = classification_metrics(labels, probs, class_names)
    out.update(available=True, aggregation="mean of the slides' class probabilities")
    return out


def faithfulness_table(done: list[SlideRecord], ks: list[Any], ms: list[Any],
                       class_names: list[str]) -> dict[str, Any]:
    """Accuracy, AUC and agreement with the full-slide prediction of every (k, m)."""
    from ..metrics import classification_metrics

    labels = np.array([r.label for r in done], np.int64)
    full = np.array([r.probs for r in done], np.float64).reshape(len(done), len(class_names))
    full_m = classification_metrics(labels, full, class_names)
    rows = [_restricted_row(done, k, m, labels, full, class_names) for k in ks for m in ms]
    return {"k_list": ks, "m_list": ms, "n_slides": len(done),
            "full": {"accuracy": full_m["accuracy"], "auc": full_m["auc"]}, "rows": rows}


def _restricted_row(done: list[SlideRecord], k: Any, m: Any, labels: np.ndarray,
                    full: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """One cell (k bags, m patches) of the faithfulness table."""
    from ..metrics import classification_metrics

    cells = [next(c for c in (r.sweep or []) if c["k"] == k and c["m"] == m) for r in done]
    probs = np.array([c["slide_probs"] for c in cells], np.float64).reshape(full.shape)
    mm = classification_metrics(labels, probs, class_names)
    agree = (np.argmax(probs, 1) == np.argmax(full, 1)) if len(done) else np.zeros(0)
    return {
        "k": k, "m": m, "n": len(done),
        "accuracy": mm["accuracy"], "auc": mm["auc"],
        "f1": mm["f1"], "sensitivity": mm["sensitivity"],
        "specificity": mm["specificity"],
        "agreement": float(agree.mean()) if len(done) else None,
        "mean_abs_change": (float((0.5 * np.abs(probs - full).sum(1)).mean())
                            if len(done) else None),
        "mean_bags_used": (float(np.mean([c["bags_used"] for c in cells]))
                           if len(done) else None),
    }


# --------------------------------------------------------------------------- files


def predictions_table(records: list[SlideRecord], class_names: list[str], model: str
                      ) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the evaluation's predictions.csv (*model*: its column)."""
    header = ["slide", "case", "label", "label_name",
              *[f"prob_{c}" for c in class_names], "predicted", "predicted_name",
              "correct", "n_bags", "source", "seconds", "error", "message", "model"]
    rows = []
    for r in records:
        pred, label = predicted(r.probs), r.label
        assert label is not None  # every slide of an evaluation has a label
        probs: list[float | None] = list(r.probs) if r.probs else [None] * len(class_names)
        rows.append([
            r.slide, r.case, label, class_names[label], *probs,
            pred, class_names[pred] if pred is not None else "",
            None if pred is None else bool(pred == label), r.n_bags,
            r.status, r.seconds, r.error or "", r.message or "", model])
    return header, rows


def write_report(files: dict[str, Path], meta: dict[str, Any], records: list[SlideRecord],
                 scores: dict[str, Any], *, model_column: str, overwrite: bool) -> None:
    """Every evaluation output.  *meta*: the common top of the JSON files; *scores*:
    ``slide_metrics``, ``case_metrics``, ``faithfulness`` (the table), ``labels`` and
    ``probs`` (arrays of the evaluated slides)."""
    from .._atomic import atomic_file

    class_names, ok = meta["class_names"], [r for r in records if not r.failed]
    header, rows = predictions_table(records, class_names, model_column)
    write_csv(files["predictions_csv"], header, rows, overwrite=overwrite)
    table = scores["faithfulness"]
    write_json(files["metrics_json"], {
        **meta, "n_slides": len(records), "n_evaluated": len(ok),
        "failed": [r.failure() for r in records if r.failed],
        "sources": sources(records), "slide_metrics": scores["slide_metrics"],
        "case_metrics": scores["case_metrics"],
        "faithfulness": {k: table[k] for k in ("k_list", "m_list", "rows")},
    }, overwrite=overwrite)
    per_slide = [{"slide": r.slide, "label": r.label, "full": r.probs, "restricted": r.sweep}
                 for r in ok]
    write_json(files["faithfulness_json"], {**meta, **table, "per_slide": per_slide},
               overwrite=overwrite)
    with atomic_file(files["faithfulness_md"], "w", overwrite=overwrite) as fh:
        fh.write(faithfulness_markdown(table) + "\n")
    roc_png(files["roc_png"], scores["labels"], scores["probs"], class_names, overwrite)


def sources(records: list[SlideRecord]) -> dict[str, int]:
    """How many slides were reused, analysed, failed."""
    return {str(k): v for k, v in Counter(r.status for r in records).items()}
