"""Review marks: a pathologist's agree / disagree / class-label marks on bags and
patches of a result, saved atomically beside the results store (docs/review.md)."""
