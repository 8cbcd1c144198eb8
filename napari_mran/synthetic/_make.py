"""The public API: :func:`make_slide` (one slide and its mask) and :func:`make_cohort`."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from ._info import SyntheticSlideInfo
from ._scene import Scene
from ._shift import StainShift, as_stain_shift
from ._svs import level_dims, write_svs
from ._truth import block_areas, ground_truth, write_mask

__all__ = ["make_cohort", "make_slide"]


def make_slide(path: str | os.PathLike[str], width: int, height: int, tumour: bool, seed: int,
               *, mpp: float = 0.5, tile: int = 256, quality: int = 90,
               tumour_fraction: float | None = None, colorspace: str = "rgb",
               workers: int | None = None,
               mask_dir: str | os.PathLike[str] | None = None,
               stain_shift: StainShift | str | None = None) -> SyntheticSlideInfo:
    """Write a synthetic pyramidal H&E-like slide (Aperio-SVS-like JPEG TIFF).

    Parameters
    ----------
    path: output file (``.svs`` recommended).  The ground-truth mask is written
        as ``<stem>.mask.tif`` in ``mask_dir`` (default: beside the slide).  Both
        are written under temporary names in their folders and renamed into
        place at the end.
    width, height: level-0 size in pixels.
    tumour: whether the slide contains tumour regions (1-3 regions).
    seed: non-negative integer; the same seed (and arguments) gives
        byte-identical pixels.  The tissue layout depends on the seed only, so
        ``tumour=True`` and ``tumour=False`` with one seed are "twins" that
        differ only by the tumour.
    mpp: micrometres per level-0 pixel (nuclei and texture scale with it).
    tile: TIFF tile size (multiple of 16).
    quality: JPEG quality.
    tumour_fraction: tumour area as a fraction of the tissue area (default: a
        random value in 5-25 %); only allowed with ``tumour=True``.
    colorspace: ``"rgb"`` (Aperio-style RGB JPEG, PhotometricInterpretation
        RGB) or ``"ycbcr"`` (YCbCr 4:2:0 JPEG: ~2x smaller, slightly faster).
    workers: threads rendering/encoding level-0 tiles (default: min(2, CPUs)).
    stain_shift: a :class:`StainShift`, a preset name (``"scanner-b"``) or None: the
        slide as another lab and scanner would show it (other stain vectors, light,
        white balance, blur); same tissue and ground truth as without (docs/synthetic.md).

    The file holds level 0, an Aperio-style stripped thumbnail page (page 1)
    and reduced levels at downsamples 2, 4, 8, ... (pages 2, 3, ...) down to
    the first level that fits in one tile, as tifffile and OpenSlide expect
    of an SVS file.
    """
    path = Path(path)
    width, height, seed, tile, quality = int(width), int(height), int(seed), int(tile), int(quality)
    _check_slide_arguments(width, height, tumour, seed, mpp=mpp, tile=tile, quality=quality,
                           tumour_fraction=tumour_fraction, colorspace=colorspace)
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    workers = max(1, int(workers))

    path.parent.mkdir(parents=True, exist_ok=True)
    if mask_dir is None:
        mask_path = path.with_name(path.stem + ".mask.tif")
    else:
        Path(mask_dir).mkdir(parents=True, exist_ok=True)
        mask_path = Path(mask_dir) / (path.stem + ".mask.tif")
    shift = as_stain_shift(stain_shift)
    scene = Scene(width, height, seed, tumour, float(mpp), tumour_fraction, tile, shift)
    mask, boxes, tissue_frac = ground_truth(scene)
    dims = level_dims(width, height, tile)

    tmp_slide = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp_mask = mask_path.with_name(f".{mask_path.name}.{os.getpid()}.tmp")
    try:
        write_svs(tmp_slide, scene, dims, mpp=mpp, stem=path.stem, seed=seed, tumour=tumour,
                  quality=quality, colorspace=colorspace, workers=workers)
        write_mask(tmp_mask, mask, width, height, mpp)
        os.replace(tmp_slide, path)
        os.replace(tmp_mask, mask_path)
    finally:
        for p in (tmp_slide, tmp_mask):
            if p.exists():
                p.unlink()

    # exact block areas (edge blocks may be partial)
    ax = block_areas(mask.shape[1], width)
    ay = block_areas(mask.shape[0], height)
    tum_area = float(ay @ mask.astype(np.float64) @ ax) if int(mask.sum(dtype=np.int64)) else 0.0
    area = float(width) * float(height)
    tis_area = tissue_frac * area
    return SyntheticSlideInfo(
        path=path, mask_path=mask_path, width=width, height=height, mpp=float(mpp),
        tumour=bool(tumour), seed=seed, tumour_boxes=boxes, tumour_ellipses=_ellipses(scene),
        tumour_area_fraction=tum_area / area,
        tumour_tissue_fraction=(tum_area / tis_area) if tis_area > 0 else 0.0,
        tissue_fraction=float(tissue_frac), level_dimensions=tuple(dims), tile=tile,
        quality=quality, colorspace=colorspace,
        stain_shift=None if shift is None else shift.to_dict())


def _check_slide_arguments(width: int, height: int, tumour: bool, seed: int, *, mpp: float,
                           tile: int, quality: int, tumour_fraction: float | None,
                           colorspace: str) -> None:
    """ValueError naming the first argument of :func:`make_slide` that is out of range."""
    if width < 1 or height < 1:
        raise ValueError(f"slide size must be positive, got {width} x {height}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if tile < 16 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    if not (mpp > 0 and math.isfinite(mpp)):
        raise ValueError(f"mpp must be a positive number, got {mpp}")
    if colorspace not in ("rgb", "ycbcr"):
        raise ValueError(f"colorspace must be 'rgb' or 'ycbcr', got {colorspace!r}")
    if tumour_fraction is not None:
        if not tumour:
            raise ValueError("tumour_fraction is only meaningful with tumour=True")
        if not 0.0 < float(tumour_fraction) < 1.0:
            raise ValueError(f"tumour_fraction must be in (0, 1), got {tumour_fraction}")


def _ellipses(scene: Scene) -> tuple[tuple[float, float, float, float, float], ...]:
    """The tumour regions' base ellipses (cx, cy, rx, ry, angle in degrees), level-0 px."""
    if scene.tumour_blobs is None:
        return ()
    b, s = scene.tumour_blobs, scene.tumour_scale
    return tuple((float(b.cx[i]), float(b.cy[i]), float(b.rx[i] * s), float(b.ry[i] * s),
                  float(np.degrees(b.angle[i]) % 180.0)) for i in range(len(b)))


