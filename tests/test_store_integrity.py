"""Results stores are verified as a whole: attributes are covered by checksums and must
fit the arrays; zarr lists a store without a warning; stale partial folders of a killed
save are cleaned up by the next save of the same name (and nothing else is touched)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from napari_mran import results as results_mod
from napari_mran.cli import main
from napari_mran.errors import ResultsError
from napari_mran.export import export_csv
from napari_mran.results import SlideResult, is_results_store, verify_store
from procs import sigkill_when_ready

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def make_result(seed=0, boxes=None, **kw) -> SlideResult:
    """Three bags of a 7000 x 5000 px slide (bag 2048 px), two classes, MPP 0.5."""
    if boxes is None:
        boxes = [[0, 0, 2048, 2048], [4096, 2048, 6144, 4096], [2048, 0, 4096, 2048]]
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    n = len(boxes)
    rng = np.random.default_rng(seed)
    args = dict(
        boxes=boxes, bag_attention=rng.random(n), bag_probs=rng.random((n, 2)),
        patch_attention=rng.random((n, 64)), patch_probs=rng.random((n, 64, 2)),
        cell_attention=rng.random((n, 64, 16)), cell_probs=rng.random((n, 64, 16, 2)),
        slide_probs=np.array([0.25, 0.75]), class_names=["normal", "tumour"],
        slide_size=(7000, 5000), bag_px=2048, mpp=0.5,
        provenance={"slide": {"path": "/data/slide.svs", "name": "slide.svs"},
                    "model": {"sha256": "ab" * 32, "demo": False}})
    args.update(kw)
    return SlideResult(**args)


# --------------------------------------------------------------------------- helpers
# They edit the files of a store the way a person or a careless tool would.


def read_meta(store: Path) -> dict:
    return json.loads((store / "zarr.json").read_text(encoding="utf-8"))


def write_meta(store: Path, meta: dict) -> None:
    (store / "zarr.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


def edit_attr(store: Path, key: str, value) -> None:
    """Set attribute ``napari_mran.<key>`` (or ``provenance.<a>.<b>``) in zarr.json."""
    meta = read_meta(store)
    node = meta["attributes"]
    parts = key.split(".")
    if parts[0] != "provenance":
        parts = [results_mod.ATTRS_KEY, *parts]
    for p in parts[:-1]:
        node = node[p]
    node[parts[-1]] = value
    write_meta(store, meta)


def remove_completion_marker(store: Path) -> None:
    """What an interrupted write leaves: the group attributes without the marker
    (helper for the tests of incomplete stores)."""
    meta = read_meta(store)
    meta["attributes"].pop(results_mod.CHECKSUMS_KEY, None)
    meta["attributes"][results_mod.ATTRS_KEY]["complete"] = False
    write_meta(store, meta)


def rewrite_array(store: Path, name: str, arr: np.ndarray) -> None:
    """Write *arr* into the store's array through zarr and refresh that array's own
    checksum entry wherever a marker keeps it: a tool that "fixes" one checksum."""
    import zarr

    zarr.open_array(str(store / name), mode="r+")[...] = arr
    sha = results_mod._sha256(np.ascontiguousarray(arr))
    legacy = store / "COMPLETE.json"
    if legacy.is_file():
        marker = json.loads(legacy.read_text())
        marker["arrays"][name]["sha256"] = sha
        legacy.write_text(json.dumps(marker))
    meta = read_meta(store)
    marker = meta["attributes"].get("napari_mran_checksums")
    if marker is not None:
        marker["arrays"][name]["sha256"] = sha
        write_meta(store, meta)


def reseal(store: Path) -> None:
    """Recompute every checksum of the store from what it now holds: a store whose
    attributes were edited *and* re-checksummed, as a deliberate tool would."""
    meta = read_meta(store)
    attrs = meta["attributes"]
    own, prov = attrs[results_mod.ATTRS_KEY], attrs["provenance"]
    table = attrs[results_mod.CHECKSUMS_KEY]["arrays"]
    body = results_mod._marker_body(table, own, prov)
    attrs[results_mod.CHECKSUMS_KEY] = {**body, "sha256": results_mod._canonical_sha256(body)}
    write_meta(store, meta)


@pytest.fixture
def store(tmp_path) -> Path:
    return make_result().save(tmp_path / "slide.mran.zarr")


# --------------------------------------------------------------------------- attributes

# Each edit below loads without complaint in the store format before checksummed
# attributes (it fits the boxes, is positive and finite): a wrong result, or an
# export that crashes after writing part of its files.
EDITS = [
    ("slide_size", [10**12, 5000], "slide_size"),
    ("slide_size", [7000, 10**12], "slide_size"),
    ("bag_px", 2048.0, "bag_px"),
    ("mpp", 0.05 * 0.5, "mpp"),           # another scanner's MPP: every µm off by 20x
    ("mpp", [0.5, 5.0], "mpp"),
    ("class_names", ["tumour", "normal"], "class_names"),  # the prediction flips
    ("n_bags", 7, "n_bags"),
    ("degraded", True, "degraded"),
    ("provenance.slide.name", "another slide.svs", "provenance"),
    ("provenance.model.demo", True, "provenance"),
    ("provenance.slide.path", "/elsewhere/other.svs", "provenance"),
]


@pytest.mark.parametrize("key, value, named", EDITS,
                         ids=[f"{k}={v!r}"[:40] for k, v, _ in EDITS])
def test_edited_attribute_is_refused(store, key, value, named):
    edit_attr(store, key, value)
    with pytest.raises(ResultsError, match=named) as err:
        SlideResult.load(store)
    assert str(store) in str(err.value)
    assert verify_store(store) is not None and not is_results_store(store)


def test_edit_of_an_empty_store_grid_is_refused(tmp_path):
    """No bags: nothing in the arrays contradicts another grid, only the checksum."""
    store = make_result(boxes=np.zeros((0, 4))).save(tmp_path / "empty.mran.zarr")
    edit_attr(store, "bag_px", 4096)
    with pytest.raises(ResultsError, match="bag_px"):
        SlideResult.load(store)


def test_moved_box_with_refreshed_array_checksum_is_refused(store):
    r = SlideResult.load(store)
    boxes = r.boxes.copy()
    boxes[1] = [0, 2048, 2048, 4096]  # another free cell of the grid: valid geometry
    rewrite_array(store, "boxes", boxes)
    with pytest.raises(ResultsError, match="checksum") as err:
        SlideResult.load(store)
    assert str(store) in str(err.value)


def test_added_attribute_or_non_finite_number_is_refused(store, tmp_path):
    other = tmp_path / "copy.mran.zarr"
    shutil.copytree(store, other)
    meta = read_meta(store)
    meta["attributes"]["my_note"] = "checked by Dr X"
    write_meta(store, meta)
    with pytest.raises(ResultsError, match="my_note"):
        SlideResult.load(store)
    # zarr.json with a bare Infinity (Python's json reads it): not strict JSON
    text = (other / "zarr.json").read_text().replace('"slide_size": [\n        7000',
                                                     '"slide_size": [\n        Infinity')
    assert "Infinity" in text
    (other / "zarr.json").write_text(text)
    with pytest.raises(ResultsError, match="Infinity"):
        SlideResult.load(other)


# Re-checksummed stores: the checksums agree, the content is impossible.
INCONSISTENT = [
    ("slide_size", [10**12, 5000], "slide_size"),
    ("slide_size", [4096, 5000], r"boxes\[1\]"),           # a bag starts outside
    ("bag_px", 1024, r"boxes\[0\].*1024 px bag"),
    ("mpp", 1e-9, "plausible"),
    ("mpp", [0.5], "mpp"),
    ("class_names", ["normal", "tumour", "stroma"], r"bag_probs is \(3, 2\), expected \(3, 3\)"),
    ("n_bags", 2, "n_bags is 2 but boxes holds 3"),
    ("failed_reasons", ["a read error"], "1 failure reasons"),
    ("model_is_demo", True, "model_is_demo"),
    ("degraded", "no", "degraded"),
]


@pytest.mark.parametrize("key, value, named", INCONSISTENT,
                         ids=[f"{k}={v!r}"[:40] for k, v, _ in INCONSISTENT])
def test_resealed_inconsistent_store_is_refused(store, key, value, named):
    edit_attr(store, key, value)
    reseal(store)
    with pytest.raises(ResultsError, match=named) as err:
        SlideResult.load(store)
    assert "inconsistent results store" in str(err.value) and str(store) in str(err.value)


def test_resealed_but_consistent_store_loads(store):
    """The checker itself: resealing an unchanged store gives a valid store."""
    reseal(store)
    assert SlideResult.load(store).n_bags == 3 and verify_store(store) is None


def test_a_result_that_would_not_load_is_not_saved(tmp_path):
    with pytest.raises(ResultsError, match="plausible"):
        make_result(mpp=100.0).save(tmp_path / "x.mran.zarr")
    assert list(tmp_path.iterdir()) == []


def test_older_store_version_is_refused_with_a_clear_message(store, tmp_path):
    """Decision (docs/formats.md): version-1 stores (no attribute checksums) are refused
    with "run the analysis again"; save(overwrite=True) may still replace them."""
    meta = read_meta(store)
    own = meta["attributes"][results_mod.ATTRS_KEY]
    own["version"] = 1
    own.pop("model_is_demo")
    marker = meta["attributes"].pop(results_mod.CHECKSUMS_KEY)
    write_meta(store, meta)
    (store / "COMPLETE.json").write_text(json.dumps(
        {"format": own["format"], "version": 1,
         "arrays": {k: {n: v[n] for n in ("shape", "dtype", "sha256")}
                    for k, v in marker["arrays"].items()}}))
    with pytest.raises(ResultsError, match="older napari-mran.*analyze") as err:
        SlideResult.load(store)
    assert str(store) in str(err.value)
    new = make_result(seed=5)
    new.save(store, overwrite=True)
    assert not (store / "COMPLETE.json").exists()
    np.testing.assert_array_equal(SlideResult.load(store).bag_attention, new.bag_attention)


# --------------------------------------------------------------------------- CLI


def test_cli_export_of_an_edited_store_exits_2_and_writes_nothing(store, tmp_path, capsys):
    edit_attr(store, "slide_size", [10**12, 5000])
    out = tmp_path / "exports"
    out.mkdir()
    rc = main(["export", str(store), "--format", "geojson,csv,ome-tiff", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert os.listdir(out) == []  # hidden temporary files included
    assert str(store) in err and "slide_size" in err and "Traceback" not in err


# --------------------------------------------------------------------------- zarr listing


def test_zarr_lists_a_store_without_warnings(store):
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        group = zarr.open_group(str(store), mode="r")
        members = dict(group.members(max_depth=None))
        group.tree()
    assert set(members) == set(results_mod._ARRAYS)
    assert sorted(p.name for p in store.iterdir()) == sorted([*results_mod._ARRAYS, "zarr.json"])


# --------------------------------------------------------------------------- partial folders


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(30)
    return proc.pid


def _hanging_save(final: Path, ready: Path) -> subprocess.Popen:
    """A real writer that stops (alive) just before its completion marker."""
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        sys.path.insert(0, {str(HERE)!r})
        from napari_mran.results import store
        from test_store_integrity import make_result
        def hang(*a, **k):
            open({str(ready)!r}, "w").close()
            time.sleep(120)
        store.mark_complete = hang
        make_result().save({str(final)!r})
        """
    )
    return subprocess.Popen([sys.executable, "-c", script])


