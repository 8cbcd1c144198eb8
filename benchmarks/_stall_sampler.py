"""Where the event loop stalls: a thread samples the main thread's stack while it is late.

A 10 ms QTimer on the main thread stamps each tick (:meth:`StallSampler.tick`); a daemon
thread wakes every *period* ms and, when the last tick is older than *late_ms*, records
the main thread's Python stack.  :meth:`report` prints the frames seen most often in
those samples (each sample ~ *period* ms of stall), so a stall is attributed to the
code that ran during it.  Used by the GUI benchmarks with ``--profile``.
"""

from __future__ import annotations

import collections
import sys
import threading
import time


class StallSampler:
    def __init__(self, late_ms: float = 40.0, period_ms: float = 5.0):
        self.late = late_ms / 1000.0
        self.period = period_ms / 1000.0
        self.main = threading.main_thread().ident
        self.last = time.perf_counter()
        self.t0 = self.last
        self.samples: list[tuple[float, tuple[str, ...]]] = []  # (ms since start, stack)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def tick(self) -> None:
        self.last = time.perf_counter()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            if time.perf_counter() - self.last < self.late:
                continue
            frame = sys._current_frames().get(self.main)
            stack = []
            while frame is not None:
                code = frame.f_code
                stack.append(f"{_short(code.co_filename)}:{code.co_name}")
                frame = frame.f_back
            self.samples.append(((time.perf_counter() - self.t0) * 1000, tuple(stack)))

    def report(self, top: int = 25, lo: float = 0.0, hi: float = float("inf")) -> str:
        """The frames (any depth) present in the most stall samples taken between *lo*
        and *hi* ms after the start."""
        incl: collections.Counter = collections.Counter()
        leaf: collections.Counter = collections.Counter()
        chosen = [s for t, s in self.samples if lo <= t < hi]
        for stack in chosen:
            for fr in set(stack):
                incl[fr] += 1
            if stack:
                leaf[stack[0]] += 1
        ms = self.period * 1000
        lines = [f"{len(chosen)} samples while late (~{len(chosen) * ms:.0f} ms)",
                 "inclusive:"]
        lines += [f"  {n * ms:7.0f} ms  {fr}" for fr, n in incl.most_common(top)]
        lines += ["leaf:"] + [f"  {n * ms:7.0f} ms  {fr}" for fr, n in leaf.most_common(top)]
        return "\n".join(lines)


def stall_paths(sampler: StallSampler, lo: float = 0.0, hi: float = float("inf"),
                min_ms: float = 60.0, depth: int = 8) -> str:
    """Each stall (a run of consecutive samples) of at least *min_ms*: its time, length
    and the call path shared by most of its samples (innermost *depth* frames), plus its
    most frequent leaves."""
    runs: list[list[tuple[float, tuple[str, ...]]]] = []
    for t, stack in sampler.samples:
        if not lo <= t < hi:
            continue
        if runs and t - runs[-1][-1][0] <= 3 * sampler.period * 1000:
            runs[-1].append((t, stack))
        else:
            runs.append([(t, stack)])
    out = []
    for run in runs:
        length = run[-1][0] - run[0][0] + sampler.late * 1000
        if length < min_ms:
            continue
        common = collections.Counter(fr for _t, st in run for fr in set(st))
        path = [fr for fr in run[len(run) // 2][1] if common[fr] >= len(run) / 2][:depth]
        leaves = collections.Counter(st[0] for _t, st in run if st).most_common(4)
        out.append(f"  stall at {run[0][0] - sampler.late * 1000:.0f} ms, ~{length:.0f} ms: "
                   + " < ".join(path) + "\n      leaves: "
                   + ", ".join(f"{fr} x{n}" for fr, n in leaves))
    return "\n".join(out)


def _short(path: str) -> str:
    for mark in ("site-packages/", "napari_mran/"):
        if mark in path:
            return path.split(mark, 1)[1]
    return path.rsplit("/", 1)[-1]
