#!/usr/bin/env python
"""Benchmark: dynamic-size pixels-in detector graphs vs torchvision eager, same process, same machine.

1. For each model (default-configured: its own min_size/max_size, no reconfiguration) and
   each image size: ``Detector.predict(img)`` on the dynamic pixels-in ONNX graph (ONNX
   Runtime) against eager ``model([img])``, interleaved blocks, medians, ratio.
2. ``Detector.predict`` at 1080p and 4K: the in-graph front end (pixels-in graph) against the
   numpy front end (the same network exported with ``--input tensor``, preprocessed by
   ``deploykit.runtime.preprocess``), interleaved.
3. Where ONNX Runtime's time goes: its profile, share per op type, and the front end's share.

    python scripts/bench_dynamic.py --json bench_dynamic.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _timing import interleaved  # scripts/, on the path when run as a script
from PIL import Image

from deploykit.compare.reference import calibrate_batchnorm, reference_detections
from deploykit.data.splits import held_out_images
from deploykit.export.detector import export_detector
from deploykit.models import build, resolve_checkpoint
from deploykit.runtime import Detector
from deploykit.runtime.profile import kernel_times, op_shares

MODELS = ["fasterrcnn_resnet50_fpn", "fasterrcnn_demo"]
SIZES = [(480, 640), (750, 1000), (1080, 1920), (800, 800)]  # (height, width)
FRONT_END_SIZES = [(1080, 1920), (2160, 3840)]


def profile(path: Path, feed: dict, threads: int, runs: int = 3) -> tuple[list[tuple[str, float]], float]:
    """(share per op type, share of the front-end nodes named ``pre/...``) of ORT's kernel time."""
    times = kernel_times(path, feed, threads, runs)
    total = sum(t.us for t in times) or 1.0
    return op_shares(times), 100 * sum(t.us for t in times if t.node.startswith("pre/")) / total


def scene(h: int, w: int, i: int = 0) -> np.ndarray:
    """A held-out synthetic scene resized to h x w (objects the demo model detects)."""
    return np.asarray(Image.fromarray(held_out_images(i + 1)[i]).resize((w, h), Image.BILINEAR))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=5, help="timed runs per side and block (2 blocks; median)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, fronts, profiles = [], [], {}
    with tempfile.TemporaryDirectory() as d:
        for name in args.models.split(","):
            ckpt = resolve_checkpoint(name, None)
            model = build(name, ckpt)  # default-configured
            if ckpt is None:
                calibrate_batchnorm(model, 512, torch.Generator().manual_seed(0))
            pix, ten = Path(d) / f"{name}_image.onnx", Path(d) / f"{name}_tensor.onnx"
            t0 = time.perf_counter()
            export_detector(model, pix, input="image")
            export_s = time.perf_counter() - t0
            export_detector(model, ten, input="tensor")
            det = Detector(pix, threads=args.threads)
            for h, w in SIZES:
                img = scene(h, w)
                eager, onnx_s = interleaved(lambda: reference_detections(model, img), lambda: det.predict(img),
                                            args.iters)
                r = {"model": name, "image": f"{w}x{h}", "eager_ms": eager * 1e3, "onnxruntime_ms": onnx_s * 1e3,
                     "speedup": eager / onnx_s, "export_s": export_s,
                     "resized": list(det.preprocessing.resized_size(h, w))}
                rows.append(r)
                print(f"{name:26s} {r['image']:>10s} -> {r['resized'][1]}x{r['resized'][0]}  eager "
                      f"{r['eager_ms']:8.1f} ms  ORT {r['onnxruntime_ms']:8.1f} ms  speedup {r['speedup']:.2f}x",
                      flush=True)
            ops, front_pct = profile(pix, {"image": scene(750, 1000)[None]}, args.threads)
            profiles[name] = {"image": "1000x750", "top_ops_pct": ops[:10], "front_end_pct": front_pct}
            print(f"  ORT profile {name} at 1000x750: front end {front_pct:.1f}% | "
                  + ", ".join(f"{op} {pct:.1f}%" for op, pct in ops[:8]), flush=True)
            with Detector(ten, threads=args.threads) as numpy_path:
                for h, w in FRONT_END_SIZES:
                    img = scene(h, w)
                    graph_s, numpy_s = interleaved(lambda: det.predict(img), lambda: numpy_path.predict(img),
                                                   args.iters)
                    f = {"model": name, "image": f"{w}x{h}", "in_graph_ms": graph_s * 1e3,
                         "numpy_front_end_ms": numpy_s * 1e3, "ratio": numpy_s / graph_s}
                    fronts.append(f)
                    print(f"  Detector.predict {f['image']:>10s}: in-graph front end {f['in_graph_ms']:8.1f} ms, "
                          f"numpy front end {f['numpy_front_end_ms']:8.1f} ms ({f['ratio']:.2f}x)", flush=True)
            det.close()
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "results": rows, "front_end": fronts,
                                         "profiles": profiles}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