def _partials(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}.partial-"))


def test_next_save_removes_the_stale_partial_of_a_killed_save(tmp_path):
    final = tmp_path / "s.mran.zarr"
    proc = _hanging_save(final, tmp_path / "ready")
    sigkill_when_ready(proc, tmp_path / "ready", "writer never reached the marker")
    stale = _partials(tmp_path, final.name)
    assert len(stale) == 1 and not final.exists()  # what a killed save leaves

    # what must survive: another store's leftover, a foreign folder and file that only
    # look like ours, the .old- folder of an interrupted replace
    dead = _dead_pid()
    keep = {
        f".other.mran.zarr.partial-{dead}-0123abcd": "dir",
        f".s.mran.zarr.partial-{dead}-89abcdef": "foreign dir",
        f".s.mran.zarr.partial-{dead}-fedcba98": "file",
        f".s.mran.zarr.old-{dead}-01234567": "dir",
        f".s.mran.zarr.partial-{dead}-notours": "dir",
    }
    for name, kind in keep.items():
        p = tmp_path / name
        if kind == "file":
            p.write_text("a user's file")
        else:
            shutil.copytree(tmp_path / stale[0], p)
            if kind == "foreign dir":
                (p / "my_notes.txt").write_text("precious")
    make_result(seed=1).save(final)
    assert SlideResult.load(final).n_bags == 3
    left = {p.name for p in tmp_path.iterdir()} - {"ready", final.name}
    assert left == set(keep)  # the stale partial is gone, nothing else
    assert (tmp_path / f".s.mran.zarr.partial-{dead}-89abcdef" / "my_notes.txt").read_text() \
        == "precious"


