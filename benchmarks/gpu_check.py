"""One prepared GPU check (for a session that is lent a CUDA machine).

    python benchmarks/gpu_check.py --out $OUT        # ~3-5 min on one H100

1. CUDA path of analyze_slide: bf16 autocast, channels_last, auto batch; the results match
   the CPU float32 results to bf16 tolerance.
2. Throughput: model-only (pre-decoded bags, width 1 = ResNet-18) vs full pipeline on a
   synthetic slide, so the decoder-vs-model balance is measured, with 1 and N decode threads.
3. A real CUDA out-of-memory (a huge batch) is halved and retried.
4. Two training epochs on a tiny synthetic cohort with AMP.
Writes gpu_check.json (and prints it); never asserts timings.
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


def main(argv=None) -> int:
    import torch

    from napari_mran import open_slide
    from napari_mran.analysis import find_tissue_bags, plan_reads, predict_slide, read_bag
    from napari_mran.model import MRAN, MRANConfig
    from napari_mran.synthetic import make_cohort, make_slide
    from napari_mran.training import TrainConfig, train
    from napari_mran._events import drain

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--size", type=int, default=32768)
    args = ap.parse_args(argv)
    report: dict = {"cuda": torch.cuda.is_available()}
    if not torch.cuda.is_available():
        print(json.dumps(report))
        return 1
    report["device"] = torch.cuda.get_device_name(0)
    tmp = Path(tempfile.mkdtemp(prefix="mran-gpu-"))
    t0 = time.perf_counter()
    make_slide(tmp / "big.svs", args.size, args.size, tumour=True, seed=3,
               workers=min(16, os.cpu_count() or 2))
    report["make_slide_s"] = time.perf_counter() - t0
    torch.manual_seed(0)
    model = MRAN(MRANConfig(width=1.0)).eval()
    with open_slide(tmp / "big.svs") as slide:
        boxes = find_tissue_bags(slide, 2048).boxes
        report["bags"] = int(len(boxes))
        # 1. CUDA vs CPU numbers on a few bags
        sub = boxes[:4]
        plan = plan_reads(slide, 2048, 1024)
        imgs = np.stack([read_bag(slide, b, plan)[0] for b in sub])
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
        with torch.inference_mode():
            cpu = model.forward_bags(x)
            gm = model.to("cuda").to(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                gpu = gm.forward_bags(x.cuda().contiguous(memory_format=torch.channels_last))
        report["bf16_max_abs_diff_alpha"] = float((gpu.alpha.float().cpu() - cpu.alpha).abs().max())
        report["bf16_max_abs_diff_beta"] = float((gpu.beta.float().cpu() - cpu.beta).abs().max())
        # 2. throughput
        xs = torch.from_numpy(np.stack([read_bag(slide, b, plan)[0] for b in boxes[:64]]))
        xg = xs.cuda().permute(0, 3, 1, 2).float().div(255).contiguous(memory_format=torch.channels_last)
        for bs in (8, 16, 32):
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                gm.forward_bags(xg[:bs])
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for i in range(0, len(xg), bs):
                    gm.forward_bags(xg[i:i + bs])
                torch.cuda.synchronize()
            report[f"model_only_bags_per_s_bs{bs}"] = len(xg) / (time.perf_counter() - t0)
        for threads in (1, 4, 16):
            t0 = time.perf_counter()
            r = predict_slide(slide, model, device="cuda", num_workers=threads)
            report[f"full_bags_per_s_{threads}_threads"] = r.n_bags / (time.perf_counter() - t0)
            report[f"full_timings_{threads}_threads"] = r.provenance["timings_s"]
            report["auto_batch"] = r.provenance["inference"]["batch_size_final"]
            report["amp"] = r.provenance["inference"]["amp"]
        # 3. a real OOM: ask for an absurd batch
        try:
            r = predict_slide(slide, model, device="cuda", batch_size=4096, num_workers=16)
            report["oom_retry_final_batch"] = r.provenance["inference"]["batch_size_final"]
        except Exception as exc:  # noqa: BLE001 - reported
            report["oom_retry_error"] = f"{type(exc).__name__}: {exc}"
    # 4. training with AMP
    labels = make_cohort(tmp / "coh", 6, seed=5, width=4096, height=4096)
    t0 = time.perf_counter()
    summary = drain(train(tmp / "coh", labels, tmp / "run",
                          TrainConfig(epochs=2, width=0.25, n_folds=3, device="cuda", workers=8)))
    report["train_2_epochs_s"] = time.perf_counter() - t0
    report["train_history"] = summary.history
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
