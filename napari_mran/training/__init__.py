"""Training MRAN on labelled slides: splits, cached bags, the two-branch trainer."""

from .splits import LabelledSlide, LabelsError, make_splits, read_labels, read_split_file
from .trainer import EpochEvent, TrainConfig, TrainSummary, train

__all__ = ["EpochEvent", "LabelledSlide", "LabelsError", "TrainConfig", "TrainSummary",
           "make_splits", "read_labels", "read_split_file", "train"]
