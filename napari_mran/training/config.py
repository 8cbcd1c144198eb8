"""The training options, progress events and summary, and the file names of a run folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

CHECKPOINT = "checkpoint.pt"
MODEL = "model.safetensors"
TEST_METRICS = "test_metrics.json"
#: ``--stain-augment`` choices
STAIN_AUGMENTATIONS = ("off", "hed")


@dataclass
class TrainConfig:
    """Training options (the defaults are the reference constants where it has them)."""

    epochs: int = 10
    width: float = 1.0
    class_names: list[str] | None = None
    lr: float = 1e-4                 # Adam, upstream (one-cycle max LR) and downstream
    lam: float = 5.0                 # Lambda
    batch_size: int = 4              # bags per upstream step
    step_lr_after: int = 5           # downstream LR x0.5 once, from this epoch on (MultiStepLR milestone)
    seed: int = 0
    n_folds: int = 5
    fold: int = 0
    split_file: str | None = None
    bag_px: int = 2048
    tissue_method: str = "reference"
    threshold: float = 0.1
    flip: bool = True
    max_bags_per_slide: int | None = None  # a seeded subset per epoch (None: all bags)
    device: str = "auto"
    workers: int = 4
    detach_attention: Literal["reference", "none", "all"] = "reference"
    init_backbone: str | None = None  # torchvision-layout ResNet-18 state dict for the trunk
    # stain handling (docs/stain.md, "Training"): bags normalised to the training cohort's
    # reference (stored in the model), and/or HED jitter of the upstream bags
    stain_normalize: str = "off"     # off | macenko | reinhard
    stain_augment: str = "off"       # off | hed
    stain_augment_sigma: float = 0.05  # HED-light (Tellez et al. 2019): alpha ~ U[1-s, 1+s]
    stain_augment_bias: float = 0.05   # beta ~ U[-b, b] (OD, natural log, unit stain vector)

    def __post_init__(self) -> None:
        from ..vocab import STAIN_NORMALIZATIONS, check_choice

        check_choice("stain_normalize", self.stain_normalize, STAIN_NORMALIZATIONS)
        check_choice("stain_augment", self.stain_augment, STAIN_AUGMENTATIONS)
        for name in ("stain_augment_sigma", "stain_augment_bias"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1), not {v!r}")


@dataclass
class EpochEvent:
    """A training progress event."""

    epoch: int                       # 0-based
    epochs: int
    stage: str                       # "prepare", "upstream", "downstream", "validate", "epoch"
    step: int = 0
    steps: int = 0
    loss: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    eta_s: float | None = None
    message: str = ""


@dataclass
class TrainSummary:
    run_dir: Path
    model_path: Path
    best_epoch: int
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]]
    test: dict[str, Any] | None = None   # test_metrics.json: the best model on the test split
