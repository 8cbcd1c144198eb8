"""A small real cohort for the Cohort review tests and benchmark: synthetic slides and
one corrupt file (a failed slide), predicted by the bundled demo model with
``predict_cohort`` (the output folder ``napari-mran predict`` writes)."""

from __future__ import annotations

from pathlib import Path

from napari_mran.cohort import run_cohort
from napari_mran.synthetic import make_cohort


def build_cohort(root: Path, n: int = 4, width: int = 4096, height: int = 2048) -> Path:
    """*n* synthetic slides + ``broken.svs`` (fails) under ``root/slides``, predicted
    into ``root/pred`` (returned)."""
    slides = root / "slides"
    make_cohort(slides, n, seed=7, width=width, height=height)
    (slides / "broken.svs").write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    out = root / "pred"
    run_cohort([slides], "demo", out, workers=0)
    return out
