"""predict_cohort on a real dask LocalCluster: stores, skip rules, failures, lock, interrupt,
CLI."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_mran.cohort import (LOCK_NAME, CohortError, OutputLock, predict_cohort, run_cohort,
                                store_names, store_status)
from napari_mran.errors import CheckpointError, OutputExistsError
from napari_mran.model import MRAN, MRANConfig, save_model, sha256_of
from napari_mran.results import SlideResult, verify_store
from napari_mran._events import collect as drain
from slide_writers import write_svs_pyramid
from test_store_integrity import remove_completion_marker

FORMULA = "=SUM(1+1)"  # a slide name a spreadsheet would evaluate (battery row 24)


@pytest.fixture(scope="module")
def data(tmp_path_factory, cmu_pixels):
    """A width-0.125 model file, three one-bag slides and a corrupt 'slide'."""
    root = tmp_path_factory.mktemp("cohort")
    torch.manual_seed(3)
    model_path = save_model(MRAN(MRANConfig(width=0.125, class_names=["normal", "tumour"])),
                            root / "model.safetensors")
    slides = root / "slides"
    slides.mkdir()
    paths = []
    for name, (y, x) in [("a", (0, 0)), ("b", (900, 100)), (FORMULA, (500, 150))]:
        p = slides / f"{name}.svs"
        write_svs_pyramid(p, cmu_pixels[y:y + 2048, x:x + 2048], downsamples=(1, 2, 4, 16),
                          tile=256, mpp=0.5)
        paths.append(str(p))
    bad = slides / "corrupt.svs"
    bad.write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    return {"root": root, "model": str(model_path), "slides": paths, "bad": str(bad)}




def children():
    """Live child processes, except multiprocessing's resource tracker (it lives as long
    as this process, by design)."""
    import psutil

    out = []
    for c in psutil.Process().children(recursive=True):
        try:
            if c.status() == psutil.STATUS_ZOMBIE or "resource_tracker" in " ".join(c.cmdline()):
                continue
        except psutil.NoSuchProcess:
            continue
        out.append(c)
    return out


def stamp(store: Path) -> dict[str, tuple[int, int]]:
    """inode + mtime_ns of every file of a store (a rewrite changes them)."""
    out = {}
    for p in sorted(store.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(store))] = (st.st_ino, st.st_mtime_ns)
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def cluster_run(data):
    """One run on a real LocalCluster (2 worker processes x 1 thread) with a bad slide."""
    out = data["root"] / "out"
    before = {c.pid for c in children()}
    t0 = time.perf_counter()
    events, summary = drain(predict_cohort([*data["slides"], data["bad"]], data["model"], out,
                                           workers=2, batch_size=1))
    elapsed = time.perf_counter() - t0
    leftover = [c for c in children() if c.pid not in before]
    return {"out": out, "events": events, "summary": summary, "elapsed": elapsed,
            "leftover": leftover}


def test_cluster_run_writes_verified_stores(data, cluster_run):
    out, summary = cluster_run["out"], cluster_run["summary"]
    assert summary["cluster"] == "LocalCluster(2 processes x 1 thread)"
    assert cluster_run["leftover"] == [], "worker processes outlived the run"
    assert summary["done"] == 3 and summary["skipped"] == 0
    assert [f["slide"] for f in summary["failed"]] == [data["bad"]]
    assert summary["failed"][0]["error"].endswith("Error") and "corrupt.svs" in \
        summary["failed"][0]["message"]
    # one event per slide, progress counts up to 4
    slide_events = [e for e in cluster_run["events"] if e.stage == "slide"]
    assert sorted(e.done for e in slide_events) == [1, 2, 3, 4]
    assert {e.status for e in slide_events} == {"done", "failed"}
    sha = sha256_of(data["model"])
    for name in ("a", "b", FORMULA):
        store = out / f"{name}.mran.zarr"
        assert verify_store(store) is None
        res = SlideResult.load(store)
        assert res.n_bags == 1 and res.embeddings is not None and res.embeddings.shape == (1, 64)
        assert res.provenance["cohort"]["model_sha256"] == sha
        assert res.provenance["model"]["sha256"] == sha
    assert not (out / "corrupt.mran.zarr").exists()
    rows = read_csv(out / "predictions.csv")
    assert [r["status"] for r in rows] == ["done", "done", "done", "failed"]
    assert rows[2]["store"] == "'" + FORMULA + ".mran.zarr"  # formula-injection safe
    assert rows[3]["prob_tumour"] == "" and rows[3]["error"]
    for r in rows[:3]:
        p = float(r["prob_normal"]) + float(r["prob_tumour"])
        assert p == pytest.approx(1, abs=1e-5)
        assert r["predicted"] in ("normal", "tumour") and r["n_bags"] == "1"
    manifest = json.loads((out / "mran-cohort.json").read_text())
    assert manifest["format"] == "napari-mran-cohort" and manifest["model"]["sha256"] == sha
    assert not (out / LOCK_NAME).exists()
    assert not [p for p in out.iterdir() if ".partial-" in p.name]


def test_rerun_skips_verified_stores(data, cluster_run):
    out = cluster_run["out"]
    stores = [out / f"{n}.mran.zarr" for n in ("a", "b", FORMULA)]
    before = [stamp(s) for s in stores]
    probs_before = [r["prob_tumour"] for r in read_csv(out / "predictions.csv")]
    events, summary = drain(predict_cohort([*data["slides"], data["bad"]], data["model"], out,
                                           workers=1))
    assert summary["skipped"] == 3 and summary["done"] == 0 and len(summary["failed"]) == 1
    assert [stamp(s) for s in stores] == before  # not rewritten
    rows = read_csv(out / "predictions.csv")
    assert [r["status"] for r in rows] == ["skipped"] * 3 + ["failed"]
    assert [r["prob_tumour"] for r in rows] == probs_before


def test_corrupt_or_partial_store_is_recomputed(data, cluster_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(cluster_run["out"], out)
    a, b, c = (out / f"{n}.mran.zarr" for n in ("a", "b", FORMULA))
    # a: a flipped byte in a chunk (checksum mismatch); b: completion marker gone (partial)
    chunk = next(p for p in (a / "slide_probs").rglob("*") if p.is_file() and p.name != "zarr.json")
    raw = bytearray(chunk.read_bytes())
    raw[-1] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    remove_completion_marker(b)
    assert verify_store(a) and verify_store(b)
    untouched = stamp(c)
    events, summary = drain(predict_cohort(data["slides"], data["model"], out, workers=1))
    assert summary["done"] == 2 and summary["skipped"] == 1 and not summary["failed"]
    assert verify_store(a) is None and verify_store(b) is None and stamp(c) == untouched
    aside = sorted(p.name for p in out.iterdir() if ".invalid-" in p.name)
    assert len(aside) == 2 and {s["store"] for s in summary["set_aside"]} == {a.name, b.name}
    ref = SlideResult.load(cluster_run["out"] / "a.mran.zarr")
    np.testing.assert_allclose(SlideResult.load(a).slide_probs, ref.slide_probs, atol=1e-5)


def test_store_of_another_model_needs_overwrite(data, cluster_run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copytree(cluster_run["out"] / "a.mran.zarr", out / "a.mran.zarr")
    torch.manual_seed(4)
    other = save_model(MRAN(MRANConfig(width=0.125, class_names=["normal", "tumour"])),
                       tmp_path / "other.safetensors")
    st, why = store_status(out / "a.mran.zarr", model_sha256=sha256_of(other), options=None,
                           slide=data["slides"][0])
    assert st == "different" and "another model" in why
    with pytest.raises(OutputExistsError, match="another model"):
        run_cohort(data["slides"][:1], other, out, workers=1)
    assert not (out / "predictions.csv").exists()
    summary = run_cohort(data["slides"][:1], other, out, workers=1, overwrite=True)
    assert summary["done"] == 1
    res = SlideResult.load(out / "a.mran.zarr")
    assert res.provenance["cohort"]["model_sha256"] == sha256_of(other)


def test_foreign_files_are_refused_and_kept(data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.mran.zarr").write_text("my notes")
    (out / "predictions.csv").write_text("mine\n")
    with pytest.raises(OutputExistsError) as err:
        run_cohort(data["slides"][:1], data["model"], out, workers=1, overwrite=True)
    assert "a.mran.zarr" in str(err.value) and "never replaced" in str(err.value)
    assert (out / "a.mran.zarr").read_text() == "my notes"
    assert (out / "predictions.csv").read_text() == "mine\n"
    assert sorted(p.name for p in out.iterdir()) == ["a.mran.zarr", "predictions.csv"]


def test_bad_input_is_refused_early(data, tmp_path):
    with pytest.raises(CohortError, match="slide not found: .*nope.svs"):
        run_cohort([tmp_path / "nope.svs"], data["model"], tmp_path / "o1", workers=1)
    with pytest.raises(CheckpointError, match="not found"):
        run_cohort(data["slides"], tmp_path / "none.safetensors", tmp_path / "o2", workers=1)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_lock_refuses_a_second_run(data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with OutputLock(out, "test holder"):
        with pytest.raises(OutputExistsError, match="in use by another napari-mran run"):
            run_cohort(data["slides"][:1], data["model"], out, workers=1)
    assert not (out / LOCK_NAME).exists()
    # a holder killed with SIGKILL leaves no stale lock (flock dies with the process)
    code = ("import sys, time; from napari_mran.cohort import OutputLock; "
            f"OutputLock({str(out)!r}).acquire(); print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(OutputExistsError, match="in use"):
            OutputLock(out).acquire()
    finally:
        proc.kill()
        proc.wait()
    assert (out / LOCK_NAME).exists()  # the file stays, the lock does not
    OutputLock(out).acquire().release()


CLI_MAIN = ("import sys\n"
            "from napari_mran.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")


def group_alive(pgid: int) -> list[int]:
    import psutil

    alive = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return alive


def wait_until(condition, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    """Poll *condition* until it holds; fail naming *what* if *proc* exits first or
    after *timeout* s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_ctrl_c_on_a_cluster_run_then_resume(data, cluster_run, tmp_path):
    """SIGINT to the CLI's process group (what a terminal does) mid-run: exit 130 without
    tracebacks, the cluster is gone, finished stores are complete; the resumed run gives
    the same results as the uninterrupted one (battery rows 16 and 20)."""
    import signal

    out = tmp_path / "out"
    cmd = [sys.executable, "-c", CLI_MAIN, "predict", *data["slides"], "--model", data["model"],
           "--out", str(out), "--workers", "2", "--batch-size", "1"]
    names = [f"{n}.mran.zarr" for n in ("a", "b", FORMULA)]
    # stdout/stderr go to files: nothing blocks on a full pipe while we watch the folder
    with open(tmp_path / "stdout", "w") as so, open(tmp_path / "stderr", "w+") as se:
        proc = subprocess.Popen(cmd, stderr=se, stdout=so, text=True, start_new_session=True)
        try:
            # interrupt once a store is verified on disk (the run is mid-way: two workers,
            # three slides, so at least one slide is still being analysed)
            wait_until(lambda: any(verify_store(out / n) is None for n in names
                                   if (out / n).is_dir()),
                       proc, "the first verified store")
            os.killpg(proc.pid, signal.SIGINT)
            t0 = time.perf_counter()
            proc.wait(timeout=60)
            stop_s = time.perf_counter() - t0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        se.seek(0)
        err = se.read()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    assert stop_s < 30
    time.sleep(0.5)
    assert group_alive(proc.pid) == [], "worker processes survived the interrupt"
    assert not (out / LOCK_NAME).exists()
    finished = [n for n in names if (out / n).exists()]
    assert finished and all(verify_store(out / n) is None for n in finished)
    events, summary = drain(predict_cohort(data["slides"], data["model"], out, workers=1))
    assert summary["skipped"] == len(finished) and summary["done"] == 3 - len(finished)
    for n in names:  # resumed == uninterrupted
        a, b = SlideResult.load(out / n), SlideResult.load(cluster_run["out"] / n)
        for attr in ("slide_probs", "bag_attention", "patch_attention", "cell_probs"):
            np.testing.assert_allclose(getattr(a, attr), getattr(b, attr), atol=1e-5)


