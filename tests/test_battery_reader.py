"""Reliability battery rows 1-5, 7-10 and 11 (../shared/docs/reliability.md) for the reader.

Every input is made at test time (tifffile writers, byte edits of real slides).
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import time
import tracemalloc
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_mran import (CorruptSlideError, MRANError, ResourceLimitError, SlideError,
                         UnsupportedFormatError, UnsupportedPixelsError, open_slide)
from napari_mran._napari.reader import get_reader
from datafiles import shared
from slide_writers import (find_tag, ifd_offsets, patch, set_next_ifd, write_generic_pyramid,
                           write_svs_pyramid)


@contextmanager
def watchdog(seconds: float):
    """Fail (instead of hanging the suite) if the block runs longer than ``seconds``."""
    def boom(*_):
        raise TimeoutError(f"took longer than {seconds} s (hang?)")
    old = signal.signal(signal.SIGALRM, boom)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def assert_clean_error(path, exc_type=SlideError):
    before = sorted(os.listdir(os.path.dirname(path) or "."))
    with watchdog(20):
        with pytest.raises(exc_type) as info:
            s = open_slide(path)
            s.read_region((0, 0), 0, tuple(min(v, 512) for v in s.level_dimensions[0]))
    assert os.fspath(path) in str(info.value), str(info.value)
    assert sorted(os.listdir(os.path.dirname(path) or ".")) == before  # nothing written
    return info.value


# --------------------------------------------------------------------- row 1
@pytest.mark.parametrize("kind", ["empty", "random", "zip", "png", "folder", "missing"])
def test_row1_not_a_slide(tmp_path, kind):
    p = tmp_path / "slide.svs"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "random":
        p.write_bytes(np.random.default_rng(0).bytes(10000))
    elif kind == "zip":
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("a.txt", "hello")
    elif kind == "png":
        from PIL import Image
        Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
        os.replace(tmp_path / "x.png", p)
    elif kind == "folder":
        p.mkdir()
    t0 = time.perf_counter()
    err = assert_clean_error(p)
    assert time.perf_counter() - t0 < 5  # generous: the promise is < 1 s
    assert err.reason
    # the napari reader declines it (other readers may try) instead of erroring
    if kind != "missing":
        assert get_reader(str(p)) is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_row1_no_permission(tmp_path):
    p = tmp_path / "locked.svs"
    shutil.copy(shared("openslide-python/small.svs"), p)
    p.chmod(0)
    err = assert_clean_error(p)
    assert "permission" in err.reason


def test_row1_messages_say_what_it_is(tmp_path):
    p = tmp_path / "a.tif"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("a.txt", "x")
    assert "ZIP" in assert_clean_error(p, UnsupportedFormatError).reason
    assert "empty" in assert_clean_error(_write(tmp_path / "e.svs", b""), UnsupportedFormatError).reason
    assert "folder" in assert_clean_error(tmp_path, UnsupportedFormatError).reason


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


# --------------------------------------------------------------------- row 2
@pytest.mark.parametrize("cut", ["header", 0.5, 0.9, "mid-tile"])
@pytest.mark.parametrize("which", ["real", "pyramid"])
def test_row2_truncated(tmp_path, svs_pyramid, cmu_small, cut, which):
    src = Path(cmu_small if which == "real" else svs_pyramid).read_bytes()
    if cut == "header":
        n = 16
    elif cut == "mid-tile":
        t = tifffile.TiffFile(cmu_small if which == "real" else svs_pyramid)
        page = t.pages[0]
        i = int(np.argmax(page.databytecounts))
        n = page.dataoffsets[i] + page.databytecounts[i] // 2
        t.close()
    else:
        n = int(len(src) * cut)
    p = _write(tmp_path / f"cut-{cut}.svs", src[:n])
    err = assert_clean_error(p, CorruptSlideError)
    assert any(w in err.reason for w in ("truncated", "past the end", "cut short", "damage"))


def test_row2_never_a_silently_shorter_pyramid(tmp_path, svs_pyramid):
    """Cut inside the last level's IFD region: tifffile alone would open fewer levels."""
    data = svs_pyramid.read_bytes()
    for frac in np.linspace(0.55, 0.99, 12):
        p = _write(tmp_path / "c.svs", data[:int(len(data) * frac)])
        try:
            s = open_slide(p)
        except CorruptSlideError:
            continue
        # if it opens, it must still be the whole pyramid and every tile readable
        assert s.level_count == 3
        for lv in range(3):
            s.read_region((0, 0), lv, s.level_dimensions[lv])
        s.close()


