"""A damaged tile is never read as tissue (issue 9, point 2).

libjpeg decodes a JPEG tile whose byte count was cut as flat grey *without an error*;
the reader must report such a tile exactly like an undecodable one.  Every damaged
file is a copy of a real or tifffile-written slide with one TileByteCounts entry cut
in place.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile

from napari_mran import AnalysisError, CorruptSlideError, open_slide
from datafiles import shared
from slide_writers import set_tile_bytecount

CUTS = {"64": lambda n: 64, "200": lambda n: 200, "third": lambda n: n // 3,
        "two-thirds": lambda n: 2 * n // 3, "last-byte": lambda n: n - 1}


@pytest.fixture(scope="module")
def jpeg_tiff(tmp_path_factory, cmu_pixels):
    """Self-contained JPEG tiles (no JPEGTables), as tifffile writes them."""
    p = tmp_path_factory.mktemp("jpeg") / "tiles.tif"
    tifffile.imwrite(p, cmu_pixels[1000:1768, 500:1268], tile=(128, 128), photometric="rgb",
                     compression="jpeg", metadata=None)
    with tifffile.TiffFile(p) as tif:
        assert tif.pages[0].jpegtables is None
    return p


def _source(kind: str, tmp_path, jpeg_tiff, cmu_pixels):
    if kind == "aperio-svs":
        return shared("CMU-1-Small-Region.svs")  # JPEG tiles sharing JPEGTables
    if kind == "tifffile-jpeg":
        return jpeg_tiff
    p = tmp_path / f"{kind}.tif"
    tifffile.imwrite(p, cmu_pixels[1000:1768, 500:1268], tile=(128, 128), photometric="rgb",
                     compression=kind, metadata=None)
    return p


def _interior_tissue_tile(path) -> tuple[int, int, int, int, int, int]:
    """(index, tx, ty, tile w, tile h, byte count) of the level-0 tile with the most data
    among those not on the image edge (the most detailed tissue)."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tw, th = page.tilewidth, page.tilelength
        nx, ny = -(-page.imagewidth // tw), -(-page.imagelength // th)
        counts = np.asarray(page.databytecounts).reshape(ny, nx)
    inner = counts[1:-1, 1:-1]
    ty, tx = np.unravel_index(int(np.argmax(inner)), inner.shape)
    tx, ty = int(tx) + 1, int(ty) + 1
    return ty * nx + tx, tx, ty, tw, th, int(counts[ty, tx])


def _cut_copy(src, tmp_path, cut: str):
    p = tmp_path / f"cut-{cut}{src.suffix}"
    shutil.copy(src, p)
    p.chmod(0o644)
    index, tx, ty, tw, th, n = _interior_tissue_tile(p)
    set_tile_bytecount(p, 0, index, CUTS[cut](n))
    return p, index, tx, ty, tw, th


def _assert_reported(p, tx, ty, tw, th):
    """The cut tile is listed, painted white and invalid (record), raised (raise),
    and raised by the dask display path; its neighbours read normally."""
    tile = f"tile ({tx}, {ty})"
    with open_slide(p) as s:
        loc, size = ((tx - 1) * tw, (ty - 1) * th), (3 * tw, 3 * th)
        rr = s.read_region_ex(loc, 0, size, on_error="record")
        assert rr.failed_tiles and len(rr.failed_tiles) == 1, rr.failed_tiles
        assert f"level 0 {tile}" in rr.failed_tiles[0]
        inside = np.zeros((3 * th, 3 * tw), bool)
        inside[th:2 * th, tw:2 * tw] = True
        assert rr.valid is not None and not rr.valid[inside].any() and rr.valid[~inside].all()
        assert (rr.pixels[inside] == 255).all()
        with pytest.raises(CorruptSlideError) as info:
            s.read_region(loc, 0, size)
        assert str(p) in str(info.value) and f"level 0 {tile}" in str(info.value)
        level0 = s.levels[0]
        with pytest.raises(CorruptSlideError, match=rf"level 0 tile \({tx}, {ty}\)"):
            np.asarray(level0[ty * th:(ty + 1) * th, tx * tw:(tx + 1) * tw])
        right = np.asarray(level0[ty * th:(ty + 1) * th, (tx + 1) * tw:(tx + 2) * tw])
        assert np.array_equal(right, rr.pixels[th:2 * th, 2 * tw:])


@pytest.mark.parametrize("cut", sorted(CUTS))
@pytest.mark.parametrize("kind", ["aperio-svs", "tifffile-jpeg"])
def test_cut_jpeg_tile_is_reported(tmp_path, jpeg_tiff, cmu_pixels, kind, cut):
    p, index, tx, ty, tw, th = _cut_copy(_source(kind, tmp_path, jpeg_tiff, cmu_pixels),
                                         tmp_path, cut)
    # the hazard: libjpeg turns the cut stream into pixels without an error (a
    # self-contained stream cut before its first scan does raise)
    if kind == "aperio-svs" or cut not in ("64", "200"):
        assert _decodes_silently(p, index, (th, tw, 3))
    _assert_reported(p, tx, ty, tw, th)


def _decodes_silently(path, index: int, shape) -> bool:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tif.filehandle.seek(page.dataoffsets[index])
        data = tif.filehandle.read(page.databytecounts[index])
        try:
            seg = page.decode(data, index, jpegtables=page.jpegtables)[0]
        except Exception:  # noqa: BLE001 - any decoder error means "not silent"
            return False
        return seg is not None and seg.shape[-3:] == shape


@pytest.mark.parametrize("cut", ["64", "third", "last-byte"])
@pytest.mark.parametrize("kind", ["zlib", "zstd"])
def test_cut_lossless_tile_is_reported(tmp_path, jpeg_tiff, cmu_pixels, kind, cut):
    """Deflate and ZSTD decoders raise on cut data already: still reported the same way,
    by the dask display path too (as CorruptSlideError naming the tile)."""
    p, _, tx, ty, tw, th = _cut_copy(_source(kind, tmp_path, jpeg_tiff, cmu_pixels),
                                     tmp_path, cut)
    with open_slide(p) as s:
        rr = s.read_region_ex(((tx - 1) * tw, (ty - 1) * th), 0, (3 * tw, 3 * th),
                              on_error="record")
        assert rr.failed_tiles and f"level 0 tile ({tx}, {ty})" in rr.failed_tiles[0]
        with pytest.raises(CorruptSlideError, match=rf"level 0 tile \({tx}, {ty}\)"):
            s.read_region(((tx - 1) * tw, (ty - 1) * th), 0, (3 * tw, 3 * th))
        with pytest.raises(CorruptSlideError, match=rf"level 0 tile \({tx}, {ty}\)"):
            np.asarray(s.levels[0][ty * th:(ty + 1) * th, tx * tw:(tx + 1) * tw])


def test_damaged_tile_in_smallest_level_refused_at_open(tmp_path, cmu_pixels):
    """The tile decoded at open (smallest level, first tile with data) gets the same check."""
    p = tmp_path / "small.tif"
    tifffile.imwrite(p, cmu_pixels[:256, :256], tile=(128, 128), photometric="rgb",
                     compression="jpeg", metadata=None)
    old = set_tile_bytecount(p, 0, 0, 64)
    assert old > 1000
    with pytest.raises(CorruptSlideError, match="cut short"):
        open_slide(p)


# The real slides the tifffile backend opens: every tile of every level reads cleanly.
INTACT = ["CMU-1-Small-Region.svs", "ndpi/test3-DAPI-2-387.ndpi", "openslide-python/small.svs",
          "openslide-python/boxes.tiff", "large_image/yb10kx5k.zstd.tiff",
          "large_image/test_orient6.tif", "large_image/small_la.tiff"]


@pytest.mark.parametrize("rel", INTACT)
def test_intact_real_slides_have_no_failed_tiles(rel):
    block = 2048
    with open_slide(shared(rel)) as s:
        assert s.properties["mran.backend"] == "tifffile"
        for level, (w, h) in enumerate(s.level_dimensions):
            down = s.level_downsamples[level]
            for y in range(0, h, block):
                for x in range(0, w, block):
                    rr = s.read_region_ex((int(x * down), int(y * down)), level,
                                          (min(block, w - x), min(block, h - y)),
                                          on_error="record")
                    assert rr.failed_tiles is None, (level, x, y, rr.failed_tiles[:3])
                    assert rr.valid is None or rr.valid.all()
        small = s.levels[-1]
        assert np.array_equal(np.asarray(small), s.read_level(s.level_count - 1))


def test_intact_cmu_display_path_has_no_failed_tiles(cmu_small):
    with open_slide(cmu_small) as s:
        assert np.array_equal(np.asarray(s.levels[0]), s.read_level(0))


def test_damaged_tissue_tile_fails_its_bag_in_analysis(tmp_path, cmu_small):
    from napari_mran.analysis import predict_slide
    from napari_mran.model import load_model

    model = load_model("demo")
    p, _, tx, ty, tw, th = _cut_copy(cmu_small, tmp_path, "64")
    with open_slide(cmu_small) as s:
        intact = predict_slide(s, model, compile=False, device="cpu")
    assert not intact.degraded and len(intact.failed_boxes) == 0
    with open_slide(p) as s:
        # 1 of the 2 bags fails: above the default 10 % the analysis aborts, naming the tile
        with pytest.raises(AnalysisError, match=rf"tile \({tx}, {ty}\)"):
            predict_slide(s, model, compile=False, device="cpu")
        result = predict_slide(s, model, compile=False, device="cpu", max_failed_fraction=0.5)
    assert result.degraded
    assert len(result.failed_boxes) == 1
    x0, y0, x1, y1 = (int(v) for v in result.failed_boxes[0])
    assert x0 <= tx * tw < x1 and y0 <= ty * th < y1  # the bag holding the cut tile
    assert f"tile ({tx}, {ty})" in result.failed_reasons[0]
