"""Open napari with slides or results stores (used by ``make demo``)."""

from __future__ import annotations


def open_viewer(paths: list[str], title: str = "napari-mran", *, run: bool = True):
    """Open each path with the plugin's readers. Every path after the first gets its layers
    hidden (they share the slide's coordinates, so they would otherwise cover each other);
    toggle them in the layer list. The Analyze-slide widget is docked."""
    import napari

    viewer = napari.Viewer(title=title)
    for i, p in enumerate(paths):
        layers = viewer.open(str(p), plugin="napari-mran")
        if i:
            for layer in layers:
                layer.visible = False
    viewer.window.add_plugin_dock_widget("napari-mran", "Analyze slide")
    viewer.reset_view()
    if run:
        napari.run()
    return viewer
