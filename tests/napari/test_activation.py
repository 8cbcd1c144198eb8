"""Plugin activation (npe2 ``on_activate``): the software-OpenGL guard and the reader
preferences, in a fresh napari process and in this one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from napari_mran._napari import _activate
from napari_mran._napari._qt.gl_guard import is_software_renderer
from napari_mran._napari.sample_data import sample_slide_path

FRESH_PROCESS = textwrap.dedent("""
    import json, os, sys, time
    import numpy as np, napari
    from qtpy.QtWidgets import QApplication
    from napari.plugins.utils import get_preferred_reader

    v = napari.Viewer(show=True)
    app = QApplication.instance()
    v.add_image(np.random.randint(0, 255, (512, 512, 3), np.uint8), rgb=True)
    def settle():
        for _ in range(20):
            app.processEvents(); time.sleep(0.01)
    # any napari-mran contribution activates the plugin (here: its reader)
    v.open(sys.argv[1], plugin="napari-mran")
    settle()
    prefs = {k: get_preferred_reader(p) for k, p in
             (("svs", sys.argv[1]), ("zarr", sys.argv[2]), ("tif", "/x/y.tif"))}
    # no plugin named: napari's built-in reader matches *.svs too, the preference decides
    v.open(sys.argv[1])
    settle()
    n_layers = len(v.layers)
    # docs/gui.md "Known problems": removing colormapped layers while an RGB image is
    # shown crashes Mesa's software GL (segfault, exit 139) unless the guard keeps the
    # GL programs
    for ly in list(v.layers)[1:]:
        v.layers.remove(ly)  # (the slides: the crash needs a plain RGB image shown)
    settle()
    for t in range(6):
        made = [v.add_image(np.random.rand(64, 64).astype(np.float32), colormap="magma")
                for _ in range(3)]
        settle()
        for m in made:
            v.layers.remove(m)
        settle()
    from napari_mran._napari._qt.gl_guard import status
    print("RESULT", json.dumps({"prefs": prefs, "layers": n_layers,
                                "gl": status()}), flush=True)
    v.close()
""")


def test_fresh_napari_activates_guard_and_reader_preferences(tmp_path):
    store = tmp_path / "x.mran.zarr"
    store.mkdir()
    env = dict(os.environ, NAPARI_CONFIG=str(tmp_path / "settings.yaml"),
               QT_QPA_PLATFORM="xcb")
    r = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(sample_slide_path()),
                        str(store)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))
    got = json.loads(line[len("RESULT "):])
    assert got["prefs"] == {"svs": "napari-mran", "zarr": "napari-mran", "tif": None}
    assert got["layers"] == 3  # the RGB image, the slide opened twice (both by napari-mran)
    assert got["gl"]["installed"]
    if is_software_renderer(got["gl"]["renderer"]):  # (Xvfb: llvmpipe)
        assert got["gl"]["kept"] > 0
    # the preferences were saved to the (throw-away) settings file
    assert "napari-mran" in (tmp_path / "settings.yaml").read_text()


def test_user_reader_preference_is_never_changed(make_napari_viewer):
    from napari.settings import get_settings

    make_napari_viewer()  # (resets napari's settings)
    plugins = get_settings().plugins
    plugins.extension2reader = {"*.ndpi": "napari"}
    added = _activate.prefer_our_readers()
    assert "*.ndpi" not in added and "*.svs" in added
    assert plugins.extension2reader["*.ndpi"] == "napari"
    assert plugins.extension2reader["*.svs"] == "napari-mran"
    assert not any(p.endswith((".tif", ".tiff")) for p in plugins.extension2reader)
    assert _activate.prefer_our_readers() == []  # idempotent


def test_software_renderer_names():
    assert is_software_renderer("llvmpipe (LLVM 15.0.6, 256 bits)")
    assert is_software_renderer("softpipe")
    assert not is_software_renderer("NVIDIA H100 80GB HBM3/PCIe/SSE2")
    assert not is_software_renderer("Mesa Intel(R) UHD Graphics 620 (KBL GT2)")
    assert not is_software_renderer(None)
