"""Synthetic H&E-like whole-slide images with a known tumour ground truth.

The slides are used by the tests, the benchmarks and to train the bundled demo
model, so they must be (1) real pyramidal files that tifffile *and* OpenSlide
read like an Aperio SVS, (2) deterministic from a seed, (3) cheap to make at
any size with bounded memory, and (4) carry a learnable tumour signal whose
position is known exactly.

Scene model (all coordinates in level-0 pixels, sizes in micrometres):

* Low-frequency *fields* are analytic functions of (x, y): an approximate
  signed distance (in pixels) to the tissue border (a union of 1-3 irregular
  blobs plus smooth edge roughness), the same for the tumour regions, and two
  "style" fields (fibre orientation mix, eosin strength).  They are evaluated
  on a fixed lattice of nodes every ``MASK_DOWNSAMPLE`` (16) pixels and
  interpolated bilinearly inside a tile, so every tile sees the same values
  whatever order tiles are rendered in.  The ground-truth mask is the same
  bilinear field sampled at the centre of each 16 x 16 block.
* Nuclei live in two interleaved square lattices of cells (24 um, the second
  shifted by half a cell).  Each cell holds at most one nucleus, entirely
  inside the cell; its existence, position, size, shape and darkness are drawn
  from a counter-based hash of (slide key, lattice, cell row, cell column), so
  a nucleus is the same whichever tile draws it.  The cell's class (normal or
  tumour) is read from the fields at the cell centre.
* Stroma is eosin with two collagen-like fibre textures (periodic noise
  filtered along drifting orientations) mixed by a smooth field; colour is
  formed with Beer-Lambert optical densities from haematoxylin / eosin stain
  vectors, with small per-slide stain jitter.

Writing streams level 0 tile by tile; each tile's 2x area reduction feeds a
cascade of band buffers that produces every reduced level in the same pass
(tiles of reduced levels are JPEG-encoded as soon as they are complete and
spooled to an anonymous temporary file until their page is written).  Memory
is therefore a few tiles plus a few bands of width ``width / 2**k``.

Only numpy, scipy, tifffile, imagecodecs and the standard library are used.

Modules: ``_make`` (the public API), ``_scene`` (layout, style, rendering of a tile),
``_fields`` (blobs, smooth noise, interpolation), ``_nuclei``, ``_texture``, ``_truth``
(the mask and what is read from it), ``_svs`` and ``_cascade`` (pyramid writing),
``_info`` (:class:`SyntheticSlideInfo`).
"""

from __future__ import annotations

from ._info import MASK_DOWNSAMPLE, SyntheticSlideInfo
from ._make import make_cohort, make_slide
from ._shift import STAIN_SHIFTS, StainShift
from ._truth import read_mask, tumour_bag_labels

__all__ = [
    "MASK_DOWNSAMPLE",
    "STAIN_SHIFTS",
    "StainShift",
    "SyntheticSlideInfo",
    "make_slide",
    "make_cohort",
    "tumour_bag_labels",
    "read_mask",
]
