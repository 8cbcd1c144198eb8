"""npe2 reader contributions: whole-slide images as one lazy multiscale RGB layer,
``.mran.zarr`` results stores as their attention layers over the slide, and
napari-mran's own heatmap exports (``.ome.tif`` / ``.ome.zarr``) as heatmap layers
placed where the slide layer puts their pixels."""

from __future__ import annotations

import os

import numpy as np

from ..errors import MRANError, ResultsError, SlideError, UnsupportedFormatError
from ..slide import open_slide
from ..vocab import STORE_SUFFIX
from . import keys
from .layers import slide_layer_data

_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")


def get_reader(path):
    """Return a reader for ``path`` when it is a slide we can open, else None.

    A heatmap OME-TIFF exported by napari-mran opens as a heatmap layer
    (:func:`heatmap_layer_data`).  Unsupported files are declined (None) so other
    readers may try them, floating-point TIFFs that are not ours included.  A file
    that looks like a slide but is damaged gets a reader that shows a napari
    notification with the reason and adds nothing (never a traceback dialog).
    """
    path = _single_path(path)
    if path is None:
        return None
    if path.lower().endswith(_TIFF_SUFFIXES) and os.path.isfile(path):
        kind, meta = _sniff_tiff(path)
        if kind == "heatmap":
            return _heatmap_reader(meta)
        if kind == "float":
            return None  # not a slide, not ours: another reader may show it
    try:
        slide = open_slide(path)
    except UnsupportedFormatError:
        return None
    except SlideError as exc:
        return _notifying_reader(exc)
    return _slide_reader(slide)


