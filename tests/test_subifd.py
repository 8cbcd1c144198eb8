"""Pyramids stored as SubIFDs (tifffile's and OME converters' layout) open, read right,
and hostile SubIFD structures are still refused quickly (issue 9, point 1)."""

from __future__ import annotations

import struct
import time
import tracemalloc

import numpy as np
import pytest
import tifffile

from napari_mran import CorruptSlideError, ResourceLimitError, open_slide
from napari_mran.slide import _guard
from slide_writers import (find_tag, ifd_offsets, next_at, patch, set_next_at, subifd_offsets,
                           write_subifd_pyramid)
from test_battery_reader import assert_clean_error, watchdog

# level 0 is 520 x 392 so that every level has partial edge tiles and exact downsamples
W0, H0 = 520, 392


@pytest.fixture(scope="module")
def tissue(cmu_pixels) -> np.ndarray:
    """Real H&E pixels (RGB uint8) cut from the CMU-1 crop."""
    return np.ascontiguousarray(cmu_pixels[1200:1200 + H0, 600:600 + W0])


def _image(tissue: np.ndarray, kind: str) -> np.ndarray:
    if kind == "rgb-jpeg":
        return tissue
    grey = tissue.mean(axis=2)
    if kind == "grey8-jpeg":
        return grey.astype(np.uint8)
    return (grey * 40 + 3000).astype(np.uint16)  # grey16-zlib: 3000-13200 of 0-65535


def _expected_rgb(raw_levels: list[np.ndarray], kind: str) -> list[np.ndarray]:
    """The documented pixel conversion (docs/slides.md), applied to tifffile's own arrays."""
    if kind == "rgb-jpeg":
        return raw_levels
    if kind == "grey8-jpeg":  # grey replicated to RGB
        return [np.repeat(a[..., None], 3, axis=2) for a in raw_levels]
    # 16-bit: linear window from the 0.5-99.5 percentiles of the smallest level
    lo, hi = np.percentile(raw_levels[-1], [0.5, 99.5])
    return [np.repeat(np.clip((a.astype(np.float64) - lo) * 255.0 / (hi - lo) + 0.5, 0, 255)
                      .astype(np.uint8)[..., None], 3, axis=2) for a in raw_levels]


def _tifffile_levels(path) -> list[np.ndarray]:
    with tifffile.TiffFile(path) as tif:
        return [lvl.asarray() for lvl in tif.series[0].levels]


@pytest.mark.parametrize("n_levels", [2, 3, 4])
@pytest.mark.parametrize("ome", [False, True], ids=["plain", "ome"])
@pytest.mark.parametrize("kind", ["rgb-jpeg", "grey8-jpeg", "grey16-zlib"])
def test_subifd_pyramid_pixels_equal_tifffile(tmp_path, tissue, kind, ome, n_levels):
    img = _image(tissue, kind)
    p = write_subifd_pyramid(tmp_path / f"{kind}.tif", img, n_levels=n_levels,
                             compression=kind.rsplit("-", 1)[1], ome=ome,
                             physical_size=(250, "nm") if ome else None, resolution=0.5)
    raw = _tifffile_levels(p)
    assert len(raw) == n_levels  # tifffile sees the SubIFD levels
    expected = _expected_rgb(raw, kind)
    with open_slide(p) as s:
        assert s.level_count == n_levels
        assert s.level_dimensions == [(a.shape[1], a.shape[0]) for a in raw]
        assert s.level_downsamples == [2.0**i for i in range(n_levels)]
        assert s.vendor == ("ome" if ome else "generic-tiff")
        conv = s.properties["mran.pixel-conversion"]
        assert {"rgb-jpeg": "none (RGB uint8)", "grey8-jpeg": "grey replicated to RGB",
                "grey16-zlib": "uint16 -> uint8 by a linear window"}[kind] in conv
        tol = 1 if kind == "grey16-zlib" else 0  # float rounding of the window only
        for i, want in enumerate(expected):
            got = s.read_level(i)
            assert got.shape == want.shape and got.dtype == np.uint8
            assert np.abs(got.astype(int) - want).max() <= tol, f"level {i} (read_level)"
            dask = np.asarray(s.levels[i])
            assert np.abs(dask.astype(int) - want).max() <= tol, f"level {i} (dask)"
            # a region that starts mid-tile, in level-0 coordinates
            down = int(s.level_downsamples[i])
            x, y, w, h = 13, 7, min(70, want.shape[1] - 13), min(45, want.shape[0] - 7)
            region = s.read_region((x * down, y * down), i, (w, h))
            assert np.abs(region.astype(int) - want[y:y + h, x:x + w]).max() <= tol


@pytest.mark.parametrize("ome,physical,expected,source", [
    (True, (250, "nm"), 0.25, "OME PhysicalSize"),
    (True, (0.3, "µm"), 0.3, "OME PhysicalSize"),
    (True, (0.0004, "mm"), 0.4, "OME PhysicalSize"),
    (False, None, 0.5, "TIFF resolution tags"),
])
def test_subifd_pyramid_mpp(tmp_path, tissue, ome, physical, expected, source):
    p = write_subifd_pyramid(tmp_path / "mpp.tif", tissue, n_levels=3, ome=ome,
                             physical_size=physical, resolution=0.5)
    with open_slide(p) as s:
        assert s.mpp == pytest.approx((expected, expected))
        assert s.mpp_source == source
        assert s.properties["mran.mpp-source"] == source


