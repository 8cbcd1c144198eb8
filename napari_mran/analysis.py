"""Whole-slide MRAN analysis as a generator of progress events (CLI, widget and tests drain it).

``analyze_slide(slide, model, ...)`` yields :class:`AnalysisProgress` events and returns a
:class:`~napari_mran.results.SlideResult` (``StopIteration.value``); ``predict_slide``
drains it. Closing the generator cancels the analysis between batches.

Pipeline: tissue bags from the smallest pyramid level -> a thread pool decodes each bag's
1024 px model input ahead of the model (bounded prefetch) -> upstream MRAN in batches ->
downstream MIL over all bag embeddings -> SlideResult with provenance.
"""

from __future__ import annotations

import os
import platform
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generator

import numpy as np

from .errors import AnalysisError

#: Stop (AnalysisError) when more than this fraction of the tissue bags fail to decode.
DEFAULT_MAX_FAILED_FRACTION = 0.1


@dataclass
class BagBatchResult:
    """Results of bags that just finished (indices into the tissue-bag list)."""

    indices: np.ndarray          # (n,)
    boxes: np.ndarray            # (n, 4) level-0 x0, y0, x1, y1
    bag_probs: np.ndarray        # (n, C)
    patch_attention: np.ndarray  # (n, 64) alpha
    patch_probs: np.ndarray      # (n, 64, C)
    cell_attention: np.ndarray   # (n, 64, 16) beta
    cell_probs: np.ndarray       # (n, 64, 16, C)


@dataclass
class AnalysisProgress:
    """One progress event of :func:`analyze_slide`."""

    stage: str                   # "tissue", "bags", "slide", "done"
    bags_done: int = 0
    bags_total: int = 0
    bags_failed: int = 0
    bags_per_s: float = 0.0
    eta_s: float | None = None
    message: str = ""
    new: BagBatchResult | None = None
    tissue_boxes: np.ndarray | None = None  # (N, 4) at stage "tissue"

    @property
    def fraction(self) -> float:
        return self.bags_done / self.bags_total if self.bags_total else 0.0


@dataclass
class _Plan:
    bag_px: int
    level: int                 # pyramid level the bag is read from
    read_px: int               # side read at that level
    resize: str                # "none", "reduce2", "box"
    input_px: int


def pick_device(device: str = "auto"):
    """``auto`` -> CUDA, else MPS, else CPU; or the torch device asked for."""
    import torch

    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device in ("gpu", "cuda") and not torch.cuda.is_available():
        raise AnalysisError("CUDA was requested but no CUDA device is available")
    return torch.device("cuda" if device == "gpu" else device)


def plan_reads(slide, bag_px: int, input_px: int) -> _Plan:
    """Where to read a bag from so that it arrives as input_px x input_px.

    Prefers a level whose downsample equals bag_px / input_px (within 1 %); else the
    closest finer level, then an exact 2x area reduce (PIL ``reduce``) or a box resize.
    """
    target = bag_px / input_px
    for lv, d in enumerate(slide.level_downsamples):
        if abs(d - target) / target < 0.01:
            return _Plan(bag_px, lv, input_px, "none", input_px)
    lv = slide.get_best_level_for_downsample(target)
    d = slide.level_downsamples[lv]
    read_px = int(round(bag_px / d))
    if read_px == 2 * input_px:
        return _Plan(bag_px, lv, read_px, "reduce2", input_px)
    return _Plan(bag_px, lv, read_px, "box", input_px)


def read_bag(slide, box, plan: _Plan) -> tuple[np.ndarray, list[str] | None, float]:
    """(input_px, input_px, 3) uint8 of one bag, failures, fraction of pixels with data."""
    from PIL import Image

    rr = slide.read_region_ex((int(box[0]), int(box[1])), plan.level,
                              (plan.read_px, plan.read_px), on_error="record")
    img = rr.pixels
    if plan.resize == "reduce2":
        img = np.asarray(Image.fromarray(img).reduce(2))
    elif plan.resize == "box":
        img = np.asarray(Image.fromarray(img).resize((plan.input_px, plan.input_px),
                                                     Image.Resampling.BOX))
    valid_fraction = 1.0 if rr.valid is None else float(rr.valid.mean())
    return img, rr.failed_tiles, valid_fraction


