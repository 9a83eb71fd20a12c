"""Timing shared by the benchmark scripts (run as ``python scripts/<name>.py``, so this folder is on the path)."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def interleaved(a: Callable[[], object], b: Callable[[], object], iters: int, blocks: int = 2
                ) -> tuple[float, float]:
    """Median seconds of ``a()`` and ``b()``, timed in alternating blocks (both see the same machine load)."""
    ta: list[float] = []
    tb: list[float] = []
    a(), b()  # warm-up
    for _ in range(blocks):
        for fn, acc in ((a, ta), (b, tb)):
            for _ in range(iters):
                t = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t)
            time.sleep(0.2)
    return statistics.median(ta), statistics.median(tb)
