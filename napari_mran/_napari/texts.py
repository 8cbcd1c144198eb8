"""The wording of the "Analyze slide" panel (no Qt): model summaries, progress lines,
the slide prediction and the faithfulness line."""

from __future__ import annotations

import html
import json

import numpy as np


NO_SLIDE_HINT = ("<i>No slide open. Open one with File ▸ Open (SVS, NDPI, OME-TIFF, tiled "
                 "TIFF…) or File ▸ Open Sample ▸ MRAN.</i>")
DEMO_WARNING = ("<span style='color:#e66'><b>DEMO model</b>: trained on synthetic "
                "slides, not for diagnosis</span>")


def model_summary(model) -> tuple[str, str]:
    """(short HTML, full tooltip text) describing a model's classes and provenance."""
    cfg = model.config
    prov = dict(cfg.provenance or {})
    source = getattr(model, "checkpoint_path", None)
    parts = [f"<b>classes</b>: {html.escape(', '.join(cfg.class_names))}",
             f"width {cfg.width:g}, bag {cfg.bag_px} px → {cfg.input_px} px input"]
    if prov:
        keys = ", ".join(sorted(prov)[:4])
        parts.append(f"provenance: {html.escape(keys)}" + (" …" if len(prov) > 4 else ""))
    else:
        parts.append("provenance: none recorded (untrained or test model?)")
    if getattr(model, "is_demo", False):
        parts.insert(0, DEMO_WARNING)
    sha = getattr(model, "checkpoint_sha256", None)
    full = {"classes": list(cfg.class_names), "width": cfg.width, "bag_px": cfg.bag_px,
            "source": str(source) if source else None, "sha256": sha, "provenance": prov}
    return "<br>".join(parts), json.dumps(full, indent=1, default=str)[:4000]


def fmt_eta(seconds: float | None) -> str:
    """``m:ss`` or ``h:mm:ss``; ``–`` when unknown."""
    if seconds is None or not np.isfinite(seconds):
        return "–"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


def bags_progress(event) -> str:
    """The progress line of a ``bags`` event of :func:`napari_mran.analysis.analyze_slide`."""
    failed = f", {event.bags_failed} failed" if event.bags_failed else ""
    return (f"{event.bags_done} / {event.bags_total} bags{failed} · "
            f"{event.bags_per_s:.2f} bags/s · ETA {fmt_eta(event.eta_s)}")


def bags_rate(slide_name: str, event) -> str:
    """The description of napari's progress bar (activity panel) during a run."""
    return f"MRAN {slide_name}: {event.bags_per_s:.2f} bags/s, ETA {fmt_eta(event.eta_s)}"


def done_message(result, outcome, took_s: float) -> str:
    """The progress line when a run's result is shown."""
    msg = f"Done in {took_s:.1f} s: {result.n_bags} bags"
    if result.degraded:
        msg += f" ({len(result.failed_boxes)} bags failed to decode: shown in red)"
    if outcome.saved:
        msg += f". Saved to {outcome.saved}"
    elif outcome.save_error:
        msg += ". NOT saved"
    return msg


def prediction_html(result) -> str:
    """The slide prediction, one bar per class, and what was analysed."""
    probs = sorted(zip(result.class_names, result.slide_probs), key=lambda t: -t[1])
    top_name, top_p = probs[0]
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td align='right'>{p:.3f}</td>"
        f"<td><span style='color:#3a8'>{'█' * round(20 * float(p))}</span></td></tr>"
        for n, p in probs)
    extra = " <span style='color:#e96'>(degraded: some bags failed)</span>" \
        if result.degraded else ""
    tissue = result.provenance.get("tissue") or {}
    cover = tissue.get("coverage")
    cover_text = "" if cover is None else (
        f" · {cover:.0%} of the tissue analysed (edge bags: {tissue.get('edge', 'drop')})")
    demo = ("<br><span style='color:#e66'><b>DEMO model</b>: trained on synthetic slides; "
            "a demonstration, not a diagnosis</span>") if result.model_is_demo else ""
    return (f"<b>Slide prediction: {html.escape(top_name)} ({top_p:.2f})</b>{extra}{demo}"
            f"<table>{rows}</table><small>{result.n_bags} bags of {result.bag_px} px"
            f"{cover_text} · {html.escape(result.slide_name)}</small>")


def format_faith(value, result, k: int, m: int) -> str:
    """One line: restricted vs full slide probabilities."""
    probs = value.get("slide_probs") if isinstance(value, dict) else \
        getattr(value, "slide_probs", value)
    used = value.get("bags_used", k) if isinstance(value, dict) else k
    try:
        vals = [float(p) for p in np.ravel(np.asarray(probs, dtype=float))]
    except (TypeError, ValueError):
        return f"Top {k} bags × {m} patches: {value}"
    parts = [f"{n} {p:.3f} (all bags {f:.3f})"
             for n, p, f in zip(result.class_names, vals, result.slide_probs)]
    return f"From the top {used} bags × {m} patches: " + ", ".join(parts)