def test_a_live_writers_partial_is_never_removed(tmp_path):
    final = tmp_path / "s.mran.zarr"
    proc = _hanging_save(final, tmp_path / "ready")
    try:
        deadline = 60
        import time

        t0 = time.monotonic()
        while not (tmp_path / "ready").exists():
            assert proc.poll() is None and time.monotonic() - t0 < deadline
            time.sleep(0.05)
        live = _partials(tmp_path, final.name)
        assert len(live) == 1
        make_result(seed=1).save(final)  # another run finishes first
        assert _partials(tmp_path, final.name) == live  # the live writer's folder stays
    finally:
        proc.kill()
        proc.wait(10)
    # now it is stale: the next save of that name removes it
    make_result(seed=2).save(final, overwrite=True)
    assert _partials(tmp_path, final.name) == []


def test_a_partial_whose_lock_is_held_is_kept_even_if_its_pid_is_not_running(tmp_path):
    """A writer on another machine (shared folder): its pid means nothing here, its
    lock does."""
    final = tmp_path / "s.mran.zarr"
    proc = _hanging_save(final, tmp_path / "ready")
    sigkill_when_ready(proc, tmp_path / "ready", "writer never reached the marker")
    (stale,) = _partials(tmp_path, final.name)
    fd = os.open(tmp_path / stale, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        make_result().save(final)
        assert _partials(tmp_path, final.name) == [stale]
    finally:
        os.close(fd)
    make_result().save(final, overwrite=True)
    assert _partials(tmp_path, final.name) == []


def test_file_exports_remove_their_own_stale_partial_files(tmp_path):
    dead = _dead_pid()
    mine = tmp_path / f".bags.csv.partial-{dead}-0a1b2c3d"
    other = tmp_path / f".patches.csv.partial-{dead}-0a1b2c3d"
    alive = tmp_path / f".bags.csv.partial-{os.getppid()}-0a1b2c3d"
    for p in (mine, other, alive):
        p.write_text("slide,bag_index\n")
    export_csv(make_result(), tmp_path / "bags.csv")
    assert not mine.exists() and other.exists() and alive.exists()
