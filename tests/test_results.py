"""SlideResult: validation, results store (atomic, marker, overwrite rules), heatmaps."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from napari_mran import results as results_mod
from napari_mran.results import store as store_mod
from napari_mran.errors import OutputExistsError, ResultsError
from napari_mran.results import Heatmap, SlideResult, is_results_store, strict_json, verify_store
from procs import sigkill_when_ready
from test_store_integrity import remove_completion_marker

REPO = Path(__file__).resolve().parents[1]


def make_result(
    boxes=None, slide_size=(7000, 5000), bag_px=2048, n_classes=2, seed=0, **kw
) -> SlideResult:
    """A result with random scores for bags at *boxes* (default: three bags of a 2 x 3 grid)."""
    if boxes is None:
        boxes = [[0, 0, 2048, 2048], [4096, 2048, 6144, 4096], [2048, 0, 4096, 2048]]
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    n, c = len(boxes), n_classes
    rng = np.random.default_rng(seed)
    args = {
        "boxes": boxes,
        "bag_attention": rng.random(n),
        "bag_probs": rng.random((n, c)),
        "patch_attention": rng.random((n, 64)),
        "patch_probs": rng.random((n, 64, c)),
        "cell_attention": rng.random((n, 64, 16)),
        "cell_probs": rng.random((n, 64, 16, c)),
        "slide_probs": np.linspace(0.2, 0.8, c),
        "class_names": [f"class{k}" for k in range(c)] if c != 2 else ["normal", "tumour"],
        "slide_size": slide_size,
        "bag_px": bag_px,
        "mpp": 0.5,
        "provenance": {"slide": {"path": "/data/slide.svs"}, "device": "cpu"},
    }
    args.update(kw)
    return SlideResult(**args)


def assert_same(a: SlideResult, b: SlideResult) -> None:
    for name in results_mod._ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert a.class_names == b.class_names
    assert a.slide_size == b.slide_size and a.bag_px == b.bag_px and a.mpp == b.mpp
    assert a.failed_reasons == b.failed_reasons and a.degraded == b.degraded
    assert a.provenance == b.provenance


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- construction


def test_arrays_are_canonical_dtypes():
    r = make_result()
    assert r.boxes.dtype == np.int64 and r.cell_probs.dtype == np.float32
    assert r.n_bags == 3 and r.n_classes == 2 and r.grid_shape == (3, 4)  # 5000 x 7000 px: partial edge bags included
    np.testing.assert_array_equal(r.bag_rc, [[0, 0], [1, 2], [0, 1]])
    assert r.slide_name == "slide.svs"


@pytest.mark.parametrize(
    "change, match",
    [
        ({"cell_attention": np.zeros((3, 64, 15))}, "cell_attention has shape"),
        ({"patch_probs": np.zeros((3, 64, 3))}, "patch_probs has shape"),
        ({"slide_probs": np.zeros(3)}, "slide_probs has shape"),
        ({"boxes": [[0, 0, 2048, 2048], [1, 0, 2049, 2048], [2048, 0, 4096, 2048]]}, "bag grid"),
        ({"boxes": [[0, 0, 2048, 2048], [0, 0, 2048, 2048], [2048, 0, 4096, 2048]]}, "same bag"),
        ({"boxes": [[0, 0, 2048, 2048], [8192, 0, 10240, 2048], [2048, 0, 4096, 2048]]}, "outside"),
        (
            {"boxes": [[0, 0, 1024, 1024], [2048, 2048, 3072, 3072], [1024, 0, 2048, 1024]]},
            "2048 x 2048",
        ),
        ({"class_names": ["a", "a"]}, "unique"),
        ({"mpp": 0.0}, "mpp"),
        ({"failed_boxes": [[0, 2048, 2048, 4096]]}, "reasons"),
        ({"provenance": {"x": object()}}, "JSON"),
    ],
)
def test_validation(change, match):
    with pytest.raises(ResultsError, match=match):
        make_result(**change)


def test_provenance_is_made_strict_json():
    r = make_result(
        provenance={
            "t": {"a": float("nan"), "b": [1.0, float("inf")]},
            "p": Path("/x"),
            "n": np.int64(3),
        }
    )
    assert r.provenance["t"] == {"a": None, "b": [1.0, None]}
    assert r.provenance["p"] == "/x" and r.provenance["n"] == 3
    assert r.provenance["_nonfinite_replaced_by_null"] == ["/t/a", "/t/b/1"]
    json.dumps(r.provenance, allow_nan=False)


def test_strict_json_helper():
    clean, replaced = strict_json({"a": (np.float32(1.5), -np.inf), 2: np.bool_(True)})
    assert clean == {"a": [1.5, None], "2": True} and replaced == ["/a/1"]


# --------------------------------------------------------------------------- store


def test_round_trip(tmp_path):
    r = make_result(
        failed_boxes=[[0, 2048, 2048, 4096]],
        failed_reasons=["JPEG decode error in tile 3"],
        degraded=True,
        mpp=(0.25, 0.26),
        provenance={
            "slide": {"path": "/s.svs", "sha256_first_mb": "ab" * 32},
            "timing": float("nan"),
        },
    )
    path = r.save(tmp_path / "s.mran.zarr")
    assert listing(tmp_path) == ["s.mran.zarr"]  # no temporary folder left
    assert results_mod.CHECKSUMS_KEY in json.loads((path / "zarr.json").read_text())["attributes"]
    back = SlideResult.load(path)
    assert_same(r, back)
    assert back.mpp == (0.25, 0.26) and back.failed_bags == [
        {"box": [0, 2048, 2048, 4096], "reason": "JPEG decode error in tile 3"}
    ]
    assert is_results_store(path) and verify_store(path) is None

    # the stored JSON is strict
    def reject(constant):
        raise AssertionError(f"non-strict JSON constant {constant}")

    for name in ("zarr.json",):
        json.loads((path / name).read_text(), parse_constant=reject)


def test_round_trip_without_bags(tmp_path):
    r = make_result(boxes=np.zeros((0, 4)), mpp=None)
    back = SlideResult.load(r.save(tmp_path / "empty.mran.zarr"))
    assert_same(r, back)
    assert back.n_bags == 0 and np.isnan(back.heatmap("cell").data).all()


def test_store_without_marker_is_refused(tmp_path):
    path = make_result().save(tmp_path / "s.mran.zarr")
    remove_completion_marker(path)
    with pytest.raises(ResultsError, match="incomplete"):
        SlideResult.load(path)
    assert not is_results_store(path)


def test_crash_before_marker_leaves_nothing(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash before the completion marker")

    monkeypatch.setattr(store_mod, "mark_complete", crash)
    with pytest.raises(ResultsError, match="simulated crash"):
        make_result().save(tmp_path / "s.mran.zarr")
    assert listing(tmp_path) == []  # neither the final name nor a temporary folder


def test_sigkill_during_save_never_leaves_a_store_under_the_final_name(tmp_path):
    """A real SIGKILL while writing: the final name must be absent."""
    final = tmp_path / "s.mran.zarr"
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from napari_mran.results import store
        from test_results import make_result
        def hang(*a, **k):
            open({str(tmp_path / "ready")!r}, "w").close()
            time.sleep(60)
        store.mark_complete = hang
        make_result().save({str(final)!r})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    sigkill_when_ready(proc, tmp_path / "ready", "writer never reached the marker")
    assert not final.exists()
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(".s.mran.zarr.partial-")]
    assert len(partial) == 1  # arrays were written there, then the process died
    with pytest.raises(ResultsError, match="incomplete"):
        SlideResult.load(partial[0])


def test_corrupt_and_foreign_stores(tmp_path):
    with pytest.raises(ResultsError, match="does not exist"):
        SlideResult.load(tmp_path / "missing.mran.zarr")
    (tmp_path / "file.mran.zarr").write_text("x")
    with pytest.raises(ResultsError, match="not a folder"):
        SlideResult.load(tmp_path / "file.mran.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ResultsError, match="no zarr.json"):
        SlideResult.load(tmp_path / "plain")
    import zarr

    zarr.open_group(str(tmp_path / "other.zarr"), mode="w", zarr_format=3).attrs["x"] = 1
    with pytest.raises(ResultsError, match="not a napari-mran results store"):
        SlideResult.load(tmp_path / "other.zarr")

    path = make_result().save(tmp_path / "s.mran.zarr")
    chunk = next((path / "cell_probs" / "c").rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    chunk.unlink()  # a lost chunk reads back as fill values: only the checksum notices
    with pytest.raises(ResultsError, match="checksum"):
        SlideResult.load(path)

    path2 = make_result().save(tmp_path / "t.mran.zarr")
    (path2 / "bag_probs" / "zarr.json").write_text("{not json")
    with pytest.raises(ResultsError, match="t.mran.zarr"):
        SlideResult.load(path2)


def test_overwrite_rules(tmp_path):
    path = make_result(seed=1).save(tmp_path / "s.mran.zarr")
    before = SlideResult.load(path)
    with pytest.raises(OutputExistsError, match="already exists"):
        make_result(seed=2).save(path)
    assert_same(before, SlideResult.load(path))
    # overwrite=True replaces a verified store of ours
    new = make_result(seed=2)
    new.save(path, overwrite=True)
    assert_same(new, SlideResult.load(path))
    assert listing(tmp_path) == ["s.mran.zarr"]


def test_overwrite_never_deletes_foreign_files(tmp_path):
    # a verified store into which the user dropped a file
    path = make_result().save(tmp_path / "s.mran.zarr")
    (path / "my_notes.txt").write_text("precious")
    with pytest.raises(OutputExistsError, match="my_notes.txt"):
        make_result(seed=3).save(path, overwrite=True)
    assert (path / "my_notes.txt").read_text() == "precious"
    # a folder of user files under the same name
    user = tmp_path / "u.mran.zarr"
    user.mkdir()
    (user / "slide.svs").write_text("data")
    with pytest.raises(OutputExistsError, match="refusing to replace"):
        make_result().save(user, overwrite=True)
    assert (user / "slide.svs").read_text() == "data"
    # a partial store (no marker) is not ours to delete either
    partial = make_result().save(tmp_path / "p.mran.zarr")
    remove_completion_marker(partial)
    with pytest.raises(OutputExistsError, match="incomplete"):
        make_result().save(partial, overwrite=True)
    # a file in the way
    (tmp_path / "f.mran.zarr").write_text("file")
    with pytest.raises(OutputExistsError):
        make_result().save(tmp_path / "f.mran.zarr", overwrite=True)
    assert (tmp_path / "f.mran.zarr").read_text() == "file"


def test_save_into_missing_folder(tmp_path):
    with pytest.raises(ResultsError, match="does not exist"):
        make_result().save(tmp_path / "nope" / "s.mran.zarr")


# --------------------------------------------------------------------------- heatmaps


def test_bag_heatmap_affine_maps_pixels_to_bag_boxes():
    r = make_result()
    h = r.heatmap("bag")
    assert h.data.shape == (3, 4) and h.data.dtype == np.float32  # partial edge bags too
    assert h.scale == (2048.0, 2048.0) and h.translate == (0.0, 0.0)
    for i, box in enumerate(r.boxes):
        row, col = h.index_at((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        assert h.pixel_box(row, col) == tuple(float(v) for v in box)
        assert h.data[row, col] == np.float32(r.bag_attention[i])
    assert np.isnan(h.data[1, 0]) and np.isnan(h.data[1, 1])  # no tissue bags there
    assert np.isfinite(h.data).sum() == 3


def test_patch_2_5_lands_in_the_right_place():
    r = make_result()
    i = 1  # bag at grid row 1, col 2 (x0 = 4096, y0 = 2048)
    p = 2 * 8 + 5  # patch row 2, col 5
    h = r.heatmap("patch")
    assert h.scale == (256.0, 256.0)
    row, col = 1 * 8 + 2, 2 * 8 + 5
    assert h.data[row, col] == np.float32(r.patch_attention[i, p])
    assert h.pixel_box(row, col) == (4096 + 5 * 256, 2048 + 2 * 256, 4096 + 6 * 256, 2048 + 3 * 256)
    np.testing.assert_array_equal(r.level_boxes("patch")[i, p], h.pixel_box(row, col))


def test_cell_ordering():
    r = make_result()
    i, p, c = 1, 2 * 8 + 5, 3 * 4 + 1  # patch (2, 5), cell (3, 1)
    h = r.heatmap("cell")
    assert h.scale == (64.0, 64.0)
    row, col = 1 * 32 + 2 * 4 + 3, 2 * 32 + 5 * 4 + 1
    assert h.data[row, col] == np.float32(r.cell_attention[i, p, c])
    assert h.pixel_box(row, col) == (
        4096 + 5 * 256 + 64,
        2048 + 2 * 256 + 3 * 64,
        4096 + 5 * 256 + 128,
        2048 + 2 * 256 + 4 * 64,
    )


@pytest.mark.parametrize("level", ["bag", "patch", "cell"])
@pytest.mark.parametrize("bag_px", [2048, 100])
def test_every_object_lands_on_its_box(level, bag_px):
    """Exhaustive: each heatmap pixel whose box equals an object's box holds its score."""
    g = bag_px
    boxes = [[0, 0, g, g], [2 * g, g, 3 * g, 2 * g], [g, 0, 2 * g, g]]
    r = make_result(boxes=boxes, slide_size=(3 * g + 7, 2 * g + 3), bag_px=g)
    for weighting in ("local", "global"):
        h = r.heatmap(level, weighting)
        vals = r.scores(level, weighting)
        obj_boxes = r.level_boxes(level).reshape(-1, 4)
        sy, sx = h.scale
        rows = np.round((obj_boxes[:, 1] - h.translate[0]) / sy).astype(int)
        cols = np.round((obj_boxes[:, 0] - h.translate[1]) / sx).astype(int)
        # the pixel box of (row, col) is exactly the object's box
        np.testing.assert_allclose(rows * sy + h.translate[0], obj_boxes[:, 1])
        np.testing.assert_allclose(cols * sx + sx, obj_boxes[:, 2])
        np.testing.assert_array_equal(h.data[rows, cols], vals.reshape(-1).astype(np.float32))
        assert np.isfinite(h.data).sum() == vals.size  # NaN everywhere else


