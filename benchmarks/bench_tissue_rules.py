"""How often the fast tissue rule (``reference``) and the authors' rule (``exact``) disagree,
and what each costs.

``exact`` is the rule of the authors' preprocessing as they run it: every bag of the grid,
read at level 0; a pixel is white when all three channels are > 127; the bag is kept when
its white fraction is < 0.98. ``reference`` applies the same rule on the candidate bags
(not glass at the smallest level) at the coarsest level whose downsample is <= 4.

Slides: a 3-level pyramid (downsamples 1, 2, 4) made from the real H&E crop
``CMU-1-Small-Region.svs`` (2220 x 2967; at 2048 px bags it holds 1 whole bag, so it is
also run with 512 px bags for a real-tissue count), the same crop on a larger canvas of
its own glass colour (bags with a little tissue at a border: white fractions near the
threshold), and synthetic slides
(``napari_mran.synthetic.make_slide``, tumour and normal, fixed seeds; half of them
9216 x 7168 so that the edge policy matters). Each slide with edge ``drop`` (the
authors': whole bags only) and ``pad`` (partial bags at the right/bottom too).

    .venv/bin/python benchmarks/bench_tissue_rules.py [--n-synthetic 10] [--size 8192] [--workers 2]

Prints a table; writes benchmarks/out/bench_tissue_rules.json and the section "Tissue
rules: fast (reference) against the authors' (exact)" of docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from _doc import write_section  # noqa: E402

CMU = ROOT.parent / "shared" / "data" / "CMU-1-Small-Region.svs"
if not CMU.is_file():
    CMU = Path("/work/shared/data/CMU-1-Small-Region.svs")
TITLE = "Tissue rules: fast (reference) against the authors' (exact)"


def _keys(boxes: np.ndarray) -> set[tuple[int, int, int, int]]:
    return {tuple(int(v) for v in b) for b in np.asarray(boxes).reshape(-1, 4)}


def compare(path: Path, bag_px: int, edge: str, workers: int) -> dict:
    """Kept bags and time of both methods on one slide (each timed on a freshly opened
    slide, so no tile cache is shared; the file itself is in the OS cache after the first)."""
    from napari_mran import open_slide
    from napari_mran.analysis import find_tissue_bags

    out: dict = {"slide": path.name, "bag_px": bag_px, "edge": edge}
    kept = {}
    for method in ("reference", "exact"):
        with open_slide(path) as slide:
            t0 = time.perf_counter()
            tb = find_tissue_bags(slide, bag_px, method, workers=workers, edge=edge)
            out[f"time_{method}_s"] = time.perf_counter() - t0
            out["size"] = list(slide.dimensions)
            out["levels"] = [round(float(d), 3) for d in slide.level_downsamples]
            out["n_grid"] = int(len(tb.grid_boxes))
            out[f"rule_level_downsample_{method}"] = tb.parameters.get("rule_level_downsample")
            kept[method] = _keys(tb.boxes)
            out[f"kept_{method}"] = len(kept[method])
            if method == "reference":
                out["n_candidates_reference"] = tb.parameters.get("n_candidates")
    # the white fraction of every bag of the grid at level 0 and at the reference's rule
    # level: how far downsampling moves it, and how many bags are near the 0.98 threshold
    try:
        from napari_mran.inference.tissue_bags import _white_fractions
    except ImportError:  # before napari_mran.inference existed
        from napari_mran.analysis import _white_fractions
    with open_slide(path) as slide:
        level = max(lv for lv, d in enumerate(slide.level_downsamples) if d <= 4 * (1 + 1e-6))
        grid = np.asarray(tb.grid_boxes, np.int64).reshape(-1, 4)
        wf0, _ = _white_fractions(slide, grid, 0, bag_px, 127, workers)
        wfr, _ = _white_fractions(slide, grid, level, bag_px, 127, workers)
    diff = np.abs(wf0 - wfr)
    out["wf_abs_diff_max"] = float(diff.max()) if diff.size else 0.0
    out["wf_abs_diff_mean"] = float(diff.mean()) if diff.size else 0.0
    out["n_near_threshold"] = int(np.sum(np.abs(wf0 - 0.98) < 0.02))
    pale = wf0 >= 0.9  # where a change can cross the threshold
    out["wf_abs_diff_max_pale"] = float(diff[pale].max()) if pale.any() else None
    only_ref = sorted(kept["reference"] - kept["exact"])
    only_exact = sorted(kept["exact"] - kept["reference"])
    out["only_reference"] = [list(b) for b in only_ref]
    out["only_exact"] = [list(b) for b in only_exact]
    if only_ref or only_exact:  # how close to the 0.98 threshold the disagreeing bags are
        where = {tuple(int(v) for v in b): k for k, b in enumerate(grid)}
        out["disagreeing_white_fraction"] = [
            {"box": list(b), "level0": round(float(wf0[where[b]]), 4) if b in where else None,
             "rule_level": round(float(wfr[where[b]]), 4) if b in where else None}
            for b in only_ref + only_exact]
    return out


def cmu_pyramid(tmp: Path) -> Path:
    from slide_writers import write_svs_pyramid

    from napari_mran import open_slide

    with open_slide(CMU) as s:
        w, h = s.dimensions
        image = s.read_region((0, 0), 0, (w, h))
    return write_svs_pyramid(tmp / "CMU-1-Small-Region.pyramid.svs", np.asarray(image)[..., :3],
                             downsamples=(1, 2, 4), mpp=0.499)


def cmu_on_glass(tmp: Path, size: int = 6144, at: tuple[int, int] = (1000, 1300)) -> Path:
    """The CMU crop pasted on a glass-coloured canvas (the median colour of its own
    background pixels), so that many bags hold a little tissue at their border: the
    bags whose white fraction is near 0.98."""
    from slide_writers import write_svs_pyramid

    from napari_mran import open_slide

    with open_slide(CMU) as s:
        w, h = s.dimensions
        image = np.asarray(s.read_region((0, 0), 0, (w, h)))[..., :3]
    glass = np.median(image[(image > 200).all(-1)], axis=0).astype(np.uint8)
    canvas = np.empty((size, size, 3), np.uint8)
    canvas[:] = glass
    canvas[at[1]:at[1] + h, at[0]:at[0] + w] = image
    return write_svs_pyramid(tmp / "CMU-on-glass.pyramid.svs", canvas, downsamples=(1, 2, 4),
                             mpp=0.499)


def synthetic(tmp: Path, n: int, size: int) -> list[Path]:
    from napari_mran.synthetic import make_slide

    paths = []
    for i in range(n):
        tumour = i % 2 == 0
        w, h = (size, size) if (i // 2) % 2 == 0 else (size + size // 8, size - size // 8)
        p = tmp / f"syn{i:02d}_{'tumour' if tumour else 'normal'}_{w}x{h}.svs"
        make_slide(p, w, h, tumour=tumour, seed=100 + i)
        paths.append(p)
    return paths


def table(rows: list[dict]) -> str:
    head = ("| slide | size | bag | edge | grid | kept reference | kept exact | only reference "
            "| only exact | max / mean abs. diff. of white fraction | max diff., bags >= 0.9 white "
            "| bags near 0.98 | reference s | exact s |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['slide']} | {r['size'][0]} x {r['size'][1]} | {r['bag_px']} | {r['edge']} | "
            f"{r['n_grid']} | {r['kept_reference']} | {r['kept_exact']} | "
            f"{len(r['only_reference'])} | {len(r['only_exact'])} | "
            f"{r['wf_abs_diff_max']:.4f} / {r['wf_abs_diff_mean']:.4f} | "
            f"{'-' if r['wf_abs_diff_max_pale'] is None else format(r['wf_abs_diff_max_pale'], '.4f')} | "
            f"{r['n_near_threshold']} | "
            f"{r['time_reference_s']:.2f} | {r['time_exact_s']:.2f} |")
    return "\n".join(lines)


def totals(rows: list[dict]) -> dict:
    t = {}
    for edge in ("drop", "pad"):
        sel = [r for r in rows if r["edge"] == edge]
        t[edge] = {
            "slides": len(sel),
            "grid": sum(r["n_grid"] for r in sel),
            "kept_reference": sum(r["kept_reference"] for r in sel),
            "kept_exact": sum(r["kept_exact"] for r in sel),
            "only_reference": sum(len(r["only_reference"]) for r in sel),
            "only_exact": sum(len(r["only_exact"]) for r in sel),
            "slides_disagreeing": sum(bool(r["only_reference"] or r["only_exact"]) for r in sel),
            "near_threshold": sum(r["n_near_threshold"] for r in sel),
            "wf_abs_diff_max": max((r["wf_abs_diff_max"] for r in sel), default=0.0),
            "wf_abs_diff_max_pale": max((r["wf_abs_diff_max_pale"] for r in sel
                                         if r["wf_abs_diff_max_pale"] is not None), default=0.0),
            "time_reference_s": sum(r["time_reference_s"] for r in sel),
            "time_exact_s": sum(r["time_exact_s"] for r in sel),
        }
    return t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-synthetic", type=int, default=10)
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--workers", type=int, default=2, help="threads of the white rule")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/performance.md")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="mran-tissue-rules-"))
    try:
        return _run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(args, tmp: Path) -> int:
    t0 = time.perf_counter()
    cmu = cmu_pyramid(tmp)
    glass = cmu_on_glass(tmp)
    slides = synthetic(tmp, args.n_synthetic, args.size)
    print(f"slides written in {time.perf_counter() - t0:.1f} s ({tmp})", file=sys.stderr)
    rows = []
    for edge in ("drop", "pad"):
        for path, bag in ([(cmu, 2048), (cmu, 512), (glass, 2048), (glass, 512)]
                          + [(p, 2048) for p in slides]):
            r = compare(path, bag, edge, args.workers)
            rows.append(r)
            print(f"{r['slide']} bag {bag} {edge}: kept ref {r['kept_reference']} exact "
                  f"{r['kept_exact']} (only ref {len(r['only_reference'])}, only exact "
                  f"{len(r['only_exact'])}); {r['time_reference_s']:.2f} s vs "
                  f"{r['time_exact_s']:.2f} s", file=sys.stderr)
    tot = totals(rows)
    text = table(rows)
    print(text)
    for edge, t in tot.items():
        print(f"total ({edge}): {t['slides']} slides, {t['grid']} grid bags; kept reference "
              f"{t['kept_reference']}, exact {t['kept_exact']}; only reference "
              f"{t['only_reference']}, only exact {t['only_exact']} ({t['slides_disagreeing']} "
              f"slides disagree); time reference {t['time_reference_s']:.1f} s, exact "
              f"{t['time_exact_s']:.1f} s")
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(),
               "machine": platform.machine(), "workers": args.workers}
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_tissue_rules.json").write_text(json.dumps(
        {"machine": machine, "rows": rows, "totals": tot}, indent=2))
    if not args.no_doc:
        dis = [(r["slide"], r["bag_px"], r["edge"], d) for r in rows
               for d in r.get("disagreeing_white_fraction", [])]
        lines = [
            "`benchmarks/bench_tissue_rules.py` finds the tissue bags of each slide with both "
            "rules and counts the bags kept by one and not the other. `exact` is the authors' "
            "preprocessing rule as they run it (every bag of the grid, level-0 pixels, white = "
            "all channels > 127, keep when the white fraction is < 0.98); `reference` is the "
            "same rule on the candidate bags (not glass at the smallest level) at the coarsest "
            "level with downsample <= 4. Slides: a 3-level pyramid (1, 2, 4) of the real H&E "
            "crop CMU-1-Small-Region (2220 x 2967: one whole 2048 px bag, so also run with "
            "512 px bags); the same crop pasted at (1000, 1300) on a 6144 x 6144 canvas of its "
            "own glass colour (`CMU-on-glass`: bags with a little tissue at their border, the "
            f"ones near the threshold); and {args.n_synthetic} synthetic slides (`make_slide`, tumour and "
            f"normal alternating, seeds 100-{99 + args.n_synthetic}, {args.size} x {args.size} "
            f"and {args.size + args.size // 8} x {args.size - args.size // 8}); edge `drop` and "
            f"`pad`. {machine['cpus']} CPUs (shared), {args.workers} rule threads, times per "
            "slide including the low-resolution read. \"abs. diff. of white fraction\": "
            "|white fraction at level 0 - at the reference's rule level| over every bag of "
            "the grid, and over the bags at least 90 % white (where a change can cross the "
            "threshold); \"near 0.98\": bags whose level-0 white fraction is within 0.02 of "
            "the threshold. The reference's rule level is the coarsest with downsample <= 4 "
            "(on the CMU pyramid, whose level 2 has downsample 4.001 after rounding, that is "
            "level 1, 2x).", "", text, ""]
        for edge, t in tot.items():
            lines.append(
                f"Total, edge {edge}: {t['grid']} grid bags on {t['slides']} slide runs; kept "
                f"{t['kept_reference']} (reference) and {t['kept_exact']} (exact); "
                f"{t['only_reference']} kept only by reference, {t['only_exact']} only by exact "
                f"({t['slides_disagreeing']} slides with any disagreement); {t['near_threshold']} "
                f"bags near the threshold; largest white-fraction change "
                f"{t['wf_abs_diff_max']:.4f} (on bags >= 90 % white: "
                f"{t['wf_abs_diff_max_pale']:.4f}); "
                f"{t['time_reference_s']:.1f} s against {t['time_exact_s']:.1f} s "
                f"({t['time_exact_s'] / max(t['time_reference_s'], 1e-9):.1f}x).")
            lines.append("")
        if dis:
            lines.append("Disagreeing bags (white fraction at level 0 / at the reference's rule "
                         "level; the threshold is 0.98):")
            lines.append("")
            for slide, bag, edge, d in dis:
                lines.append(f"- {slide}, {bag} px, {edge}, box {d['box']}: {d['level0']} / "
                             f"{d['rule_level']}")
            lines.append("")
        write_section("performance.md", TITLE, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
