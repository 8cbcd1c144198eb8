"""The demo model's slide AUC on a stain-shifted synthetic cohort, with and without
stain normalisation (issue "Stain shift", part 4).

Two twin cohorts from one seed: as the demo model was trained on them (no shift) and
as "scanner-b" shows them (``make_cohort(..., stain_shift="scanner-b")``: same tissue,
nuclei and labels, other colours).  Each is predicted by the demo model with
``--stain-normalize`` off, and macenko / reinhard to (a) the built-in CMU-1 reference and
(b) a reference fitted like ``train --stain-normalize`` does, on the smallest levels of
a separate unshifted synthetic cohort (the demo model's training look; no slide of the
test cohorts).

    .venv/bin/python benchmarks/bench_stain_shift.py [--slides 12] [--size 6144]

Fixed seeds; prints a table and writes benchmarks/out/bench_stain_shift.json and the
"Stain shift: the demo model" section of docs/synthetic.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
from _doc import write_section  # noqa: E402

COHORT_SEED, REFERENCE_SEED = 1000, 2000


def _predict(folder: Path, model, method: str, reference: dict | None) -> tuple[list, list]:
    """Labels and tumour probabilities of a cohort's slides."""
    import csv

    import napari_mran.inference.stain as stain_mod
    from napari_mran.analysis import predict_slide
    from napari_mran.slide import open_slide

    original = stain_mod.slide_stain
    if reference is not None:  # the reference analysis would take from a trained model
        stain_mod.slide_stain = functools.partial(original, reference=reference)
    try:
        labels, probs = [], []
        with open(folder / "labels.csv") as fh:
            for row in csv.DictReader(fh):
                with open_slide(folder / row["slide"]) as slide:
                    res = predict_slide(slide, model, stain_normalize=method)
                labels.append(int(row["label"]))
                probs.append(float(res.slide_probs[1]))
    finally:
        stain_mod.slide_stain = original
    return labels, probs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=12)
    ap.add_argument("--size", type=int, default=6144)
    args = ap.parse_args()
    from napari_mran.metrics import roc_auc
    from napari_mran.model import load_model
    from napari_mran.synthetic import STAIN_SHIFTS, make_cohort
    from napari_mran.training.stain import cohort_reference

    model = load_model("demo")
    rows, t0 = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        base, shifted, ref_dir = (Path(tmp) / n for n in ("base", "shifted", "ref"))
        make_cohort(base, args.slides, COHORT_SEED, args.size, args.size)
        make_cohort(shifted, args.slides, COHORT_SEED, args.size, args.size,
                    stain_shift="scanner-b")
        make_cohort(ref_dir, 4, REFERENCE_SEED, args.size // 2, args.size // 2)
        refs = {m: cohort_reference(m, sorted(str(p) for p in ref_dir.glob("*.svs")))
                for m in ("macenko", "reinhard")}
        modes = [("off", None, "-"), ("macenko", None, "built-in CMU-1"),
                 ("macenko", "cohort", "unshifted synthetic cohort"),
                 ("reinhard", None, "built-in CMU-1"),
                 ("reinhard", "cohort", "unshifted synthetic cohort")]
        for method, ref, ref_label in modes:
            for name, folder in (("none", base), ("scanner-b", shifted)):
                labels, probs = _predict(folder, model, method,
                                         refs[method] if ref else None)
                auc = roc_auc(np.asarray(labels), np.asarray(probs))
                acc = sum((p >= 0.5) == bool(y) for y, p in zip(labels, probs)) / len(labels)
                rows.append({"shift": name, "normalize": method, "reference": ref_label,
                             "auc": auc, "accuracy": acc})
                print(f"{name:10s} {method:9s} {ref_label:28s} AUC {auc:.3f} acc {acc:.3f}",
                      flush=True)
    elapsed = time.perf_counter() - t0
    out = {"slides": args.slides, "size": args.size, "seed": COHORT_SEED,
           "shift": STAIN_SHIFTS["scanner-b"].to_dict(), "rows": rows, "seconds": elapsed}
    (ROOT / "benchmarks" / "out").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "out" / "bench_stain_shift.json").write_text(json.dumps(out, indent=2))
    table = ["| cohort | --stain-normalize | reference | slide AUC | accuracy |",
             "|---|---|---|---|---|"]
    table += [f"| {r['shift']} | {r['normalize']} | {r['reference']} | {r['auc']:.3f} | "
              f"{r['accuracy']:.3f} |" for r in rows]
    body = (f"Measured by `benchmarks/bench_stain_shift.py`: the demo model on "
            f"`make_cohort(n, {args.slides}, seed={COHORT_SEED}, {args.size}, {args.size})` "
            f"without and with `stain_shift=\"scanner-b\"` (twins: same tissue and labels); "
            f"the cohort reference is `cohort_reference(method, ...)` of `train "
            f"--stain-normalize` on 4 unshifted slides of seed {REFERENCE_SEED}. "
            f"{elapsed:.0f} s on this CPU.\n\n" + "\n".join(table))
    write_section("synthetic.md", "Stain shift: the demo model", body)
    print("\n".join(table))


if __name__ == "__main__":
    main()
