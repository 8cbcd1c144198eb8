"""The ``mran_*`` keys of napari layer metadata, each spelled once.

Slide layers, result layers (of an analysis or of a ``.mran.zarr`` store) and heatmap
layers carry these keys; the widget, the readers and the writers read them back.  The
strings are a format (saved napari sessions and scripts read them): never rename one.
"""

from __future__ import annotations

# -- slide layers (napari_mran._napari.layers.slide_layer_data)
SLIDE = "mran_slide"                # the open Slide, for the analysis widget
SLIDE_PATH = "mran_slide_path"      # the slide file (slide and result layers)

# -- result layers (layers.result_metadata and the widget's run layers)
RESULT = "mran_result"              # the SlideResult (set when the analysis is complete)
ROLE = "mran_role"                  # "bag attention", ..., "tissue bags", "top bags"
RUN = "mran_run"                    # "in progress" on the layers of a running analysis
FRAME = "mran_frame"                # the SlideFrame the layer is placed in
RESULTS_PATH = "mran_results_path"  # the .mran.zarr store, when saved
SLIDE_NAME = "mran_slide_name"
SLIDE_PROBS = "mran_slide_probs"    # class name -> slide-level probability
CLASS_NAMES = "mran_class_names"
BAG_PX = "mran_bag_px"
DEGRADED = "mran_degraded"          # some bags failed to decode
LEVEL = "mran_level"                # "bag", "patch" or "cell" (heatmaps)
WEIGHTING = "mran_weighting"        # "local" or "global" (attention layers)
SCALING = "mran_scaling"            # the colour scaling shown
TOP_PERCENT = "mran_top_percent"    # "show only the top X %"
TOP_K = "mran_top_k"                # top-bags layer: how many
TOP_INDICES = "mran_top_indices"    # top-bags layer: the bag indices, best first

# -- heatmap layers opened from an OME-TIFF / OME-Zarr export
HEATMAP = "mran_heatmap"            # the export's metadata
HEATMAP_PATH = "mran_heatmap_path"