# --------------------------------------------------------------------- row 3
def _tiny_pages(path, n):
    with tifffile.TiffWriter(path) as tw:
        for _ in range(n):
            tw.write(np.zeros((8, 8), np.uint8), metadata=None)
    return path


@pytest.mark.parametrize("shape", ["self-loop", "2-cycle", "150-ring"])
def test_row3_ifd_loops(tmp_path, shape):
    n = {"self-loop": 1, "2-cycle": 2, "150-ring": 150}[shape]
    p = _tiny_pages(tmp_path / f"{shape}.tif", n)
    offs = ifd_offsets(p)
    set_next_ifd(p, n - 1, offs[0])
    tracemalloc.start()
    t0 = time.perf_counter()
    err = assert_clean_error(p, CorruptSlideError)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert "loops" in err.reason
    assert time.perf_counter() - t0 < 5 and peak < 200 * 2**20


# --------------------------------------------------------------------- row 4
def test_row4_sixty_thousand_tags(tmp_path):
    p = tmp_path / "tags.tif"
    # a valid header whose first IFD declares 60000 entries
    n = 60000
    ifd = struct.pack("<H", n) + b"".join(struct.pack("<HHII", 40000 + (i % 20000), 1, 1, 0)
                                          for i in range(n)) + struct.pack("<I", 0)
    p.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd)
    assert "tags" in assert_clean_error(p, ResourceLimitError).reason


def test_row4_huge_ascii_count(tmp_path, svs_pyramid):
    p = tmp_path / "ascii.svs"
    shutil.copy(svs_pyramid, p)
    e, _, _, _ = find_tag(p, 0, 270)  # ImageDescription
    patch(p, e + 4, struct.pack("<I", 3_000_000_000))
    tracemalloc.start()
    assert_clean_error(p, CorruptSlideError)
    assert tracemalloc.get_traced_memory()[1] < 200 * 2**20
    tracemalloc.stop()


def test_row4_zero_denominator_resolution(tmp_path):
    img = np.full((128, 128, 3), 200, np.uint8)
    p = write_generic_pyramid(tmp_path / "res.tif", img, downsamples=(1,), resolution=(10000, 10000),
                              resolutionunit="CENTIMETER")
    e, _, _, val = find_tag(p, 0, 282)  # XResolution: rational at offset val
    patch(p, val + 4, struct.pack("<I", 0))
    with open_slide(p) as s:  # ignored with a warning, not a crash
        assert s.mpp is None or s.mpp_source != "TIFF resolution tags" or s.mpp[0] > 0
        assert s.read_region((0, 0), 0, (16, 16)).shape == (16, 16, 3)


def test_row4_odd_bits_per_sample(tmp_path):
    img = np.full((64, 64), 100, np.uint8)
    p = tmp_path / "bits.tif"
    tifffile.imwrite(p, img, tile=(64, 64), metadata=None)
    e, t, cnt, _ = find_tag(p, 0, 258)  # BitsPerSample -> 5
    patch(p, e + 8, struct.pack("<H", 5))
    with watchdog(20):
        try:
            s = open_slide(p)
            s.read_region((0, 0), 0, (64, 64))
        except MRANError as exc:
            assert str(p) in str(exc)


