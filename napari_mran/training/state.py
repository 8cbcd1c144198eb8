"""What the steps of a training run share: the fixed context of the run (options, data,
device, bag reader) and its mutable state (model, optimisers, schedulers, bag weights,
history, best epoch), which the checkpoint saves and a resume restores."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import TrainConfig
from .data import BagReader, SlideBags
from .splits import LabelledSlide


@dataclass
class RunContext:
    """What stays fixed during a run."""

    cfg: TrainConfig
    run: Path                          # the run folder
    labels_csv: str | os.PathLike
    command: str | None
    t_start: float                     # time.perf_counter() at the start of the run
    rows: list[LabelledSlide]
    splits: dict[str, list[LabelledSlide]]
    class_names: list[str]
    cfg_json: str                      # the options as train_config.json holds them
    model_cfg: Any = None              # MRANConfig
    dev: Any = None                    # torch.device
    bags: dict[str, list[SlideBags]] = field(default_factory=dict)  # per split
    class_w: Any = None                # class weights of the losses (tensor on dev)
    reader: BagReader | None = None
    steps_per_epoch: int = 0           # upstream steps (bag batches) per epoch
    stain_reference: dict[str, Any] | None = None  # the cohort's {"method", "reference"}

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def use_amp(self) -> bool:
        return self.dev.type == "cuda"

    @property
    def train_slides(self) -> list[SlideBags]:
        return self.bags["train"]

    def bag_reader(self) -> BagReader:
        assert self.reader is not None, "the bag reader is made with the bags"
        return self.reader


@dataclass
class RunState:
    """What the epochs change (and the checkpoint saves)."""

    model: Any                         # MRAN, on the run's device
    opt_up: Any                        # Adam of the upstream branch
    opt_down: Any                      # Adam of the downstream branch
    sched_up: Any                      # OneCycleLR, stepped per upstream step
    sched_down: Any                    # MultiStepLR (old runs: StepLR), stepped per epoch
    scaler: Any                        # GradScaler (CUDA) or None
    weights: dict[str, np.ndarray]     # bag weights w per training slide (mean 1)
    history: list[dict[str, Any]] = field(default_factory=list)   # one record per epoch
    best: dict[str, Any] = field(
        default_factory=lambda: {"epoch": -1, "key": None, "metrics": {}})
    start_epoch: int = 0
    init_info: dict[str, str] | None = None  # path and sha256 of --init-backbone