def test_subifd_pyramid_bigtiff(tmp_path, tissue):
    p = write_subifd_pyramid(tmp_path / "big.ome.tif", tissue, n_levels=4, ome=True,
                             physical_size=(0.25, "µm"), bigtiff=True)
    raw = _tifffile_levels(p)
    with open_slide(p) as s:
        assert s.level_count == 4 and s.mpp == pytest.approx((0.25, 0.25))
        for i, want in enumerate(raw):
            assert np.array_equal(s.read_level(i), want)
            assert np.array_equal(np.asarray(s.levels[i]), want)


def test_subifd_pyramid_without_any_mpp(tmp_path, tissue):
    p = write_subifd_pyramid(tmp_path / "nompp.ome.tif", tissue, n_levels=3, ome=True)
    with open_slide(p) as s:
        assert s.level_count == 3
        assert s.mpp is None and s.mpp_source == "none"


# ------------------------------------------------------------------ hostile SubIFDs
@pytest.fixture()
def subifd_file(tmp_path, tissue):
    """A valid 4-level SubIFD pyramid; each test checks it opens before damaging it."""
    p = write_subifd_pyramid(tmp_path / "sub.tif", tissue[:256, :256], n_levels=4, tile=64)
    with open_slide(p) as s:
        assert s.level_count == 4
    return p


def _refused_quickly(path, exc_type):
    tracemalloc.start()
    t0 = time.perf_counter()
    err = assert_clean_error(path, exc_type)
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 5 and peak < 200 * 2**20
    return err


def test_tifffile_chains_its_subifds(subifd_file):
    """The layout the old guard mistook for a loop: listed in the tag *and* chained."""
    subs = subifd_offsets(subifd_file)
    assert len(subs) == 3
    assert [next_at(subifd_file, s) for s in subs] == [subs[1], subs[2], 0]
    st = _guard.walk_ifds(str(subifd_file))
    assert st.n_pages == 1 and st.n_subifds == 3


@pytest.mark.parametrize("shape", ["self-loop", "ring", "back-to-page-0", "tag-lists-page-0",
                                   "first-is-self-loop"])
def test_subifd_loops_refused(subifd_file, shape):
    subs = subifd_offsets(subifd_file)
    page0 = ifd_offsets(subifd_file)[0]
    if shape == "self-loop":
        set_next_at(subifd_file, subs[1], subs[1])
    elif shape == "first-is-self-loop":
        set_next_at(subifd_file, subs[0], subs[0])
    elif shape == "ring":
        set_next_at(subifd_file, subs[2], subs[0])
    elif shape == "back-to-page-0":
        set_next_at(subifd_file, subs[2], page0)
    else:
        _, _, count, value = find_tag(subifd_file, 0, 330)
        patch(subifd_file, value + 4, struct.pack("<I", page0))  # 2nd listed SubIFD
    err = _refused_quickly(subifd_file, CorruptSlideError)
    assert "loops" in err.reason or "main IFD chain" in err.reason, err.reason


def test_subifd_into_later_main_page_refused(tmp_path, tissue):
    """A SubIFD that is also a main-chain page (not a cycle, still not a tree)."""
    p = tmp_path / "two.tif"
    with tifffile.TiffWriter(p) as tw:
        tw.write(tissue[:128, :128], subifds=1, tile=(64, 64), photometric="rgb",
                 metadata=None)
        tw.write(tissue[:64, :64], subfiletype=1, tile=(64, 64), photometric="rgb",
                 metadata=None)
        tw.write(tissue[:32, :32], photometric="rgb", metadata=None)  # page 1
    with open_slide(p):
        pass
    e, _, _, _ = find_tag(p, 0, 330)
    patch(p, e + 8, struct.pack("<I", ifd_offsets(p)[1]))
    err = _refused_quickly(p, CorruptSlideError)
    assert "main IFD chain" in err.reason


def test_huge_subifd_count_refused(subifd_file):
    """100000 SubIFD entries, all pointing at one valid IFD: tifffile would parse each."""
    subs = subifd_offsets(subifd_file)
    n = 100_000
    table = len(subifd_file.read_bytes())
    with open(subifd_file, "ab") as fh:
        fh.write(struct.pack("<I", subs[0]) * n)
    e, _, _, _ = find_tag(subifd_file, 0, 330)
    patch(subifd_file, e + 4, struct.pack("<II", n, table))
    err = _refused_quickly(subifd_file, ResourceLimitError)
    assert "SubIFD" in err.reason


def test_many_subifd_references_refused(subifd_file):
    """Fewer entries per tag than the page cap, but more references in all than it."""
    subs = subifd_offsets(subifd_file)
    with watchdog(5):
        _guard.walk_ifds(str(subifd_file), max_pages=8)  # 1 page + 3 SubIFDs: fine
        with pytest.raises(ResourceLimitError):
            _guard.walk_ifds(str(subifd_file), max_pages=3)
    # each SubIFD listed 3000 times: 3 distinct IFDs, 3000 references
    table = len(subifd_file.read_bytes())
    with open(subifd_file, "ab") as fh:
        fh.write(struct.pack("<3I", *subs) * 1000)
    e, _, _, _ = find_tag(subifd_file, 0, 330)
    patch(subifd_file, e + 4, struct.pack("<II", 3000, table))
    with watchdog(5), pytest.raises(ResourceLimitError, match="SubIFD"):
        _guard.walk_ifds(str(subifd_file), max_pages=1000)


def test_unwritten_subifd_refused(subifd_file):
    """A SubIFD offset left at 0 (writer interrupted): never a silently shorter pyramid."""
    _, _, _, value = find_tag(subifd_file, 0, 330)
    patch(subifd_file, value + 8, struct.pack("<I", 0))  # 3rd SubIFD
    err = _refused_quickly(subifd_file, CorruptSlideError)
    assert "SubIFD" in err.reason
