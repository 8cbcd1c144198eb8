"""Review marks on real results stores (the demo model on the bundled CMU-1-Small-Region
SVS, two bags): round trip, undo/redo, atomic save, tampering, the store still
verifying, ``--overwrite`` refused, the model-version warning (docs/review.md)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from napari_mran.cli import main
from napari_mran.errors import OutputExistsError
from napari_mran.results import SlideResult, is_results_store, verify_store
from napari_mran.review import MARKS, ReviewError, Reviews, review_summary
from procs import sigkill_when_ready

REPO = Path(__file__).resolve().parents[1]
SVS = REPO / "napari_mran" / "data" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("an")
    assert main(["analyze", str(SVS), "--model", "demo", "--out", str(out), "--quiet"]) == 0
    return out / "CMU-1-Small-Region.mran.zarr"


@pytest.fixture
def store(analysed, tmp_path) -> Path:
    dst = tmp_path / analysed.name
    shutil.copytree(analysed, dst)
    return dst


def _marked(store: Path) -> Reviews:
    rv = Reviews.load(store)
    rv.set_bag(0, "agree", reviewer="dr a")
    rv.set_patch(1, 9, "label", "tumour", reviewer="dr b")
    rv.set_patch(1, 63, "disagree", reviewer="dr a")
    return rv


def _edit_record(store: Path, edit) -> None:
    meta_path = store / "reviews" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    edit(meta["attributes"]["napari_mran_reviews"])
    meta_path.write_text(json.dumps(meta))


def test_round_trip_and_the_store_still_verifies(store):
    rv = _marked(store)
    assert rv.dirty and rv.counts() == {"marks": 3, "bags": 1, "patches": 2, "agree": 1,
                                        "disagree": 1, "label": 1}
    saved = rv.save()
    assert saved == store / "reviews" / "zarr.json" and not rv.dirty
    again = Reviews.load(store)
    assert again.marks == rv.marks and not again.dirty and again.model_warning() is None
    m = again.mark_at(1, 9)
    result = SlideResult.load(store)
    assert m.box == (256, 2304, 512, 2560) and m.bag_box == tuple(result.boxes[1])
    assert m.label == "tumour" and m.reviewer == "dr b" and m.time.endswith("Z")
    assert m.model_sha256 == result.provenance["model"]["sha256"]
    assert again.mark_at(0, 9) is None and again.mark_at(0).mark == "agree"
    # the store: verified whole, read, listed by zarr without a warning
    assert verify_store(store) is None and is_results_store(store)
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        members = dict(zarr.open_group(str(store), mode="r").members(max_depth=None))
    assert "reviews" in members and isinstance(members["reviews"], zarr.Group)
    assert review_summary(store) == {**rv.counts(), "reviewers": ["dr a", "dr b"],
                                     "last_time": max(x.time for x in rv.marks),
                                     "model_warning": None}


def test_a_store_without_marks(store):
    rv = Reviews.load(store)
    assert rv.marks == [] and not rv.dirty and rv.counts()["marks"] == 0
    assert review_summary(store) == {} and rv.model_warning() is None
    assert not (store / "reviews").exists()  # loading writes nothing


def test_replace_clear_undo_redo(store):
    rv = Reviews.load(store)
    rv.set_bag(0, "agree", reviewer="a")
    rv.set_bag(0, "disagree", reviewer="a")  # replaces the mark at that place
    assert rv.counts()["marks"] == 1 and rv.mark_at(0).mark == "disagree"
    rv.clear(0)
    rv.clear(1, 5)  # nothing there: not a step of the history
    assert rv.mark_at(0) is None
    assert rv.undo() and rv.mark_at(0).mark == "disagree"
    assert rv.undo() and rv.mark_at(0).mark == "agree"
    assert rv.undo() and rv.mark_at(0) is None and not rv.dirty
    assert not rv.undo()
    assert rv.redo() and rv.redo() and rv.mark_at(0).mark == "disagree"
    rv.set_patch(0, 3, "agree", reviewer="a")  # a new step drops what could be redone
    assert not rv.redo() and rv.mark_at(0).mark == "disagree"
    rv.save()
    assert rv.undo() and rv.dirty and rv.redo() and not rv.dirty


def test_a_group_is_one_undo_step(store):
    """A click or a paint stroke: the marks made inside ``group()`` are undone and redone
    together; nested groups join the outer one; a group that changed nothing is no step."""
    rv = Reviews.load(store)
    rv.set_bag(1, "agree", reviewer="a")
    with rv.group():
        rv.set_bag(0, "disagree", reviewer="a")
        with rv.group():
            rv.set_patch(0, 7, "label", "tumour", reviewer="a")
        rv.clear(1)
    with rv.group():
        rv.clear(1, 5)  # nothing there
    assert rv.counts()["marks"] == 2 and rv.mark_at(1) is None
    assert rv.undo() and rv.counts()["marks"] == 1 and rv.mark_at(1).mark == "agree"
    assert rv.mark_at(0) is None and rv.mark_at(0, 7) is None and rv.can_redo
    assert rv.redo() and rv.mark_at(0).mark == "disagree" and rv.mark_at(0, 7).label == "tumour"
    assert rv.mark_at(1) is None
    assert rv.undo() and rv.undo() and not rv.can_undo and rv.counts()["marks"] == 0


def test_bad_marks_are_refused_naming_the_store(store):
    rv = Reviews.load(store)
    for call, words in [(lambda: rv.set_bag(2, "agree"), "bag index 2"),
                        (lambda: rv.set_bag(-1, "agree"), "bag index -1"),
                        (lambda: rv.set_patch(0, 64, "agree"), "patch index"),
                        (lambda: rv.set_bag(0, "maybe"), "mark must be one of"),
                        (lambda: rv.set_bag(0, "label", "cancer"), "normal, tumour"),
                        (lambda: rv.set_bag(0, "agree", "tumour"), "has no label"),
                        (lambda: rv.set_bag(0, "agree", reviewer=" "), "reviewer")]:
        with pytest.raises(ReviewError, match=words) as err:
            call()
        assert str(store) in str(err.value) and isinstance(err.value, ValueError)
    assert rv.marks == [] and not rv.dirty and MARKS == ("agree", "disagree", "label")


@pytest.mark.parametrize("edit, words", [
    (lambda r: r["marks"][0].update(mark="disagree"), "checksum"),
    (lambda r: r.update(version=7), "version 7"),
    (lambda r: r["marks"].append(r["marks"][0]), "checksum"),
])
def test_tampered_marks_are_refused(store, edit, words):
    _marked(store).save()
    _edit_record(store, edit)
    with pytest.raises(ReviewError, match=words) as err:
        Reviews.load(store)
    assert str(store) in str(err.value)
    with pytest.raises(ReviewError):
        review_summary(store)
    assert verify_store(store) is None  # the analysis itself is intact


def test_marks_off_the_bag_grid_are_refused(store):
    """Consistent checksums but a box that is not a bag of the result (a record copied
    from another slide): refused on load, the result given or not."""
    from napari_mran.review.marks import marks_sha256

    _marked(store).save()

    def move(record):
        for m in record["marks"]:
            m["bag_box"] = [4096, 0, 6144, 2048]
            m["box"] = m["bag_box"] if m["level"] == "bag" else m["box"]
        record["marks"] = [m for m in record["marks"] if m["level"] == "bag"]
        record["sha256"] = marks_sha256(record["marks"], record["store_sha256"])

    _edit_record(store, move)
    for result in (None, SlideResult.load(store)):
        with pytest.raises(ReviewError, match="not a bag of this result"):
            Reviews.load(store, result)


def test_corrupt_record_file(store):
    _marked(store).save()
    (store / "reviews" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gr')
    with pytest.raises(ReviewError, match="corrupt review marks"):
        Reviews.load(store)
    # a store whose marks cannot be read is never replaced
    with pytest.raises(OutputExistsError, match="cannot be read"):
        SlideResult.load(store).save(store, overwrite=True)


def test_overwrite_refuses_a_store_holding_marks(store, capsys):
    _marked(store).save()
    before = (store / "reviews" / "zarr.json").read_bytes()
    code = main(["analyze", str(SVS), "--model", "demo", "--out", str(store.parent),
                 "--overwrite", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0
    assert "holds 3 review mark(s) by dr a, dr b" in err and "--format reviews" in err
    assert (store / "reviews" / "zarr.json").read_bytes() == before
    assert Reviews.load(store).counts()["marks"] == 3


def test_overwrite_allowed_once_marks_are_cleared(store):
    rv = _marked(store)
    rv.save()
    bags = [tuple(b) for b in SlideResult.load(store).boxes.tolist()]
    for m in rv.marks:
        rv.clear(bags.index(m.bag_box), m.patch_index)
    rv.save()
    SlideResult.load(store).save(store, overwrite=True)  # an empty record is no marks
    assert verify_store(store) is None and not (store / "reviews").exists()


def test_batch_skips_a_verified_store_holding_marks(store):
    from napari_mran.batch.stores import store_status

    _marked(store).save()
    sha = SlideResult.load(store).provenance["model"]["sha256"]
    assert store_status(store, model_sha256=sha, options=None, slide=None) == ("valid", "")


def test_second_session_cannot_overwrite_the_first(store):
    one, two = Reviews.load(store), Reviews.load(store)
    one.set_bag(0, "agree", reviewer="a")
    one.save()
    two.set_bag(1, "disagree", reviewer="b")
    with pytest.raises(ReviewError, match="another session"):
        two.save()
    assert [m.reviewer for m in Reviews.load(store).marks] == ["a"]


def test_marks_of_another_model_version_warn(store, tmp_path, model_file):
    """Marks made on the demo model's result, shown on the same slide analysed by another
    model (the same bag grid): loaded, with a warning naming both versions."""
    _marked(store).save()
    other = tmp_path / "other"
    assert main(["analyze", str(SVS), "--model", str(model_file), "--out", str(other),
                 "--quiet"]) == 0
    theirs = other / store.name
    shutil.copytree(store / "reviews", theirs / "reviews")
    rv = Reviews.load(theirs)
    warning = rv.model_warning()
    demo_sha = SlideResult.load(store).provenance["model"]["sha256"]
    assert warning and "3 of 3" in warning and demo_sha[:12] in warning
    assert review_summary(theirs)["model_warning"] == warning
    rv.set_bag(0, "agree", reviewer="c")  # a new mark is on this store's model
    assert rv.mark_at(0).model_sha256 != demo_sha and "2 of 3" in rv.model_warning()


_HANG = """
import contextlib, pathlib, sys, time
import napari_mran.results.zarr_io as z
from napari_mran.review import Reviews
real = z.atomic_file
@contextlib.contextmanager
def hanging(path, *a, **k):
    with real(path, *a, **k) as fh:
        yield fh
        fh.flush()
        pathlib.Path(sys.argv[2]).write_text("ready")
        time.sleep(600)
z.atomic_file = hanging
rv = Reviews.load(sys.argv[1])
rv.set_bag(1, "disagree", reviewer="killed")
rv.save()
"""


def test_a_killed_save_leaves_the_old_marks(store, tmp_path):
    old = _marked(store)
    old.save()
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_HANG), str(store),
                             str(tmp_path / "ready")], cwd=REPO)
    sigkill_when_ready(proc, tmp_path / "ready", "the save never started writing")
    leftovers = [p.name for p in (store / "reviews").iterdir() if p.name != "zarr.json"]
    assert len(leftovers) == 1 and ".partial-" in leftovers[0]
    # the store still verifies (a re-run of predict keeps it); a foreign file would not
    assert verify_store(store) is None
    (store / "reviews" / "notes.txt").write_text("x")
    assert "reviews/notes.txt" in (verify_store(store) or "")
    (store / "reviews" / "notes.txt").unlink()
    again = Reviews.load(store)  # the old marks; the dead writer's leftover removed
    assert again.marks == old.marks and verify_store(store) is None
    assert sorted(p.name for p in (store / "reviews").iterdir()) == ["zarr.json"]
