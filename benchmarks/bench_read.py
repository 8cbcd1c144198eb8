"""Region-read benchmark: our direct tile decoder vs zarr, dask and OpenSlide, side by side.

Writes benchmarks/out/bench_read.json and the table in docs/performance.md (section
"Region reads"). Run: .venv/bin/python benchmarks/bench_read.py [--repeats N]
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

import imagecodecs
import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_mran import open_slide  # noqa: E402
from napari_mran.slide._tiff import decode_pool  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from _doc import write_section  # noqa: E402

OUT = ROOT / "benchmarks" / "out"


def make_pyramid(path: Path, size: int = 32768, tile: int = 256) -> Path:
    """An SVS-like JPEG pyramid tiled from the real CMU-1 crop (pre-encoded tiles)."""
    src = tifffile.imread(ROOT / "napari_mran" / "data" / "CMU-1-Small-Region.svs")
    tiles = []
    for ty in range(0, src.shape[0] - tile, tile):
        for tx in range(0, src.shape[1] - tile, tile):
            tiles.append(imagecodecs.jpeg8_encode(np.ascontiguousarray(
                src[ty:ty + tile, tx:tx + tile]), level=80))
    from PIL import Image
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        f = 1
        while size // f >= 2 * tile:
            w = size // f
            n = (-(-w // tile)) ** 2
            if f == 1:
                desc = (f"Aperio Image Library v12\r\n{w}x{w} [0,0 {w}x{w}] ({tile}x{tile}) "
                        "JPEG/RGB Q=80|AppMag = 20|MPP = 0.5")
            else:
                desc = f"Aperio Image Library v12\r\n{size}x{size} -> {w}x{w} - ({tile}x{tile})"
            tw.write((tiles[(i * 7919) % len(tiles)] for i in range(n)), shape=(w, w, 3),
                     dtype=np.uint8, tile=(tile, tile), photometric="rgb", compression="jpeg",
                     description=desc, subfiletype=0 if f == 1 else 1, metadata=None)
            if f == 1:
                thumb = np.asarray(Image.fromarray(src).resize((256, 256)))
                tw.write(thumb, photometric="rgb", compression="jpeg", rowsperstrip=16,
                         description=f"Aperio Image Library v12\r\n{w}x{w} -> 256x256 - ",
                         metadata=None)
            f *= 2 if f == 1 else 4
    return path


def bench_open_100k(tmp: Path) -> dict:
    """Open time and traced memory for a 100k x 100k JPEG pyramid (pre-encoded tiles)."""
    import tracemalloc

    tile, size = 1024, 100_000
    ramp = np.linspace(170, 230, tile, dtype=np.float32)
    enc = [imagecodecs.jpeg8_encode(np.broadcast_to((ramp[:, None, None] + 5 * k).astype(np.uint8),
                                                    (tile, tile, 3)).copy()) for k in range(4)]
    path = tmp / "100k.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        f = 1
        while size // f >= tile:
            w = size // f
            n = (-(-w // tile)) ** 2
            tw.write((enc[i % 4] for i in range(n)), shape=(w, w, 3), dtype=np.uint8,
                     tile=(tile, tile), photometric="rgb", compression="jpeg",
                     subfiletype=0 if f == 1 else 1, metadata=None)
            f *= 2
    times = []
    for _ in range(5):
        tracemalloc.start()
        t0 = time.perf_counter()
        s = open_slide(path)
        s.levels  # dask arrays for napari
        t = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        s.close()
        times.append(t)
    return {"open_plus_dask_levels_ms_median": statistics.median(times) * 1000,
            "traced_peak_mib": peak / 2**20, "file_mib": path.stat().st_size / 2**20}


def timeit(fn, repeats: int) -> list[float]:
    fn()  # warm-up (page cache, pools)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--size", type=int, default=32768)
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="mran-bench-"))
    path = make_pyramid(tmp / "bench.svs", args.size)
    rng = np.random.default_rng(0)
    n_loc = 64
    locs = [(int(rng.integers(0, args.size // 2048)) * 2048, int(rng.integers(0, args.size // 2048)) * 2048)
            for _ in range(n_loc)]
    it = {"i": 0}

    def nxt():
        it["i"] = (it["i"] + 1) % n_loc
        return locs[it["i"]]

    slide = open_slide(path)
    import zarr
    tif = tifffile.TiffFile(path)
    zarr_l0 = zarr.open(tif.series[0].aszarr(level=0), mode="r")
    dask_l0 = slide.levels[0]
    results = {}

    def ours():
        x, y = nxt()
        slide.read_region((x, y), 0, (2048, 2048))

    def via_zarr():
        x, y = nxt()
        np.asarray(zarr_l0[y:y + 2048, x:x + 2048])

    def via_dask():
        x, y = nxt()
        dask_l0[y:y + 2048, x:x + 2048].compute()

    methods = {"direct tile decode (ours)": ours, "zarr slice of tifffile store": via_zarr,
               "dask slice (per-tile chunks)": via_dask}
    try:
        import openslide
        osr = openslide.OpenSlide(str(path))

        def via_openslide():
            x, y = nxt()
            osr.read_region((x, y), 0, (2048, 2048))
        methods["OpenSlide read_region"] = via_openslide
    except Exception as exc:  # noqa: BLE001
        print("OpenSlide not available:", exc)

    for name, fn in methods.items():
        t = timeit(fn, args.repeats)
        results[name] = {"median_ms": statistics.median(t), "min_ms": min(t), "n": len(t)}
        print(f"{name:32s} median {statistics.median(t):7.1f} ms  min {min(t):7.1f} ms")
    base = results["direct tile decode (ours)"]["median_ms"]
    for r in results.values():
        r["ratio_vs_ours"] = r["median_ms"] / base

    # tissue mask source: smallest level vs thumbnail resize of level 0-ish
    t_small = timeit(lambda: slide.read_level(slide.smallest_level), 5)
    t_thumb = timeit(lambda: slide.get_thumbnail(2048), 3)
    results["smallest level read (tissue mask)"] = {"median_ms": statistics.median(t_small)}
    results["get_thumbnail(2048)"] = {"median_ms": statistics.median(t_thumb)}
    meta = {"slide": f"{args.size} x {args.size} JPEG pyramid, 256 px tiles (tiled from CMU-1)",
            "region": "2048 x 2048 px at level 0", "cpu_count": os.cpu_count(),
            "decode_threads": decode_pool()._max_workers, "repeats": args.repeats}
    results["open 100k x 100k"] = big = bench_open_100k(tmp)
    (OUT / "bench_read.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    table = ["| method | median ms | min ms | ratio vs ours |", "|---|---|---|---|"]
    for name, r in results.items():
        if "ratio_vs_ours" in r:
            table.append(f"| {name} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['ratio_vs_ours']:.2f} |")
    table.append(f"| smallest level read (tissue mask source) | {results['smallest level read (tissue mask)']['median_ms']:.1f} | | |")
    table.append(f"| get_thumbnail(2048) | {results['get_thumbnail(2048)']['median_ms']:.1f} | | |")
    table.append(f"| open_slide + dask levels of a 100k x 100k JPEG pyramid ({big['file_mib']:.0f} MiB file) "
                 f"| {big['open_plus_dask_levels_ms_median']:.1f} | | traced peak {big['traced_peak_mib']:.1f} MiB |")
    text = "\n".join(table)
    print(text)
    write_section("performance.md", "Region reads", f"{meta['slide']}; {meta['region']}; {meta['cpu_count']} CPU cores, "
                  f"{meta['decode_threads']} decode threads; median of {args.repeats} reads at random "
                  f"bag positions (page cache warm).\n\n" + text,
                  intro="# Performance\n\nNumbers printed by the scripts in `benchmarks/`, "
                        "measured side by side in one run (never asserted in tests).\n")
    slide.close()
    tif.close()
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
