"""The `napari-mran` CLI: info, analyze (+ exports), errors as exit codes with reasons."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
import torch

from napari_mran.cli import main
from napari_mran.model import MRAN, MRANConfig, save_model
from napari_mran.results import SlideResult
from datafiles import shared
from slide_writers import write_svs_pyramid


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(1)
    p = tmp_path_factory.mktemp("m") / "tiny.safetensors"
    save_model(MRAN(MRANConfig(width=0.0625, class_names=["normal", "tumour"])), p)
    return p


@pytest.fixture(scope="module")
def two_bag_slide(tmp_path_factory, cmu_pixels):
    img = np.full((2048, 4096, 3), 240, np.uint8)
    img[:, :2048] = cmu_pixels[:2048, :2048]
    img[:, 2048:] = cmu_pixels[:2048, :2048][:, ::-1]
    return write_svs_pyramid(tmp_path_factory.mktemp("s") / "two=bags.svs", img,
                             downsamples=(1, 2, 8), mpp=0.5)


def test_info(capsys, cmu_small):
    assert main(["info", str(cmu_small), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["level_dimensions"] == [[2220, 2967]] and info["mpp"] == [0.499, 0.499]


def test_info_bad_file(capsys, tmp_path):
    p = tmp_path / "x.svs"
    p.write_bytes(b"garbage" * 10)
    assert main(["info", str(p)]) == 2
    err = capsys.readouterr().err
    assert str(p) in err and "not a recognised slide format" in err and "Traceback" not in err


def test_analyze_writes_store_and_exports(tmp_path, capsys, two_bag_slide, model_file):
    out = tmp_path / "out"
    rc = main(["analyze", str(two_bag_slide), "--model", str(model_file), "--out", str(out),
               "--export", "geojson,csv,ome-tiff,provenance,overview", "--quiet"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    stem = "two=bags"
    assert report["bags"] == 2
    result = SlideResult.load(out / f"{stem}.mran.zarr")
    assert result.n_bags == 2 and result.provenance["model"]["sha256"]
    gj = json.loads((out / f"{stem}.bags.geojson").read_text())
    assert len(gj["features"]) == 2
    assert (out / f"{stem}.patches.csv").read_text().count("\n") == 1 + 2 * 64
    assert tifffile.imread(out / f"{stem}.patch-attention.ome.tif").shape == (8, 16)
    assert (out / f"{stem}.overview.png").read_bytes()[:4] == b"\x89PNG"
    # a second run refuses before computing, and leaves the first run's files as they were
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    rc = main(["analyze", str(two_bag_slide), "--model", str(model_file), "--out", str(out),
               "--quiet"])
    assert rc == 2 and "already exists" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_analyze_bad_inputs(tmp_path, capsys, model_file):
    bad_model = tmp_path / "bad.safetensors"
    bad_model.write_bytes(b"\x00" * 100)
    slide = shared("openslide-python/unreadable.svs")
    assert main(["analyze", str(slide), "--model", str(bad_model), "--out", str(tmp_path / "o")]) == 2
    assert str(bad_model) in capsys.readouterr().err
    assert main(["analyze", str(slide), "--model", str(model_file), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(slide) in err and "cannot be decoded" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_sigint_stops_and_writes_nothing(tmp_path, two_bag_slide, model_file):
    """Ctrl-C during an analysis: exit 130 within a batch, no results written."""
    out = tmp_path / "sig"
    code = (
        "import time, sys\n"
        "import napari_mran.analysis as A\n"
        "orig = A.read_bag\n"
        "def slow(*a, **k):\n"
        "    print('reading', flush=True); time.sleep(1.5); return orig(*a, **k)\n"
        "A.read_bag = slow\n"
        "from napari_mran.cli import main\n"
        f"sys.exit(main(['analyze', {str(two_bag_slide)!r}, '--model', {str(model_file)!r},"
        f" '--out', {str(out)!r}, '--batch-size', '1', '--quiet']))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "reading" in line:
            break
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert time.perf_counter() - t0 < 20
    assert not out.exists() or not any(p for p in out.iterdir() if not p.name.startswith("."))
