"""Repeated train/val/test splits, one training run each, and their summary (mean and SD).

The authors evaluate MRAN with repeated Monte-Carlo splits by case: five repeats of a
train:val:test ratio (3:1:1 for TCGA-BRCA and -STAD, 2:1:2 for TCGA-LUSC), reporting each
test metric as the mean and standard deviation over the repeats. :func:`train_repeats`
does that: each repeat is a normal run (:func:`napari_mran.training.train`) in
``<out>/repeat-<i>/`` with its own seed ``repeat_seed(seed, i)`` (for its split and its
training: initial weights, bag order, flips), whose split comes either from
:func:`ratio_split` or from the authors' published split CSVs (``--split-dir``:
``<dir>/<i>/case_{train,val,test}.csv``, :func:`read_authors_split`).

Layout of ``<out>``::

    repeats.json            what was asked (mode, ratio or split folder, seeds, options)
    splits/repeat-<i>.csv   the split of repeat i (slide,split,label,case)
    splits/repeat-<i>-test.csv  its test slides as a labels.csv (for ``napari-mran evaluate``)
    bags/                   the tissue-bag cache, shared by the repeats (found once per slide)
    repeat-<i>/             the run of repeat i (model.safetensors, test_metrics.json, ...)
    repeats-summary.csv     per metric: mean, SD and every repeat's value
    repeats-summary.md      the same as a table, as the paper reports it

Everything is checked (ratio, labels, every repeat's split) before anything is written.
With ``resume=True`` a finished repeat is verified (:func:`finished_run`) and skipped, an
unfinished one is resumed from its checkpoint, and the summary is written at the end. The
number of repeats may differ on resume (repeat i depends on the seed and i only):
more repeats extend the experiment, fewer summarise the first ones.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Generator

from ..errors import LabelsError, MRANError, OutputExistsError
from .splits import (PARTS, LabelledSlide, SplitImport, authors_split_folders, parse_ratio,
                     ratio_split, read_authors_split, read_labels, repeat_seed)
from .config import EpochEvent, TrainConfig, TrainSummary
from .run_folder import finished_run, write_text_atomic
from .trainer import train

MANIFEST = "repeats.json"
SUMMARY_CSV = "repeats-summary.csv"
SUMMARY_MD = "repeats-summary.md"
#: the metrics of the summary (keys of :func:`napari_mran.metrics.classification_metrics`)
SUMMARY_METRICS = (("accuracy", "Accuracy"), ("auc", "AUC"), ("f1", "F1"),
                   ("sensitivity", "Sensitivity"), ("specificity", "Specificity"),
                   ("precision", "Precision"))


@dataclass
class RepeatEvent:
    """Progress of a multi-repeat run: ``event`` is the repeat's training event (None for
    the messages of the repeats runner itself)."""

    repeat: int                      # 0-based
    repeats: int
    stage: str                       # "split", "skip", "train" (with event), "summary"
    message: str = ""
    event: EpochEvent | None = None


@dataclass
class RepeatsSummary:
    out_dir: Path
    summary_csv: Path
    summary_md: Path
    runs: list[Path]
    metrics: dict[str, dict[str, Any]]        # metric -> {mean, sd, n, values}
    tests: list[dict[str, Any]] = field(default_factory=list)
    imports: list[dict[str, Any]] = field(default_factory=list)


def _split_csv_text(split: dict[str, list[LabelledSlide]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["slide", "split", "label", "case"])
    for part in PARTS:
        for m in sorted(split[part], key=lambda r: r.slide):
            w.writerow([m.slide, part, m.label, m.case])
    return buf.getvalue()


def _labels_csv_text(members: list[LabelledSlide]) -> str:
    """A labels.csv (slide,label,case) of some slides: e.g. a repeat's test part, for
    ``napari-mran evaluate``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["slide", "label", "case"])
    for m in sorted(members, key=lambda r: r.slide):
        w.writerow([m.slide, m.label, m.case])
    return buf.getvalue()


