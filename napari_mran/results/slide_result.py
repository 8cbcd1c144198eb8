"""The result of analysing one slide: :class:`SlideResult` (scores of every bag, patch
and cell with their level-0 geometry) and its store.

Geometry (docs/mran-spec.md section 1, generalised to any bag size ``bag_px``):
a bag is a ``bag_px`` square on the grid from the slide's top-left corner; patch
``p = row * 8 + col`` covers ``bag_px / 8`` level-0 px, cell ``c = row * 4 + col``
of a patch covers ``bag_px / 32`` level-0 px.  ``row`` is always vertical.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ResultsError
from ..vocab import check_choice
from .schema import (ARRAYS, ATTRS_KEY, CELLS_PER_PATCH_SIDE, CELLS_PER_SIDE, LEVELS, N_CELLS,
                     N_PATCHES, OPTIONAL_ARRAYS, PATCHES_PER_SIDE, RESULTS_FORMAT,
                     RESULTS_VERSION)
from .scores import ScoresMixin
from .store import read_store, save_store
from .strict import strict_json
from .validation import (check_arrays, check_cell_tissue, check_embeddings, check_grid,
                         check_header, clean_provenance, mpp_pair)

__all__ = ["SlideResult"]


@dataclass(eq=False)
class SlideResult(ScoresMixin):
    """Scores of one analysed slide at the three levels, with their level-0 geometry.

    Shapes (N bags, C classes, K failed bags); attention/probabilities are float32,
    boxes int64 ``[x0, y0, x1, y1]`` level-0 px on the bag grid.  ``embeddings``
    (N, E) float32, the upstream bag embeddings ``g``, is optional: saved with the
    store when present (it lets the slide-level branch be re-run without re-reading
    the slide), absent from older stores.  ``cell_tissue`` (N, 64, 16) uint8, also
    optional: 1 where a cell is shown (tissue, inside the region of interest if any);
    heatmaps leave the others uncoloured.
    """

    boxes: np.ndarray  # (N, 4) int64
    bag_attention: np.ndarray  # (N,) gamma
    bag_probs: np.ndarray  # (N, C)
    patch_attention: np.ndarray  # (N, 64) alpha, patch p = row * 8 + col
    patch_probs: np.ndarray  # (N, 64, C)
    cell_attention: np.ndarray  # (N, 64, 16) beta, cell c = row * 4 + col
    cell_probs: np.ndarray  # (N, 64, 16, C)
    slide_probs: np.ndarray  # (C,)
    class_names: list[str]
    slide_size: tuple[int, int]  # level-0 (width, height)
    bag_px: int = 2048
    mpp: float | tuple[float, float] | None = None  # µm per level-0 px (x, y)
    failed_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))  # (K, 4)
    failed_reasons: list[str] = field(default_factory=list)  # (K,)
    provenance: dict[str, Any] = field(default_factory=dict)
    degraded: bool = False
    embeddings: np.ndarray | None = None  # (N, E) float32 bag embeddings, optional
    cell_tissue: np.ndarray | None = None  # (N, 64, 16) uint8 shown cells, optional
    _index: dict[tuple[int, int], int] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    # -- construction ----------------------------------------------------------------

    def __post_init__(self) -> None:
        self.class_names, self.slide_size, self.bag_px = check_header(
            self.class_names, self.slide_size, self.bag_px)
        raw = self.mpp
        mpp = mpp_pair(raw)
        if mpp is not None and raw is not None:
            self.mpp = float(mpp[0]) if np.ndim(raw) == 0 else mpp
        values = {name: getattr(self, name) for name in ARRAYS}
        for name, arr in check_arrays(values, len(self.class_names)).items():
            setattr(self, name, arr)
        if len(self.failed_reasons) != self.failed_boxes.shape[0]:
            raise ResultsError(f"SlideResult: {self.failed_boxes.shape[0]} failed boxes but "
                               f"{len(self.failed_reasons)} reasons")
        self.failed_reasons = [str(r) for r in self.failed_reasons]
        check_grid(self.boxes, self.bag_px, self.slide_size)
        self.provenance = clean_provenance(self.provenance)
        self.degraded = bool(self.degraded)
        self.embeddings = check_embeddings(self.embeddings, self.n_bags)
        self.cell_tissue = check_cell_tissue(self.cell_tissue, self.n_bags)
        self._index = None

    # -- basic geometry --------------------------------------------------------------

    @property
    def n_bags(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(rows, cols) of the bag grid covering the whole slide (partial edge bags
        included, as analysed with edge policy "pad"; NaN where nothing was analysed)."""
        w, h = self.slide_size
        return (-(-h // self.bag_px), -(-w // self.bag_px))

    @property
    def bag_rc(self) -> np.ndarray:
        """(N, 2) int64 grid (row, col) of each bag."""
        return np.stack([self.boxes[:, 1], self.boxes[:, 0]], axis=1) // self.bag_px

    @property
    def patch_px(self) -> float:
        return self.bag_px / PATCHES_PER_SIDE

    @property
    def cell_px(self) -> float:
        return self.bag_px / CELLS_PER_SIDE

    @property
    def mpp_xy(self) -> tuple[float, float] | None:
        """(x, y) µm per level-0 px, or None."""
        return mpp_pair(self.mpp)

    @property
    def model_is_demo(self) -> bool:
        """True when the result was computed with the bundled synthetic demo model
        (``provenance["model"]["demo"] is True``): every export then says so."""
        model = self.provenance.get("model")
        return isinstance(model, dict) and model.get("demo") is True

    @property
    def failed_bags(self) -> list[dict[str, Any]]:
        """``[{"box": [x0, y0, x1, y1], "reason": str}, ...]``."""
        return [
            {"box": [int(v) for v in box], "reason": r}
            for box, r in zip(self.failed_boxes, self.failed_reasons)
        ]

    @property
    def slide_name(self) -> str:
        """Slide name from provenance: ``slide.name`` (verbatim), else the file name
        of ``slide.path`` (also accepted: top-level ``slide_name``/``slide_path``), else ""."""
        prov = self.provenance
        slide = prov.get("slide")
        names, paths = [prov.get("slide_name")], [prov.get("slide_path")]
        if isinstance(slide, dict):
            names.insert(0, slide.get("name"))
            paths.insert(0, slide.get("path"))
        elif isinstance(slide, str):
            paths.insert(0, slide)
        for name in names:
            if isinstance(name, str) and name:
                return name
        for p in paths:
            if isinstance(p, str) and p:
                return os.path.basename(p.rstrip("/\\")) or p
        return ""

    def level_boxes(self, level: str) -> np.ndarray:
        """Level-0 boxes of every object: bag (N, 4) int64, patch (N, 64, 4) and cell
        (N, 64, 16, 4) float64 ``[x0, y0, x1, y1]``."""
        check_choice("level", level, LEVELS)
        if level == "bag":
            return self.boxes.copy()
        origin = self.boxes[:, :2].astype(np.float64)  # (N, 2) x0, y0
        pp = self.patch_px
        p = np.arange(N_PATCHES)
        patch_xy = np.stack([p % PATCHES_PER_SIDE, p // PATCHES_PER_SIDE], axis=1) * pp  # (64, 2)
        if level == "patch":
            xy0 = origin[:, None, :] + patch_xy[None]  # (N, 64, 2)
            return np.concatenate([xy0, xy0 + pp], axis=-1)
        cp = self.cell_px
        c = np.arange(N_CELLS)
        cell_xy = (
            np.stack([c % CELLS_PER_PATCH_SIDE, c // CELLS_PER_PATCH_SIDE], axis=1) * cp
        )  # (16, 2)
        xy0 = (
            origin[:, None, None, :] + patch_xy[None, :, None, :] + cell_xy[None, None]
        )  # (N, 64, 16, 2)
        return np.concatenate([xy0, xy0 + cp], axis=-1)

    def slide_boxes(self, level: str) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`level_boxes` clipped to the slide, and a mask of the objects that
        overlap the slide at all.  Partial edge bags (edge policy ``"pad"``) reach past
        the right/bottom edge; exports report only what lies on the slide."""
        boxes = self.level_boxes(level)
        w, h = self.slide_size
        clipped = np.minimum(boxes, np.array([w, h, w, h], dtype=boxes.dtype))
        inside = (clipped[..., 2] > clipped[..., 0]) & (clipped[..., 3] > clipped[..., 1])
        return clipped, inside

    def summary(self) -> dict[str, Any]:
        """Strict-JSON summary (no per-bag arrays) for sidecars and logs."""
        mpp = self.mpp_xy
        clean, _ = strict_json(
            {
                "slide_name": self.slide_name,
                "slide_size": list(self.slide_size),
                "mpp": None if mpp is None else list(mpp),
                "bag_px": self.bag_px,
                "grid_shape": list(self.grid_shape),
                "n_bags": self.n_bags,
                "class_names": list(self.class_names),
                "slide_probs": {n: float(p) for n, p in zip(self.class_names, self.slide_probs)},
                "degraded": self.degraded,
                "failed_bags": self.failed_bags,
                "model_is_demo": self.model_is_demo,
            }
        )
        return clean

    # -- store -------------------------------------------------------------------------

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {name: getattr(self, name) for name in ARRAYS}
        for name in OPTIONAL_ARRAYS:
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        return arrays

    def _own_attributes(self) -> dict[str, Any]:
        """The ``napari_mran`` group attribute of the store (strict JSON)."""
        mpp = self.mpp_xy
        own = {
            "format": RESULTS_FORMAT,
            "version": RESULTS_VERSION,
            "complete": False,
            "class_names": list(self.class_names),
            "slide_size": list(self.slide_size),
            "bag_px": self.bag_px,
            "mpp": None
            if mpp is None
            else ([mpp[0], mpp[1]] if isinstance(self.mpp, tuple) else mpp[0]),
            "degraded": self.degraded,
            "failed_reasons": list(self.failed_reasons),
            "n_bags": self.n_bags,
            "model_is_demo": self.model_is_demo,
        }
        clean, _ = strict_json(own)
        return clean

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write a ``.mran.zarr`` results store (zarr v3) atomically; return its path.

        Built in a hidden temporary sibling folder, completed by the marker attribute
        ``napari_mran_checksums`` (sha256 of every array and of every attribute,
        chunk-file counts) and renamed onto *path*.  An existing *path* is never
        touched unless ``overwrite=True``, and then only if it is itself a verified
        results store holding nothing else.  Stale ``.partial-`` folders of this
        store name left by a killed save are removed first (rule: docs/formats.md).
        """
        return save_store(Path(path), self._arrays(), self._own_attributes(), self.provenance,
                          overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, *, verify_checksums: bool = True) -> SlideResult:
        """Read a results store written by :meth:`save`.

        ResultsError naming the store and the reason if it is missing, partial (no
        completion marker), foreign, corrupt, edited (an array or attribute that does
        not match its checksum), inconsistent (attributes that do not fit the arrays,
        implausible MPP or slide size) or of an older version (re-run the analysis).
        ``verify_checksums=False`` skips only the array checksums (large stores).
        """
        path = Path(path)
        _, attrs, arrays = read_store(path, verify_checksums=verify_checksums)
        own = attrs.get(ATTRS_KEY, {})
        try:
            mpp = own.get("mpp")
            result = cls(
                **arrays,
                class_names=list(own["class_names"]),
                slide_size=tuple(own["slide_size"]),
                bag_px=int(own["bag_px"]),
                mpp=tuple(mpp) if isinstance(mpp, list) else mpp,
                failed_reasons=list(own.get("failed_reasons", [])),
                provenance=dict(attrs.get("provenance") or {}),
                degraded=bool(own.get("degraded", False)),
            )
        except ResultsError as exc:
            raise ResultsError(f"{path}: invalid results store: {exc}") from exc
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ResultsError(
                f"{path}: invalid results store metadata ({type(exc).__name__}: {exc})"
            ) from exc
        return result
