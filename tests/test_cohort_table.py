"""CohortTable (no Qt): the rows of a real predict output folder, sorting, filtering,
the per-store details, review marks, and clear errors for folders that are not ours."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cohort_folder import build_cohort

from napari_mran._napari.cohort import (CohortReviewError, CohortTable, RowFilter,
                                        load_slide_view, read_details)
from napari_mran.results import SlideResult
from napari_mran.review import Reviews


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return build_cohort(tmp_path_factory.mktemp("cohort"))


@pytest.fixture
def table(cohort) -> CohortTable:
    t = CohortTable.open(cohort)
    for i, details in t.iter_details():
        t.apply_details(i, details)
    return t


def _by_name(t: CohortTable) -> dict:
    return {r.name: r for r in t.rows}


def test_rows_match_predictions_and_stores(table, cohort):
    rows = _by_name(table)
    assert len(table) == 5 and table.class_names == ["normal", "tumour"]
    broken = rows["broken.svs"]
    assert broken.failed and broken.store is None and "CorruptSlideError" in broken.error
    assert broken.text("predicted") == "—" and broken.text("top_attention") == "—"
    for name in ("slide_0000.svs", "slide_0001.svs"):
        r = rows[name]
        result = SlideResult.load(r.store)
        best = int(result.slide_probs.argmax())
        assert r.predicted == result.class_names[best]
        assert r.probability == pytest.approx(float(result.slide_probs[best]), abs=1e-6)
        assert r.top_attention == pytest.approx(float(result.bag_attention.max()))
        assert r.n_bags == result.n_bags and r.failed_bags == 0 and r.degraded is False
        assert r.reviewed == 0 and r.text("reviewed") == "0"


def test_sort_by_each_column(table):
    by_prob = [table.rows[i] for i in table.order("probability", descending=True)]
    probs = [r.probability for r in by_prob if r.probability is not None]
    assert probs == sorted(probs, reverse=True) and by_prob[-1].name == "broken.svs"
    names = [table.rows[i].name for i in table.order("name")]
    assert names == sorted(names)
    for key in ("predicted", "top_attention", "failed_bags", "degraded", "reviewed", "status"):
        assert sorted(table.order(key)) == list(range(len(table)))


def test_filters(table):
    shown = lambda f: {table.rows[i].name for i in table.order(row_filter=f)}  # noqa: E731
    tumour = {r.name for r in table.rows if r.predicted == "tumour"}
    assert tumour and shown(RowFilter(text="TUMOUR")) == tumour
    assert shown(RowFilter(text="slide_0001")) == {"slide_0001.svs"}
    # no slide of this cohort lost a bag: the filter leaves none
    assert not any(r.degraded for r in table.rows)
    assert shown(RowFilter(only_degraded=True)) == set()
    table.rows[1].degraded = True  # as a row of a slide with failed bags reads
    assert shown(RowFilter(only_degraded=True)) == {table.rows[1].name}
    assert shown(RowFilter(only_unreviewed=True)) == {r.name for r in table.rows}


def test_review_marks_update_the_row(cohort, tmp_path):
    folder = tmp_path / "pred"
    shutil.copytree(cohort, folder)
    t = CohortTable.open(folder)
    i = next(r.index for r in t.rows if r.name == "slide_0001.svs")
    t.apply_details(i, read_details(t.rows[i]))
    assert t.rows[i].reviewed == 0
    reviews = Reviews.load(t.rows[i].store)
    reviews.set_bag(0, "agree")
    reviews.set_bag(1, "disagree")
    reviews.save()
    assert t.find(t.rows[i].store + "/") == i
    t.refresh_reviews(i)
    assert t.rows[i].reviewed == 2 and t.rows[i].review["agree"] == 1
    names = {t.rows[j].name for j in t.order(row_filter=RowFilter(only_unreviewed=True))}
    assert "slide_0001.svs" not in names and len(names) == len(t) - 1


def test_damaged_store_and_missing_slide_are_reported(cohort, tmp_path):
    folder = tmp_path / "pred"
    shutil.copytree(cohort, folder)
    t = CohortTable.open(folder)
    rows = _by_name(t)
    shutil.rmtree(Path(rows["slide_0002.svs"].store) / "bag_attention")
    details = read_details(rows["slide_0002.svs"])
    assert "unreadable results store" in details["problem"]
    assert "slide_0002.mran.zarr" in details["problem"]
    with pytest.raises(Exception, match="slide_0002"):
        load_slide_view(rows["slide_0002.svs"])
    moved = Path(rows["slide_0003.svs"].slide)
    shutil.copy(moved, tmp_path / "keep.svs")
    moved.unlink()
    try:
        view = load_slide_view(rows["slide_0003.svs"])
    finally:
        shutil.copy(tmp_path / "keep.svs", moved)
    assert view.slide is None and "no longer exists" in view.problem
    assert [t[1]["name"].split(" ", 1)[1] for t in view.layers][:2] == [
        "[DEMO model] tissue bags", "[DEMO model] bag attention"]


def test_slide_view_has_the_slide_and_its_layers(table):
    r = _by_name(table)["slide_0000.svs"]
    view = load_slide_view(r)
    try:
        names = [t[1]["name"] for t in view.layers]
        assert names[0] == "slide_0000.svs" and len(names) == 6 and not view.warnings
        assert all(t[1]["metadata"]["mran_results_path"] == r.store for t in view.layers[1:])
    finally:
        view.slide.close()


def test_not_a_predict_folder(tmp_path):
    with pytest.raises(CohortReviewError, match="predictions.csv: no such file"):
        CohortTable.open(tmp_path)
    (tmp_path / "predictions.csv").write_text("a,b\n1,2\n")
    with pytest.raises(CohortReviewError, match=r"predictions.csv: not a napari-mran predict "
                                                r"table \(no column slide"):
        CohortTable.open(tmp_path)
    with pytest.raises(CohortReviewError, match="not a folder"):
        CohortTable.open(tmp_path / "predictions.csv")


def test_a_real_degraded_slide_is_flagged_and_filtered(tmp_path):
    """A slide with a damaged tissue tile (one of its two bags fails to decode; the
    cohort allows half) is a degraded row with one failed bag, and the only one the
    "degraded" filter keeps."""
    import tifffile
    from test_damaged_tiles import _interior_tissue_tile

    from datafiles import shared
    from napari_mran.cohort import run_cohort
    from napari_mran.inference import AnalysisOptions
    from slide_writers import set_tile_bytecount

    slides = tmp_path / "slides"
    slides.mkdir()
    for name in ("intact.svs", "damaged.svs"):
        shutil.copy(shared("CMU-1-Small-Region.svs"), slides / name)
        (slides / name).chmod(0o644)
    index, *_ = _interior_tissue_tile(slides / "damaged.svs")
    set_tile_bytecount(slides / "damaged.svs", 0, index, 64)  # the tile cut after 64 bytes
    with tifffile.TiffFile(slides / "damaged.svs") as tif:
        assert tif.pages[0].databytecounts[index] == 64
    out = tmp_path / "pred"
    run_cohort([slides], "demo", out, AnalysisOptions(max_failed_fraction=0.5), workers=0)
    t = CohortTable.open(out)
    for i, details in t.iter_details():
        t.apply_details(i, details)
    rows = _by_name(t)
    assert rows["damaged.svs"].degraded is True and rows["damaged.svs"].failed_bags == 1
    assert rows["intact.svs"].degraded is False and rows["intact.svs"].failed_bags == 0
    kept = {t.rows[i].name for i in t.order(row_filter=RowFilter(only_degraded=True))}
    assert kept == {"damaged.svs"}
