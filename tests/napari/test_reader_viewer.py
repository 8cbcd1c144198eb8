"""npe2 reader and sample data in a real napari viewer (Xvfb, shown window)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from napari_mran._napari.reader import get_reader
from datafiles import shared


def test_manifest_is_valid_and_installed():
    from npe2 import PluginManifest

    from importlib import import_module
    from importlib.resources import files

    mf = PluginManifest.from_distribution("napari-mran")  # found through the entry point
    assert mf.name == "napari-mran"
    assert (files("napari_mran") / "napari.yaml").is_file()  # installed with the package
    readers = [r.command for r in mf.contributions.readers]
    assert "napari-mran.get_reader" in readers
    for cmd in mf.contributions.commands:  # every command points at a real callable
        module, _, attr = cmd.python_name.partition(":")
        assert callable(getattr(import_module(module), attr)), cmd.python_name


def test_open_svs_in_viewer(make_napari_viewer, cmu_small):
    viewer = make_napari_viewer(show=True)
    layers = viewer.open(str(cmu_small), plugin="napari-mran")
    assert len(layers) == 1
    layer = layers[0]
    assert layer.name == "CMU-1-Small-Region.svs"
    assert layer.multiscale and layer.rgb
    assert tuple(layer.scale) == pytest.approx((0.499, 0.499))
    assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]
    assert layer.metadata["mpp"] == (0.499, 0.499)
    assert layer.metadata["properties"]["aperio.AppMag"] == "20"
    assert tuple(layer.contrast_limits) == (0, 255)
    # world extent in µm equals the slide size times MPP
    extent = layer.extent.world[1] - layer.extent.world[0]
    assert extent == pytest.approx((2967 * 0.499, 2220 * 0.499), rel=1e-3)
    # what the canvas shows comes from the slide's pixels
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.shape[2] == 4 and shot[..., :3].std() > 5


def test_reader_declines_non_slides(tmp_path):
    p = tmp_path / "notes.tif"
    p.write_bytes(b"hello, not a tiff")
    assert get_reader(str(p)) is None
    assert get_reader(str(tmp_path)) is None
    assert get_reader([str(p), str(p)]) is None


def test_corrupt_slide_notifies_instead_of_traceback(make_napari_viewer, tmp_path, monkeypatch):
    from napari.utils import notifications

    p = tmp_path / "unreadable.svs"
    shutil.copy(shared("openslide-python/unreadable.svs"), p)
    seen = []
    monkeypatch.setattr(notifications, "show_error", lambda msg: seen.append(msg))
    viewer = make_napari_viewer(show=True)
    reader = get_reader(str(p))
    assert reader is not None
    assert reader(str(p)) == [(None,)]
    assert seen and str(p) in seen[0] and "cannot be decoded" in seen[0]
    layers = viewer.open(str(p), plugin="napari-mran")
    assert layers == [] and len(viewer.layers) == 0


def test_sample_data_cmu(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-mran", "cmu1-small-region")
    assert len(viewer.layers) == 1
    data = viewer.layers[0].data
    assert data[0].shape == (2967, 2220, 3) and len(data) >= 3  # computed display levels
    assert np.asarray(data[-1][:10, :10]).dtype == np.uint8