def _single_path(path) -> str | None:
    """The one path napari passes (a list of one), or None for several."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    return os.fspath(path)


def _slide_reader(slide):
    def read(_path):
        _scale_bar(slide)
        return [slide_layer_data(slide)]
    return read


def _scale_bar(slide) -> None:
    """The scale bar on (µm) the first time a slide with a known MPP is opened in the
    current viewer (docs/gui.md, "Reading aids")."""
    from .shown import show_scale_bar

    show_scale_bar(_current_viewer(), slide)


def _notifying_reader(exc: MRANError, what: str = "slide"):
    def read(_path):
        from napari.utils.notifications import show_error

        show_error(f"napari-mran could not open the {what}: {exc}")
        return [(None,)]  # napari's "nothing to add" sentinel
    return read


# ------------------------------------------------------------------ results stores

def get_results_reader(path):
    """Reader for a ``.mran.zarr`` results store: the result's layers over its slide.

    Declines (None) anything that is not a folder named ``*.mran.zarr``; a store that is
    incomplete or corrupt gets a reader that notifies the reason and adds nothing.
    """
    path = _single_path(path)
    if path is None:
        return None
    path = path.rstrip("/\\")
    if not path.endswith(STORE_SUFFIX) or not os.path.isdir(path):
        return None
    from ..results import SlideResult

    try:
        result = SlideResult.load(path)
    except ResultsError as exc:
        return _notifying_reader(exc, what="results store")
    return _results_reader(result, path)


def _results_reader(result, store_path: str):
    def read(_path):
        from .roi_layers import recorded_region_data

        layers = results_layer_data(result, store_path)
        frame = next((kw.get("metadata", {}).get(keys.FRAME) for _d, kw, _k in layers
                      if keys.FRAME in kw.get("metadata", {})), None)
        region = recorded_region_data(result, frame)  # the region it was analysed inside
        return layers + ([region] if region is not None else [])
    return read


def results_layer_data(result, store_path: str | None = None, viewer=None) -> list[tuple]:
    """Layer tuples of a saved result: its slide (unless already open) + result layers.

    The slide is found at ``result.provenance['slide']['path']``.  When it is missing,
    unreadable or of another size, the heatmaps are shown alone in the result's own
    frame (µm when its MPP is known, else level-0 px) with a warning.
    """
    from .frame import SlideFrame
    from .hover import watch_viewer
    from .layers import result_layer_data

    if viewer is None:
        viewer = _current_viewer()
    slide_path = (result.provenance.get("slide") or {}).get("path")
    out: list[tuple] = []
    frame = None
    existing = _open_slide_layer(viewer, slide_path)
    if existing is not None:
        frame = SlideFrame.from_layer(existing)
    elif slide_path:
        slide, why = _open_matching_slide(slide_path, result)
        if slide is not None:
            _scale_bar(slide)
            out.append(slide_layer_data(slide))
            frame = SlideFrame.from_slide(slide)
        else:
            _warn(f"napari-mran: the slide of {os.path.basename(store_path or '')} is not "
                  f"shown ({why}); the heatmaps are shown in "
                  + ("µm" if result.mpp_xy else "level-0 pixels") + " without it")
    else:
        _warn("napari-mran: this result does not record its slide's path; showing the "
              "heatmaps alone")
    out += result_layer_data(result, frame, extra_metadata={
        keys.RESULTS_PATH: None if store_path is None else os.path.abspath(store_path)})
    if viewer is not None:
        watch_viewer(viewer)  # hover text on the result layers once they are added
    return out


def _open_matching_slide(slide_path: str, result):
    if not os.path.exists(slide_path):
        return None, f"{slide_path} no longer exists"
    try:
        slide = open_slide(slide_path)
    except SlideError as exc:
        return None, f"it cannot be opened: {exc.reason}"
    if tuple(slide.dimensions) != tuple(result.slide_size):
        size = f"{slide.dimensions[0]} x {slide.dimensions[1]}"
        slide.close()
        return None, (f"{slide_path} is {size} px, the result was computed on "
                      f"{result.slide_size[0]} x {result.slide_size[1]} px")
    return slide, ""


def _current_viewer():
    try:
        import napari

        return napari.current_viewer()
    except Exception:  # noqa: BLE001 - no napari / no viewer: plain tuples
        return None


def _open_slide_layer(viewer, slide_path):
    if viewer is None or not slide_path:
        return None
    want = os.path.abspath(slide_path)
    for layer in viewer.layers:
        p = (layer.metadata or {}).get(keys.SLIDE_PATH)
        if keys.SLIDE in (layer.metadata or {}) and p and os.path.abspath(p) == want:
            return layer
    return None


def _warn(message: str) -> None:
    try:
        from napari.utils.notifications import show_warning

        show_warning(message)
    except Exception:  # noqa: BLE001
        import warnings

        warnings.warn(message, stacklevel=3)


# ------------------------------------------------------------------ heatmap exports

def _sniff_tiff(path: str):
    """``("heatmap", metadata)`` for our heatmap OME-TIFF, ``("float", None)`` for any
    other TIFF with floating-point pixels, else ``(None, None)``."""
    from ..export.heatmaps import read_heatmap_metadata

    meta = read_heatmap_metadata(path)
    if meta is not None:
        return "heatmap", meta
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            if page.dtype is not None and page.dtype.kind == "f":
                return "float", None
    except Exception:  # noqa: BLE001 - not a TIFF tifffile reads: the slide reader decides
        pass
    return None, None


def get_heatmap_reader(path):
    """Reader for a heatmap OME-Zarr exported by napari-mran (folder ``*.ome.zarr``);
    declines (None) any other OME-Zarr so another plugin may open it."""
    path = _single_path(path)
    if path is None:
        return None
    path = path.rstrip("/\\")
    if not os.path.isdir(path):
        return None
    from ..export.heatmaps import read_heatmap_metadata

    meta = read_heatmap_metadata(path)
    return None if meta is None else _heatmap_reader(meta)


def _heatmap_reader(meta: dict):
    def read(path):
        if isinstance(path, (list, tuple)):
            path = path[0]
        try:
            return [heatmap_layer_data(os.fspath(path), meta)]
        except Exception as exc:  # noqa: BLE001 - a damaged export: say why, add nothing
            return _notifying_reader(ResultsError(f"{path}: {type(exc).__name__}: {exc}"),
                                     what="heatmap")(path)
    return read


def heatmap_layer_data(path: str, meta: dict | None = None, viewer=None) -> tuple:
    """``(data, kwargs, "image")`` of a heatmap exported by napari-mran.

    Placed in the frame of its slide layer: that layer's own scale/translate when the
    slide (recorded path) is open in *viewer*, else the frame napari-mran's slide
    reader would give it (µm from the recorded MPP, else level-0 pixels).  Pixel
    ``[0, 0]`` then covers the slide's top-left bag/patch/cell exactly, as the layers
    of an analysis do.  NGFF readers that ignore ``translation`` (napari-ome-zarr
    0.9+) place OME-Zarr heatmaps half a heatmap pixel up-left instead.
    """
    from ..export.heatmaps import heatmap_geometry, read_heatmap_levels, read_heatmap_metadata
    from .layers import attention_kwargs

    if meta is None:
        meta = read_heatmap_metadata(path)
        if meta is None:
            raise ResultsError(f"{path}: not a heatmap exported by napari-mran")
    geometry = heatmap_geometry(meta)
    frame = _heatmap_frame(meta, geometry, _current_viewer() if viewer is None else viewer)
    levels = read_heatmap_levels(path)
    name = os.path.basename(path.rstrip("/\\"))
    if meta.get("model_is_demo"):
        name += " (demo model)"
    kwargs = attention_kwargs(geometry, frame, name, _heatmap_limits(geometry, levels),
                              {keys.HEATMAP: meta, keys.HEATMAP_PATH: os.path.abspath(path),
                               keys.LEVEL: geometry.level})
    if len(levels) > 1:
        kwargs["multiscale"] = True
        return (levels, kwargs, "image")
    return (levels[0], kwargs, "image")


def _heatmap_frame(meta: dict, geometry, viewer):
    """The frame of the exported heatmap's slide: its layer's when open in *viewer*."""
    from .frame import SlideFrame

    slide_layer = _open_slide_layer(viewer, meta.get("slide_path"))
    if slide_layer is not None:
        return SlideFrame.from_layer(slide_layer)
    if geometry.mpp is not None:
        return SlideFrame((geometry.mpp[1], geometry.mpp[0]), (0.0, 0.0), "um")
    return SlideFrame()


def _heatmap_limits(geometry, levels) -> list[float]:
    """0-1 for probabilities; else, as the analysis layers, the min-max of the full
    raster (of a small pyramid level if huge)."""
    from .raster import contrast_limits

    if geometry.value == "prob":
        return [0.0, 1.0]
    small = next((lv for lv in levels if np.prod(lv.shape) <= 2**24), levels[-1])
    return list(contrast_limits(np.asarray(small[...])))
