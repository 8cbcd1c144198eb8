"""open_slide on every shared slide, OpenSlide pixel parity, threads, pickling, big pyramids."""

from __future__ import annotations

import pickle
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tifffile

import napari_mran
from napari_mran import (CorruptSlideError, SlideError, UnsupportedFormatError,
                         UnsupportedPixelsError, open_slide)
from datafiles import SHARED_DATA, shared
from slide_writers import write_generic_pyramid

openslide = pytest.importorskip("openslide")

# What every file in ../shared/data must do: ("open", levels, (w, h), mpp or None) or an error class.
EXPECTED = {
    "CMU-1-Small-Region.svs": ("open", 1, (2220, 2967), 0.499),
    "ndpi/test3-DAPI-2-387.ndpi": ("open", 4, (3968, 4864), 0.2282),
    "ome/multi-channel-z-series.ome.tif": UnsupportedPixelsError,
    "openslide-python/small.svs": ("open", 1, (16, 16), 0.499),
    "openslide-python/boxes.tiff": ("open", 4, (300, 250), None),
    "openslide-python/boxes_0.dcm": ("open", 1, (16, 16), 0.499),
    "openslide-python/boxes_1.dcm": ("open", 1, (16, 16), 0.499),
    "openslide-python/unopenable.tiff": UnsupportedFormatError,
    "openslide-python/unreadable.svs": CorruptSlideError,
    "large_image/yb10kx5k.zstd.tiff": ("open", 5, (10000, 5000), None),
    "large_image/test_orient6.tif": ("open", 3, (120, 180), None),
    "large_image/small_la.tiff": ("open", 1, (2, 1), None),
    "large_image/zero_gi.tif": CorruptSlideError,
}


def test_every_shared_file_is_covered():
    files = {p.relative_to(SHARED_DATA).as_posix() for p in SHARED_DATA.rglob("*")
             if p.is_file() and p.suffix not in (".md", ".png") and p.name != "SHA256SUMS"}
    assert files == set(EXPECTED), files ^ set(EXPECTED)


@pytest.mark.parametrize("rel", sorted(EXPECTED))
def test_shared_file(rel):
    path = shared(rel)
    expected = EXPECTED[rel]
    if isinstance(expected, type):
        with pytest.raises(expected) as info:
            s = open_slide(path)
            s.read_region((0, 0), 0, s.level_dimensions[0])
        assert str(path) in str(info.value)
        assert info.value.reason
        return
    _, n_levels, dims, mpp = expected
    with open_slide(path) as slide:
        assert slide.level_count == n_levels
        assert slide.level_dimensions[0] == dims
        if mpp is None:
            assert slide.mpp is None and slide.mpp_source == "none"
        else:
            assert slide.mpp == pytest.approx((mpp, mpp), rel=1e-3)
        region = slide.read_region((0, 0), slide.level_count - 1, (40, 30))
        assert region.shape == (30, 40, 3) and region.dtype == np.uint8
        thumb = slide.get_thumbnail(64)
        assert max(thumb.shape[:2]) <= 64 and thumb.shape[2] == 3
        for lvl in slide.levels:
            assert lvl.dtype == np.uint8 and lvl.shape[2] == 3
        assert slide.properties["mran.vendor"] == slide.vendor
        for name in slide.associated_images:
            img = slide.associated_images[name]
            assert img.ndim == 3 and img.shape[2] == 3


def test_conversion_is_recorded_for_grey():
    with open_slide(shared("large_image/test_orient6.tif")) as slide:
        assert "grey replicated" in slide.properties["mran.pixel-conversion"]
        assert any("Orientation" in w for w in slide.warnings)
        raw = tifffile.imread(shared("large_image/test_orient6.tif"))
        rgb = slide.read_region((0, 0), 0, (120, 180))
        assert np.array_equal(rgb[..., 0], raw) and np.array_equal(rgb[..., 2], raw)


def test_metadata_cmu(cmu_small):
    with open_slide(cmu_small) as slide:
        assert slide.vendor == "aperio"
        assert slide.objective_power == 20
        assert slide.properties["aperio.AppMag"] == "20"
        assert set(slide.associated_images) == {"thumbnail", "label", "macro"}
        assert slide.associated_images["label"].shape == (463, 387, 3)
        # one stored level: display levels are computed lazily down to <= 1024 px
        assert len(slide.display_levels) > slide.level_count
        assert max(slide.display_levels[-1].shape[:2]) <= 1024
        assert slide.levels[0].chunksize[:2] == (240, 240)  # chunked on the file's tiles


# ------------------------------------------------------------ OpenSlide parity
def _osr_rgb(osr, loc, level, size):
    rgba = np.asarray(osr.read_region(loc, level, size))
    return rgba[..., :3], rgba[..., 3]


@pytest.mark.parametrize("rel", ["CMU-1-Small-Region.svs", "openslide-python/boxes.tiff",
                                 "openslide-python/small.svs"])
