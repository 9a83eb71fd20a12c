#!/usr/bin/env python
"""Throughput of one shared Detector served by 1, 2, 4 and 8 Python threads (demo detector).

ONNX Runtime sessions are thread-safe; each session here uses 1 intra-op thread so the
Python threads are what runs in parallel. Prints images/s per thread count.

    python scripts/bench_threads.py [--requests 160]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=160, help="requests per measurement")
    args = p.parse_args(argv)

    from deploykit import models
    from deploykit.data.splits import held_out_images
    from deploykit.export.detector import export_detector
    from deploykit.runtime import Detector

    images = held_out_images(16)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "demo.onnx"
        export_detector(models.build("fasterrcnn_demo", min_size=320, max_size=320), path, input_size=(320, 320))
        with Detector(path, threads=1) as det:
            det.predict(images[0])
            base = None
            for n in (1, 2, 4, 8):
                per = args.requests // n

                def worker(t: int) -> None:
                    for i in range(per):
                        det.predict(images[(t * per + i) % len(images)])

                threads = [threading.Thread(target=worker, args=(t,)) for t in range(n)]
                start = time.perf_counter()
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()
                rate = per * n / (time.perf_counter() - start)
                base = base or rate
                print(f"{n} thread(s): {rate:6.1f} images/s ({rate / base:.2f}x of 1 thread)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