def tissue_lowres(slide, max_side: int = 8192) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float]]:
    """Low-resolution whole-slide RGB for the tissue mask, from the smallest level.

    Never resizes a whole-slide thumbnail: the smallest stored level is read directly;
    only a slide whose smallest level is larger than ``max_side`` uses the lazily
    computed display pyramid (bounded streaming).
    """
    w0, h0 = slide.dimensions
    lv = slide.smallest_level
    lw, lh = slide.level_dimensions[lv]
    if max(lw, lh) <= max_side:
        rr = slide.read_region_ex((0, 0), lv, (lw, lh), on_error="record")
        valid = rr.valid
        img = rr.pixels
    else:
        import dask
        arr = slide.display_levels[-1]
        with dask.config.set(scheduler="threads"):
            img = np.asarray(arr.compute())
        valid = None
        lh, lw = img.shape[:2]
    return img, valid, (w0 / lw, h0 / lh)


@dataclass
class TissueBags:
    """Tissue bags of a slide and how they were found (for provenance)."""

    boxes: np.ndarray            # (N, 4) level-0 x0, y0, x1, y1 of the kept bags
    grid_boxes: np.ndarray       # (G, 4) every whole bag of the grid
    white_fraction: np.ndarray   # (N,) the rule's white fraction of each kept bag
    parameters: dict


#: the reference white rule is evaluated on pixels at most this many times coarser than level 0
REFINE_MAX_DOWNSAMPLE = 4.0


def find_tissue_bags(slide, bag_px: int, method: str = "reference",
                     options: dict | None = None, workers: int = 4, *,
                     edge: str = "drop", lowres: tuple | None = None) -> TissueBags:
    """Tissue bags of a slide.

    ``otsu``: saturation + Otsu on the smallest level (cheap and fine at low resolution).

    ``reference`` (MRAN's rule: keep a bag when < 98 % of its pixels have all channels
    > 127): averaging at a low resolution turns stroma into "white" pale pink, so the rule
    is not applied to the smallest level. Instead (1) the smallest level gives candidate
    bags (anything that is not glass: < 99.9 % of pixels with all channels > 220), and
    (2) the rule is evaluated on each candidate at the coarsest level whose downsample is
    <= 4 (level 0 when there is no such level; the exact reference when that is level 0).

    ``exact``: the authors' rule as they apply it: every bag of the grid, on level-0
    pixels, read in strips (memory bounded); slower (reads all of level 0 once).

    ``edge``: ``"drop"`` (the authors' rule: whole bags only) or ``"pad"`` (partial bags
    at the right and bottom edges too, read with white background outside the slide).
    ``lowres``: the ``tissue_lowres(slide)`` tuple when the caller has read it already.
    The parameters record ``tissue_coverage``: the fraction of the slide's tissue (not
    glass, at the smallest level) that the kept bags cover.
    """
    from .tissue import select_tissue_bags, tissue_coverage

    opts = dict(options or {})
    w0, h0 = slide.dimensions
    lowres, valid, down = lowres if lowres is not None else tissue_lowres(slide)

    def coverage(boxes) -> dict:
        frac, n_px = tissue_coverage(lowres, down, boxes, valid=valid)
        return {"tissue_coverage": round(frac, 4), "tissue_coverage_pixels": n_px}

    if method not in ("reference", "exact"):
        sel = select_tissue_bags(lowres, down, (w0, h0), bag_px=bag_px, method=method,
                                 valid=valid, edge=edge, **opts)
        kept = np.flatnonzero(sel.kept)
        kboxes = np.asarray(sel.boxes, np.int64).reshape(-1, 4)
        return TissueBags(kboxes, sel.grid_boxes, np.asarray(sel.white_fraction)[kept],
                          {**sel.parameters, "stages": 1, **coverage(kboxes)})
    white_level = int(opts.pop("white_level", 127))
    max_white = float(opts.pop("max_white_fraction", 0.98))
    min_valid = float(opts.get("min_valid_fraction", 0.5))
    cand = select_tissue_bags(lowres, down, (w0, h0), bag_px=bag_px, method="reference",
                              white_level=220, max_white_fraction=0.999, valid=valid,
                              edge=edge, **opts)
    if method == "exact":  # every bag of the grid, at level 0: the authors' rule as is
        cboxes, level = np.asarray(cand.grid_boxes, np.int64).reshape(-1, 4), 0
    else:
        cboxes, level = np.asarray(cand.boxes, np.int64).reshape(-1, 4), 0
        for lv, d in enumerate(slide.level_downsamples):
            if d <= REFINE_MAX_DOWNSAMPLE * (1 + 1e-6):
                level = lv
    wf, vf = _white_fractions(slide, cboxes, level, bag_px, white_level, workers)
    keep = (wf < max_white) & (vf >= min_valid)
    d = slide.level_downsamples[level]
    params = {"rule": f"white = all channels > {white_level}; keep when white fraction < {max_white}",
              "white_level": white_level, "max_white_fraction": max_white,
              "min_valid_fraction": min_valid, "n_candidates": int(len(cboxes)),
              "rule_level": level, "rule_level_downsample": float(d),
              "edge": edge, "n_partial_bags": cand.parameters["n_partial_bags"]}
    if method == "exact":
        params.update(stages=1, candidates_from="every bag of the grid (level 0)")
    else:
        params.update(stages=2, candidates_from="smallest level (not glass: < 99.9 % of "
                      "pixels with all channels > 220)")
    params.update(coverage(cboxes[keep]))
    return TissueBags(cboxes[keep], cand.grid_boxes, wf[keep], params)


