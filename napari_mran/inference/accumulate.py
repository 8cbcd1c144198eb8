"""Collecting the per-bag outputs of a slide as batches finish."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


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


class BagOutputs:
    """Preallocated (n, ...) arrays of every upstream output, failures and no-data."""

    def __init__(self, boxes: np.ndarray, cfg: Any, embedding_dim: int) -> None:
        n, C, P, K = len(boxes), cfg.n_classes, cfg.n_patches, cfg.n_cells
        self.boxes = boxes
        self.embedding = np.zeros((n, embedding_dim), np.float32)
        self.bag_probs = np.zeros((n, C), np.float32)
        self.alpha = np.zeros((n, P), np.float32)
        self.patch_probs = np.zeros((n, P, C), np.float32)
        self.beta = np.zeros((n, P, K), np.float32)
        self.cell_probs = np.zeros((n, P, K, C), np.float32)
        self.ok = np.ones(n, bool)
        self.failed_reasons: dict[int, str] = {}
        self.no_data = np.zeros(n, np.float32)

    @property
    def n_failed(self) -> int:
        return int((~self.ok).sum())

    def fail(self, failed: dict[int, str], no_data: dict[int, float]) -> None:
        for i, frac in no_data.items():
            self.no_data[i] = frac
        for i, reason in failed.items():
            self.ok[i] = False
            self.failed_reasons[i] = reason

    def add(self, indices: list[int], out: dict[str, np.ndarray]) -> BagBatchResult:
        idx = np.asarray(indices)
        self.embedding[idx] = out["embedding"]
        self.bag_probs[idx] = out["bag_probs"]
        self.alpha[idx] = out["alpha"]
        self.patch_probs[idx] = out["patch_probs"]
        self.beta[idx] = out["beta"]
        self.cell_probs[idx] = out["cell_probs"]
        return BagBatchResult(idx, self.boxes[idx], self.bag_probs[idx], self.alpha[idx],
                              self.patch_probs[idx], self.beta[idx], self.cell_probs[idx])
