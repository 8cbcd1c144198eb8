"""Training data: per-slide tissue bags (cached), and a threaded loader that runs ahead."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AnalysisError
from ..inference.reading import BagStream, ReadPlan, plan_reads, read_bag
from ..inference.tissue_bags import find_tissue_bags
from ..slide import Slide, file_fingerprint, open_slide
from .splits import LabelledSlide


@dataclass
class SlideBags:
    """The tissue bags of one labelled slide."""

    item: LabelledSlide
    path: str
    boxes: np.ndarray   # (N, 4) level-0 x0, y0, x1, y1


def _fingerprint(path: str) -> str:
    size, head = file_fingerprint(path)
    return f"{size}:{head}"


def slide_bags(item: LabelledSlide, slides_dir: Path, cache_dir: Path, *, bag_px: int,
               tissue_method: str) -> SlideBags:
    """Tissue bags of a slide, read from ``cache_dir`` when the cache matches the file
    (size + sha256 of its first MiB) and the tissue parameters, else computed and cached."""
    path = str(slides_dir / item.slide)
    key = {"fingerprint": _fingerprint(path), "bag_px": bag_px, "method": tissue_method,
           "finder": 2}
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache = cache_dir / (hashlib.sha1(item.slide.encode()).hexdigest()[:16] + ".bags.json")
    if cache.is_file():
        try:
            data = json.loads(cache.read_text())
            if data.get("key") == key:
                return SlideBags(item, path, np.asarray(data["boxes"], np.int64).reshape(-1, 4))
        except (ValueError, KeyError):
            pass
    with open_slide(path) as slide:
        boxes = find_tissue_bags(slide, bag_px, tissue_method).boxes
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "slide": item.slide, "boxes": boxes.tolist()}))
    os.replace(tmp, cache)
    return SlideBags(item, path, boxes)


class BagReader:
    """Reads bags (1024 px model inputs) of many slides from a thread pool, in order;
    each slide is opened on first use and kept open until :meth:`close`.

    Stain steps (set by :func:`napari_mran.training.stain.training_stain`): with
    ``method`` other than "off", each slide's stains are fitted once on its smallest level
    when it is opened and every bag is normalised to ``stain_reference``; a job with an
    augmentation seed (its 5th element) is then HED-jittered by ``augment``."""

    def __init__(self, *, bag_px: int, input_px: int, workers: int = 4):
        self._open: dict[str, Slide] = {}
        self.bag_px, self.input_px = bag_px, input_px
        self.workers = workers
        self._plans: dict[str, ReadPlan] = {}
        self.method = "off"
        self.stain_reference: dict[str, Any] | None = None
        self.augment: Any = None              # HedJitter or None
        self._normalise: dict[str, Any] = {}  # path -> its bag normaliser (or None)

    def _slide(self, path: str) -> tuple[Slide, ReadPlan]:
        if path not in self._open:
            self._open[path] = open_slide(path)
            self._plans[path] = plan_reads(self._open[path], self.bag_px, self.input_px)
            self._normalise[path] = self._slide_stain(path, self._open[path])
        return self._open[path], self._plans[path]

    def _slide_stain(self, path: str, slide: Slide) -> Any:
        if self.method == "off":
            return None
        from ..inference.reading import tissue_lowres
        from ..inference.stain import slide_stain

        img, valid, _ = tissue_lowres(slide)
        return slide_stain(self.method, img, valid, self.stain_reference)[0]

    def _read(self, path: str, box: np.ndarray, flip: bool,
              seed: int | None = None) -> np.ndarray:
        slide, plan = self._slide(path)
        img, failures, _ = read_bag(slide, box, plan)
        if failures:
            raise AnalysisError(f"{path}: bag {box.tolist()} failed to decode: {failures[0]}")
        if self._normalise.get(path) is not None:
            img = self._normalise[path](img)
        if seed is not None and self.augment is not None:
            img = np.asarray(self.augment(img, np.random.default_rng(seed)))
        return np.ascontiguousarray(img[:, ::-1]) if flip else img

    def batches(self, jobs: Sequence[tuple], batch_size: int,
                ahead: int | None = None) -> Iterator[tuple[np.ndarray, list]]:
        """Yield (images (n, H, W, 3) uint8, tags) for jobs (path, box, flip, tag[, seed]),
        in order, through the engine's bag iterator
        (:class:`~napari_mran.inference.reading.BagStream`); ``seed``: HED jitter's."""
        from contextlib import closing

        for path, *_ in jobs:  # open slides up front on this thread (their metadata)
            self._slide(path)

        def read(job: tuple) -> tuple[np.ndarray, None, float]:
            seed = job[4] if len(job) > 4 else None
            return self._read(job[0], job[1], job[2], seed), None, 1.0

        stream = BagStream(jobs, read, batch_size, workers=self.workers,
                           prefetch=ahead or max(2 * batch_size, self.workers))
        with closing(iter(stream)) as batches:
            for batch in batches:
                yield np.stack(batch.images), [jobs[i][3] for i in batch.indices]

    def close(self) -> None:
        for s in self._open.values():
            s.close()
        self._open.clear()
        self._normalise.clear()