def test_interrupt_in_process_keeps_finished_stores(data, tmp_path):
    out = tmp_path / "out"
    gen = predict_cohort(data["slides"][:2], data["model"], out, workers=1)
    for ev in gen:
        if ev.stage == "slide":
            break
    with pytest.raises(KeyboardInterrupt):
        gen.throw(KeyboardInterrupt)
    assert not (out / LOCK_NAME).exists() and verify_store(out / "a.mran.zarr") is None
    assert not (out / "b.mran.zarr").exists() and not (out / "predictions.csv").exists()


def test_existing_scheduler_address(data, cluster_run, tmp_path):
    """--scheduler tcp://...: tasks go to a running cluster (here an in-process one)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster:
        summary = run_cohort(data["slides"][:2], data["model"], tmp_path / "out",
                             scheduler=cluster.scheduler_address)
    assert summary["done"] == 2 and summary["cluster"].startswith("scheduler ")
    for n in ("a", "b"):
        a = SlideResult.load(tmp_path / "out" / f"{n}.mran.zarr")
        b = SlideResult.load(cluster_run["out"] / f"{n}.mran.zarr")
        np.testing.assert_allclose(a.slide_probs, b.slide_probs, atol=1e-5)


def test_store_names_disambiguate_equal_stems():
    names = store_names(["/x/s1.svs", "/y/s1.svs", "/x/S1.tif", "/x/other.ome.tiff"])
    assert names[3] == "other.mran.zarr"
    assert len(set(names[:3])) == 3 and all(n.startswith(("s1-", "S1-")) for n in names[:3])
    assert store_names(["/y/s1.svs", "/x/s1.svs"]) == [names[1], names[0]]  # order-free


# --------------------------------------------------------------------------- CLI


def cli(argv: list[str]) -> int:
    from napari_mran.cli import main

    return main(argv)


def test_cli_exit_codes(data, cluster_run, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(cluster_run["out"], out)
    assert cli(["predict", *data["slides"], "--model", data["model"], "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "0 analysed, 3 skipped" in captured.out
    assert cli(["predict", data["slides"][0], data["bad"], "--model", data["model"],
                "--out", str(out), "--json"]) == 1
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["skipped"] == 1 and len(summary["failed"]) == 1
    assert "failed: " in captured.err and "corrupt.svs" in captured.err
    assert cli(["predict", str(tmp_path / "missing.svs"), "--model", data["model"],
                "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: slide not found:") and "Traceback" not in err
    assert cli(["predict", data["slides"][0], "--model", str(tmp_path / "m.pth"),
                "--out", str(out)]) == 2
    assert "m.pth" in capsys.readouterr().err
    with OutputLock(out):
        assert cli(["predict", data["slides"][0], "--model", data["model"],
                    "--out", str(out)]) == 2
    assert "in use" in capsys.readouterr().err
    assert cli(["predict", data["slides"][0], "--model", data["model"], "--out", str(out),
                "--workers", "-1"]) == 2
    assert capsys.readouterr().err.startswith("error: argument --workers")


def test_core_import_stays_headless():
    code = ("import sys, napari_mran.cohort, napari_mran.evaluation, napari_mran.faithfulness, "
            "napari_mran.metrics, napari_mran.cli\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide6', 'vispy', 'magicgui', 'matplotlib', "
            "'distributed', 'torch')]\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert r.returncode == 0, r.stderr
