"""The provenance of a trained model: how, from what and by which versions it was trained."""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from .config import TrainConfig
from .stain import stain_provenance


def _with_provenance(model, model_cfg, cfg: TrainConfig, record, rows, splits, labels_csv,
                     command, t_start, epoch, init_info=None, stain_reference=None):
    """A copy of the model whose config records how it was trained (and which carries
    the training cohort's stain reference, ``stain_reference``, when it has one)."""
    import copy
    import hashlib

    import torch

    from .._version import __version__

    prov = {
        "trained_by": f"napari-mran {__version__} train",
        "command": command or " ".join(sys.argv),
        "train_config": asdict(cfg),
        "labels_csv": str(labels_csv),
        "labels_sha256": hashlib.sha256(Path(labels_csv).read_bytes()).hexdigest(),
        "n_slides": {k: len(v) for k, v in splits.items()},
        "best_epoch": epoch,
        "metrics": record,
        "train_time_s": round(time.perf_counter() - t_start, 1),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    if init_info is not None:
        prov["init_backbone"] = dict(init_info)  # path and sha256 of the initial trunk weights
    prov["stain"] = stain_provenance(cfg, stain_reference)
    m = copy.deepcopy(model).float().cpu().to(memory_format=torch.contiguous_format)
    m._config = replace(model_cfg, provenance=prov)
    m.stain_reference = stain_reference
    return m
