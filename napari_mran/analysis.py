"""Whole-slide MRAN analysis as a generator of progress events (CLI, widget and tests drain it).

``analyze_slide(slide, model, options)`` yields :class:`AnalysisProgress` events and returns a
:class:`~napari_mran.results.SlideResult` (``StopIteration.value``); ``predict_slide``
drains it. Closing the generator cancels the analysis between batches.

Pipeline: input check and tissue bags from the smallest pyramid level -> a thread pool
decodes each bag's 1024 px model input ahead of the model (bounded prefetch,
:class:`~napari_mran.inference.reading.BagStream`) -> upstream MRAN in batches
(:mod:`~napari_mran.inference.forward`) -> downstream MIL over all bag embeddings ->
SlideResult with provenance.  This module is the orchestration; the parts live in
:mod:`napari_mran.inference`.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import AnalysisError
from .inference.accumulate import BagBatchResult, BagOutputs
from .inference.device import amp_policy, auto_batch, on_device, pick_device
from .inference.forward import UpstreamRunner
from .inference.forward import forward_with_oom_retry as _forward_with_oom_retry
from .inference.options import DEFAULT_MAX_FAILED_FRACTION, AnalysisOptions
from .inference.provenance import slide_provenance, versions
from .inference.reading import BagStream, ReadPlan, plan_reads, read_bag, tissue_lowres
from .inference.tissue_bags import (REFINE_MAX_DOWNSAMPLE, TissueBags, cell_tissue,
                                    find_tissue_bags)

if TYPE_CHECKING:
    from .model import MRAN
    from .results import SlideResult
    from .slide import Slide

__all__ = ["AnalysisOptions", "AnalysisProgress", "BagBatchResult", "DEFAULT_MAX_FAILED_FRACTION",
           "REFINE_MAX_DOWNSAMPLE", "ReadPlan", "TissueBags", "amp_policy", "analyze_slide",
           "find_tissue_bags", "pick_device", "plan_reads", "predict_slide", "read_bag",
           "tissue_lowres"]


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
    cell_tissue: np.ndarray | None = None  # (N, 64, 16) shown cells, at stage "tissue"

    @property
    def fraction(self) -> float:
        return self.bags_done / self.bags_total if self.bags_total else 0.0


def _options(options: AnalysisOptions | None, kwargs: dict[str, Any]) -> AnalysisOptions:
    try:
        return (options or AnalysisOptions()).replace(**kwargs) if kwargs else \
            (options or AnalysisOptions())
    except (TypeError, ValueError) as exc:
        raise AnalysisError(f"bad analysis option: {exc}") from None


def _bag_px(slide: Slide, model: MRAN, opts: AnalysisOptions) -> int:
    cfg = model.config
    bag_px = opts.bag_px
    if opts.bag_um is not None:
        if slide.mpp is None:
            raise AnalysisError(f"{slide.path}: a bag size in µm needs the slide's MPP, "
                                "which is unknown (pass mpp= when opening the slide)")
        from .tissue import TissueError, bag_px_from_um
        try:
            bag_px = bag_px_from_um(opts.bag_um, slide.mpp)
        except TissueError as exc:
            raise AnalysisError(f"{slide.path}: {exc}") from None
    bag_px = int(bag_px or cfg.bag_px)
    if bag_px < cfg.input_px // 4:
        raise AnalysisError(f"bag size {bag_px} px is too small for the model input "
                            f"({cfg.input_px} px)")
    w0, h0 = slide.dimensions
    if opts.edge == "drop" and (w0 < bag_px or h0 < bag_px):
        raise AnalysisError(f"{slide.path}: the slide ({w0} x {h0} px) is smaller than one "
                            f"bag ({bag_px} px) and edge policy 'drop' keeps whole bags "
                            "only; use edge policy 'pad'")
    return bag_px


def _check_and_find_tissue(slide: Slide, bag_px: int, opts: AnalysisOptions, workers: int,
                           model: MRAN | None = None
                           ) -> tuple[TissueBags, dict[str, Any], Any, dict[str, Any]]:
    """The brightfield check (refuses unless overridden), the tissue bags (inside the
    region, if any) with their shown cells, and the stain normalisation fitted on the
    same low-resolution image."""
    from .brightfield import check_slide
    from .inference.stain import slide_stain

    lowres = tissue_lowres(slide)
    check = check_slide(slide, lowres)
    if not check.ok and not opts.allow_non_brightfield:
        raise AnalysisError(f"{slide.path}: not a brightfield H&E image: {check.reason} "
                            "(override: --allow-non-brightfield)")
    tissue = find_tissue_bags(slide, bag_px, opts.tissue_method, opts.tissue_options,
                              workers=workers, edge=opts.edge, lowres=lowres, region=opts.roi)
    tissue.cell_tissue = cell_tissue(lowres, tissue.boxes, bag_px, opts.tissue_method,
                                     slide.dimensions, opts.roi)
    stain, stain_info = slide_stain(opts.stain_normalize, lowres[0], lowres[1],
                                    getattr(model, "stain_reference", None),
                                    user=opts.stain_reference, downsample=max(lowres[2]))
    return tissue, check.provenance(overridden=opts.allow_non_brightfield), stain, stain_info


def _prepare_model(model: MRAN, dev: Any, opts: AnalysisOptions, n_bags: int) -> UpstreamRunner:
    model = on_device(model, dev)
    compile_now = opts.compile is True or (opts.compile == "auto" and dev.type == "cpu"
                                           and n_bags >= 64)
    return UpstreamRunner(model, dev, amp=opts.amp, compile=compile_now,
                          top_k_patches=opts.top_k_patches)


def _run_bags(slide: Slide, boxes: np.ndarray, plan: ReadPlan, runner: UpstreamRunner,
              outs: BagOutputs, opts: AnalysisOptions, workers: int, stain: Any = None
              ) -> Generator[AnalysisProgress, None, tuple[int, float, float]]:
    """Decode and run every bag; yields "bags" events; returns (final batch size,
    seconds of the bag loop, seconds in the model)."""
    n = len(boxes)
    bs = auto_batch(runner.dev) if opts.batch_size == "auto" else int(opts.batch_size)
    from .inference.stain import normalised_reader, on_model_device

    device_stain = stain is not None and on_model_device(runner.dev)
    runner.pre = stain.on_tensor if device_stain else None
    # read_bag looked up here at call time: tests slow it down through this module
    read = normalised_reader(lambda box: read_bag(slide, box, plan),
                             None if device_stain else stain)
    stream = BagStream(boxes, read, bs, workers=workers,
                       prefetch=opts.prefetch or max(2 * bs, workers))
    t_bags = time.perf_counter()
    with contextlib.closing(iter(stream)) as batches:  # closed at once on cancel
        yield from _bag_events(slide, batches, stream, runner, outs, opts, n, t_bags,
                               timer := [0.0])
    return stream.batch_size, time.perf_counter() - t_bags, timer[0]


def _bag_events(slide: Slide, batches: Any, stream: BagStream, runner: UpstreamRunner,
                outs: BagOutputs, opts: AnalysisOptions, n: int, t_bags: float,
                timer: list[float]) -> Generator[AnalysisProgress, None, None]:
    for batch in batches:
        outs.fail(batch.failed, batch.no_data)
        if outs.n_failed > opts.max_failed_fraction * n and outs.n_failed > 0:
            raise AnalysisError(
                f"{slide.path}: {outs.n_failed} of {n} bags failed to decode (more than "
                f"{opts.max_failed_fraction:.0%}); first: "
                f"{next(iter(outs.failed_reasons.values()))}")
        new = None
        if batch.indices:
            tm = time.perf_counter()
            out, stream.batch_size = _forward_with_oom_retry(runner, batch.images, runner.dev,
                                                             stream.batch_size)
            timer[0] += time.perf_counter() - tm
            new = outs.add(batch.indices, out)
        elapsed = time.perf_counter() - t_bags
        rate = batch.done / elapsed if elapsed > 0 else 0.0
        eta = (n - batch.done) / rate if rate > 0 else None
        yield AnalysisProgress("bags", batch.done, n, outs.n_failed, rate, eta,
                               f"{batch.done}/{n} bags, {rate:.2f} bags/s", new=new)


def _slide_level(model: MRAN, outs: BagOutputs, dev: Any, path: str
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kept bag indices, slide probabilities, gamma) from the downstream MIL branch."""
    import torch

    keep = np.flatnonzero(outs.ok)
    if len(keep) == 0:
        raise AnalysisError(f"{path}: every tissue bag failed to decode")
    with torch.inference_mode():
        so = model.forward_slide(torch.from_numpy(outs.embedding[keep]).to(dev))
        slide_probs = torch.softmax(so.slide_logits.float(), -1).cpu().numpy()
        gamma = so.gamma.float().cpu().numpy()
    return keep, slide_probs.astype(np.float32), gamma.astype(np.float32)


