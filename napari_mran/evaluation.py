"""Evaluate a model on labelled slides, with the attention-faithfulness experiment.

``evaluate(model, slides_dir, labels_csv, out_dir, ...)`` is a generator of
:class:`EvaluationEvent` returning a report dict.  It writes into *out_dir*:

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

import os
import time
from collections import Counter, defaultdict
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import (AnalysisError, LabelsError, MRANError, OutputExistsError, ResultsError)
from .labels import read_labels_table
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

EVALUATION_FILES = {
    "predictions_csv": "predictions.csv",
    "metrics_json": "metrics.json",
    "roc_png": "roc.png",
    "faithfulness_json": "faithfulness.json",
    "faithfulness_md": "faithfulness.md",
}
METRICS_FORMAT = "napari-mran-evaluation"


@dataclass
class EvaluationEvent:
    """One progress event of :func:`evaluate`."""

    stage: str                    # "plan", "slide" (one finished), "metrics", "done"
    index: int | None = None
    slide: str | None = None
    status: str | None = None     # "reused" (verified store), "analysed", "failed"
    done: int = 0
    total: int = 0
    failed: int = 0
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


# --------------------------------------------------------------------------- labels


# --------------------------------------------------------------------------- outputs


def _cell(value: Any, digits: int = 3) -> str:
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
        f"Full-slide prediction: accuracy {_cell(table['full']['accuracy'])}, "
        f"AUC {_cell(table['full']['auc'])}.",
        "",
    ]
    for key, title in (("accuracy", "Accuracy"), ("auc", "AUC"),
                       ("agreement", "Agreement with the full-slide predicted class"),
                       ("mean_abs_change", "Mean |change| of the class probabilities "
                                           "(total variation) vs the full slide")):
        lines += [f"## {title}", "", "| k \\ m | " + " | ".join(str(m) for m in ms) + " |",
                  "|---" * (len(ms) + 1) + "|"]
        for k in ks:
            vals = [_cell(cells[(k, m)][key]) if (k, m) in cells else "n/a" for m in ms]
            lines.append(f"| {k} | " + " | ".join(vals) + " |")
        lines.append("")
    lines += ["## Bags used (mean over slides; a slide with fewer than k bags uses all)", "",
              "| k | bags used |", "|---|---|"]
    for k in ks:
        used = [cells[(k, m)]["mean_bags_used"] for m in ms if (k, m) in cells]
        lines.append(f"| {k} | {_cell(used[0] if used else None, 2)} |")
    lines.append("")
    return "\n".join(lines)


def _roc_png(path: Path, labels: np.ndarray, probs: np.ndarray, class_names: list[str],
             overwrite: bool) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ._atomic import atomic_file
    from .metrics import roc_auc, roc_curve

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


def _case_metrics(rows: list[dict[str, Any]], class_names: list[str]) -> dict[str, Any]:
    from .metrics import classification_metrics

    by_case: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_case[r["case"]].append(r)
    if all(len(v) == 1 for v in by_case.values()):
        return {"available": False, "reason": "every case has one slide (same as slide level)"}
    mixed = sorted(c for c, v in by_case.items() if len({r["label"] for r in v}) > 1)
    if mixed:
        return {"available": False,
                "reason": f"cases with slides of different labels: {', '.join(mixed[:5])}"}
    labels = np.array([v[0]["label"] for v in by_case.values()], np.int64)
    probs = np.array([np.mean([r["probs"] for r in v], axis=0) for v in by_case.values()])
    out = classification_metrics(labels, probs, class_names)
    out.update(available=True, aggregation="mean of the slides' class probabilities")
    return out


def _faithfulness_table(done: list[dict[str, Any]], ks: list, ms: list,
                        class_names: list[str]) -> dict[str, Any]:
    from .metrics import classification_metrics

    labels = np.array([r["label"] for r in done], np.int64)
    full = np.array([r["probs"] for r in done], np.float64).reshape(len(done), len(class_names))
    full_m = classification_metrics(labels, full, class_names)
    rows = []
    for k in ks:
        for m in ms:
            cells = [next(c for c in r["sweep"] if c["k"] == k and c["m"] == m) for r in done]
            probs = np.array([c["slide_probs"] for c in cells], np.float64).reshape(full.shape)
            mm = classification_metrics(labels, probs, class_names)
            agree = (np.argmax(probs, 1) == np.argmax(full, 1)) if len(done) else np.zeros(0)
            rows.append({
                "k": k, "m": m, "n": len(done),
                "accuracy": mm["accuracy"], "auc": mm["auc"],
                "f1": mm["f1"], "sensitivity": mm["sensitivity"],
                "specificity": mm["specificity"],
                "agreement": float(agree.mean()) if len(done) else None,
                "mean_abs_change": (float((0.5 * np.abs(probs - full).sum(1)).mean())
                                    if len(done) else None),
                "mean_bags_used": (float(np.mean([c["bags_used"] for c in cells]))
                                   if len(done) else None),
            })
    return {"k_list": ks, "m_list": ms, "n_slides": len(done),
            "full": {"accuracy": full_m["accuracy"], "auc": full_m["auc"]}, "rows": rows}


# --------------------------------------------------------------------------- the run


def evaluate(
    model: Any,
    slides_dir: str | os.PathLike,
    labels_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    k_list: Iterable[Any] = (1, 2, 4, 8, "all"),
    m_list: Iterable[Any] = (4, 16, 64),
    results_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    device: str = "auto",
    batch_size: int | str = "auto",
    num_workers: int | None = None,
    bag_px: int | None = None,
    bag_um: float | None = None,
    tissue_method: str = "reference",
    tissue_options: dict | None = None,
    top_k_patches: int | None = None,
    amp: bool | str = "auto",
    compile: bool | str = "auto",
    max_failed_fraction: float | None = None,
    mpp: float | tuple[float, float] | None = None,
    edge: str = "pad",
    allow_non_brightfield: bool = False,
) -> Generator[EvaluationEvent, None, dict[str, Any]]:
    """Evaluate *model* on the labelled slides; a generator of events returning a report.

    Parameters
    ----------
    model : an :class:`~napari_mran.model.MRAN`, the path of a checkpoint, or ``"demo"``
        (the bundled synthetic demo model; the outputs then say so).
    slides_dir : folder the ``slide`` column of *labels_csv* is relative to.
    labels_csv : ``slide,label[,case]`` (see :func:`read_labels`).
    out_dir : where the outputs go (created if missing; existing outputs are
        replaced only with ``overwrite=True``; locked while the run lasts).
    k_list : bag limits of the faithfulness experiment (ints and/or ``"all"``).
    m_list : patch limits (ints in [1, 64]); an ``"all"`` column (the model's own
        thresholded patch attention) is always added.
    results_dir : a ``napari-mran predict`` output folder: a slide's store there is
        reused when it is verified complete and made by the same model file (sha256),
        analysis options and slide file; otherwise the slide is analysed.
    device, batch_size, num_workers, bag_px, ..., mpp : analysis options (as
        :func:`napari_mran.cohort.predict_cohort`).

    Returns
    -------
    ``{"out_dir", "files", "n_slides", "n_evaluated", "failed", "sources", "metrics",
    "case_metrics", "faithfulness", "model_sha256", "elapsed_s"}``.  A slide that fails
    is recorded (error class + message) and left out of the metrics.
    """
    from .analysis import DEFAULT_MAX_FAILED_FRACTION, predict_slide
    from .cohort import (DEMO_MODEL_LABEL, OutputLock, analysis_options, find_store,
                         prepare_out_dir, resolve_model_path, store_status, write_csv,
                         write_json)
    from .faithfulness import ALL, parse_k, parse_m, restriction_sweep
    from .metrics import classification_metrics
    from .model import MRAN, load_model, sha256_of
    from .results import SlideResult
    from .slide import open_slide

    t0 = time.perf_counter()
    if isinstance(model, (str, os.PathLike)):
        model_path, is_demo = resolve_model_path(model)
        model_sha = sha256_of(model_path)
        model = load_model(model_path)
        model.checkpoint_sha256, model.checkpoint_path = model_sha, model_path
        model.is_demo = is_demo
    elif isinstance(model, MRAN):
        model_sha = getattr(model, "checkpoint_sha256", None)
        model_path = getattr(model, "checkpoint_path", None)
    else:
        raise TypeError(f"model must be an MRAN or a checkpoint path, not {type(model).__name__}")
    class_names = list(model.config.class_names)
    n_patches = model.config.n_patches

    def labels_of(values: Iterable[Any], parse, name: str) -> list:
        out = []
        for v in values:
            try:
                p = parse(v)
            except ValueError as exc:
                raise LabelsError(f"--{name}: {exc}") from None
            out.append(ALL if p is None else p)
        return list(dict.fromkeys(out))

    ks = labels_of(k_list, parse_k, "k")
    ms = labels_of(m_list, lambda v: parse_m(v, n_patches), "m")
    if ALL not in ms:
        ms.append(ALL)
    if not ks:
        raise LabelsError("--k: give at least one bag limit")
    rows = read_labels_table(labels_csv, slides_dir, class_names)

    out = prepare_out_dir(out_dir)
    if results_dir is not None:
        rdir = Path(results_dir).expanduser()
        if not rdir.is_dir():
            raise ResultsError(f"{rdir}: results folder not found (or not a folder)")
        if rdir.resolve() == out:
            raise OutputExistsError(f"{out}: the output folder must differ from the results "
                                    "folder (both would hold a predictions.csv)")
    else:
        rdir = None
    key_options = analysis_options(bag_px=bag_px, bag_um=bag_um, tissue_method=tissue_method,
                                   tissue_options=tissue_options, top_k_patches=top_k_patches,
                                   amp=amp, mpp=mpp, edge=edge)
    is_demo = bool(getattr(model, "is_demo", False))
    analysis_opts = {k: v for k, v in {
        "device": device, "batch_size": batch_size, "num_workers": num_workers,
        "bag_px": bag_px, "bag_um": bag_um, "tissue_method": tissue_method,
        "tissue_options": tissue_options, "top_k_patches": top_k_patches, "amp": amp,
        "compile": compile, "edge": edge, "allow_non_brightfield": allow_non_brightfield,
        "max_failed_fraction": (DEFAULT_MAX_FAILED_FRACTION if max_failed_fraction is None
                                else float(max_failed_fraction)),
    }.items() if v is not None}
    sweep_opts = {"device": device, "num_workers": num_workers,
                  "batch_size": 4 if batch_size in (None, "auto") else batch_size}
    files = {key: out / name for key, name in EVALUATION_FILES.items()}

    lock = OutputLock(out, "napari-mran evaluate").acquire()
    try:
        existing = [str(p) for p in files.values() if os.path.lexists(p)]
        if existing and not overwrite:
            raise OutputExistsError("refusing to overwrite earlier evaluation outputs (pass "
                                    "overwrite to replace them): " + ", ".join(existing))
        for p in files.values():
            if p.is_dir() and not p.is_symlink():
                raise OutputExistsError(f"{p}: is a folder; refusing to replace it with a file")

        total = len(rows)
        yield EvaluationEvent("plan", total=total,
                              message=f"{total} labelled slides; k = {ks}, m = {ms}")
        records: list[dict[str, Any]] = []
        failed = 0
        for i, row in enumerate(rows):
            t_slide = time.perf_counter()
            rec: dict[str, Any] = {**row, "status": "failed", "probs": None, "n_bags": None,
                                   "error": None, "message": None, "sweep": None}
            note = ""
            try:
                result = None
                if rdir is not None:
                    store = find_store(rdir, row["path"])
                    if store is None:
                        note = "no store in the results folder"
                    else:
                        st, why = store_status(store, model_sha256=model_sha,
                                               options=key_options, slide=row["path"])
                        if st == "valid":
                            result = SlideResult.load(store, verify_checksums=False)
                            rec["status"] = "reused"
                        else:
                            note = f"store not reused: {why or st}"
                with open_slide(row["path"], mpp=mpp) as slide:
                    if result is None:
                        result = predict_slide(slide, model, **analysis_opts)
                        rec["status"] = "analysed"
                    if not np.all(np.isfinite(result.slide_probs)):
                        raise AnalysisError(f"{row['path']}: the model gave non-finite slide "
                                            f"probabilities {result.slide_probs.tolist()}")
                    sweep = restriction_sweep(slide, model, result, ks, ms, **sweep_opts)
                rec.update(probs=[float(p) for p in result.slide_probs], n_bags=result.n_bags,
                           sweep=[{"k": c["k"], "m": c["m"], "bags_used": c["bags_used"],
                                   "slide_probs": [float(p) for p in c["slide_probs"]]}
                                  for c in sweep])
            except MRANError as exc:
                rec.update(status="failed", error=type(exc).__name__, message=str(exc))
            except MemoryError:
                rec.update(status="failed", error="MemoryError", message="out of memory")
            rec["seconds"] = round(time.perf_counter() - t_slide, 3)
            if rec["status"] == "failed":
                failed += 1
            elif note:
                rec["message"] = note
            records.append(rec)
            msg = f"{rec['status']}: {row['slide']}"
            if rec["status"] == "failed":
                msg += f" ({rec['error']}: {rec['message']})"
            elif note:
                msg += f" ({note})"
            yield EvaluationEvent("slide", i, row["slide"], rec["status"], done=i + 1,
                                  total=total, failed=failed, message=msg)

        # ---- metrics
        ok = [r for r in records if r["status"] != "failed"]
        labels = np.array([r["label"] for r in ok], np.int64)
        probs = np.array([r["probs"] for r in ok], np.float64).reshape(len(ok), len(class_names))
        slide_metrics = classification_metrics(labels, probs, class_names)
        case_metrics = _case_metrics(ok, class_names)
        table = _faithfulness_table(ok, ks, ms, class_names)
        yield EvaluationEvent("metrics", done=total, total=total, failed=failed,
                              message=f"accuracy {_cell(slide_metrics['accuracy'])}, "
                                      f"AUC {_cell(slide_metrics['auc'])} on {len(ok)} slides")

        # ---- outputs
        header = ["slide", "case", "label", "label_name",
                  *[f"prob_{c}" for c in class_names], "predicted", "predicted_name",
                  "correct", "n_bags", "source", "seconds", "error", "message", "model"]
        table_rows = []
        for r in records:
            pred = int(np.argmax(r["probs"])) if r["probs"] else None
            table_rows.append([
                r["slide"], r["case"], r["label"], class_names[r["label"]],
                *(r["probs"] or [None] * len(class_names)),
                pred, class_names[pred] if pred is not None else "",
                None if pred is None else bool(pred == r["label"]), r["n_bags"],
                r["status"], r["seconds"], r["error"] or "", r["message"] or "",
                DEMO_MODEL_LABEL if is_demo else os.path.basename(model_path or "")])
        failures = [{"slide": r["slide"], "error": r["error"], "message": r["message"]}
                    for r in records if r["status"] == "failed"]
        sources = dict(Counter(r["status"] for r in records))
        write_csv(files["predictions_csv"], header, table_rows, overwrite=overwrite)
        meta = {
            "format": METRICS_FORMAT, "version": 1,
            "model": {"path": model_path, "sha256": model_sha, "demo": is_demo,
                      **({"note": DEMO_MODEL_LABEL} if is_demo else {}),
                      "config": model.config.to_dict()},
            "slides_dir": os.path.abspath(slides_dir),
            "labels_csv": os.path.abspath(labels_csv),
            "results_dir": None if rdir is None else os.path.abspath(rdir),
            "options": key_options,
            "class_names": class_names,
        }
        write_json(files["metrics_json"], {
            **meta, "n_slides": total, "n_evaluated": len(ok), "failed": failures,
            "sources": sources, "slide_metrics": slide_metrics, "case_metrics": case_metrics,
            "faithfulness": {k: table[k] for k in ("k_list", "m_list", "rows")},
        }, overwrite=overwrite)
        per_slide = [{"slide": r["slide"], "label": r["label"], "full": r["probs"],
                      "restricted": r["sweep"]} for r in ok]
        write_json(files["faithfulness_json"], {**meta, **table, "per_slide": per_slide},
                   overwrite=overwrite)
        from ._atomic import atomic_file

        with atomic_file(files["faithfulness_md"], "w", overwrite=overwrite) as fh:
            fh.write(faithfulness_markdown(table) + "\n")
        _roc_png(files["roc_png"], labels, probs, class_names, overwrite)

        report = {
            "out_dir": str(out),
            "files": {k: str(v) for k, v in files.items()},
            "n_slides": total,
            "n_evaluated": len(ok),
            "failed": failures,
            "sources": sources,
            "metrics": slide_metrics,
            "case_metrics": case_metrics,
            "faithfulness": table,
            "model_sha256": model_sha,
            "model_is_demo": is_demo,
            "elapsed_s": round(time.perf_counter() - t0, 3),
        }
        yield EvaluationEvent("done", done=total, total=total, failed=failed,
                              message=f"{len(ok)} of {total} slides evaluated; outputs in {out}")
        return report
    finally:
        lock.release()


def run_evaluation(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Drain :func:`evaluate` and return its report."""
    from ._events import drain

    return drain(evaluate(*args, **kwargs))