#: rows of a bag read at once by the exact rule (bounds memory: 256 x 2048 x 3 bytes)
_RULE_STRIP_ROWS = 256


def _white_fractions(slide, boxes: np.ndarray, level: int, bag_px: int, white_level: int,
                     workers: int) -> tuple[np.ndarray, np.ndarray]:
    """(white fraction of the valid pixels, valid fraction) of each bag at *level*, read in
    strips of ``_RULE_STRIP_ROWS`` rows (memory per thread is one strip, not one bag)."""
    d = slide.level_downsamples[level]
    side = max(1, int(round(bag_px / d)))

    strip = _RULE_STRIP_ROWS if level == 0 else side  # coarser levels: one small read

    def one(box) -> tuple[float, float]:
        n_white = n_valid = 0
        for r0 in range(0, side, strip):
            rows = min(strip, side - r0)
            rr = slide.read_region_ex((int(box[0]), int(box[1] + round(r0 * d))), level,
                                      (side, rows), on_error="record")
            is_white = (rr.pixels > white_level).all(-1)
            if rr.valid is None:
                n_white += int(is_white.sum())
                n_valid += is_white.size
            else:
                n_white += int(is_white[rr.valid].sum())
                n_valid += int(rr.valid.sum())
        return (n_white / n_valid if n_valid else 1.0), n_valid / float(side * side)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mran-tissue") as pool:
        fr = list(pool.map(one, boxes))
    wf = np.array([f[0] for f in fr], np.float64).reshape(-1)
    vf = np.array([f[1] for f in fr], np.float64).reshape(-1)
    return wf, vf