def _provenance(slide: Slide, model: MRAN, opts: AnalysisOptions, *, bag_px: int,
                tissue: TissueBags, check: dict, plan: ReadPlan, runner: UpstreamRunner,
                workers: int, bs: int, timings: dict[str, float], outs: BagOutputs
                ) -> dict[str, Any]:
    import torch

    from ._version import __version__

    prov = {
        "software": {"napari_mran": __version__, "torch": torch.__version__,
                     "numpy": np.__version__, "python": platform.python_version(),
                     **versions("tifffile", "zarr", "imagecodecs", "dask")},
        "model": {"config": model.config.to_dict(),
                  "sha256": getattr(model, "checkpoint_sha256", None),
                  "source": getattr(model, "checkpoint_path", None),
                  "demo": bool(getattr(model, "is_demo", False))},
        "slide": slide_provenance(slide),
        "mpp": {"value": slide.mpp, "source": slide.mpp_source},
        "tissue": {"method": opts.tissue_method, "bag_px": bag_px, "bag_um": opts.bag_um,
                   "edge": opts.edge, "parameters": tissue.parameters,
                   "n_grid_bags": int(len(tissue.grid_boxes)),
                   "coverage": tissue.parameters.get("tissue_coverage")},
        "input_check": check,
        "reading": {"level": plan.level, "read_px": plan.read_px, "resize": plan.resize,
                    "level_downsample": slide.level_downsamples[plan.level]},
        "inference": {"device": str(runner.dev), "batch_size_final": bs,
                      "amp": runner.amp_label, "compile": runner.compile_state,
                      "decode_threads": workers, "top_k_patches": opts.top_k_patches},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "failed_bags": outs.n_failed,
        "no_data_fraction_mean": float(outs.no_data.mean()),
        "bag_probs": "upstream (the bag's own classification, W g + b)",
    }
    if opts.roi is not None:
        prov["region"] = {**opts.roi.record(slide.dimensions, slide.mpp),
                          "bags_kept": int(len(tissue.boxes)), "bags_outside": tissue.n_outside}
    return prov


