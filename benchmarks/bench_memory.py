"""Peak memory of analyze_slide against slide size (reliability row 18), one process per size.

    .venv/bin/python benchmarks/bench_memory.py [--sizes 8192,20000,32768,100000]

(the 100k x 100k slide takes ~6 min to write and ~5 GB of disk on 2 cores)

Each size runs in a fresh process (the peak is the process-lifetime high-water mark,
VmHWM; "before" is that mark after imports and model loading) with the demo model; the table goes to docs/performance.md ("Memory against slide size").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

# Peak RSS of this process only: VmHWM (Linux) belongs to the process' own address
# space.  ru_maxrss is not usable here: Linux carries it over from the parent across
# fork + exec, so a child of a parent that just wrote a 100k slide reported the
# parent's 526 MiB before doing anything.
CHILD = r"""
import json, resource, sys, time
def peak_kib():
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
from napari_mran.analysis import predict_slide
from napari_mran.model import load_model
path = sys.argv[1]
model = load_model("demo")
base = peak_kib()
t0 = time.perf_counter()
r = predict_slide(path, model, compile=False)
peak = peak_kib()
print(json.dumps({"bags": r.n_bags, "seconds": time.perf_counter() - t0,
                  "rss_before_mib": base / 1024, "rss_peak_mib": peak / 1024}))
"""


def main(argv=None) -> int:
    from _doc import write_section
    sys.path.insert(0, str(ROOT))
    from napari_mran.synthetic import make_slide

    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="8192,20000,32768,100000")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="mran-mem-"))
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        path = tmp / f"s{size}.svs"
        make_slide(path, size, size, tumour=True, seed=9)
        out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True,
                             text=True, check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        res["size"] = size
        rows.append(res)
        path.unlink()
        print(res)
    table = ["| slide (level-0 px) | tissue bags | peak RSS (MiB) | RSS before analysis (MiB) | seconds |",
             "|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['size']} x {r['size']} | {r['bags']} | {r['rss_peak_mib']:.0f} | "
                     f"{r['rss_before_mib']:.0f} | {r['seconds']:.1f} |")
    # what must grow with the slide: the result itself (float32 per bag: embedding, bag
    # probabilities, alpha, patch probabilities, beta, cell probabilities)
    from napari_mran.model import load_model
    cfg = load_model("demo").config
    C, P, K, E = cfg.n_classes, cfg.n_patches, cfg.n_cells, cfg.embedding_dim
    per_bag = 4 * (E + C + P + P * C + P * K + P * K * C)
    big = max(rows, key=lambda r: r["bags"])
    body = ("`benchmarks/bench_memory.py`: demo model, CPU, one fresh process per slide; "
            "peak resident memory of the whole process (Python, torch, decoded bags in the "
            "prefetch queue), read from VmHWM.\n\n" + "\n".join(table) + "\n\n"
            f"What has to grow with the slide is the result: {per_bag / 1024:.1f} KiB per bag "
            f"(float32 embedding, attention and probabilities at three levels), "
            f"{big['bags'] * per_bag / 2**20:.0f} MiB for the {big['bags']} bags of the "
            f"largest slide; everything else is bounded by the prefetch queue.")
    print(body)
    write_section("performance.md", "Memory against slide size", body)
    (ROOT / "benchmarks" / "out").mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks" / "out" / "bench_memory.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
