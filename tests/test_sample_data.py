"""Sample data of the plugin (headless part): the bundled SVS and the synthetic slide."""

from __future__ import annotations

import hashlib

from napari_mran import open_slide
from napari_mran._napari.layers import slide_layer_data
from napari_mran._napari.sample_data import sample_slide_path, synthetic_slide_path
from datafiles import shared


def test_bundled_sample_is_the_cc0_cmu_crop():
    p = sample_slide_path()
    assert p.is_file()
    ref = shared("CMU-1-Small-Region.svs")
    assert hashlib.sha256(p.read_bytes()).digest() == hashlib.sha256(ref.read_bytes()).digest()
    licence = (p.parent / "LICENSES.md").read_text()
    assert "CMU-1-Small-Region.svs" in licence and "CC0" in licence


def test_synthetic_sample_is_made_once_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MRAN_CACHE", str(tmp_path))
    p = synthetic_slide_path()
    assert p.is_relative_to(tmp_path) and p.is_file()
    mtime = p.stat().st_mtime_ns
    assert synthetic_slide_path() == p and p.stat().st_mtime_ns == mtime  # reused
    with open_slide(p) as slide:
        assert slide.level_count >= 5 and slide.mpp == (0.5, 0.5)
        data, kwargs, kind = slide_layer_data(slide)
        assert kind == "image" and kwargs["multiscale"] and kwargs["scale"] == (0.5, 0.5)
        assert [d.shape[:2] for d in data][0] == (slide.dimensions[1], slide.dimensions[0])