def analyze_slide(slide: Slide | str | os.PathLike, model: MRAN,
                  options: AnalysisOptions | None = None, **kwargs: Any
                  ) -> Generator[AnalysisProgress, None, SlideResult]:
    """Analyse one slide with MRAN; a generator of progress events returning a SlideResult.

    ``slide``: an open :class:`~napari_mran.slide.Slide`, or a path (opened with the
    options' ``mpp``).  ``model``: an :class:`~napari_mran.model.MRAN`.  ``options``: an
    :class:`~napari_mran.inference.AnalysisOptions`; keyword arguments override its
    fields (``analyze_slide(slide, model, edge="drop")``).  The fields:

    - bag_px / bag_um: bag side at level 0 in pixels (default: the model's, 2048) or in
      µm (needs the slide's MPP; makes 20x and 40x scans give the same physical bags).
    - tissue_method: ``"reference"`` (MRAN's white-fraction rule at <= 4x on candidate
      bags; fast), ``"exact"`` (the same rule on level 0 for every bag, as the authors
      apply it) or ``"otsu"``; tissue_options: their parameters.
    - edge: ``"pad"`` (default: the partial bags at the right and bottom edges are
      analysed, white background outside the slide) or ``"drop"`` (the authors' rule);
      provenance records it and the fraction of the tissue the analysed bags cover.
    - allow_non_brightfield: analyse input that fails the brightfield H&E check
      (:mod:`napari_mran.brightfield`); otherwise it raises AnalysisError before any bag
      is read.  Provenance records the check.
    - max_failed_fraction: abort with AnalysisError when more bags fail to decode.
    - batch_size (``"auto"``; halved and retried on CUDA OOM), device (``"auto"``: CUDA >
      MPS > CPU, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``), num_workers (decode
      threads), prefetch (bags decoded ahead), compile (``"auto"``: on CPU for slides
      with >= 64 bags; failures fall back to eager and are recorded), amp (``"auto"``:
      autocast on CUDA only; ``"bf16"``/``"fp16"`` on any device; ``"off"``),
      top_k_patches.
    """
    opts = _options(options, kwargs)
    t_start = time.perf_counter()
    if not isinstance(slide, (str, os.PathLike)):
        return (yield from _analyze(slide, model, opts, t_start))
    from .slide import open_slide

    with open_slide(slide, mpp=opts.mpp) as opened:
        return (yield from _analyze(opened, model, opts, t_start))


