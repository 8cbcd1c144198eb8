"""What a result holds: the bag geometry, the arrays (dtype and shape) and the names of
the store's format and attributes (docs/formats.md, "Results store")."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..vocab import LEVELS, PIXELS_PER_BAG, WEIGHTINGS

__all__ = [
    "ARRAYS", "ATTRS_KEY", "CELLS_PER_PATCH_SIDE", "CELLS_PER_SIDE", "CHECKSUMS_KEY",
    "DEMO_MODEL_NOTE", "LEGACY_VERSIONS", "LEVELS", "MARKER_NAME", "MAX_HEATMAP_PIXELS",
    "MAX_SLIDE_SIDE", "NONFINITE_KEY", "N_CELLS", "N_PATCHES", "OPTIONAL_ARRAYS",
    "PATCHES_PER_SIDE", "PIXELS_PER_BAG", "RESULTS_FORMAT", "RESULTS_VERSION", "VALUES",
    "WEIGHTINGS",
]

#: what a heatmap shows: the attention of a level or its class probability
VALUES = ("attention", "prob")
PATCHES_PER_SIDE = 8  # a bag is 8 x 8 patches
CELLS_PER_PATCH_SIDE = 4  # a patch is 4 x 4 cells
CELLS_PER_SIDE = PATCHES_PER_SIDE * CELLS_PER_PATCH_SIDE  # a bag is 32 x 32 cells
N_PATCHES = PATCHES_PER_SIDE**2
N_CELLS = CELLS_PER_PATCH_SIDE**2

RESULTS_FORMAT = "napari-mran-results"
RESULTS_VERSION = 2
#: Store versions this napari-mran recognises but refuses to load (see docs/formats.md).
LEGACY_VERSIONS = (1,)
#: Version-1 stores only: the completion marker file (version 2 keeps it in the
#: group attributes, where zarr does not warn about a non-zarr file).
MARKER_NAME = "COMPLETE.json"
ATTRS_KEY = "napari_mran"
#: Group attribute written last: the completion marker and the checksums of every
#: array and of the attributes (docs/formats.md, "Results store").
CHECKSUMS_KEY = "napari_mran_checksums"
NONFINITE_KEY = "_nonfinite_replaced_by_null"
#: Said by every output of a result computed with the bundled demo model.
DEMO_MODEL_NOTE = (
    "computed with the napari-mran demo model (trained on synthetic slides): "
    "a demonstration, not for diagnosis"
)
#: No slide format holds more than 2**32 - 1 pixels per side (TIFF, DICOM: 32-bit sizes).
MAX_SLIDE_SIDE = 2**32 - 1
#: Largest heatmap raster made (pixels; 8 GiB of float32).
MAX_HEATMAP_PIXELS = 2**31

FLOAT = np.dtype("<f4")
INT = np.dtype("<i8")
#: name -> (dtype, trailing shape as a function of C, None: the shape is (C,)); the
#: leading dim is N (or K for ``failed_boxes``).
ARRAYS: dict[str, tuple[np.dtype, Callable[[int], tuple[int, ...]] | None]] = {
    "boxes": (INT, lambda c: (4,)),
    "bag_attention": (FLOAT, lambda c: ()),
    "bag_probs": (FLOAT, lambda c: (c,)),
    "patch_attention": (FLOAT, lambda c: (N_PATCHES,)),
    "patch_probs": (FLOAT, lambda c: (N_PATCHES, c)),
    "cell_attention": (FLOAT, lambda c: (N_PATCHES, N_CELLS)),
    "cell_probs": (FLOAT, lambda c: (N_PATCHES, N_CELLS, c)),
    "slide_probs": (FLOAT, None),  # (C,)
    "failed_boxes": (INT, lambda c: (4,)),  # leading dim K
}
#: Arrays a store may hold or not (older stores and callers without them stay valid).
OPTIONAL_ARRAYS: dict[str, np.dtype] = {
    "embeddings": FLOAT,  # (N, E) bag embeddings g of the upstream branch
    "cell_tissue": np.dtype("u1"),  # (N, 64, 16) 1 where the cell is shown (tissue, in the ROI)
}
#: Every array name a store may hold.
ALL_ARRAYS = (*ARRAYS, *OPTIONAL_ARRAYS)

