"""Does the model look in the right place? Slide AUC and attention-vs-ground-truth AUCs
on held-out synthetic slides (ground-truth tumour masks beside each slide).

    .venv/bin/python benchmarks/bench_localisation.py --model M --slides DIR --labels CSV --out DIR

Figures (written to OUT/localisation.json and docs/demo-model.md, "Held-out evaluation"):
* slide AUC: P(tumour) of each slide against its label;
* bag localisation AUC: bag attention gamma against ground-truth tumour bags, pooled over
  the tumour slides (a bag is tumour when >= 50 % of its area is tumour, normal when < 1 %;
  bags in between are left out as ambiguous);
* patch localisation AUC: global patch attention gamma * alpha against tumour patches
  (same 50 % / 1 % rule on 256 px patches), pooled over the tumour slides.
Per-slide AUCs (mean over tumour slides with both kinds present) are reported too.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _doc import write_section  # noqa: E402

from napari_mran.analysis import predict_slide  # noqa: E402
from napari_mran.model import load_model, sha256_of  # noqa: E402
from napari_mran.synthetic import tumour_bag_labels  # noqa: E402

POS, NEG = 0.5, 0.01


def auc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    from napari_mran.metrics import roc_auc

    return roc_auc(np.asarray(positive, int), np.asarray(scores, float))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--slides", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--doc", default="demo-model.md")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    rows = list(csv.DictReader(open(args.labels)))
    labels, probs = [], []
    bag_pos, bag_score, patch_pos, patch_score = [], [], [], []
    bag25_pos, bag25_score = [], []
    per_slide_bag, per_slide_patch = [], []
    t0 = time.perf_counter()
    n_bags = 0
    for row in rows:
        path = Path(args.slides) / row["slide"]
        result = predict_slide(path, model, compile=False)
        n_bags += result.n_bags
        labels.append(int(row["label"]))
        probs.append(float(result.slide_probs[1]))
        if int(row["label"]) != 1:
            continue
        mask = path.parent / "masks" / (path.stem + ".mask.tif")
        if not mask.exists():  # cohorts written before masks moved to masks/
            mask = path.with_name(path.stem + ".mask.tif")
        frac_bag = tumour_bag_labels(mask, result.boxes)
        frac_patch = tumour_bag_labels(mask, result.level_boxes("patch").reshape(-1, 4))
        gamma = result.scores("bag", "local")
        keep25 = (frac_bag >= 0.25) | (frac_bag < NEG)
        bag25_pos.append(frac_bag[keep25] >= 0.25)
        bag25_score.append(gamma[keep25])
        global_patch = result.scores("patch", "global").reshape(-1)
        for frac, score, pos_list, score_list, per in (
                (frac_bag, gamma, bag_pos, bag_score, per_slide_bag),
                (frac_patch, global_patch, patch_pos, patch_score, per_slide_patch)):
            keep = (frac >= POS) | (frac < NEG)
            pos_list.append(frac[keep] >= POS)
            score_list.append(score[keep])
            a = auc(frac[keep] >= POS, score[keep])
            if a is not None:
                per.append(a)
    seconds = time.perf_counter() - t0
    labels_a, probs_a = np.asarray(labels), np.asarray(probs)
    pred = (probs_a >= 0.5).astype(int)
    res = {
        "model": str(args.model), "model_sha256": sha256_of(args.model),
        "slides": len(rows), "tumour_slides": int(labels_a.sum()), "bags": n_bags,
        "slide_auc": auc(labels_a == 1, probs_a),
        "slide_accuracy": float((pred == labels_a).mean()),
        "bag_localisation_auc": auc(np.concatenate(bag_pos), np.concatenate(bag_score)),
        "patch_localisation_auc": auc(np.concatenate(patch_pos), np.concatenate(patch_score)),
        "bag_localisation_auc_25": auc(np.concatenate(bag25_pos), np.concatenate(bag25_score)),
        "n_tumour_bags_25": int(np.concatenate(bag25_pos).sum()),
        "bag_localisation_auc_per_slide_mean": float(np.mean(per_slide_bag)) if per_slide_bag else None,
        "patch_localisation_auc_per_slide_mean": float(np.mean(per_slide_patch)) if per_slide_patch else None,
        "n_tumour_bags": int(np.concatenate(bag_pos).sum()), "n_normal_bags": int((~np.concatenate(bag_pos)).sum()),
        "n_tumour_patches": int(np.concatenate(patch_pos).sum()),
        "n_normal_patches": int((~np.concatenate(patch_pos)).sum()),
        "rule": f"tumour if >= {POS:.0%} of the area is tumour, normal if < {NEG:.0%}; ambiguous left out",
        "seconds": round(seconds, 1),
    }
    (out / "localisation.json").write_text(json.dumps(res, indent=2))
    with open(out / "predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slide", "label", "p_tumour"])
        for row, p in zip(rows, probs):
            w.writerow([row["slide"], row["label"], f"{p:.6f}"])

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"
    table = "\n".join([
        "| figure | value | target |", "|---|---|---|",
        f"| slide AUC ({res['slides']} slides, {res['tumour_slides']} tumour) | {f(res['slide_auc'])} | >= 0.95 |",
        f"| slide accuracy (p >= 0.5) | {f(res['slide_accuracy'])} | |",
        f"| bag attention vs tumour bags, pooled ({res['n_tumour_bags']} tumour / {res['n_normal_bags']} normal bags) | {f(res['bag_localisation_auc'])} | >= 0.9 |",
        f"| global patch attention (gamma x alpha) vs tumour patches, pooled ({res['n_tumour_patches']} / {res['n_normal_patches']}) | {f(res['patch_localisation_auc'])} | >= 0.85 |",
        f"| bag attention vs bags >= 25 % tumour, pooled ({res['n_tumour_bags_25']} tumour bags) | {f(res['bag_localisation_auc_25'])} | |",
        f"| bag localisation AUC, mean per tumour slide | {f(res['bag_localisation_auc_per_slide_mean'])} | |",
        f"| patch localisation AUC, mean per tumour slide | {f(res['patch_localisation_auc_per_slide_mean'])} | |",
    ])
    body = (f"Measured by `benchmarks/bench_localisation.py` on {res['slides']} held-out synthetic "
            f"slides ({res['bags']} bags, {res['seconds']} s on this CPU). Ground truth: the "
            f"`masks/<stem>.mask.tif` of each slide; {res['rule']}.\n\n{table}")
    write_section(args.doc, "Held-out evaluation", body,
                  intro="# The bundled demo model\n\nA DEMONSTRATION model trained on synthetic slides; "
                        "not for diagnosis.\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