def plan_repeats(rows: list[LabelledSlide], *, repeats: int | None, seed: int = 0,
                 ratio=None, split_dir: str | os.PathLike | None = None,
                 allow_missing: bool = False,
                 ) -> tuple[list[dict[str, list[LabelledSlide]]], list[SplitImport] | None]:
    """The split of every repeat (and, for ``split_dir``, each folder's import report).

    Exactly one of ``ratio`` (e.g. "3:1:1") and ``split_dir`` (the authors' layout). With
    ``split_dir``, ``repeats`` None takes every numbered folder, else the first ``repeats``.
    Every part of every repeat must hold at least one slide (LabelsError otherwise)."""
    if (ratio is None) == (split_dir is None):
        raise LabelsError("give either a split ratio or a split directory (not both)")
    if repeats is not None and (int(repeats) != repeats or repeats < 1):
        raise LabelsError(f"the number of repeats must be a positive integer, got {repeats}")
    splits: list[dict[str, list[LabelledSlide]]] = []
    imports: list[SplitImport] | None = None
    if ratio is not None:
        r = parse_ratio(ratio)
        for i in range(repeats or 1):
            splits.append(ratio_split(rows, r, seed=repeat_seed(seed, i)))
        what = f"ratio {':'.join(map(str, r))}"
    else:
        if split_dir is None:
            raise LabelsError("repeated splits need a ratio or a split folder")
        folders = authors_split_folders(split_dir)
        if repeats is not None and repeats > len(folders):
            raise LabelsError(f"{split_dir}: {repeats} repeats asked, but it holds "
                              f"{len(folders)} split folder(s) ({', '.join(f.name for f in folders)})")
        imports = [read_authors_split(f, rows, allow_missing=allow_missing)
                   for f in folders[:repeats]]
        splits = [imp.parts for imp in imports]
        what = "split directory"
    for i, sp in enumerate(splits):
        empty = [p for p in PARTS if not sp[p]]
        if empty:
            counts = ", ".join(f"{p} {len(sp[p])}" for p in PARTS)
            raise LabelsError(f"repeat {i} ({what}): the {' and '.join(empty)} part"
                              f"{'s are' if len(empty) > 1 else ' is'} empty ({counts} slides); "
                              "too few cases for this split")
    return splits, imports


def _manifest(cfg: TrainConfig, *, mode: str, ratio, split_dir, repeats: int, seeds,
              labels_csv, allow_missing: bool) -> dict[str, Any]:
    return {
        "format": "napari-mran repeats", "version": 1, "mode": mode,
        "ratio": list(parse_ratio(ratio)) if ratio is not None else None,
        "split_dir": str(Path(split_dir).resolve()) if split_dir is not None else None,
        "allow_missing_slides": bool(allow_missing),
        "repeats": repeats, "seed": cfg.seed, "repeat_seeds": seeds,
        "labels_csv": str(Path(labels_csv).resolve()),
        "train_config": asdict(replace(cfg, split_file=None)),
    }


@dataclass
class _Experiment:
    """The checked plan of a multi-repeat run: nothing is written before it is made."""

    splits: list[dict[str, list[LabelledSlide]]]
    imports: list[SplitImport] | None
    seeds: list[int]                 # repeat i: its split (ratio mode) and its training
    manifest: dict[str, Any]         # repeats.json
    texts: list[str]                 # splits/repeat-<i>.csv

    @property
    def n(self) -> int:
        return len(self.splits)


def _plan_experiment(slides_dir: str | os.PathLike, labels_csv: str | os.PathLike,
                     cfg: TrainConfig, *, repeats: int | None, ratio,
                     split_dir: str | os.PathLike | None, allow_missing: bool) -> _Experiment:
    """The splits, seeds and manifest of the repeats (options and labels checked)."""
    if cfg.split_file:
        raise LabelsError("a split file and repeated splits exclude each other")
    if ratio is not None:
        parse_ratio(ratio)  # the ratio first: its error needs no labels
    if repeats is None and ratio is not None:
        repeats = 5
    rows = read_labels(labels_csv, slides_dir)
    splits, imports = plan_repeats(rows, repeats=repeats, seed=cfg.seed, ratio=ratio,
                                   split_dir=split_dir, allow_missing=allow_missing)
    n = len(splits)
    # repeat i: its own seed, for its split (ratio mode) and its training (init, order, flips)
    seeds = [repeat_seed(cfg.seed, i) for i in range(n)]
    manifest = _manifest(cfg, mode="ratio" if ratio is not None else "split-dir", ratio=ratio,
                         split_dir=split_dir, repeats=n, seeds=seeds, labels_csv=labels_csv,
                         allow_missing=allow_missing)
    return _Experiment(splits, imports, seeds, manifest, [_split_csv_text(sp) for sp in splits])


