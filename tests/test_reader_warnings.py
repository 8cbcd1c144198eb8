"""tifffile's log records never reach the terminal raw: they become one clean line per
distinct message in ``Slide.warnings`` (issue 9, point 3).

No file in ../shared/data makes tifffile log anything (checked by the last tests), so
the files that do are made at test time: an OME-TIFF pyramid whose OME-XML names
images in IFDs that do not exist (as converters write when label/macro planes are
dropped), and JPEG tiles with an unknown Predictor tag (logged at the first decode of
each level, i.e. while *reading*).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile

from napari_mran import open_slide
from datafiles import SHARED_DATA, shared
from slide_writers import rename_tag, set_description, write_subifd_pyramid


@pytest.fixture(scope="module")
def tissue(cmu_pixels) -> np.ndarray:
    return np.ascontiguousarray(cmu_pixels[1000:1512, 500:1012])


def _ome_with_dangling_images(path, tissue, n_extra=5, plane_count=1):
    p = write_subifd_pyramid(path, tissue, n_levels=3, ome=True, physical_size=(0.5, "µm"))
    with tifffile.TiffFile(p) as tif:
        xml = tif.ome_metadata
    extra = "".join(
        f'<Image ID="Image:{k}" Name="label{k}"><Pixels ID="Pixels:{k}" '
        'DimensionOrder="XYCZT" Type="uint8" SizeX="64" SizeY="64" SizeC="3" SizeZ="1" '
        f'SizeT="1"><Channel ID="Channel:{k}:0" SamplesPerPixel="3"/>'
        f'<TiffData IFD="{k + 8}" PlaneCount="1"/></Pixels></Image>' for k in range(1, n_extra + 1))
    xml = xml.replace("</OME>", extra + "</OME>")
    xml = xml.replace('PlaneCount="1"/></Pixels></Image><Image ID="Image:1"',
                      f'PlaneCount="{plane_count}"/></Pixels></Image><Image ID="Image:1"')
    set_description(p, 0, xml)
    return p


def _jpeg_with_unknown_predictor(path, tissue, n_levels=3):
    with tifffile.TiffWriter(path) as tw:
        for i in range(n_levels):
            tw.write(tissue[::2**i, ::2**i], tile=(128, 128), photometric="rgb",
                     compression="jpeg", metadata=None, subfiletype=0 if i == 0 else 1,
                     extratags=[(318, "H", 1, 5, False)])
    for i in range(n_levels):
        rename_tag(path, i, 318, 317)  # Predictor 5: tifffile ignores it, with a warning
    return path


def _raw_records(path) -> list[str]:
    """What tifffile itself logs while parsing the file's series."""
    records: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda r: records.append(r.getMessage())
    logger = logging.getLogger("tifffile")
    logger.addHandler(handler)
    try:
        with tifffile.TiffFile(path) as tif:
            tif.series  # noqa: B018 - parsing the series logs
    finally:
        logger.removeHandler(handler)
    return records


def _tifffile_lines(slide) -> list[str]:
    return [w for w in slide.warnings if w.startswith("tifffile")]


def _assert_nothing_raw(caplog, capfd):
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]
    out, err = capfd.readouterr()
    assert "tifffile" not in err and "tifffile" not in out, err


def test_repeated_open_warnings_become_one_line(tmp_path, tissue, caplog, capfd):
    p = _ome_with_dangling_images(tmp_path / "dangling.ome.tif", tissue)
    raw = _raw_records(p)
    assert len(raw) == 5 and len(set(raw)) == 5  # five raw lines, each a little different
    caplog.clear()
    capfd.readouterr()
    caplog.set_level(logging.WARNING)
    with open_slide(p) as s:
        assert s.level_count == 3 and s.mpp == pytest.approx((0.5, 0.5))
        s.read_level(2)
        lines = _tifffile_lines(s)
        assert lines == ["tifffile: OME series contains index out of range, raised "
                         "IndexError('index 9 out of range(1)') (x5)"]
        assert s.properties["mran.warnings"].count("tifffile") == 1
    _assert_nothing_raw(caplog, capfd)


