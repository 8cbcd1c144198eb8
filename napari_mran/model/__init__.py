"""The MRAN model: definition, checkpoints and training losses.

Importing this package imports torch. See ``docs/model.md``.

Public API::

    MRANConfig(n_classes=2, class_names=None, width=1.0, hidden=32, threshold=0.1,
               bag_px=2048, input_px=1024, patch_px=128, grid=8, cell_grid=4,
               provenance={}, tiling={})
    MRAN(config=None)
        .config, .upstream, .downstream
        .forward_bags(x, top_k_patches=None) -> BagOutput
        .forward_slide(embeddings) -> SlideOutput
    load_model(path_or_name, *, which="best", max_bytes=2 GiB) -> MRAN
    save_model(model, path, *, overwrite=False) -> Path
    sha256_of(path) -> str
    init_backbone_from(model_or_backbone, path, *, max_bytes=2 GiB) -> sha256 hex
    torchvision_key(trunk_key) -> str
    upstream_loss, downstream_loss, ramp, class_weights_from_counts
"""

from __future__ import annotations

from napari_mran.model.checkpoint import (
    DEFAULT_MAX_BYTES,
    DEMO_MODEL_PATH,
    FORMAT_NAME,
    FORMAT_VERSION,
    init_backbone_from,
    load_model,
    reference_key,
    save_model,
    sha256_of,
    torchvision_key,
)
from napari_mran.model.losses import class_weights_from_counts, downstream_loss, ramp, upstream_loss
from napari_mran.model.mran import (
    MRAN,
    BagOutput,
    DownstreamBranch,
    MRANConfig,
    SlideOutput,
    UpstreamBranch,
    attention_from_norms,
    normalise_weights,
)
from napari_mran.model.resnet import BasicBlock, ResNetTrunk, stage_widths

__all__ = [
    "MRAN",
    "MRANConfig",
    "BagOutput",
    "SlideOutput",
    "UpstreamBranch",
    "DownstreamBranch",
    "ResNetTrunk",
    "BasicBlock",
    "stage_widths",
    "attention_from_norms",
    "normalise_weights",
    "load_model",
    "save_model",
    "sha256_of",
    "reference_key",
    "init_backbone_from",
    "torchvision_key",
    "DEFAULT_MAX_BYTES",
    "DEMO_MODEL_PATH",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "upstream_loss",
    "downstream_loss",
    "ramp",
    "class_weights_from_counts",
]
