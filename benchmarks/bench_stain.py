"""Cost of stain normalisation and HED augmentation per 1024 x 1024 bag, side by side with
the model's time per bag, in one run.

Bags: the 1024 x 1024 level-0 tiles of a synthetic slide with at least 30 % tissue (the
size MRAN takes after reading a 2048 px bag at 2x), in batches of 2 (the analysis'
CPU batch).  Each step is timed on the numpy path (uint8 (n, H, W, 3), as decoded) and
the torch path (float (n, 3, H, W) in [0, 1], CPU here), with each bag fitted on its
own ("per bag") and with one source fitted beforehand ("source given", the per-slide
mode).  The model is MRAN eager (inference mode, channels-last) at each width.

    .venv/bin/python benchmarks/bench_stain.py [--bags 6] [--repeats 3] [--widths 1.0,0.125]

Writes benchmarks/out/bench_stain.json and the "Cost per bag" section of docs/stain.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _doc import write_section  # noqa: E402

BATCH = 2


def _bags(n: int) -> np.ndarray:
    import tifffile

    from napari_mran.synthetic import make_slide

    path = Path(tempfile.mkdtemp(prefix="mran-stain-")) / "s.svs"
    make_slide(path, 4096, 4096, tumour=True, seed=1)
    img = tifffile.imread(path)
    out = []
    for y in range(0, 4096, 1024):
        for x in range(0, 4096, 1024):
            tile = img[y:y + 1024, x:x + 1024]
            od = -np.log((tile.astype(np.float32) + 1) / 256)
            if (od.min(-1) >= 0.15).mean() >= 0.3:
                out.append(tile)
    if len(out) < n:
        raise SystemExit(f"only {len(out)} tissue bags")
    return np.stack(out[:n])


def _per_bag_ms(fn, batches, repeats: int) -> float:
    """Median over repeats of the time per bag of fn over all batches."""
    fn(batches[0])  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            fn(b)
        times.append(time.perf_counter() - t0)
    n = sum(len(b) for b in batches)
    return 1000.0 * statistics.median(times) / n


def main(argv=None) -> int:
    import torch

    from napari_mran.model import MRAN, MRANConfig
    from napari_mran.stain import fit_reference, hed_jitter, normalize

    ap = argparse.ArgumentParser()
    ap.add_argument("--bags", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--widths", default="1.0,0.125")
    ap.add_argument("--torch-threads", default="",
                    help="comma-separated torch thread counts to time (default: torch's)")
    args = ap.parse_args(argv)
    bags = _bags(args.bags)
    np_batches = [bags[i:i + BATCH] for i in range(0, len(bags), BATCH)]
    x = torch.from_numpy(bags).permute(0, 3, 1, 2).float().div(255)
    x = x.contiguous(memory_format=torch.channels_last)
    t_batches = [x[i:i + BATCH] for i in range(0, len(x), BATCH)]

    threads = [int(t) for t in args.torch_threads.split(",")] if args.torch_threads \
        else [torch.get_num_threads()]
    widths = [float(w) for w in args.widths.split(",")]
    refs = {m: (m, fit_reference(bags[:2], m, fitted_on="2 bags of the slide"))
            for m in ("macenko", "reinhard")}
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)

    def steps(batches, seed):
        out = []
        for method, (ref, src) in refs.items():
            out.append((f"{method}, per bag", lambda b, r=ref: normalize(b, r)))
            out.append((f"{method}, source given",
                        lambda b, r=ref, s=src: normalize(b, r, source=s)))
        out.append(("HED jitter (training)", lambda b: hed_jitter(b, seed)))
        return [(name, _per_bag_ms(fn, batches, args.repeats)) for name, fn in out]

    model_ms: dict[int, dict[float, float]] = {}
    rows = []  # (step, path, torch threads, ms, model ms per width)
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        model_ms[n_threads] = {}
        for width in widths:
            torch.manual_seed(0)
            model = MRAN(MRANConfig(width=width)).eval().to(memory_format=torch.channels_last)
            with torch.inference_mode():
                model_ms[n_threads][width] = _per_bag_ms(model.forward_bags, t_batches, 1)
            del model
        for name, ms in steps(t_batches, gen):
            rows.append((name, "torch", n_threads, ms, model_ms[n_threads]))
    for name, ms in steps(np_batches, rng):
        rows.append((name, "numpy", "-", ms, model_ms[threads[0]]))

    model_text = "; ".join(f"{t} torch thread{'s' if t > 1 else ''}: " + ", ".join(
        f"width {w:g} {ms:.0f} ms" for w, ms in per.items()) for t, per in model_ms.items())
    head = "| step | path | torch threads | ms per bag | " + " | ".join(
        f"% of model time, width {w:g}" for w in widths) + " |"
    table = [head, "|" + "---|" * (4 + len(widths))]
    for name, path, n_threads, ms, per in sorted(rows, key=lambda r: (r[0], r[1], str(r[2]))):
        table.append(f"| {name} | {path} | {n_threads} | {ms:.1f} | "
                     + " | ".join(f"{100 * ms / per[w]:.1f}" for w in widths) + " |")
    body = (f"{len(bags)} synthetic 1024 x 1024 tissue bags (`make_slide` 4096 x 4096, seed 1), "
            f"batches of {BATCH}, {os.cpu_count()} CPU cores, CPU only; median of "
            f"{args.repeats} passes.  Model (MRAN eager, inference mode, channels-last, one "
            f"pass) per bag: {model_text}.  numpy rows are single-threaded and compared with "
            f"the model at {threads[0]} torch thread(s).\n\n" + "\n".join(table))
    print(body)
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_stain.json").write_text(json.dumps(
        {"bags": len(bags), "batch": BATCH, "cpu_count": os.cpu_count(),
         "model_ms_per_bag": {str(t): {str(w): v for w, v in per.items()}
                              for t, per in model_ms.items()},
         "steps": [{"step": n, "path": p, "torch_threads": t, "ms_per_bag": ms}
                   for n, p, t, ms, _ in rows]}, indent=2))
    write_section("stain.md", "Cost per bag", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