def test_pixels_equal_openslide(rel):
    path = shared(rel)
    osr = openslide.OpenSlide(str(path))
    with open_slide(path) as slide:
        assert slide.level_dimensions == [tuple(d) for d in osr.level_dimensions]
        assert slide.level_downsamples == pytest.approx(osr.level_downsamples)
        rng = np.random.default_rng(0)
        for level in range(slide.level_count):
            w, h = slide.level_dimensions[level]
            d = slide.level_downsamples[level]
            for _ in range(4):
                rw, rh = int(rng.integers(1, min(w, 700) + 1)), int(rng.integers(1, min(h, 700) + 1))
                # OpenSlide paints levels with a fractional downsample at sub-pixel
                # offsets; compare those from the origin only
                exact = float(d).is_integer()
                x = int(rng.integers(0, w - rw + 1) * d) if exact else 0
                y = int(rng.integers(0, h - rh + 1) * d) if exact else 0
                ours = slide.read_region((x, y), level, (rw, rh))
                theirs, alpha = _osr_rgb(osr, (x, y), level, (rw, rh))
                assert (alpha == 255).all()
                assert np.array_equal(ours, theirs), (rel, level, x, y, rw, rh)


def test_pyramid_levels_equal_openslide(svs_pyramid):
    osr = openslide.OpenSlide(str(svs_pyramid))
    with open_slide(svs_pyramid) as slide:
        assert slide.level_count == osr.level_count == 3
        assert slide.level_dimensions == [tuple(d) for d in osr.level_dimensions]
        assert slide.mpp == (0.499, 0.499) and slide.vendor == "aperio"
        for level in range(3):
            w, h = slide.level_dimensions[level]
            ours = slide.read_region((0, 0), level, (w, h))
            theirs, _ = _osr_rgb(osr, (0, 0), level, (w, h))
            assert np.array_equal(ours, theirs)
            # the display path (zarr -> dask) gives the same pixels
            assert np.array_equal(np.asarray(slide.levels[level]), ours)


def test_region_past_edges_is_white(svs_pyramid):
    with open_slide(svs_pyramid) as slide:
        w, h = slide.level_dimensions[0]
        r = slide.read_region((w - 10, h - 20), 0, (50, 60))
        assert (r[20:, :] == 255).all() and (r[:, 10:] == 255).all()
        inside = slide.read_region((w - 10, h - 20), 0, (10, 20))
        assert np.array_equal(r[:20, :10], inside)
        neg = slide.read_region((-100, -100), 0, (150, 150))
        assert (neg[:100] == 255).all() and np.array_equal(neg[100:, 100:],
                                                          slide.read_region((0, 0), 0, (50, 50)))


def test_concurrent_reads_are_consistent(svs_pyramid):
    with open_slide(svs_pyramid) as slide:
        w, h = slide.level_dimensions[0]
        rng = np.random.default_rng(1)
        boxes = [(int(rng.integers(0, w - 300)), int(rng.integers(0, h - 300)),
                  int(rng.integers(0, 2))) for _ in range(48)]
        expected = [slide.read_region((x, y), lv, (300, 300)) for x, y, lv in boxes]
        barrier = threading.Barrier(8)

        def work(i):
            if i < 8:
                barrier.wait()
            x, y, lv = boxes[i]
            return slide.read_region((x, y), lv, (300, 300))

        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(work, range(len(boxes))))
        # the dask (display) path in parallel with the direct path
        with ThreadPoolExecutor(4) as pool:
            arrays = list(pool.map(lambda lv: np.asarray(slide.levels[lv]), [0, 1, 0, 1]))
        for a, b in zip(got, expected):
            assert np.array_equal(a, b)
        assert np.array_equal(arrays[0], arrays[2])


def test_pickle_reopens_lazily(svs_pyramid):
    with open_slide(svs_pyramid, mpp=0.25) as slide:
        blob = pickle.dumps(slide)
        ref = slide.read_region((100, 100), 0, (64, 64))
    clone = pickle.loads(blob)
    assert "_lazy" in clone.__dict__  # nothing opened yet
    assert np.array_equal(clone.read_region((100, 100), 0, (64, 64)), ref)
    assert clone.mpp == (0.25, 0.25) and clone.mpp_source == "user"
    clone.close()


def test_best_level_and_thumbnail(svs_pyramid):
    with open_slide(svs_pyramid) as slide:
        assert slide.get_best_level_for_downsample(1) == 0
        assert slide.get_best_level_for_downsample(3) == 1
        assert slide.get_best_level_for_downsample(100) == 2
        t = slide.get_thumbnail((100, 200))
        w0, h0 = slide.dimensions
        assert t.shape[1] <= 100 and t.shape[0] <= 200
        assert abs(t.shape[1] / t.shape[0] - w0 / h0) < 0.05


def test_public_api_surface(cmu_small):
    s = napari_mran.open_slide(cmu_small)
    assert isinstance(s, napari_mran.Slide)
    for name in ("level_count", "level_dimensions", "level_downsamples", "mpp",
                 "objective_power", "vendor", "properties", "associated_images", "levels",
                 "read_region", "get_thumbnail", "close"):
        assert hasattr(s, name), name
    s.close()
    with pytest.raises(SlideError, match="closed"):
        s.read_region((0, 0), 0, (10, 10))


def test_generic_pyramid_and_bigtiff(tmp_path):
    rng = np.random.default_rng(3)
    img = rng.integers(0, 255, (700, 900, 3), dtype=np.uint8)
    p = write_generic_pyramid(tmp_path / "g.tif", img, downsamples=(1, 2, 4), tile=128,
                              compression="zstd", bigtiff=True,
                              resolution=(40000, 40000), resolutionunit="CENTIMETER")
    with open_slide(p) as s:
        assert s.level_count == 3 and s.mpp == pytest.approx((0.25, 0.25))
        assert s.mpp_source == "TIFF resolution tags"
        assert np.array_equal(s.read_region((0, 0), 0, (900, 700)), img)
        assert np.array_equal(s.read_region((0, 0), 1, (450, 350)), img[::2, ::2])
