"""Bag grid and tissue selection (pure numpy, level-0 pixel coordinates).

A bag is a ``bag_px`` x ``bag_px`` square of level-0 pixels on a non-overlapping
grid that starts at the slide's top-left corner.  Bags that would cross the right or
bottom edge are dropped by the authors' rule (edge policy ``"drop"``, docs/mran-spec.md
section 1) or kept as partial bags padded with white background (``"pad"``, the
default of analysis: docs/edge-bags.md).  Boxes are
``[x0, y0, x1, y1]`` with ``x1``/``y1`` exclusive.

Tissue is decided on a low-resolution RGB image of the whole slide (a pyramid
level or thumbnail) that the caller has read; this module never reads files.  Each
bag box is mapped onto the low-resolution pixels whose *centres* fall inside it.
"""

from .grid import (EDGE_POLICIES, METHODS, MPP_PLAUSIBLE_RANGE, TissueError, bag_grid,
                   bag_px_from_um, edge_policy, grid_shape)
from .masks import otsu_threshold, tissue_mask
from .select import TissueSelection, select_tissue_bags, tissue_coverage

__all__ = [
    "EDGE_POLICIES",
    "METHODS",
    "MPP_PLAUSIBLE_RANGE",
    "TissueError",
    "TissueSelection",
    "bag_grid",
    "bag_px_from_um",
    "edge_policy",
    "grid_shape",
    "otsu_threshold",
    "select_tissue_bags",
    "tissue_coverage",
    "tissue_mask",
]
