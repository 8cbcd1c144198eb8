"""Whole-slide analysis throughput, measured side by side in one run.

For one synthetic slide: bag decoding alone (threads), the model alone on pre-decoded
bags (eager, and torch.compile on CPU), and the full `analyze_slide` pipeline. The ratio
full / model-only shows whether decoding hides behind compute.

    .venv/bin/python benchmarks/bench_analysis.py [--size 8192] [--widths 0.125,1.0] [--compile]

Writes benchmarks/out/bench_analysis.json and the "Analysis throughput" section of
docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _doc import write_section  # noqa: E402


def main(argv=None) -> int:
    import torch

    from napari_mran import open_slide
    from napari_mran.analysis import find_tissue_bags, plan_reads, predict_slide, read_bag
    from napari_mran.model import MRAN, MRANConfig
    from napari_mran.synthetic import make_slide

    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--widths", default="0.125,1.0")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (slow to build)")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="mran-bench-"))
    path = tmp / "bench.svs"
    make_slide(path, args.size, args.size, tumour=True, seed=1)
    slide = open_slide(path)
    boxes = find_tissue_bags(slide, 2048).boxes  # the same bags analyze_slide will use
    plan = plan_reads(slide, 2048, 1024)
    n = len(boxes)
    rows = []
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.perf_counter()
    with ThreadPoolExecutor(min(8, os.cpu_count() or 2)) as pool:
        imgs = list(pool.map(lambda b: read_bag(slide, b, plan)[0], boxes))
    t_decode = time.perf_counter() - t0
    rows.append(("decode only (threads)", "-", n / t_decode))
    x_all = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float().div(255)
    x_all = x_all.contiguous(memory_format=torch.channels_last)
    results = {"slide": f"{args.size} x {args.size} synthetic, {n} tissue bags",
               "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "decode_bags_per_s": n / t_decode, "widths": {}}
    for width in [float(w) for w in args.widths.split(",")]:
        torch.manual_seed(0)
        model = MRAN(MRANConfig(width=width)).eval().to(memory_format=torch.channels_last)
        bs = 2
        with torch.inference_mode():
            model.forward_bags(x_all[:1])  # warm-up
            t0 = time.perf_counter()
            for i in range(0, n, bs):
                model.forward_bags(x_all[i:i + bs])
            t_model = time.perf_counter() - t0
        entry = {"model_only_bags_per_s": n / t_model}
        rows.append(("model only, eager", width, n / t_model))
        if args.compile:
            fn = torch.compile(model.forward_bags, dynamic=True)
            with torch.inference_mode():
                t0 = time.perf_counter()
                fn(x_all[:bs])
                t_build = time.perf_counter() - t0
                t0 = time.perf_counter()
                for i in range(0, n, bs):
                    fn(x_all[i:i + bs])
                t_comp = time.perf_counter() - t0
            entry.update(compiled_bags_per_s=n / t_comp, compile_build_s=t_build)
            rows.append((f"model only, torch.compile (build {t_build:.0f} s)", width, n / t_comp))
        t0 = time.perf_counter()
        res = predict_slide(slide, model, batch_size=bs, compile=False)
        t_full = time.perf_counter() - t0
        assert res.n_bags == n, (res.n_bags, n)
        entry["full_bags_per_s"] = n / t_full
        entry["full_over_model_time"] = t_full / t_model
        rows.append(("full analyze_slide (tissue + decode + model + MIL)", width, n / t_full))
        results["widths"][str(width)] = entry
    (ROOT / "benchmarks" / "out").mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks" / "out" / "bench_analysis.json").write_text(json.dumps(results, indent=2))
    table = ["| stage | width | bags/s | patches/s |", "|---|---|---|---|"]
    for name, width, rate in rows:
        table.append(f"| {name} | {width} | {rate:.2f} | {rate * 64:.0f} |")
    ratios = ", ".join(f"width {w}: full/model-only time = {e['full_over_model_time']:.2f}"
                       for w, e in results["widths"].items())
    body = (f"{results['slide']}; {results['cpu_count']} CPU cores, {results['torch_threads']} torch "
            f"threads, batch 2 bags, CPU only. {ratios} (1.0 = decoding fully hidden behind "
            f"the model).\n\n" + "\n".join(table))
    print(body)
    write_section("performance.md", "Analysis throughput", body)
    slide.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
