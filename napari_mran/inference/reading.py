"""Reading bags: where to read a bag from, one bag's model input, and the whole slide at
low resolution for the tissue and input checks."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..slide import Slide


@dataclass
class ReadPlan:
    """Where a bag is read from and how it becomes the model input."""

    bag_px: int
    level: int                 # pyramid level the bag is read from
    read_px: int               # side read at that level
    resize: str                # "none", "reduce2", "box"
    input_px: int


def plan_reads(slide: Slide, bag_px: int, input_px: int) -> ReadPlan:
    """Where to read a bag from so that it arrives as input_px x input_px.

    Prefers a level whose downsample equals bag_px / input_px (within 1 %); else the
    closest finer level, then an exact 2x area reduce (PIL ``reduce``) or a box resize.
    """
    target = bag_px / input_px
    for lv, d in enumerate(slide.level_downsamples):
        if abs(d - target) / target < 0.01:
            return ReadPlan(bag_px, lv, input_px, "none", input_px)
    lv = slide.get_best_level_for_downsample(target)
    d = slide.level_downsamples[lv]
    read_px = int(round(bag_px / d))
    if read_px == 2 * input_px:
        return ReadPlan(bag_px, lv, read_px, "reduce2", input_px)
    return ReadPlan(bag_px, lv, read_px, "box", input_px)


def read_bag(slide: Slide, box: np.ndarray, plan: ReadPlan) -> tuple[np.ndarray, list[str] | None, float]:
    """(input_px, input_px, 3) uint8 of one bag, failures, fraction of pixels with data."""
    from PIL import Image

    rr = slide.read_region_ex((int(box[0]), int(box[1])), plan.level,
                              (plan.read_px, plan.read_px), on_error="record")
    img = rr.pixels
    if plan.resize == "reduce2":
        img = np.asarray(Image.fromarray(img).reduce(2))
    elif plan.resize == "box":
        img = np.asarray(Image.fromarray(img).resize((plan.input_px, plan.input_px),
                                                     Image.Resampling.BOX))
    valid_fraction = 1.0 if rr.valid is None else float(rr.valid.mean())
    return img, rr.failed_tiles, valid_fraction


def tissue_lowres(slide: Slide, max_side: int = 8192) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float]]:
    """Low-resolution whole-slide RGB for the tissue mask, from the smallest level.

    Never resizes a whole-slide thumbnail: the smallest stored level is read directly;
    only a slide whose smallest level is larger than ``max_side`` uses the lazily
    computed display pyramid (bounded streaming).
    """
    w0, h0 = slide.dimensions
    lv = slide.smallest_level
    lw, lh = slide.level_dimensions[lv]
    if max(lw, lh) <= max_side:
        rr = slide.read_region_ex((0, 0), lv, (lw, lh), on_error="record")
        valid = rr.valid
        img = rr.pixels
    else:
        import dask
        arr = slide.display_levels[-1]
        with dask.config.set(scheduler="threads"):
            img = np.asarray(arr.compute())
        valid = None
        lh, lw = img.shape[:2]
    return img, valid, (w0 / lw, h0 / lh)


@dataclass
class BagBatch:
    """Bags that came out of :class:`BagStream` together."""

    indices: list[int]            # bags read without error, in order
    images: list[np.ndarray]      # their (input_px, input_px, 3) uint8 inputs
    failed: dict[int, str]        # bag index -> why it could not be read
    no_data: dict[int, float]     # bag index -> fraction of its pixels without data
    done: int                     # bags finished so far (read or failed)


class BagStream:
    """Decode bags ahead of the model in a thread pool (bounded prefetch) and hand them
    out in batches of ``batch_size`` readable bags, in order -- the one bag-batch iterator
    of analysis, faithfulness re-reads and training.

    ``read(item)`` returns ``(image, failures or None, valid fraction)`` for each of
    ``items`` (:func:`read_bag` of a box, for analysis).  ``batch_size`` may be changed
    between batches (the engine halves it on CUDA out-of-memory).  Closing the
    iteration cancels what is still queued.
    """

    def __init__(self, items: Sequence[Any] | np.ndarray, read: Callable[[Any], tuple],
                 batch_size: int, *,
                 workers: int, prefetch: int) -> None:
        self.items, self.read = items, read
        self.batch_size, self.workers, self.prefetch = batch_size, workers, prefetch

    @classmethod
    def of_boxes(cls, slide: Slide, boxes: np.ndarray, plan: ReadPlan, batch_size: int, *,
                 workers: int, prefetch: int, read: Callable[..., tuple] | None = None
                 ) -> BagStream:
        """The bags at ``boxes`` of one slide (``read`` defaults to :func:`read_bag`)."""
        reader = read or read_bag
        return cls(boxes, lambda box: reader(slide, box, plan), batch_size, workers=workers,
                   prefetch=prefetch)

    def __iter__(self) -> Generator[BagBatch, None, None]:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        n = len(self.items)
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="mran-bag")
        pending: deque = deque()
        nxt = 0

        def submit() -> None:
            nonlocal nxt
            pending.append((nxt, pool.submit(self.read, self.items[nxt])))
            nxt += 1

        try:
            while nxt < n or pending:
                while nxt < n and len(pending) < self.prefetch:
                    submit()
                batch = BagBatch([], [], {}, {}, 0)
                while pending and len(batch.indices) < self.batch_size:
                    i, fut = pending.popleft()
                    img, failures, valid_fraction = fut.result()
                    batch.no_data[i] = 1.0 - valid_fraction
                    if failures:
                        batch.failed[i] = "; ".join(failures[:3])
                    else:
                        batch.indices.append(i)
                        batch.images.append(img)
                    if nxt < n:
                        submit()
                batch.done = nxt - len(pending)
                yield batch
        finally:
            for _, fut in pending:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
