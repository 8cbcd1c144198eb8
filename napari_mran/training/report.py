"""What a run reports of itself: the epoch and test lines, metrics.jsonl and metrics.png."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _epoch_line(r: dict[str, Any]) -> str:
    line = (f"epoch {r['epoch']}: up loss {_fmt(r['upstream_loss'])}, down loss "
            f"{_fmt(r['downstream_loss'])}, train acc {_fmt(r['train']['accuracy'])} "
            f"auc {_fmt(r['train']['auc'])}")
    if "val" in r:
        line += f", val acc {_fmt(r['val']['accuracy'])} auc {_fmt(r['val']['auc'])}"
    return line + (" *" if r.get("best_so_far") else "")


def _test_line(doc: dict[str, Any]) -> str:
    m = doc.get("metrics")
    if not m:
        return "test: no test slide with tissue bags"
    return (f"test ({m['n']} slides, best epoch {doc['best_epoch']}): acc {_fmt(m['accuracy'])} "
            f"auc {_fmt(m['auc'])} f1 {_fmt(m['f1'])} sens {_fmt(m['sensitivity'])} "
            f"spec {_fmt(m['specificity'])}")


def log_epoch(run: Path, history: list[dict[str, Any]], record: dict[str, Any]) -> None:
    """Add the epoch's record to the history, metrics.jsonl and metrics.png."""
    history.append(record)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    _plot(history, run / "metrics.png")


def rewrite_metrics(run: Path, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl from a resumed checkpoint's history: a kill between the metrics line
    and the checkpoint must not leave a duplicate line."""
    (run / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))


def _plot(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    ep = [h["epoch"] for h in history]
    fig = Figure(figsize=(12, 3.6), dpi=100)
    axes = fig.subplots(1, 3)
    axes[0].plot(ep, [h["upstream_loss"] for h in history], "o-", label="upstream")
    axes[0].plot(ep, [h["downstream_loss"] for h in history], "o-", label="downstream")
    if any("val" in h for h in history):
        axes[0].plot(ep, [h.get("val", {}).get("loss") for h in history], "o-", label="val CE")
    axes[0].set_title("loss")
    for ax, key in ((axes[1], "accuracy"), (axes[2], "auc")):
        ax.plot(ep, [h["train"][key] for h in history], "o-", label="train")
        if any("val" in h for h in history):
            ax.plot(ep, [h.get("val", {}).get(key) for h in history], "o-", label="val")
        ax.set_title(key)
        ax.set_ylim(-0.02, 1.02)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