def test_one_line_per_distinct_message(tmp_path, tissue, caplog, capfd):
    p = _ome_with_dangling_images(tmp_path / "planes.ome.tif", tissue, n_extra=3, plane_count=2)
    caplog.set_level(logging.WARNING)
    with open_slide(p) as s:
        lines = _tifffile_lines(s)
    assert len(lines) == 2, lines
    assert sum("index out of range" in w and w.endswith("(x4)") for w in lines) == 1
    assert sum("OME series expected 1 frames, got 2" in w for w in lines) == 1
    assert not any("<tifffile." in w for w in lines)  # no object reprs
    _assert_nothing_raw(caplog, capfd)


def test_warnings_while_reading_are_captured(tmp_path, tissue, caplog, capfd):
    p = _jpeg_with_unknown_predictor(tmp_path / "predictor.tif", tissue)
    caplog.set_level(logging.WARNING)
    with open_slide(p) as s:
        # at open only the smallest level is decoded
        assert _tifffile_lines(s) == ["tifffile: TiffPage: ignoring predictor 5"]
        s.read_region((0, 0), 0, (300, 300))
        np.asarray(s.levels[1][:8, :8])  # the display path decodes in zarr's threads
        s.read_level(1)
        s.read_level(2)
        assert _tifffile_lines(s) == ["tifffile: TiffPage: ignoring predictor 5 (x3)"]
    _assert_nothing_raw(caplog, capfd)


def test_other_tifffile_users_still_see_their_records(tmp_path, tissue, caplog):
    """Only our own calls into tifffile are captured: an open slide hides nothing else."""
    p = _ome_with_dangling_images(tmp_path / "other.ome.tif", tissue, n_extra=2)
    caplog.set_level(logging.WARNING)
    with open_slide(p):
        caplog.clear()
        with tifffile.TiffFile(p) as tif:
            tif.series  # noqa: B018
    assert len([r for r in caplog.records if r.name == "tifffile"]) == 2


SHARED_TIFFS = ["CMU-1-Small-Region.svs", "ndpi/test3-DAPI-2-387.ndpi",
                "ome/multi-channel-z-series.ome.tif", "openslide-python/small.svs",
                "openslide-python/boxes.tiff", "openslide-python/unopenable.tiff",
                "openslide-python/unreadable.svs", "large_image/yb10kx5k.zstd.tiff",
                "large_image/test_orient6.tif", "large_image/small_la.tiff",
                "large_image/zero_gi.tif"]


def test_shared_tiffs_are_listed():
    tiffs = {p.relative_to(SHARED_DATA).as_posix() for p in SHARED_DATA.rglob("*")
             if p.is_file() and p.suffix in (".svs", ".tif", ".tiff", ".ndpi")}
    assert tiffs == set(SHARED_TIFFS) or not SHARED_DATA.exists()


@pytest.mark.parametrize("rel", SHARED_TIFFS)
def test_shared_files_print_nothing_raw(rel, caplog, capfd):
    caplog.set_level(logging.DEBUG, logger="tifffile")
    try:
        with open_slide(shared(rel)) as s:
            lv = s.level_count - 1
            w, h = s.level_dimensions[lv]
            s.read_region((0, 0), lv, (min(w, 512), min(h, 512)))
            np.asarray(s.levels[-1])
            for name in s.associated_images:
                s.associated_images[name]
            lines = _tifffile_lines(s)
            assert len(lines) == len(set(lines))
    except Exception as exc:  # noqa: BLE001 - the damaged files are refused: fine here
        assert str(shared(rel)) in str(exc)
    assert not [r for r in caplog.records
                if r.name.startswith("tifffile") and r.levelno >= logging.WARNING]
    assert "tifffile" not in capfd.readouterr().err
