"""Figures, bootstrap CIs, verdicts and the markdown report of bench_stain_shift.py.

Per condition, ``records`` is one dict per held-out slide: ``label``, ``p`` (P(tumour)),
and for tumour slides ``frac`` (ground-truth tumour fraction per bag) and ``gamma``
(downstream bag attention).  Everything here is numpy only.
"""

from __future__ import annotations

import numpy as np

NEG = 0.01  # a bag is "normal" below 1 % tumour; ambiguous bags are left out
RULES = ((0.5, "bag_auc"), (0.25, "bag_auc_25"))
KEYS = ("slide_auc", "bag_auc", "bag_auc_25")


def _auc(y: np.ndarray, s: np.ndarray) -> float | None:
    from napari_mran.metrics import roc_auc

    return roc_auc(np.asarray(y, int), np.asarray(s, float))


def _bags(records: list[dict], lo: float) -> tuple[np.ndarray, np.ndarray]:
    ys, ss = [], []
    for r in records:
        if r["label"] == 1:
            frac, gamma = np.asarray(r["frac"]), np.asarray(r["gamma"])
            keep = (frac >= lo) | (frac < NEG)
            ys.append(frac[keep] >= lo)
            ss.append(gamma[keep])
    return np.concatenate(ys), np.concatenate(ss)


def figures(records: list[dict]) -> dict:
    """Slide AUC, accuracy (p >= 0.5), pooled bag-localisation AUCs and their n."""
    y = np.array([r["label"] for r in records])
    p = np.array([r["p"] for r in records])
    out = {"slide_auc": _auc(y, p), "accuracy": float(((p >= 0.5) == (y == 1)).mean()),
           "n_slides": int(y.size), "n_tumour_slides": int(y.sum())}
    for lo, key in RULES:
        yb, sb = _bags(records, lo)
        out[key] = _auc(yb, sb)
        out[key.replace("bag_auc", "n_pos")] = int(yb.sum())
        out[key.replace("bag_auc", "n_neg")] = int((~yb).sum())
    return out


def bootstrap(records: list[dict], reps: int, seed: int) -> dict:
    """95 % percentile CIs of the three AUCs, resampling slides with replacement within
    each label (stratified: every resample keeps both classes), fixed seed."""
    rng = np.random.default_rng(seed)
    tum = [r for r in records if r["label"] == 1]
    nor = [r for r in records if r["label"] == 0]
    draws: dict[str, list[float]] = {k: [] for k in KEYS}
    for _ in range(reps):
        sample = ([tum[i] for i in rng.integers(0, len(tum), len(tum))]
                  + [nor[i] for i in rng.integers(0, len(nor), len(nor))])
        y = np.array([r["label"] for r in sample])
        v = _auc(y, np.array([r["p"] for r in sample]))
        if v is not None:
            draws["slide_auc"].append(v)
        for lo, key in RULES:
            v = _auc(*_bags(sample, lo))
            if v is not None:
                draws[key].append(v)
    return {k: ([float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))] if d else None)
            for k, d in draws.items()}


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _ci(row: dict, key: str) -> str:
    ci = row.get("ci", {}).get(key)
    return _f(row[key]) + ("" if ci is None else f" [{ci[0]:.2f}, {ci[1]:.2f}]")


def table(rows: list[dict]) -> list[str]:
    out = ["| condition | slide AUC [95 % CI] | accuracy | bag-loc. AUC >= 50 % [95 % CI] "
           "(tumour / normal bags) | bag-loc. AUC >= 25 % [95 % CI] (tumour bags) |",
           "|---|---|---|---|---|"]
    out += [f"| {r['condition']} | {_ci(r, 'slide_auc')} | {_f(r['accuracy'])} | "
            f"{_ci(r, 'bag_auc')} ({r['n_pos']} / {r['n_neg']}) | "
            f"{_ci(r, 'bag_auc_25')} ({r['n_pos_25']}) |" for r in rows]
    return out


def mean_table(per_seed: list[list[dict]]) -> list[str]:
    """Mean (min-max) over the seeds of each condition's figures."""
    out = ["| condition | slide AUC | accuracy | bag-loc. AUC >= 50 % | bag-loc. AUC >= 25 % |",
           "|---|---|---|---|---|"]
    for i, r in enumerate(per_seed[0]):
        cells = []
        for key in ("slide_auc", "accuracy", "bag_auc", "bag_auc_25"):
            v = [rows[i][key] for rows in per_seed if rows[i][key] is not None]
            cells.append(f"{np.mean(v):.3f} ({min(v):.2f}-{max(v):.2f})" if v else "n/a")
        out.append(f"| {r['condition']} | " + " | ".join(cells) + " |")
    return out


def _by_name(rows: list[dict]) -> dict[str, dict]:
    return {r["condition"]: r for r in rows}


def verdicts(rows: list[dict], shifts: list[str], methods: tuple[str, ...]
             ) -> list[tuple[str, str, str]]:
    """(target, figures, verdict) per target.  Normalisation: recovers >= half of the AUC
    lost to each shift (slide and bag level); fine-tuning: slide AUC >= 0.95 and
    bag-localisation AUC >= 0.9."""
    by, out = _by_name(rows), []
    clean = by["unshifted, demo model"]
    for shift in shifts:
        base = by[f"{shift}, demo model"]
        for key, what in (("slide_auc", "slide AUC"), ("bag_auc", "bag-loc. AUC")):
            for m in methods:
                target = f"{shift} + {m}: {what} recovers >= half"
                vals = (clean[key], base[key], by[f"{shift}, demo model + {m}"][key])
                if None in vals:
                    out.append((target, "no AUC", "n/a"))
                    continue
                lost, got = vals[0] - vals[1], vals[2] - vals[1]
                verdict = ("vacuous (nothing lost)" if lost <= 0
                           else "met" if got >= lost / 2 else "NOT met")
                out.append((target, f"{got:+.3f} of {lost:.3f} lost", verdict))
    for r in rows:
        if "fine-tuned" in r["condition"]:
            shift = r["condition"].split(",")[0]
            out.append((f"{shift}, fine-tuned: slide AUC >= 0.95", _f(r["slide_auc"]),
                        "met" if (r["slide_auc"] or 0) >= 0.95 else "NOT met"))
            out.append((f"{shift}, fine-tuned: bag-loc. AUC >= 0.9",
                        f"{_f(r['bag_auc'])} ({r['n_pos']} tumour bags)",
                        "met" if (r["bag_auc"] or 0) >= 0.9 else "NOT met"))
    return out


def target_table(per_seed_verdicts: list[list[tuple[str, str, str]]]) -> list[str]:
    """One row per target, one column per seed: verdict (figures)."""
    n = len(per_seed_verdicts)
    out = ["| target | " + " | ".join(f"seed {i}" for i in range(n)) + " |",
           "|---|" + "---|" * n]
    for j, (target, _, _) in enumerate(per_seed_verdicts[0]):
        out.append(f"| {target} | " + " | ".join(
            f"{v[j][2]} ({v[j][1]})" for v in per_seed_verdicts) + " |")
    return out
