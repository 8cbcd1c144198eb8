"""Training MRAN on labelled slides: splits, cached bags, the two-branch trainer, repeats."""

from .repeats import RepeatEvent, RepeatsSummary, train_repeats
from .splits import (LabelledSlide, LabelsError, SplitImport, make_splits, parse_ratio,
                     ratio_split, read_authors_split, read_labels, read_split_file, repeat_seed)
from .trainer import EpochEvent, TrainConfig, TrainSummary, finished_run, train

__all__ = ["EpochEvent", "LabelledSlide", "LabelsError", "RepeatEvent", "RepeatsSummary",
           "SplitImport", "TrainConfig", "TrainSummary", "finished_run", "make_splits",
           "parse_ratio", "ratio_split", "read_authors_split", "read_labels", "read_split_file",
           "repeat_seed", "train", "train_repeats"]
