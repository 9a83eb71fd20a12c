#!/usr/bin/env python
"""Benchmark: exported Faster R-CNN on ONNX Runtime vs torchvision eager, same process, same machine.

For each model, score threshold and image: export FP32, then alternate blocks of eager
``model([img])`` and ``Detector.predict(img)`` (both end to end: resize, normalise, network,
NMS, rescale) so both see the same machine load; report medians and the ratio. Then profile
ONNX Runtime and say where its time goes (share per op type).

Images: ``square`` fills the canvas (the network sees the same H×W on both sides);
``heldout`` is a non-square held-out image — torchvision then runs on the image padded to a
multiple of 32 while the fixed-shape graph always runs the whole canvas.

    python scripts/bench_detector.py --json bench_detector.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deploykit.compare.reference import calibrate_batchnorm, reference_detections
from deploykit.data.splits import held_out_images
from deploykit.export.detector import export_detector
from deploykit.models import build, resolve_checkpoint
from deploykit.runtime import Detector
from deploykit.runtime.profile import kernel_times, op_shares

CASES = [
    ("fasterrcnn_resnet50_fpn", 800),
    ("fasterrcnn_mobilenet_v3_large_320_fpn", 320),
    ("fasterrcnn_demo", 320),
]


def bench_case(name: str, size: int, thresh: float | None, image: np.ndarray, iters: int, threads: int,
               workdir: Path) -> dict:
    kwargs = {"min_size": size, "max_size": size}
    if thresh is not None:
        kwargs["box_score_thresh"] = thresh
    ckpt = resolve_checkpoint(name, None)
    model = build(name, ckpt, **kwargs)
    if ckpt is None:
        calibrate_batchnorm(model, size, torch.Generator().manual_seed(0))
    path = workdir / f"{name}_{thresh}.onnx"
    t0 = time.perf_counter()
    export_detector(model, path, input_size=(size, size))
    export_s = time.perf_counter() - t0
    det = Detector(path, threads=threads)
    reference_detections(model, image)
    det.predict(image)  # warm-up both
    # Interleaved blocks (eager, ORT, eager, ORT): both sides see the same machine load, and
    # ONNX Runtime's spinning worker threads never overlap a timed torch run.
    t_eager, t_ort = [], []
    ref = got = None
    for _ in range(2):
        for _ in range(iters):
            t = time.perf_counter()
            ref = reference_detections(model, image)
            t_eager.append(time.perf_counter() - t)
        time.sleep(0.2)
        for _ in range(iters):
            t = time.perf_counter()
            got = det.predict(image)
            t_ort.append(time.perf_counter() - t)
        time.sleep(0.2)
    n_eager, n_ort = len(ref[1]), len(got)
    me, mo = statistics.median(t_eager), statistics.median(t_ort)
    # model-only feed for the profile
    from deploykit.runtime.preprocess import Preprocessing, preprocess_batch

    pre = Preprocessing.from_manifest(det.session.manifest["preprocessing"])
    images, sizes, _ = preprocess_batch([image], pre)
    feed = {"images": images, "image_sizes": sizes}
    ops = op_shares(kernel_times(path, feed, threads))
    det.close()
    return {"model": name, "size": size, "score_threshold": model.roi_heads.score_thresh,
            "weights": "bundled checkpoint" if ckpt else "random (BN-calibrated)",
            "eager_ms": me * 1e3, "onnxruntime_ms": mo * 1e3, "speedup": me / mo,
            "detections_eager": n_eager, "detections_onnx": n_ort, "export_s": export_s,
            "profile_top_ops_pct": ops[:8]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=5, help="timed iterations per side and block (2 blocks; median)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", default=",".join(n for n, _ in CASES), help="comma-separated subset")
    p.add_argument("--images", default="square,heldout", help="which images: square, heldout or both")
    p.add_argument("--json", type=Path, default=None, help="write results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from PIL import Image

    heldout = held_out_images(1)[0]
    wanted = set(args.models.split(","))
    kinds = args.images.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name, size in CASES:
            if name not in wanted:
                continue
            images = {"square": np.asarray(Image.fromarray(heldout).resize((size, size), Image.BILINEAR)),
                      "heldout": heldout}
            for kind, thresh in [(k, t) for k in kinds for t in (None, 0.0)]:
                image = images[kind]
                r = bench_case(name, size, thresh, image, args.iters, args.threads, Path(d))
                r["image"] = f"{kind} {image.shape[0]}x{image.shape[1]}"
                rows.append(r)
                ops = ", ".join(f"{op} {pct:.0f}%" for op, pct in r["profile_top_ops_pct"][:5])
                print(f"{name:38s} {r['image']:15s} thr={r['score_threshold']:<5} eager {r['eager_ms']:8.1f} ms  "
                      f"ORT {r['onnxruntime_ms']:8.1f} ms  speedup {r['speedup']:.2f}x  "
                      f"dets {r['detections_eager']}/{r['detections_onnx']}  | {ops}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