def test_global_weighting_products():
    r = make_result()
    i, p, c = 2, 9, 7
    g, a, b = r.bag_attention[i], r.patch_attention[i, p], r.cell_attention[i, p, c]
    hp = r.heatmap("patch", "global")
    hc = r.heatmap("cell", "global")
    prow, pcol = 0 * 8 + p // 8, 1 * 8 + p % 8
    crow, ccol = (p // 8) * 4 + c // 4, 32 + (p % 8) * 4 + c % 4
    assert hp.data[prow, pcol] == pytest.approx(g * a, rel=1e-6)
    assert hc.data[crow, ccol] == pytest.approx(g * a * b, rel=1e-6)
    # bag level: local == global == gamma
    np.testing.assert_array_equal(r.heatmap("bag", "global").data, r.heatmap("bag").data)


def test_probability_heatmaps_and_bad_arguments():
    r = make_result(n_classes=3)
    h = r.heatmap("patch", value="prob", class_index=2)
    assert h.data[0, 0] == r.patch_probs[0, 0, 2] and h.class_name == "class2"
    assert r.heatmap("cell", value="prob", class_index="class1").class_index == 1
    with pytest.raises(ValueError, match="global"):
        r.heatmap("patch", "global", value="prob")
    with pytest.raises(ValueError, match="class_index"):
        r.heatmap("bag", value="prob", class_index=3)
    with pytest.raises(ValueError, match="level"):
        r.heatmap("tile")


def test_heatmap_in_micrometres_and_viewer_transform():
    r = make_result(mpp=(0.25, 0.5))
    h = r.heatmap("patch")
    assert h.scale_um == (256 * 0.5, 256 * 0.25)
    assert h.translate_um == (0.0, 0.0)
    scale, translate = h.layer_transform("px")
    assert scale == (256.0, 256.0) and translate == (
        127.5,
        127.5,
    )  # centre of pixel 0 in level-0 px
    scale, translate = h.layer_transform("um")
    assert scale == (128.0, 64.0) and translate == (127.5 * 0.5, 127.5 * 0.25)
    assert h.layer_transform("px", pixel_centres=False) == ((256.0, 256.0), (0.0, 0.0))
    with pytest.raises(ResultsError):
        make_result(mpp=None).heatmap("bag").layer_transform("um")


def test_pyramid_is_nan_aware():
    h = Heatmap(
        data=np.array([[1, np.nan, 3], [3, np.nan, np.nan]], np.float32),
        scale=(2.0, 2.0),
        translate=(0.0, 0.0),
    )
    d = h.downsampled()
    np.testing.assert_array_equal(d.data, [[2.0, 3.0]])
    assert d.scale == (4.0, 4.0)
    assert len(h.pyramid(min_size=1)) == 2


def test_large_slide_cell_heatmap_is_one_array():
    """100k x 100k px slide with every bag present: the cell raster is ~1.5k x 1.5k."""
    cols = rows = 100_000 // 2048
    boxes = [
        [c * 2048, r * 2048, c * 2048 + 2048, r * 2048 + 2048]
        for r in range(rows)
        for c in range(cols)
    ]
    r = make_result(boxes=boxes, slide_size=(100_000, 100_000))
    t = time.perf_counter()
    h = r.heatmap("cell", "global")
    elapsed = time.perf_counter() - t
    # the grid covers the slide: 49 x 49 bags, the last row and column partial (no bags)
    assert h.data.shape == ((rows + 1) * 32, (cols + 1) * 32) == (1568, 1568)
    assert np.isfinite(h.data[:1536, :1536]).all() and np.isnan(h.data[1536:]).all()
    assert elapsed < 5  # generous: it is a handful of vectorised numpy calls


# --------------------------------------------------------------------------- lookups


def test_top_bags():
    r = make_result(bag_attention=np.array([0.2, np.nan, 0.5]))
    np.testing.assert_array_equal(r.top_bags(), [2, 0, 1])
    np.testing.assert_array_equal(r.top_bags(1), [2])
    r2 = make_result(bag_attention=np.array([0.3, 0.3, 0.1]))
    np.testing.assert_array_equal(r2.top_bags(), [0, 1, 2])  # ties by index


def test_value_at():
    r = make_result()
    i, pr, pc, cr, cc = 1, 2, 5, 3, 1
    x = 4096 + pc * 256 + cc * 64 + 10
    y = 2048 + pr * 256 + cr * 64 + 63.9
    v = r.value_at(x, y)
    p, c = pr * 8 + pc, cr * 4 + cc
    assert v["bag_index"] == i and v["patch_index"] == p and v["cell_index"] == c
    assert v["bag_box"] == (4096, 2048, 6144, 4096)
    assert v["patch_box"] == (4096 + 1280, 2048 + 512, 4096 + 1536, 2048 + 768)
    assert v["bag_attention"] == pytest.approx(r.bag_attention[i])
    assert v["patch_attention"] == pytest.approx(r.patch_attention[i, p])
    assert v["cell_attention"] == pytest.approx(r.cell_attention[i, p, c])
    assert v["cell_attention_global"] == pytest.approx(
        r.bag_attention[i] * r.patch_attention[i, p] * r.cell_attention[i, p, c], rel=1e-6
    )
    assert v["cell_probs"]["tumour"] == pytest.approx(r.cell_probs[i, p, c, 1])
    # agrees with the heatmap
    h = r.heatmap("cell")
    assert h.data[h.index_at(x, y)] == np.float32(v["cell_attention"])
    assert r.value_at(2048 * 1.5, 2048 * 1.5) is None  # a grid bag without tissue
    assert r.value_at(6500, 100) is None  # beyond the grid (partial bag)
    assert r.value_at(-1, 5) is None
    assert r.value_at(4095.999, 0)["bag_index"] == 2 and r.value_at(4096, 0) is None


def test_disk_full_during_save_is_a_clear_error(tmp_path, monkeypatch):
    import errno

    def full(folder, *args, **kwargs):
        (Path(folder) / "zarr.json").write_text("{}")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod, "zarr_write", full)
    with pytest.raises(ResultsError, match="no space left"):
        make_result().save(tmp_path / "s.mran.zarr")
    assert listing(tmp_path) == []


def test_concurrent_writer_wins_and_is_not_clobbered(tmp_path, monkeypatch):
    """Another run publishes the same store while we write: we refuse, theirs stays."""
    final = tmp_path / "s.mran.zarr"
    theirs = make_result(seed=9)
    real_mark = store_mod.mark_complete

    def other_run_finishes_first(folder, own, marker):
        real_mark(folder, own, marker)
        monkeypatch.setattr(store_mod, "mark_complete", real_mark)
        theirs.save(final)

    monkeypatch.setattr(store_mod, "mark_complete", other_run_finishes_first)
    with pytest.raises(OutputExistsError, match="created while writing"):
        make_result(seed=1).save(final)
    assert_same(theirs, SlideResult.load(final))
    assert listing(tmp_path) == ["s.mran.zarr"]
