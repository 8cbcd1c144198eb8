"""Build the bundled demo model: synthetic cohort -> `napari-mran train` (the CLI itself)
-> held-out evaluation and localisation -> napari_mran/data/demo_model.safetensors.

    .venv/bin/python scripts/build_demo_model.py [--work demo-build] [--phase all|train|eval]

The model is a DEMONSTRATION trained on synthetic slides, not for diagnosis.
Everything is deterministic from the seeds below; docs/demo-model.md records the run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRAIN = dict(n_slides=30, seed=0, width=6144, height=6144)
TEST = dict(n_slides=20, seed=1000, width=6144, height=6144)
TRAIN_ARGS = ["--epochs", "10", "--width", "0.125", "--lr", "1e-3", "--seed", "0",
              "--folds", "5", "--fold", "0", "--batch-size", "4", "--workers", "2",
              "--class-names", "normal,tumour"]


def phase_train(work: Path) -> dict:
    from napari_mran.synthetic import make_cohort

    t0 = time.perf_counter()
    labels = work / "train" / "labels.csv"
    if not labels.exists():
        make_cohort(work / "train", TRAIN["n_slides"], TRAIN["seed"], TRAIN["width"], TRAIN["height"])
    t_data = time.perf_counter() - t0
    run = work / "run"
    cmd = [sys.executable, "-m", "napari_mran", "train", "--slides", str(work / "train"),
           "--labels", str(labels), "--out", str(run), *TRAIN_ARGS]
    if (run / "checkpoint.pt").exists():
        cmd.append("--resume")
    t1 = time.perf_counter()
    subprocess.run(cmd, check=True)
    info = {"cohort": TRAIN, "cohort_seconds": round(t_data, 1),
            "command": "napari-mran train --slides demo-build/train --labels demo-build/train/labels.csv "
                       "--out demo-build/run " + " ".join(TRAIN_ARGS),
            "train_seconds": round(time.perf_counter() - t1, 1)}
    (work / "train_info.json").write_text(json.dumps(info, indent=2))
    return info


def phase_eval(work: Path) -> dict:
    from napari_mran.synthetic import make_cohort

    labels = work / "test" / "labels.csv"
    if not labels.exists():
        make_cohort(work / "test", TEST["n_slides"], TEST["seed"], TEST["width"], TEST["height"])
    model = work / "run" / "model.safetensors"
    out = work / "eval"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_localisation.py"),
                    "--model", str(model), "--slides", str(work / "test"), "--labels", str(labels),
                    "--out", str(out)], check=True)
    return json.loads((out / "localisation.json").read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=str(ROOT / "demo-build"))
    ap.add_argument("--phase", choices=["all", "train", "eval", "install"], default="all")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.phase in ("all", "train"):
        print(json.dumps(phase_train(work), indent=2))
    if args.phase in ("all", "eval"):
        print(json.dumps(phase_eval(work), indent=2))
    if args.phase in ("all", "install"):
        dst = ROOT / "napari_mran" / "data" / "demo_model.safetensors"
        shutil.copyfile(work / "run" / "model.safetensors", dst)
        print("installed", dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