def _analyze(slide: Slide, model: MRAN, opts: AnalysisOptions, t_start: float
             ) -> Generator[AnalysisProgress, None, SlideResult]:
    from .results import SlideResult

    bag_px = _bag_px(slide, model, opts)
    if opts.roi is not None:  # a region that cannot belong to this slide: before any read
        opts = opts.replace(roi=opts.roi.check_slide(*slide.dimensions))
    dev = pick_device(opts.device)
    amp_policy(opts.amp, dev)  # an unusable AMP choice fails before any reading
    workers = opts.num_workers or min(8, os.cpu_count() or 2)
    t0 = time.perf_counter()
    tissue, check, stain, stain_info = _check_and_find_tissue(slide, bag_px, opts, workers,
                                                                  model)
    boxes, n = tissue.boxes, len(tissue.boxes)
    t_tissue = time.perf_counter() - t0
    cover = tissue.parameters.get("tissue_coverage", 1.0)
    inside = "" if opts.roi is None else f" inside the region ({tissue.n_outside} outside)"
    yield AnalysisProgress("tissue", 0, n, message=f"{n} tissue bags of {bag_px} px{inside} "
                           f"({cover:.0%} of the tissue)", tissue_boxes=boxes,
                           cell_tissue=tissue.cell_tissue)
    if n == 0:
        w0, h0 = slide.dimensions
        where = "" if opts.roi is None else f" inside the region of {opts.roi.source}"
        raise AnalysisError(f"{slide.path}: no tissue bags found{where} (method "
                            f"{opts.tissue_method}, bag {bag_px} px, slide {w0} x {h0} px)")
    runner = _prepare_model(model, dev, opts, n)
    plan = plan_reads(slide, bag_px, model.config.input_px)
    outs = BagOutputs(boxes, model.config, model.config.embedding_dim)
    bs, t_bags, t_model = yield from _run_bags(slide, boxes, plan, runner, outs, opts, workers,
                                               stain)
    keep, slide_probs, gamma = _slide_level(runner.model, outs, dev, slide.path)
    yield AnalysisProgress("slide", n, n, outs.n_failed, message="slide-level MIL done")
    failed = np.flatnonzero(~outs.ok)
    timings = {"tissue": t_tissue, "bags": t_bags, "model": t_model,
               "total": time.perf_counter() - t_start}
    provenance = _provenance(slide, model, opts, bag_px=bag_px, tissue=tissue, check=check,
                             plan=plan, runner=runner, workers=workers, bs=bs,
                             timings=timings, outs=outs)
    provenance["stain_normalization"] = stain_info
    if stain is not None:
        stain_info["applied"] = (f"on the model's device ({dev.type}, torch)" if runner.pre
                                 else "in the decode threads (CPU, numpy)")
    cfg = model.config
    names = list(cfg.class_names or ())
    w0, h0 = slide.dimensions
    result = SlideResult(
        boxes=boxes[keep], bag_attention=gamma, bag_probs=outs.bag_probs[keep],
        patch_attention=outs.alpha[keep], patch_probs=outs.patch_probs[keep],
        cell_attention=outs.beta[keep], cell_probs=outs.cell_probs[keep],
        slide_probs=slide_probs, class_names=names,
        slide_size=(int(w0), int(h0)), bag_px=bag_px, mpp=slide.mpp,
        failed_boxes=boxes[failed], failed_reasons=[outs.failed_reasons[int(i)] for i in failed],
        provenance=provenance, degraded=bool(len(failed)), embeddings=outs.embedding[keep],
        cell_tissue=None if tissue.cell_tissue is None else tissue.cell_tissue[keep])
    yield AnalysisProgress("done", n, n, int(len(failed)), message="slide: " + ", ".join(
        f"{c} {p:.3f}" for c, p in zip(names, slide_probs)))
    return result


def predict_slide(slide: Slide | str | os.PathLike, model: MRAN,
                  options: AnalysisOptions | None = None, **kwargs: Any) -> SlideResult:
    """Run :func:`analyze_slide` to completion and return its SlideResult."""
    from ._events import drain

    return drain(analyze_slide(slide, model, options, **kwargs))
