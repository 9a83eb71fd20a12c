"""FP16/INT8 accuracy for every registered model, on ONNX Runtime, against FP32.

The demo models have trained weights: use ``deploykit eval`` / ``deploykit demo``
for mAP and PSNR against PyTorch. The full-size architectures can only be built
with random weights here (nothing can be downloaded), so mAP means nothing for
them. This script measures what the precision policies do to their outputs
instead:

* detectors: BatchNorm statistics calibrated on random images (otherwise every
  feature collapses; see deploykit.compare.reference.calibrate_batchnorm), then
  exported in raw mode (pre-NMS tensors). It reports the relative L2 error
  ``‖y − y_fp32‖ / ‖y_fp32‖`` of the RPN objectness and decoded proposals of
  every anchor (aligned tensors), and the share of post-NMS proposals matched
  by a proposal of the converted graph with IoU >= 0.9. Box-head outputs are
  not compared: they are computed on each graph's own proposals.
* SPADE: generators with calibrated random weights, at full size. It reports
  PSNR and SSIM of the FP16/INT8 image against the FP32 graph. The FP32 graph
  matches PyTorch within 6e-6, see docs/spade.md.

Usage: python scripts/precision_all_models.py [--models a,b] [--samples 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

DETECTORS = ["fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_mobilenet_v3_large_fpn",
             "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_vgg16"]
GENERATORS = ["spade_coco", "spade_ade20k", "spade_cityscapes"]


def _session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _convert(fp32, out, precision, samples, row):
    """quantize_artifact(fp32 -> out), recording time and node count in ``row``; returns ``out``."""
    from deploykit.precision.quantize import quantize_artifact

    t = time.perf_counter()
    m = quantize_artifact(fp32, out, precision, samples=samples, progress=False)
    row[f"{precision}_convert_s"] = round(time.perf_counter() - t, 1)
    row[f"{precision}_low_precision_nodes"] = m["precision"]["low_precision_nodes"]
    return out


def detector(name, work, samples, threads):
    from deploykit import models
    from deploykit.compare.reference import calibrate_batchnorm
    from deploykit.data.calibration import calibration_feeds
    from deploykit.export.detector import export_detector, model_info
    from deploykit.metrics import box_iou

    size = models.entry(name).default_size
    torch.manual_seed(0)
    kwargs = {"min_size": min(size), "max_size": max(size)}
    net = models.build(name, None, **kwargs).eval()
    calibrate_batchnorm(net, size[0], torch.Generator().manual_seed(0))
    fp32 = work / f"{name}.onnx"
    export_detector(net, fp32, input_size=size, raw=True, model_info=model_info(name, None, kwargs))
    manifest = json.loads(fp32.with_suffix(".json").read_text())
    feeds, _ = calibration_feeds(manifest, None, samples=4, seed=99, progress=False)  # held-out stream
    ref = _session(fp32, threads)
    names = [o.name for o in ref.get_outputs()]
    ref_out = [ref.run(None, {k: v[i:i + 1] for k, v in feeds.items()}) for i in range(4)]
    row = {"model": name, "canvas": f"{size[0]}x{size[1]}", "weights": "random, BN calibrated"}
    for precision in ("fp16", "int8"):
        s = _session(_convert(fp32, work / f"{name}_{precision}.onnx", precision, samples, row),
                     threads)
        stats = {"rpn_objectness_rel": [], "rpn_proposals_rel": [], "same_proposals": []}
        for i in range(4):
            got = dict(zip(names, s.run(None, {k: v[i:i + 1] for k, v in feeds.items()})))
            want = dict(zip(names, ref_out[i]))
            # per-anchor tensors are aligned; post-NMS proposals are compared as sets
            stats["rpn_objectness_rel"].append(_rel(got["rpn_objectness"], want["rpn_objectness"]))
            stats["rpn_proposals_rel"].append(_rel(got["rpn_proposals"], want["rpn_proposals"]))
            ref_boxes = want["proposals"].reshape(-1, 4)
            iou = box_iou(ref_boxes, got["proposals"].reshape(-1, 4))
            stats["same_proposals"].append(float(np.mean(iou.max(axis=1) >= 0.9)) if len(ref_boxes) else 1.0)
        row[precision] = {"rpn_objectness_rel": max(stats["rpn_objectness_rel"]),
                          "rpn_proposals_rel": max(stats["rpn_proposals_rel"]),
                          "same_proposals_min": min(stats["same_proposals"])}
        del s

    return row


def generator(name, work, samples, threads):
    from deploykit.data.calibration import calibration_feeds
    from deploykit.export.spade import export_spade
    from deploykit.metrics import psnr, ssim

    fp32 = work / f"{name}.onnx"
    export_spade(name, fp32)
    manifest = json.loads(fp32.with_suffix(".json").read_text())
    feeds, _ = calibration_feeds(manifest, None, samples=4, seed=99, progress=False)
    ref = _session(fp32, threads)
    ref_out = [ref.run(None, {k: v[i:i + 1] for k, v in feeds.items()})[0][0] for i in range(4)]
    row = {"model": name, "size": "x".join(map(str, manifest["inputs"][0]["shape"][1:])),
           "weights": "random, calibrated"}
    unit = lambda x: (np.asarray(x, np.float64) + 1) / 2  # noqa: E731
    for precision in ("fp16", "int8"):
        s = _session(_convert(fp32, work / f"{name}_{precision}.onnx", precision, samples, row),
                     threads)
        ps, ss = [], []
        for i in range(4):
            got = s.run(None, {k: v[i:i + 1] for k, v in feeds.items()})[0][0]
            ps.append(psnr(unit(ref_out[i]), unit(got)))
            ss.append(ssim(unit(ref_out[i]), unit(got)))
        row[precision] = {"psnr_mean": float(np.mean(ps)), "psnr_min": float(np.min(ps)),
                          "ssim_mean": float(np.mean(ss))}
        del s
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DETECTORS + GENERATORS))
    ap.add_argument("--samples", type=int, default=8, help="calibration samples")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="precision-all-") as tmp:
        for name in args.models.split(","):
            t = time.perf_counter()
            fn = detector if name in DETECTORS else generator
            try:
                row = fn(name, Path(tmp), args.samples, args.threads)
            except Exception as e:  # keep going: report what failed
                row = {"model": name, "error": f"{type(e).__name__}: {e}"}
            row["seconds"] = round(time.perf_counter() - t, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
            for f in Path(tmp).iterdir():
                f.unlink()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
