"""Evaluation during and after training: slide probabilities from bag embeddings, the
epoch's record (train and validation metrics), the best-epoch bookkeeping (the model of
the best epoch is saved with its provenance), and the best model on the test split."""

from __future__ import annotations

import time
from typing import Any, Generator

import numpy as np

from .config import MODEL, TEST_METRICS, EpochEvent
from .data import SlideBags
from .epochs import UpstreamEpoch, to_input
from .provenance import _with_provenance
from .report import _test_line
from .run_folder import _write_json
from .state import RunContext, RunState


def _binary_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Accuracy, AUC (class 1 vs rest; None when one class only) and CE loss."""
    pred = probs.argmax(1)
    out: dict[str, Any] = {"n": int(len(labels)),
                           "accuracy": float((pred == labels).mean()) if len(labels) else None}
    from ..metrics import roc_auc

    out["auc"] = roc_auc((labels == 1).astype(int), probs[:, 1]) if len(labels) else None
    eps = 1e-7
    out["loss"] = float(-np.log(np.clip(probs[np.arange(len(labels)), labels], eps, 1)).mean()) \
        if len(labels) else None
    return out


def embed(ctx: RunContext, model: Any, slides: list[SlideBags]) -> dict[str, np.ndarray]:
    """Eval-mode bag embeddings of whole slides (validation, test)."""
    import torch

    model.eval()
    jobs = [(s.path, box, False, (s.path, j)) for s in slides for j, box in enumerate(s.boxes)]
    out = {s.path: np.zeros((len(s.boxes), ctx.model_cfg.embedding_dim), np.float32)
           for s in slides}
    with torch.inference_mode():
        for images, tags in ctx.bag_reader().batches(jobs, ctx.cfg.batch_size):
            with torch.autocast("cuda", enabled=ctx.use_amp):
                emb = model.forward_bags(to_input(images, ctx.dev)).embedding.float().cpu().numpy()
            for (path, j), e in zip(tags, emb):
                out[path][j] = e
    return out


def slide_probs(ctx: RunContext, model: Any, slides: list[SlideBags],
                embs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(labels, class probabilities) of slides from their bag embeddings."""
    import torch

    model.eval()
    labels, probs = [], []
    with torch.inference_mode():
        for s in slides:
            so = model.forward_slide(torch.from_numpy(embs[s.path]).to(ctx.dev))
            probs.append(torch.softmax(so.slide_logits.float(), -1).cpu().numpy())
            labels.append(s.item.label)
    return np.asarray(labels, int), np.asarray(probs).reshape(len(labels), ctx.n_classes)


def epoch_record(ctx: RunContext, rs: RunState, epoch: int, rho: float, up: UpstreamEpoch,
                 down_loss: float, lr_down: float,
                 ) -> Generator[EpochEvent, None, dict[str, Any]]:
    """The epoch's record (a metrics.jsonl line, without best_so_far and time_s): losses,
    LRs, metrics on the training slides (their upstream embeddings) and, when there are
    validation slides, on those (yields a "validate" event first)."""
    tr_labels, tr_probs = slide_probs(ctx, rs.model, ctx.train_slides, up.emb)
    record: dict[str, Any] = {
        "epoch": epoch + 1, "rho": rho, "upstream_loss": up.loss,
        "downstream_loss": down_loss,
        # the LRs used: the epoch's last upstream step, the downstream epoch
        "lr_upstream": up.lr, "lr_downstream": lr_down,
        "train": _binary_metrics(tr_labels, tr_probs),
    }
    if ctx.bags["val"]:
        yield EpochEvent(epoch, ctx.cfg.epochs, "validate", message="validating")
        val_emb = embed(ctx, rs.model, ctx.bags["val"])
        va_labels, va_probs = slide_probs(ctx, rs.model, ctx.bags["val"], val_emb)
        record["val"] = _binary_metrics(va_labels, va_probs)
    return record


def update_best(ctx: RunContext, rs: RunState, epoch: int, record: dict[str, Any]) -> bool:
    """Whether the epoch is the best so far (validation accuracy, then AUC, then lower
    loss; the training metrics when there is no validation split; the first of equals);
    if so it becomes ``rs.best`` and its model (with provenance) model.safetensors."""
    from ..model import save_model

    sel = record.get("val", record["train"])
    key = [sel["accuracy"] or 0.0, sel["auc"] if sel["auc"] is not None else 0.0,
           -(sel["loss"] or 0.0)]
    improved = rs.best["key"] is None or key > rs.best["key"]
    if improved:
        rs.best = {"epoch": epoch + 1, "key": key, "metrics": record}
        best_model = _with_provenance(rs.model, ctx.model_cfg, ctx.cfg, record, ctx.rows,
                                      ctx.splits, ctx.labels_csv, ctx.command, ctx.t_start,
                                      epoch + 1, rs.init_info, ctx.stain_reference)
        save_model(best_model, ctx.run / MODEL, overwrite=True)
    return improved


def test_best_model(ctx: RunContext, rs: RunState,
                    ) -> Generator[EpochEvent, None, dict[str, Any] | None]:
    """The best model on the test split: test_metrics.json (written last: it marks a
    finished run); yields two "test" events; returns the document (None without a model)."""
    from ..model import load_model, sha256_of

    cfg, run, model = ctx.cfg, ctx.run, rs.model
    if not (run / MODEL).is_file():
        return None
    n_test = len(ctx.splits["test"])
    yield EpochEvent(cfg.epochs - 1, cfg.epochs, "test",
                     message=f"testing the best model (epoch {rs.best['epoch']}) on "
                             f"{n_test} test slide{'s' if n_test != 1 else ''}")
    model_sha = sha256_of(run / MODEL)
    model.load_state_dict(load_model(run / MODEL).state_dict())
    test_bags = ctx.bags["test"]
    te_labels, te_probs = (slide_probs(ctx, model, test_bags, embed(ctx, model, test_bags))
                           if test_bags else (np.zeros(0, int), np.zeros((0, ctx.n_classes))))
    test_doc = _test_document(test_bags, ctx.splits["test"], te_labels, te_probs,
                              ctx.class_names, rs.best["epoch"], cfg.epochs, model_sha)
    _write_json(run / TEST_METRICS, test_doc)
    yield EpochEvent(cfg.epochs - 1, cfg.epochs, "test", metrics=test_doc,
                     elapsed_s=time.perf_counter() - ctx.t_start,
                     message=_test_line(test_doc))
    return test_doc


def _test_document(slides: list[SlideBags], items, labels: np.ndarray, probs: np.ndarray,
                   class_names: list[str], best_epoch: int, epochs: int, model_sha: str,
                   ) -> dict[str, Any]:
    from ..metrics import classification_metrics

    with_bags = {s.item.slide for s in slides}
    metrics = classification_metrics(labels, probs, class_names) if len(labels) else None
    return {
        "split": "test", "best_epoch": best_epoch, "epochs": epochs, "model_sha256": model_sha,
        "class_names": list(class_names), "n_slides": len(items),
        "no_tissue_bags": sorted(i.slide for i in items if i.slide not in with_bags),
        "metrics": metrics,
        "slides": [{"slide": s.item.slide, "case": s.item.case, "label": int(s.item.label),
                    "n_bags": int(len(s.boxes)), "probs": [float(v) for v in p]}
                   for s, p in zip(slides, probs)],
    }