def _check_out_folder(out: Path, exp: _Experiment, resume: bool) -> None:
    """``out`` must be new or empty, or (``resume``) hold repeats of the same options whose
    split files are the ones computed now; the number of repeats may differ."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a folder")
    if not (out.is_dir() and any(out.iterdir())):
        return
    if not resume:
        raise OutputExistsError(f"{out}: the folder is not empty; use --resume to continue "
                                "the repeats, or choose a new folder")
    try:
        saved = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        raise MRANError(f"{out}: nothing to resume (no readable {MANIFEST})") from None
    if isinstance(saved, dict) and isinstance(saved.get("train_config"), dict):
        # options added to TrainConfig after the repeats were started count as defaults
        saved["train_config"] = {**asdict(TrainConfig()), **saved["train_config"]}
    # the number of repeats may change: repeat i's split does not depend on it
    manifest = exp.manifest
    diff = sorted(k for k in set(saved) | set(manifest)
                  if k not in ("repeats", "repeat_seeds") and saved.get(k) != manifest.get(k))
    if diff:
        raise MRANError(f"{out}: the options differ from the repeats being resumed "
                        f"({', '.join(diff)})")
    for i, text in enumerate(exp.texts):
        old = out / "splits" / f"repeat-{i}.csv"
        if old.is_file() and old.read_text() != text:
            raise MRANError(f"{old}: the split of repeat {i} differs from the one computed "
                            "now (labels.csv or the split files changed); use a new folder")


def _write_experiment(out: Path, exp: _Experiment) -> None:
    """repeats.json and every repeat's split files (splits/repeat-<i>.csv, -test.csv)."""
    (out / "splits").mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / MANIFEST, json.dumps(exp.manifest, indent=2) + "\n")
    for i, text in enumerate(exp.texts):
        write_text_atomic(out / "splits" / f"repeat-{i}.csv", text)
        write_text_atomic(out / "splits" / f"repeat-{i}-test.csv",
                          _labels_csv_text(exp.splits[i]["test"]))


def _run_repeat(i: int, out: Path, exp: _Experiment, cfg: TrainConfig,
                slides_dir: str | os.PathLike, labels_csv: str | os.PathLike,
                command: str | None) -> Generator[RepeatEvent, None, dict[str, Any]]:
    """Repeat ``i``: skipped when finished and verified, else trained (or resumed) in
    ``<out>/repeat-<i>``; returns its test document ({} when it has none)."""
    n, imports = exp.n, exp.imports
    run = out / f"repeat-{i}"
    split_file = (out / "splits" / f"repeat-{i}.csv").resolve()
    cfg_i = replace(cfg, split_file=str(split_file), seed=exp.seeds[i])
    counts = ", ".join(f"{p} {len(exp.splits[i][p])}" for p in PARTS)
    src = f"seed {exp.seeds[i]}" + (f", split from {imports[i].folder}" if imports else "")
    tag = f"repeat-{i} ({i + 1}/{n})"
    yield RepeatEvent(i, n, "split", f"{tag}: {counts} slides ({src})")
    if imports is not None and (any(imports[i].unmatched.values()) or imports[i].unused):
        yield RepeatEvent(i, n, "split", imports[i].report())
    done = finished_run(run, cfg_i, strict=True) if run.is_dir() else None
    if done is not None:
        yield RepeatEvent(i, n, "skip", f"{tag}: finished and verified, skipped "
                                        f"({_test_summary_line(done)})")
        return done
    busy = run.is_dir() and any(run.iterdir())
    gen = train(slides_dir, labels_csv, run, cfg_i, resume=busy, command=command,
                bag_cache=out / "bags")  # tissue bags found once for all repeats
    try:
        while True:
            try:
                ev = next(gen)
            except StopIteration as stop:
                summary: TrainSummary = stop.value
                break
            yield RepeatEvent(i, n, "train", f"{tag}: {ev.message}", ev)
    finally:
        gen.close()  # closing this generator closes the repeat's run (its reader threads)
    return summary.test or {}


