"""npe2 ``on_activate``: runs once, the first time napari uses any napari-mran
contribution (a reader, the widget, sample data, a writer).

* Installs the software-OpenGL guard (:mod:`._qt.gl_guard`).
* Makes napari-mran the preferred reader for whole-slide formats and ``.mran.zarr``
  stores where the user has no preference yet.  napari's built-in reader also claims
  ``*.svs``, ``*.ndpi``, ... (it would decode the whole level 0 into memory: tens of GB
  for a slide) and ``*.zarr``, so without a preference napari asks which reader to use
  on every drop.  A preference the user set is never changed; it can be removed in
  napari's Preferences > Plugins.  Plain ``*.tif`` / ``*.tiff`` are left alone: most of
  them are not slides.
"""

from __future__ import annotations

#: Patterns whose files (and ``.mran.zarr`` folders) napari-mran should open by default.
#: A folder is matched with a trailing separator (napari appends one before matching).
PREFERRED_PATTERNS = ("*.svs", "*.ndpi", "*.scn", "*.bif", "*.qptiff", "*.mran.zarr/")
PLUGIN = "napari-mran"


def activate(ctx=None) -> None:  # npe2 passes a PluginContext
    from ._qt.gl_guard import install

    install()
    try:
        prefer_our_readers()
    except Exception:  # noqa: BLE001 - settings unavailable: napari asks, as before
        pass


def prefer_our_readers() -> list[str]:
    """Add a reader preference for each of :data:`PREFERRED_PATTERNS` the user has none
    for; returns the patterns added."""
    from napari.settings import get_settings

    plugins = get_settings().plugins
    current = dict(plugins.extension2reader)
    added = [p for p in PREFERRED_PATTERNS if p not in current]
    if added:
        plugins.extension2reader = {**current, **{p: PLUGIN for p in added}}
    return added
