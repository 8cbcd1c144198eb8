"""Faithfulness of MRAN's attention: re-predict a slide from its most-attended parts only.

If the attention is faithful, the slide-level prediction made from only the top-k
bags (by bag attention gamma) and, inside each of them, only the top-m patches (by
patch attention alpha) should stay close to the prediction made from the whole
slide.  :func:`restricted_prediction` computes one such prediction and
:func:`restriction_sweep` a whole k x m grid for one slide, reading every bag it
needs once.

How it is computed (docs/evaluation.md):

- bags: the ``k`` bags with the highest gamma of the stored result (ties by
  index), or all of them (``k=None`` / ``"all"``); ``k`` larger than the number of
  bags means all bags.
- patches: ``m=None`` keeps the model's usual patch attention (the threshold of
  spec section 2) -- with the bag embeddings stored in the result nothing is
  re-read; an integer ``m`` re-reads the bag pixels and runs the upstream branch
  with ``forward_bags(top_k_patches=m)``: only the m patches with the highest alpha
  form the bag embedding (the reference script accepted such an option but did not
  apply it).
- the slide-level branch then runs on the k (restricted) embeddings: gamma is
  recomputed over those k bags, with the usual threshold ``0.1 / k``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .errors import AnalysisError

__all__ = ["ALL", "parse_k", "parse_m", "restricted_prediction", "restriction_sweep"]

#: Spelling of "no restriction" in k and m lists (CLI, tables, JSON).
ALL = "all"

_READ_OPTIONS = ("batch_size", "device", "num_workers", "amp")


def parse_k(value: Any) -> int | None:
    """``None``/``"all"`` -> None, else a positive int (ValueError otherwise)."""
    return _parse_count(value, "k", None)


def parse_m(value: Any, n_patches: int = 64) -> int | None:
    """``None``/``"all"`` -> None, else an int in [1, n_patches] (ValueError otherwise)."""
    return _parse_count(value, "m", n_patches)


def _parse_count(value: Any, name: str, upper: int | None) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() == ALL):
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive integer or 'all', not {value!r}")
    try:
        n = int(value)
        if isinstance(value, float) and n != value:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive integer or 'all', not {value!r}") from None
    if n < 1 or (upper is not None and n > upper):
        bound = f"[1, {upper}]" if upper is not None else ">= 1"
        raise ValueError(f"{name} must be {bound} or 'all', not {n}")
    return n


def _label(value: int | None) -> int | str:
    return ALL if value is None else int(value)


def _read_options(read_opts: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(read_opts) - set(_READ_OPTIONS))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}; accepted: {list(_READ_OPTIONS)}")
    opts = {"batch_size": 4, "device": "auto", "num_workers": None, "amp": "auto", **read_opts}
    bs = opts["batch_size"]
    opts["batch_size"] = 4 if bs in (None, "auto") else max(1, int(bs))
    return opts


def _check_model(model, result) -> None:
    prov_model = result.provenance.get("model") if isinstance(result.provenance, dict) else None
    stored = prov_model.get("sha256") if isinstance(prov_model, dict) else None
    ours = getattr(model, "checkpoint_sha256", None)
    if stored and ours and stored != ours:
        raise AnalysisError(
            f"the result was made by model sha256 {stored[:12]}..., not by this model "
            f"({ours[:12]}...); restricted predictions would mix two models"
        )
    if list(result.class_names) != list(model.config.class_names):
        raise AnalysisError(
            f"the result's classes {result.class_names} differ from the model's "
            f"{list(model.config.class_names)}"
        )


def _analysis_top_k(result) -> int | None:
    inference = result.provenance.get("inference") if isinstance(result.provenance, dict) else None
    value = inference.get("top_k_patches") if isinstance(inference, dict) else None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _slide_probs(model, emb: np.ndarray, device) -> np.ndarray:
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32)).to(device)
        so = model.forward_slide(x)
        return torch.softmax(so.slide_logits.float(), -1).cpu().numpy().astype(np.float32)


def _upstream(
    slide,
    model,
    result,
    bag_indices: np.ndarray,
    patch_limits: Sequence[int | None],
    opts: dict[str, Any],
    device,
) -> tuple[dict[int | None, np.ndarray], dict[int | None, np.ndarray], np.ndarray, list[dict]]:
    """Read the bags *bag_indices* once and run the upstream branch for each patch limit.

    The analysis engine's own parts do it (:class:`~napari_mran.inference.reading.BagStream`
    and :class:`~napari_mran.inference.forward.UpstreamRunner`): the same decoding,
    channels-last input, AMP policy and batch halving on CUDA out-of-memory.
    Returns ``(embeddings, alpha, ok, failures)``: per limit (n, E) and (n, P) arrays
    in the order of *bag_indices*; ``ok`` (n,) bool marks bags read without error.
    """
    from contextlib import closing

    from .inference.forward import UpstreamRunner, forward_with_oom_retry
    from .inference.reading import BagStream, plan_reads

    cfg = model.config
    n = len(bag_indices)
    emb = {m: np.zeros((n, model.embedding_dim), np.float32) for m in patch_limits}
    alpha = {m: np.zeros((n, cfg.n_patches), np.float32) for m in patch_limits}
    ok = np.ones(n, bool)
    failures: list[dict] = []
    if n == 0 or not patch_limits:
        return emb, alpha, ok, failures
    if slide is None:
        raise AnalysisError("restricted predictions with a patch limit (or without stored "
                            "bag embeddings) need the slide to re-read the bags")
    boxes = result.boxes[bag_indices]
    threads = opts["num_workers"] or min(4, os.cpu_count() or 2)
    stream = BagStream.of_boxes(slide, boxes, plan_reads(slide, result.bag_px, cfg.input_px),
                                opts["batch_size"], workers=threads,
                                prefetch=max(2 * opts["batch_size"], threads))
    runners = {m: UpstreamRunner(model, device, amp=opts["amp"], top_k_patches=m)
               for m in patch_limits}
    with closing(iter(stream)) as batches:
        for batch in batches:
            for i, reason in batch.failed.items():
                ok[i] = False
                failures.append({"bag_index": int(bag_indices[i]),
                                 "box": [int(v) for v in boxes[i]], "reason": reason})
            if not batch.indices:
                continue
            for m in patch_limits:
                out, stream.batch_size = forward_with_oom_retry(runners[m], batch.images,
                                                                device, stream.batch_size)
                emb[m][batch.indices] = out["embedding"]
                alpha[m][batch.indices] = out["alpha"]
    return emb, alpha, ok, failures


def _limits(k_list: Iterable[Any], m_list: Iterable[Any], n_patches: int
            ) -> tuple[list[int | None], list[int | None]]:
    ks = list(dict.fromkeys(parse_k(k) for k in k_list))
    ms = list(dict.fromkeys(parse_m(m, n_patches) for m in m_list))
    if not ks or not ms:
        raise ValueError("k_list and m_list must not be empty")
    return ks, ms


def restriction_sweep(
    slide,
    model,
    result,
    k_list: Iterable[Any] = (1, 2, 4, 8, ALL),
    m_list: Iterable[Any] = (4, 16, 64, ALL),
    **read_opts: Any,
) -> list[dict[str, Any]]:
    """Restricted predictions of one slide for every (k, m) pair.

    Parameters
    ----------
    slide : the open :class:`~napari_mran.slide.Slide` the result was computed from
        (may be None when only ``m="all"`` is asked and the result holds embeddings).
    model : the :class:`~napari_mran.model.MRAN` that made *result*.
    result : its :class:`~napari_mran.results.SlideResult`.
    k_list, m_list : bag and patch limits (ints, or ``"all"``/None).
    read_opts : ``batch_size`` (bags per forward pass, default 4; halved on CUDA
        out-of-memory), ``device`` (``"auto"``), ``num_workers`` (decode threads),
        ``amp`` (``"auto"``: autocast on CUDA only, as the analysis).

    Returns
    -------
    One dict per (k, m), k-major: ``k``, ``m`` (int or ``"all"``), ``slide_probs``
    (C,) float32, ``bags_used``, ``bag_indices`` (into the result's bags, highest
    gamma first), ``patches_per_bag`` (m, or None for the model's own thresholded
    attention), ``source`` (``"stored embeddings"`` or ``"re-read"``),
    ``patch_attention`` ((bags_used, P) float32, None from stored embeddings) and
    ``failed_bags`` (bags that could not be re-read; they are left out).
    """
    from .analysis import pick_device

    opts = _read_options(read_opts)
    _check_model(model, result)
    ks, ms = _limits(k_list, m_list, model.config.n_patches)
    n = result.n_bags
    if n == 0:
        raise AnalysisError("the result has no bags to restrict")
    order = result.top_bags()  # (N,) highest gamma first
    sizes = {k: n if k is None else min(k, n) for k in ks}
    k_max = max(sizes.values())
    device = pick_device(opts["device"])
    from .inference.device import on_device

    model = on_device(model, device)
    stored = result.embeddings
    if stored is not None and stored.shape[1] != model.embedding_dim:
        raise AnalysisError(f"the result's bag embeddings have {stored.shape[1]} features, "
                            f"the model expects {model.embedding_dim}")
    reread: list[int | None] = [m for m in ms if m is not None]
    use_stored = None in ms and stored is not None
    if None in ms and not use_stored:
        reread.append(_analysis_top_k(result))  # the analysis's own patch setting
    top = order[:k_max]
    emb, alpha, ok, failures = _upstream(slide, model, result, top, reread, opts, device)

    rows: list[dict[str, Any]] = []
    for k in ks:
        size = sizes[k]
        for m in ms:
            if m is None and use_stored:
                idx = order[:size]
                e, a, source, fails = stored[idx], None, "stored embeddings", []
            else:
                key = m if m is not None else reread[-1]
                sel = np.flatnonzero(ok[:size])
                idx = top[sel]
                e, a, source = emb[key][sel], alpha[key][sel], "re-read"
                fails = [f for f in failures if f["bag_index"] in set(top[:size].tolist())]
            if len(idx) == 0:
                raise AnalysisError(f"none of the top {size} bags could be re-read "
                                    f"(first: {fails[0]['reason'] if fails else 'unknown'})")
            rows.append({
                "k": _label(k),
                "m": _label(m),
                "slide_probs": _slide_probs(model, e, device),
                "bags_used": int(len(idx)),
                "bag_indices": [int(i) for i in idx],
                "patches_per_bag": m,
                "source": source,
                "patch_attention": a,
                "failed_bags": fails,
            })
    return rows


def restricted_prediction(
    slide, model, result, k_bags: Any = None, m_patches: Any = None, **read_opts: Any
) -> dict[str, Any]:
    """Re-predict one slide from only its top-*k_bags* bags and top-*m_patches* patches.

    ``k_bags=None`` uses every bag, ``m_patches=None`` the model's usual patch
    attention (no re-read when *result* holds bag embeddings).  Returns a dict with
    ``slide_probs`` (C,) float32, ``bags_used``, ``patches_per_bag`` and the other
    keys of :func:`restriction_sweep`.
    """
    return restriction_sweep(slide, model, result, [k_bags], [m_patches], **read_opts)[0]