def make_cohort(out_dir: str | os.PathLike[str], n_slides: int, seed: int,
                width: int = 8192, height: int = 8192, *, tumour_ratio: float = 0.5, slides_per_case: int = 1, mpp: float = 0.5,
                overwrite: bool = False, tile: int = 256, quality: int = 90,
                colorspace: str = "rgb", workers: int | None = None,
                stain_shift: StainShift | str | None = None) -> Path:
    """Write ``n_slides`` synthetic slides and ``labels.csv`` into ``out_dir``.

    The ground-truth masks go to ``out_dir/masks/<stem>.mask.tif``, not beside the
    slides, so that ``napari-mran predict out_dir`` sees only the slides.

    ``labels.csv`` has columns ``slide,label,case`` (slide = file name relative
    to ``out_dir``, label 1 = tumour / 0 = normal, case = case id; all slides
    of a case share its label).  About ``tumour_ratio`` of the cases are
    tumour cases.  Everything is deterministic from ``seed``; ``stain_shift`` (see
    :func:`make_slide`) shifts every slide alike, so the same seed with and without a
    shift gives the same cohort in two labs' colours.  Refuses
    (FileExistsError) to write into a folder that already holds a labels.csv
    unless ``overwrite=True``; never deletes anything.  Returns the path of
    labels.csv, which is written last.
    """
    out_dir = Path(out_dir)
    n_slides, seed, slides_per_case = int(n_slides), int(seed), int(slides_per_case)
    if n_slides < 1:
        raise ValueError(f"n_slides must be >= 1, got {n_slides}")
    if slides_per_case < 1:
        raise ValueError(f"slides_per_case must be >= 1, got {slides_per_case}")
    if not 0.0 <= float(tumour_ratio) <= 1.0:
        raise ValueError(f"tumour_ratio must be in [0, 1], got {tumour_ratio}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    shift = as_stain_shift(stain_shift)  # a bad value fails before anything is written
    labels_path = out_dir / "labels.csv"
    if labels_path.exists() and not overwrite:
        raise FileExistsError(
            f"{labels_path} already exists: refusing to overwrite an existing cohort "
            f"(pass overwrite=True, or choose an empty folder)")
    out_dir.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0xC0,)))
    n_cases = -(-n_slides // slides_per_case)
    n_pos = int(round(float(tumour_ratio) * n_cases))
    case_labels = np.zeros(n_cases, int)
    case_labels[:n_pos] = 1
    rng.shuffle(case_labels)
    slide_seeds = np.random.SeedSequence(seed, spawn_key=(0x5D,)).generate_state(n_slides, np.uint32)

    rows: list[tuple[str, int, str]] = []
    for i in range(n_slides):
        case = i // slides_per_case
        label = int(case_labels[case])
        name = f"slide_{i:04d}.svs"
        make_slide(out_dir / name, width, height, bool(label), int(slide_seeds[i]), mpp=mpp,
                   tile=tile, quality=quality, colorspace=colorspace, workers=workers,
                   mask_dir=out_dir / "masks", stain_shift=shift)
        rows.append((name, label, f"case_{case:04d}"))

    tmp = labels_path.with_name(f".labels.csv.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["slide", "label", "case"])
        wr.writerows(rows)
    os.replace(tmp, labels_path)
    return labels_path
