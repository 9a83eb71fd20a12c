#!/usr/bin/env python
"""Overhead of deploykit's ``Session.run`` over a bare ``onnxruntime.InferenceSession.run``.

Same ONNX file (the demo detector, batch 1), same feed, same session options, same process;
blocks of runs alternate between the two so both see the same machine load. Prints the
median of each and the overhead in percent.

    python scripts/bench_session_overhead.py [--runs 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=200, help="timed runs per side (in 4 alternating blocks)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    from deploykit import models
    from deploykit.data.splits import held_out_images
    from deploykit.export.detector import export_detector
    from deploykit.runtime import load
    from deploykit.runtime.preprocess import preprocess_batch

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "demo.onnx"
        export_detector(models.build("fasterrcnn_demo", min_size=320, max_size=320), path, input_size=(320, 320))
        session = load(path, threads=args.threads)
        from deploykit.runtime.preprocess import Preprocessing

        pre = Preprocessing.from_manifest(session.manifest["preprocessing"])
        images, sizes, _ = preprocess_batch([held_out_images(1)[0]], pre)
        feed = {"images": images, "image_sizes": sizes}
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        bare = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in bare.get_outputs()]
        for _ in range(10):
            bare.run(names, feed)
            session.run(feed)
        t_bare, t_dk = [], []
        block = max(1, args.runs // 4)
        for _ in range(4):
            for _ in range(block):
                t = time.perf_counter()
                bare.run(names, feed)
                t_bare.append(time.perf_counter() - t)
            for _ in range(block):
                t = time.perf_counter()
                session.run(feed)
                t_dk.append(time.perf_counter() - t)
        mb, md = statistics.median(t_bare), statistics.median(t_dk)
        print(f"bare InferenceSession.run {mb * 1e3:.3f} ms, deploykit Session.run {md * 1e3:.3f} ms, "
              f"overhead {100 * (md - mb) / mb:+.2f}% (medians of {len(t_bare)} runs each)")
        # the validation alone, without the model, for scale
        t = time.perf_counter()
        for _ in range(1000):
            session._validate(feed)
        print(f"input validation alone: {(time.perf_counter() - t) * 1e3:.1f} µs per call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