def train_repeats(slides_dir: str | os.PathLike, labels_csv: str | os.PathLike,
                  out_dir: str | os.PathLike, config: TrainConfig | None = None, *,
                  repeats: int | None = None, ratio=None,
                  split_dir: str | os.PathLike | None = None,
                  allow_missing: bool = False, resume: bool = False, command: str | None = None,
                  ) -> Generator[RepeatEvent, None, RepeatsSummary]:
    """Train one run per repeat and summarise their test metrics; yields
    :class:`RepeatEvent`, returns a :class:`RepeatsSummary`.

    ``ratio`` ("3:1:1", or three positive integers) draws ``repeats`` (None: 5, as the
    paper) case-level, label-stratified splits; ``split_dir`` imports the authors' split
    folders instead (``repeats`` None: all of them). Repeat i is seeded with
    ``repeat_seed(config.seed, i)`` (its split and its training). ``config.split_file``
    must be None; ``config.n_folds``/``fold`` are not used.
    ``out_dir`` must be new or empty unless ``resume``.
    """
    cfg = config or TrainConfig()
    out = Path(out_dir)
    exp = _plan_experiment(slides_dir, labels_csv, cfg, repeats=repeats, ratio=ratio,
                           split_dir=split_dir, allow_missing=allow_missing)
    _check_out_folder(out, exp, resume)  # nothing is written before these checks
    _write_experiment(out, exp)
    n = exp.n
    runs, tests = [], []
    for i in range(n):
        runs.append(out / f"repeat-{i}")
        tests.append((yield from _run_repeat(i, out, exp, cfg, slides_dir, labels_csv, command)))
    metrics = summarise(tests)
    csv_text, md_text = summary_tables(metrics, n, exp.manifest)
    write_text_atomic(out / SUMMARY_CSV, csv_text)
    write_text_atomic(out / SUMMARY_MD, md_text)
    yield RepeatEvent(n - 1, n, "summary", md_text)
    return RepeatsSummary(out, out / SUMMARY_CSV, out / SUMMARY_MD, runs, metrics, tests,
                          [imp.as_dict() for imp in exp.imports] if exp.imports else [])


def _test_summary_line(doc: dict[str, Any]) -> str:
    from .report import _test_line

    return _test_line(doc)


def summarise(tests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per metric, over the repeats' test documents: the values (None where undefined),
    ``n`` (defined values), ``mean`` and ``sd`` (sample SD, denominator n - 1; None when
    n < 2)."""
    out: dict[str, dict[str, Any]] = {}
    for key, _ in SUMMARY_METRICS:
        values = [((t or {}).get("metrics") or {}).get(key) for t in tests]
        values = [float(v) if v is not None and math.isfinite(float(v)) else None for v in values]
        ok = [v for v in values if v is not None]
        mean = sum(ok) / len(ok) if ok else None
        sd = (math.sqrt(sum((v - mean) ** 2 for v in ok) / (len(ok) - 1))
              if len(ok) >= 2 else None)
        out[key] = {"mean": mean, "sd": sd, "n": len(ok), "values": values}
    return out


def _num(v: float | None, digits: int = 6) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def summary_tables(metrics: dict[str, dict[str, Any]], n: int, manifest: dict[str, Any],
                   ) -> tuple[str, str]:
    """(CSV, markdown) of the summary. CSV columns: metric, mean, sd, n (defined values),
    repeat_0 .. repeat_<n-1>; an undefined value is an empty cell, never NaN."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["metric", "mean", "sd", "n", *[f"repeat_{i}" for i in range(n)]])
    for key, _ in SUMMARY_METRICS:
        m = metrics[key]
        w.writerow([key, _num(m["mean"]), _num(m["sd"]), m["n"], *[_num(v) for v in m["values"]]])
    if manifest.get("mode") == "ratio":
        how = (f"ratio {':'.join(map(str, manifest['ratio']))} (train:val:test), by case, "
               f"stratified by label")
    else:
        how = f"the split folders of {manifest['split_dir']}"
    how += f"; repeat seeds derived from seed {manifest['seed']}"
    lines = [f"# Test metrics over {n} repeat{'s' if n != 1 else ''}", "",
             f"Splits: {how}. Each repeat: the model of the best validation epoch, on that "
             "repeat's test slides. Mean ± SD over the repeats (sample SD, n - 1); n/a where "
             "a value is undefined (e.g. AUC with one class in the test part).", "",
             "| Metric | Mean ± SD | n | " + " | ".join(f"repeat {i}" for i in range(n)) + " |",
             "|---|---|---|" + "---|" * n]
    for key, title in SUMMARY_METRICS:
        m = metrics[key]
        ms = "n/a" if m["mean"] is None else (
            f"{m['mean']:.4f} ± {m['sd']:.4f}" if m["sd"] is not None else f"{m['mean']:.4f}")
        vals = " | ".join("n/a" if v is None else f"{v:.4f}" for v in m["values"])
        lines.append(f"| {title} | {ms} | {m['n']} | {vals} |")
    return buf.getvalue(), "\n".join(lines) + "\n"
