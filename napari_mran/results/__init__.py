"""The result of analysing one slide, its on-disk store, and scores -> heatmap rasters.

- :mod:`.slide_result`: :class:`SlideResult` (fields, geometry, store save/load);
- :mod:`.scores`: scores at every level, :meth:`SlideResult.heatmap` (the one function
  that turns scores into a raster; the napari layer, the exporters and the CLI all use
  it), hover values;
- :mod:`.heatmap`: :class:`Heatmap`, a raster aligned with the slide;
- :mod:`.validation`: what makes a result (and a store's attributes) valid;
- :mod:`.store`, :mod:`.marker`, :mod:`.zarr_io`: the results store (format:
  docs/formats.md), its completion marker and checksums, every zarr call;
- :mod:`.strict`: strict JSON;  :mod:`.schema`: the arrays and format names.
"""

from __future__ import annotations

from .heatmap import Heatmap
from .marker import marker_body
from .schema import (ARRAYS, ATTRS_KEY, CELLS_PER_PATCH_SIDE, CELLS_PER_SIDE, CHECKSUMS_KEY,
                     DEMO_MODEL_NOTE, LEGACY_VERSIONS, LEVELS, MARKER_NAME, MAX_HEATMAP_PIXELS,
                     MAX_SLIDE_SIDE, N_CELLS, N_PATCHES, NONFINITE_KEY, OPTIONAL_ARRAYS,
                     PATCHES_PER_SIDE, RESULTS_FORMAT, RESULTS_VERSION, VALUES, WEIGHTINGS)
from .slide_result import SlideResult
from .store import is_results_store, verify_store
from .strict import canonical_sha256, strict_json
from .zarr_io import array_sha256

__all__ = [
    "CELLS_PER_PATCH_SIDE",
    "DEMO_MODEL_NOTE",
    "LEVELS",
    "PATCHES_PER_SIDE",
    "RESULTS_FORMAT",
    "RESULTS_VERSION",
    "Heatmap",
    "SlideResult",
    "is_results_store",
    "strict_json",
    "verify_store",
]

# Names of the former single module ``results.py`` that tests read.  A step of ``save``
# is replaced (monkeypatched) where it is called: ``napari_mran.results.store``.
_ARRAYS = ARRAYS
_OPTIONAL_ARRAYS = OPTIONAL_ARRAYS
_sha256 = array_sha256
_canonical_sha256 = canonical_sha256
_marker_body = marker_body
