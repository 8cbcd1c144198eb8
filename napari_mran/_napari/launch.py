"""Open napari with slides (used by ``make demo`` and ``napari-mran view``)."""

from __future__ import annotations


def open_viewer(paths: list[str], title: str = "napari-mran") -> None:
    import napari

    viewer = napari.Viewer(title=title)
    for p in paths:
        viewer.open(str(p), plugin="napari-mran")
    napari.run()