def _auto_batch(device) -> int:
    if device.type == "cuda":
        import torch
        free, _ = torch.cuda.mem_get_info(device)
        # ~0.9 GB of activations per 1024 px bag at width 1 in bf16 (64 patches of 128 px)
        return int(max(1, min(32, free // (1.2 * 2**30))))
    return 2


def amp_policy(amp, dev) -> tuple[bool, object]:
    """``(use autocast, dtype)`` for the ``amp`` option of :func:`analyze_slide` on *dev*."""
    import torch

    if amp is False or amp is None or amp == "off":
        return False, torch.float32
    if amp == "bf16":
        return True, torch.bfloat16
    if amp == "fp16":
        return True, torch.float16
    if amp is True or amp == "auto":
        if dev.type != "cuda":
            return False, torch.float32
        return True, (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    raise ValueError(f"amp must be 'auto', 'bf16', 'fp16', 'off', True or False, not {amp!r}")


def analyze_slide(slide, model, *, bag_px: int | None = None, bag_um: float | None = None,
                  tissue_method: str = "reference", tissue_options: dict | None = None,
                  batch_size: int | str = "auto", device: str = "auto",
                  num_workers: int | None = None, prefetch: int | None = None,
                  compile: bool | str = "auto", amp: bool | str = "auto",
                  max_failed_fraction: float = DEFAULT_MAX_FAILED_FRACTION,
                  top_k_patches: int | None = None, edge: str = "pad",
                  allow_non_brightfield: bool = False,
                  ) -> Generator[AnalysisProgress, None, Any]:
    """Analyse one slide with MRAN; a generator of progress events returning a SlideResult.

    Parameters
    ----------
    slide : an open :class:`~napari_mran.slide.Slide` (or a path).
    model : an :class:`~napari_mran.model.MRAN` (``load_model(...)``).
    bag_px / bag_um : bag side at level 0 in pixels (default: the model's, 2048) or in µm
        (needs the slide's MPP; makes 20x and 40x scans give the same physical bags).
    tissue_method : ``"reference"`` (MRAN's white-fraction rule at <= 4x downsample on
        candidate bags; fast), ``"exact"`` (the same rule on level 0 for every bag, as the
        authors apply it) or ``"otsu"``.
    batch_size : bags per forward pass, or ``"auto"``; halved and retried on CUDA OOM.
    device : ``"auto"`` (CUDA > MPS > CPU), ``"cpu"``, ``"cuda"``, ``"mps"``.
    num_workers : decode threads (default: CPU count); prefetch : bags decoded ahead.
    compile : torch.compile the upstream CNN (``"auto"``: on CPU for slides with >= 64
        bags; failures fall back to eager and are recorded).
    amp : ``"auto"`` (or True): autocast on CUDA only, bf16 where supported else fp16,
        never on CPU (bf16 on an AVX2 CPU is ~40x slower); ``"bf16"`` / ``"fp16"``: that
        dtype on whatever device (tests use it to run the reduced-precision path on a
        CPU); False / ``"off"``: float32.
    max_failed_fraction : abort with AnalysisError when more bags fail to decode.
    edge : ``"pad"`` (default: the partial bags at the right and bottom edges are
        analysed, white background outside the slide) or ``"drop"`` (the authors' rule,
        for exact reproduction: whole bags only).  Provenance records it and the
        fraction of the tissue the analysed bags cover.
    allow_non_brightfield : analyse even when the input fails the brightfield H&E
        check (:mod:`napari_mran.brightfield`); otherwise such input raises
        AnalysisError before any bag is read.  Provenance records the check.
    """
    import torch

    from . import __version__
    from .results import SlideResult

    t_start = time.perf_counter()
    own_slide = False
    if isinstance(slide, (str, os.PathLike)):
        from .slide import open_slide
        slide = open_slide(slide)
        own_slide = True
    try:
        cfg = model.config
        if bag_um is not None:
            if slide.mpp is None:
                raise AnalysisError(f"{slide.path}: a bag size in µm needs the slide's MPP, "
                                    "which is unknown (pass mpp= when opening the slide)")
            from .tissue import TissueError, bag_px_from_um
            try:
                bag_px = bag_px_from_um(bag_um, slide.mpp)
            except TissueError as exc:
                raise AnalysisError(f"{slide.path}: {exc}") from None
        bag_px = int(bag_px or cfg.bag_px)
        if bag_px < cfg.input_px // 4:
            raise AnalysisError(f"bag size {bag_px} px is too small for the model input "
                                f"({cfg.input_px} px)")
        dev = pick_device(device)
        use_amp, amp_dtype = amp_policy(amp, dev)
        w0, h0 = slide.dimensions

        # ---- input check, then tissue
        t0 = time.perf_counter()
        from .tissue import TissueError, edge_policy
        try:
            edge = edge_policy(edge)
        except TissueError as exc:
            raise AnalysisError(str(exc)) from None
        if edge == "drop" and (w0 < bag_px or h0 < bag_px):
            raise AnalysisError(f"{slide.path}: the slide ({w0} x {h0} px) is smaller than one "
                                f"bag ({bag_px} px) and edge policy 'drop' keeps whole bags "
                                "only; use edge policy 'pad'")
        lowres = tissue_lowres(slide)
        from .brightfield import check_slide
        check = check_slide(slide, lowres)
        if not check.ok and not allow_non_brightfield:
            raise AnalysisError(f"{slide.path}: not a brightfield H&E image: {check.reason} "
                                "(override: --allow-non-brightfield)")
        tissue = find_tissue_bags(slide, bag_px, tissue_method, tissue_options,
                                  workers=num_workers or min(8, os.cpu_count() or 2),
                                  edge=edge, lowres=lowres)
        del lowres
        boxes = tissue.boxes
        n = len(boxes)
        t_tissue = time.perf_counter() - t0
        cover = tissue.parameters.get("tissue_coverage", 1.0)
        yield AnalysisProgress("tissue", 0, n, message=f"{n} tissue bags of {bag_px} px "
                               f"({cover:.0%} of the tissue)", tissue_boxes=boxes)
        if n == 0:
            raise AnalysisError(f"{slide.path}: no tissue bags found (method {tissue_method}, "
                                f"bag {bag_px} px, slide {w0} x {h0} px)")

        # ---- model set-up
        model = model.to(dev).eval()
        if dev.type != "mps":
            model = model.to(memory_format=torch.channels_last)
        state = {"fn": model.forward_bags, "compile": "no"}
        if (compile is True or (compile == "auto" and dev.type == "cpu" and n >= 64)):
            try:
                state["fn"] = torch.compile(model.forward_bags, dynamic=True)
                state["compile"] = "pending"
            except Exception as exc:  # noqa: BLE001 - eager is always correct
                state["compile"] = f"failed ({type(exc).__name__}); eager"
        bs = _auto_batch(dev) if batch_size == "auto" else max(1, int(batch_size))
        plan = plan_reads(slide, bag_px, cfg.input_px)
        workers = num_workers or min(8, os.cpu_count() or 2)
        ahead = prefetch or max(2 * bs, workers)

        C = cfg.n_classes
        P, K = cfg.n_patches, cfg.n_cells
        E = cfg.embedding_dim
        emb = np.zeros((n, E), np.float32)
        bag_probs = np.zeros((n, C), np.float32)
        alpha = np.zeros((n, P), np.float32)
        patch_probs = np.zeros((n, P, C), np.float32)
        beta = np.zeros((n, P, K), np.float32)
        cell_probs = np.zeros((n, P, K, C), np.float32)
        ok = np.ones(n, bool)
        failed_reasons: dict[int, str] = {}
        no_data = np.zeros(n, np.float32)

        def call(x):
            with torch.inference_mode():
                if use_amp:
                    with torch.autocast(dev.type, dtype=amp_dtype):
                        return state["fn"](x, top_k_patches=top_k_patches)
                return state["fn"](x, top_k_patches=top_k_patches)

        def run(x):
            if state["compile"] != "pending":
                return call(x)
            try:  # torch.compile builds on the first call: fall back to eager if that fails
                out = call(x)
                state["compile"] = "yes"
                return out
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - no compiler, unsupported op, ...
                state["fn"] = model.forward_bags
                state["compile"] = f"failed ({type(exc).__name__}); eager"
                return call(x)

        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mran-bag")
        pending: deque[tuple[int, Future]] = deque()
        next_submit = 0
        done = 0
        t_bags = time.perf_counter()
        t_model = 0.0
        try:
            while done < n:
                while next_submit < n and len(pending) < ahead:
                    pending.append((next_submit, pool.submit(read_bag, slide, boxes[next_submit], plan)))
                    next_submit += 1
                batch_idx, batch_img = [], []
                while pending and len(batch_idx) < bs:
                    i, fut = pending.popleft()
                    img, failures, vfrac = fut.result()
                    no_data[i] = 1.0 - vfrac
                    if failures:
                        ok[i] = False
                        failed_reasons[i] = "; ".join(failures[:3])
                    else:
                        batch_idx.append(i)
                        batch_img.append(img)
                    if next_submit < n:
                        pending.append((next_submit, pool.submit(read_bag, slide, boxes[next_submit], plan)))
                        next_submit += 1
                n_failed = int((~ok).sum())
                if n_failed > max_failed_fraction * n and n_failed > 0:
                    raise AnalysisError(
                        f"{slide.path}: {n_failed} of {n} bags failed to decode (more than "
                        f"{max_failed_fraction:.0%}); first: {next(iter(failed_reasons.values()))}")
                if batch_idx:
                    tm = time.perf_counter()
                    out, bs = _forward_with_oom_retry(run, batch_img, dev, bs)
                    t_model += time.perf_counter() - tm
                    idx = np.asarray(batch_idx)
                    emb[idx] = out["embedding"]
                    bag_probs[idx] = out["bag_probs"]
                    alpha[idx] = out["alpha"]
                    patch_probs[idx] = out["patch_probs"]
                    beta[idx] = out["beta"]
                    cell_probs[idx] = out["cell_probs"]
                    new = BagBatchResult(idx, boxes[idx], bag_probs[idx], alpha[idx],
                                         patch_probs[idx], beta[idx], cell_probs[idx])
                else:
                    new = None
                done = next_submit - len(pending)
                elapsed = time.perf_counter() - t_bags
                rate = done / elapsed if elapsed > 0 else 0.0
                eta = (n - done) / rate if rate > 0 else None
                yield AnalysisProgress("bags", done, n, n_failed, rate, eta,
                                       f"{done}/{n} bags, {rate:.2f} bags/s", new=new)
        finally:
            for _, fut in pending:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

        # ---- downstream MIL over the bags that were read
        keep = np.flatnonzero(ok)
        if len(keep) == 0:
            raise AnalysisError(f"{slide.path}: every tissue bag failed to decode")
        with torch.inference_mode():
            so = model.forward_slide(torch.from_numpy(emb[keep]).to(dev))
            slide_probs = torch.softmax(so.slide_logits.float(), -1).cpu().numpy()
            gamma = so.gamma.float().cpu().numpy()
        yield AnalysisProgress("slide", n, n, int((~ok).sum()), message="slide-level MIL done")

        failed = np.flatnonzero(~ok)
        provenance = {
            "software": {"napari_mran": __version__, "torch": torch.__version__,
                         "numpy": np.__version__, "python": platform.python_version(),
                         **_versions("tifffile", "zarr", "imagecodecs", "dask")},
            "model": {"config": cfg.to_dict(), "sha256": getattr(model, "checkpoint_sha256", None),
                      "source": getattr(model, "checkpoint_path", None),
                      "demo": bool(getattr(model, "is_demo", False))},
            "slide": _slide_provenance(slide),
            "mpp": {"value": slide.mpp, "source": slide.mpp_source},
            "tissue": {"method": tissue_method, "bag_px": bag_px, "bag_um": bag_um,
                       "edge": edge, "parameters": tissue.parameters,
                       "n_grid_bags": int(len(tissue.grid_boxes)),
                       "coverage": tissue.parameters.get("tissue_coverage")},
            "input_check": check.provenance(overridden=allow_non_brightfield),
            "reading": {"level": plan.level, "read_px": plan.read_px, "resize": plan.resize,
                        "level_downsample": slide.level_downsamples[plan.level]},
            "inference": {"device": str(dev), "batch_size_final": bs, "amp": str(amp_dtype) if use_amp else "off",
                          "compile": state["compile"], "decode_threads": workers, "top_k_patches": top_k_patches},
            "timings_s": {"tissue": round(t_tissue, 3), "bags": round(time.perf_counter() - t_bags, 3),
                          "model": round(t_model, 3), "total": round(time.perf_counter() - t_start, 3)},
            "failed_bags": int(len(failed)),
            "no_data_fraction_mean": float(no_data.mean()),
            "bag_probs": "upstream (the bag's own classification, W g + b)",
        }
        result = SlideResult(
            boxes=boxes[keep], bag_attention=gamma.astype(np.float32),
            bag_probs=bag_probs[keep], patch_attention=alpha[keep], patch_probs=patch_probs[keep],
            cell_attention=beta[keep], cell_probs=cell_probs[keep],
            slide_probs=slide_probs.astype(np.float32), class_names=list(cfg.class_names),
            slide_size=(int(w0), int(h0)), bag_px=bag_px, mpp=slide.mpp,
            failed_boxes=boxes[failed], failed_reasons=[failed_reasons[i] for i in failed],
            provenance=provenance, degraded=bool(len(failed)), embeddings=emb[keep])
        yield AnalysisProgress("done", n, n, int(len(failed)),
                               message="slide: " + ", ".join(
                                   f"{c} {p:.3f}" for c, p in zip(cfg.class_names, slide_probs)))
        return result
    finally:
        if own_slide:
            slide.close()


def _forward_with_oom_retry(run, images: list[np.ndarray], dev, bs: int):
    """Run the upstream pass over ``images`` in chunks of ``bs``; halve on CUDA OOM."""
    import torch

    outs: list[dict[str, np.ndarray]] = []
    i = 0
    while i < len(images):
        chunk = images[i:i + bs]
        x = torch.from_numpy(np.stack(chunk))                  # (n, H, W, 3) uint8
        x = x.to(dev, non_blocking=True).permute(0, 3, 1, 2)    # (n, 3, H, W) channels_last view
        x = x.float().div_(255.0).contiguous(memory_format=torch.channels_last)
        try:
            o = run(x)
        except torch.cuda.OutOfMemoryError:
            if bs == 1:
                raise AnalysisError("CUDA out of memory even with one bag per batch") from None
            torch.cuda.empty_cache()
            bs = max(1, bs // 2)
            continue
        outs.append({
            "embedding": o.embedding.float().cpu().numpy(),
            "bag_probs": torch.softmax(o.bag_logits.float(), -1).cpu().numpy(),
            "alpha": o.alpha.float().cpu().numpy(),
            "patch_probs": torch.softmax(o.patch_logits.float(), -1).cpu().numpy(),
            "beta": o.beta.float().cpu().numpy(),
            "cell_probs": torch.softmax(o.cell_logits.float(), -1).cpu().numpy(),
        })
        i += len(chunk)
    merged = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    return merged, bs


def predict_slide(slide, model, **options):
    """Run :func:`analyze_slide` to completion and return its SlideResult."""
    from ._events import drain

    return drain(analyze_slide(slide, model, **options))


def _versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _slide_provenance(slide) -> dict[str, Any]:
    from .slide import file_fingerprint

    info: dict[str, Any] = {"path": os.path.abspath(slide.path), "vendor": slide.vendor,
                            "level0_size": list(slide.dimensions)}
    try:
        info["bytes"], info["sha256_first_mb"] = file_fingerprint(slide.path)
    except OSError as exc:
        info["stat_error"] = str(exc)
    return info