# --------------------------------------------------------------------- row 5
def test_row5_huge_strip_refused_before_allocation(tmp_path):
    p = tmp_path / "bomb.tif"
    tifffile.imwrite(p, np.zeros((8, 8, 3), np.uint8), photometric="rgb", metadata=None)
    # claim 200000 x 100000 px in one strip
    for code, value in ((256, 200000), (257, 100000), (278, 100000)):
        e, t, _, _ = find_tag(p, 0, code)
        patch(p, e + 2, struct.pack("<HI", 4, 1) + struct.pack("<I", value))
    tracemalloc.start()
    err = assert_clean_error(p, SlideError)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert isinstance(err, (ResourceLimitError, CorruptSlideError))
    assert peak < 200 * 2**20


def test_row5_whole_level_request_refused(big_pyramid):
    with open_slide(big_pyramid) as s:
        tracemalloc.start()
        with pytest.raises(ResourceLimitError, match="GiB"):
            s.read_region((0, 0), 0, s.level_dimensions[0])
        with pytest.raises(ResourceLimitError):
            s.read_level(0)
        assert tracemalloc.get_traced_memory()[1] < 50 * 2**20
        tracemalloc.stop()


# ---------------------------------------------------------- big pyramid (row 18)
@pytest.fixture(scope="module")
def big_pyramid(tmp_path_factory):
    """A 100k x 100k JPEG pyramid written tile by tile from pre-encoded tiles."""
    import imagecodecs

    tile = 1024
    ramp = np.linspace(170, 230, tile, dtype=np.float32)
    tiles = [imagecodecs.jpeg8_encode(np.broadcast_to((ramp[:, None, None] + 5 * k).astype(np.uint8),
                                                      (tile, tile, 3)).copy(), level=80)
             for k in range(4)]
    p = tmp_path_factory.mktemp("big") / "big.tif"
    size = 100_000
    with tifffile.TiffWriter(p, bigtiff=True) as tw:
        f = 1
        while size // f >= tile:
            w = size // f
            n = (-(-w // tile)) ** 2
            tw.write((tiles[i % 4] for i in range(n)), shape=(w, w, 3), dtype=np.uint8,
                     tile=(tile, tile), photometric="rgb", compression="jpeg",
                     subfiletype=0 if f == 1 else 1, metadata=None,
                     resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
            f *= 2
    return p


def test_row18_100k_pyramid_opens_lazily_with_flat_memory(big_pyramid):
    tracemalloc.start()
    with open_slide(big_pyramid) as s:
        assert s.dimensions == (100_000, 100_000)
        levels = s.levels  # dask arrays: no pixels decoded
        assert levels[0].shape == (100_000, 100_000, 3)
        r = s.read_region((50_000, 50_000), 0, (2048, 2048))
        assert r.shape == (2048, 2048, 3) and 150 < r.mean() < 250
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 120 * 2**20, peak  # a 100k x 100k level is 28 GiB


# --------------------------------------------------------------------- row 7
def test_row7_missing_tiles_are_no_data(tmp_path, svs_pyramid):
    p = tmp_path / "missing.svs"
    shutil.copy(svs_pyramid, p)
    e, t, cnt, val = find_tag(p, 0, 325)  # TileByteCounts of level 0
    patch(p, val, struct.pack("<I", 0))      # tile 0 -> zero length
    with open_slide(p) as s:
        assert any("missing" in w for w in s.warnings)
        rr = s.read_region_ex((0, 0), 0, (512, 512))
        assert rr.missing_tiles == 1
        assert rr.valid is not None and not rr.valid[:256, :256].any() and rr.valid[256:, 256:].all()
        assert (rr.pixels[:256, :256] == 255).all()


# --------------------------------------------------------------------- row 6-like: corrupt tile
def test_corrupt_tile_recorded_or_raised(tmp_path, svs_pyramid):
    p = tmp_path / "bad.svs"
    shutil.copy(svs_pyramid, p)
    t = tifffile.TiffFile(p)
    off = t.pages[0].dataoffsets[3]
    t.close()
    # damage the tile's JPEG headers (entropy-coded data damage often decodes silently)
    patch(p, off + 2, np.random.default_rng(1).bytes(64))
    with open_slide(p) as s:
        rr = s.read_region_ex((0, 0), 0, (1024, 256), on_error="record")
        assert rr.failed_tiles and "tile (3, 0)" in rr.failed_tiles[0]
        assert not rr.valid[:, 768:].any() and rr.valid[:, :768].all()
        with pytest.raises(CorruptSlideError, match=r"tile \(3, 0\)"):
            s.read_region((0, 0), 0, (1024, 256))


# --------------------------------------------------------------------- row 8
def test_row8_levels_out_of_order(tmp_path):
    img = np.random.default_rng(2).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    p = tmp_path / "order.tif"
    with tifffile.TiffWriter(p) as tw:
        for f in (4, 1, 2):
            tw.write(img[::f, ::f], tile=(64, 64), compression="zlib", metadata=None,
                     subfiletype=0 if f == 1 else 1)
    with open_slide(p) as s:
        assert s.level_dimensions[0][0] >= max(w for w, _ in s.level_dimensions)
        w, h = s.level_dimensions[0]
        assert all(a[0] >= b[0] for a, b in zip(s.level_dimensions, s.level_dimensions[1:]))
        assert s.read_region((0, 0), 0, (w, h)).shape == (h, w, 3)


def test_row8_single_huge_level_streams(tmp_path):
    import imagecodecs
    tile = 512
    enc = imagecodecs.jpeg8_encode(np.full((tile, tile, 3), 180, np.uint8))
    p = tmp_path / "flat.tif"
    size = 16384  # 805 MB of pixels, no pyramid
    n = (size // tile) ** 2
    tifffile.imwrite(p, data=(enc for _ in range(n)), shape=(size, size, 3), dtype=np.uint8,
                     tile=(tile, tile), photometric="rgb", compression="jpeg", metadata=None)
    tracemalloc.start()
    with open_slide(p) as s:
        assert s.level_count == 1
        disp = s.display_levels  # lazily computed coarser levels for napari
        assert max(disp[-1].shape[:2]) <= 1024
        block = np.asarray(disp[-1][:64, :64])  # one small chunk of a computed level
        assert (np.abs(block.astype(int) - 180) <= 2).all()
    assert tracemalloc.get_traced_memory()[1] < 200 * 2**20
    tracemalloc.stop()


# --------------------------------------------------------------------- row 9
@pytest.mark.parametrize("kind", ["gray8", "gray16", "rgba", "float32", "uint16x5"])
def test_row9_pixel_layouts(tmp_path, kind):
    rng = np.random.default_rng(0)
    p = tmp_path / f"{kind}.tif"
    if kind == "gray8":
        img = rng.integers(0, 255, (256, 256), dtype=np.uint8)
        write_generic_pyramid(p, img, downsamples=(1, 2))
    elif kind == "gray16":
        img = rng.integers(1000, 5000, (256, 256), dtype=np.uint16)
        write_generic_pyramid(p, img, downsamples=(1, 2))
    elif kind == "rgba":
        img = rng.integers(0, 255, (256, 256, 4), dtype=np.uint8)
        write_generic_pyramid(p, img, downsamples=(1, 2), photometric="rgb",
                              extrasamples=("unassalpha",))
    elif kind == "float32":
        img = rng.random((256, 256), dtype=np.float32)
        write_generic_pyramid(p, img, downsamples=(1,))
    else:
        img = rng.integers(0, 4000, (5, 256, 256), dtype=np.uint16)
        tifffile.imwrite(p, img, tile=(64, 64), photometric="minisblack", metadata=None)
    if kind in ("float32", "uint16x5"):
        err = assert_clean_error(p, UnsupportedPixelsError)
        assert ("float" in err.reason) or ("dimensions" in err.reason) or ("samples" in err.reason)
        return
    with open_slide(p) as s:
        conv = s.properties["mran.pixel-conversion"]
        rgb = s.read_region((0, 0), 0, (256, 256))
        assert rgb.dtype == np.uint8 and rgb.shape == (256, 256, 3)
        if kind == "gray8":
            assert "grey replicated" in conv and np.array_equal(rgb[..., 1], img)
        elif kind == "gray16":
            assert "uint16 -> uint8" in conv and "window" in conv
            assert rgb.min() <= 5 and rgb.max() >= 250  # the window spreads the range
            assert np.corrcoef(rgb[..., 0].ravel(), img.ravel())[0, 1] > 0.99
        else:
            assert "alpha composited" in conv
            a = img[..., 3:4].astype(float) / 255
            expect = img[..., :3] * a + 255 * (1 - a)
            assert np.abs(rgb - expect).max() <= 1


# --------------------------------------------------------------------- row 10
@pytest.mark.parametrize("mpp,expected", [(None, None), ("0", None), ("1e13", None),
                                          ("abc", None), ("0.2527", 0.2527)])
def test_row10_mpp_validation(tmp_path, cmu_pixels, mpp, expected):
    p = write_svs_pyramid(tmp_path / "m.svs", cmu_pixels[:512, :512], downsamples=(1, 2),
                          mpp=mpp)
    with open_slide(p) as s:
        if expected is None:
            assert s.mpp is None and s.mpp_source == "none"
            assert any("MPP" in w for w in s.warnings)
            assert "mran.mpp-x" not in s.properties
        else:
            assert s.mpp == (expected, expected)
            assert s.properties["mran.mpp-source"] == "Aperio description MPP"
    with open_slide(p, mpp=0.5) as s:  # a user override always wins and is recorded
        assert s.mpp == (0.5, 0.5) and s.mpp_source == "user"
    with pytest.raises(SlideError, match="plausible"):
        open_slide(p, mpp=1e9)


def test_row10_anisotropic(tmp_path):
    img = np.full((128, 128, 3), 200, np.uint8)
    p = write_generic_pyramid(tmp_path / "an.tif", img, downsamples=(1,),
                              resolution=(40000, 20000), resolutionunit="CENTIMETER")
    with open_slide(p) as s:
        assert s.mpp == pytest.approx((0.25, 0.5))
        assert any("anisotropic" in w for w in s.warnings)


def test_svs_without_thumbnail_page_keeps_all_levels(tmp_path, cmu_pixels):
    p = write_svs_pyramid(tmp_path / "nothumb.svs", cmu_pixels, downsamples=(1, 2, 4),
                          thumbnail=False)
    with open_slide(p) as s:
        assert s.level_count == 3
        assert "thumbnail" not in s.associated_images


# --------------------------------------------------------------------- row 11
def _small_inputs():
    out = {"small.svs": shared("openslide-python/small.svs").read_bytes(),
           "boxes.tiff": shared("openslide-python/boxes.tiff").read_bytes()}
    return out


def test_row11_fuzz_byte_mutations(tmp_path):
    pytest.importorskip("hypothesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    inputs = _small_inputs()
    names = sorted(inputs)

    @settings(max_examples=150, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(name=st.sampled_from(names),
           edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                          min_size=1, max_size=8),
           cut=st.one_of(st.none(), st.floats(0.05, 1.0)))
    def check(name, edits, cut):
        data = bytearray(inputs[name])
        for pos, value in edits:
            data[int(pos * len(data))] = value
        if cut is not None:
            data = data[:max(1, int(len(data) * cut))]
        p = tmp_path / name
        p.write_bytes(bytes(data))
        with watchdog(10):
            try:
                with open_slide(p) as s:
                    lv = s.level_count - 1
                    w, h = s.level_dimensions[lv]
                    s.read_region((0, 0), lv, (min(w, 256), min(h, 256)))
                    s.get_thumbnail(32)
                    for name_ in s.associated_images:
                        s.associated_images[name_]
            except MRANError as exc:
                assert str(p) in str(exc)

    check()
