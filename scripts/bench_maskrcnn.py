#!/usr/bin/env python
"""Benchmark: Mask R-CNN, masks in the image's pixels from one ONNX graph vs torchvision eager.

Same process, same machine, 2 threads, batch 1:

1. For maskrcnn_resnet50_fpn (default-configured: min_size 800, max_size 1333; random weights
   with calibrated BatchNorm statistics, so it finds up to 100 objects as a trained model on a busy
   photo would) and maskrcnn_demo (bundled checkpoint), at 640x480, 1000x750 and 1920x1080:
   ``Detector.predict(img)`` on the dynamic pixels-in graph with masks pasted in the graph (ONNX
   Runtime; the default export: one mask row per detection) against eager ``model([img])``
   (torchvision pastes its masks in a Python loop), interleaved blocks, ratio of medians; the
   detections each side returns.
2. Where the graph's time goes at 1920x1080: ONNX Runtime's profile, the paste's share (nodes
   ``paste/...``) and the top op types.
3. Peak memory of one 1920x1080 inference, each in a fresh process (``VmHWM``): the pasted
   form (one row per detection; and all K = 100 rows) against the compact form (M x M masks,
   pasted by the runtime).

Beside the default pasted graph, in the same rounds: the pasted graph with all K rows
(``--mask-rows all``, the static output shape) and the compact graph with the runtime's numpy
paste of the real detections (``Detector.predict`` on ``--masks compact``).

    python scripts/bench_maskrcnn.py --json bench_maskrcnn.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _timing import interleaved  # scripts/, on the path when run as a script
from PIL import Image

from deploykit.compare.reference import calibrate_batchnorm, reference_prediction
from deploykit.data.splits import held_out_images
from deploykit.export.detector import export_detector
from deploykit.models import build, resolve_checkpoint
from deploykit.runtime import Detector
from deploykit.runtime.profile import kernel_times, op_shares

MODELS = ["maskrcnn_resnet50_fpn", "maskrcnn_demo"]
SIZES = [(480, 640), (750, 1000), (1080, 1920)]  # (height, width)

PEAK = """
import sys, numpy as np, onnxruntime as ort
o = ort.SessionOptions(); o.intra_op_num_threads = {threads}; o.inter_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
s.run(None, {{"image": np.load(sys.argv[2])}})
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(int(hwm.split()[1]))  # kB: this process's own high-water mark (ru_maxrss would carry the parent's)
"""


def scene(h: int, w: int, i: int = 0) -> np.ndarray:
    """A held-out synthetic scene resized to h x w."""
    return np.asarray(Image.fromarray(held_out_images(i + 1)[i]).resize((w, h), Image.BILINEAR))


def peak_rss_mb(path: Path, image: np.ndarray, threads: int, scratch: Path) -> float:
    """Peak resident memory (MB) a fresh process reaches running ``path`` once on ``image``."""
    npy = scratch / "image.npy"
    np.save(npy, image[None])
    out = subprocess.run([sys.executable, "-c", PEAK.format(threads=threads), str(path), str(npy)],
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[-1]) / 1024


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=3, help="timed runs per side and block (2 blocks; median)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, profiles, memory = [], {}, {}
    with tempfile.TemporaryDirectory() as d:
        scratch = Path(d)
        for name in args.models.split(","):
            ckpt = resolve_checkpoint(name, None)
            model = build(name, ckpt)  # default-configured
            if ckpt is None:
                calibrate_batchnorm(model, 512, torch.Generator().manual_seed(0))
            pasted, compact = scratch / f"{name}.onnx", scratch / f"{name}_compact.onnx"
            fixed = scratch / f"{name}_all_rows.onnx"
            t0 = time.perf_counter()
            export_detector(model, pasted, input="image")  # the default: masks pasted in the graph, uint8
            export_s = time.perf_counter() - t0
            export_detector(model, fixed, input="image", mask_rows="all")
            export_detector(model, compact, input="image", masks="compact")
            with Detector(pasted, threads=args.threads) as det, Detector(compact, threads=args.threads) as det_c, \
                    Detector(fixed, threads=args.threads) as det_k:
                for h, w in SIZES:
                    img = scene(h, w)
                    n_eager = len(reference_prediction(model, img)["scores"])
                    n_graph = len(det.predict(img))
                    eager, onnx_s = interleaved(lambda: reference_prediction(model, img), lambda: det.predict(img),
                                                args.iters)
                    eager_c, compact_s = interleaved(lambda: reference_prediction(model, img),
                                                     lambda: det_c.predict(img), args.iters)
                    eager_k, fixed_s = interleaved(lambda: reference_prediction(model, img),
                                                   lambda: det_k.predict(img), args.iters)
                    r = {"model": name, "image": f"{w}x{h}", "eager_ms": eager * 1e3, "onnxruntime_ms": onnx_s * 1e3,
                         "speedup": eager / onnx_s, "compact_ms": compact_s * 1e3, "speedup_compact": eager_c / compact_s,
                         "all_rows_ms": fixed_s * 1e3, "speedup_all_rows": eager_k / fixed_s,
                         "detections_eager": n_eager, "detections_graph": n_graph, "export_s": export_s}
                    rows.append(r)
                    print(f"{name:24s} {r['image']:>10s}  eager {r['eager_ms']:8.1f} ms  ORT pasted "
                          f"{r['onnxruntime_ms']:8.1f} ms  speedup {r['speedup']:.2f}x | all K rows "
                          f"{r['all_rows_ms']:8.1f} ms  {r['speedup_all_rows']:.2f}x | compact + runtime paste "
                          f"{r['compact_ms']:8.1f} ms  speedup {r['speedup_compact']:.2f}x  ({n_eager} / {n_graph} "
                          "detections with masks)", flush=True)
            img = scene(1080, 1920)
            times = kernel_times(pasted, {"image": img[None]}, args.threads)
            total = sum(t.us for t in times) or 1.0
            paste = 100 * sum(t.us for t in times if t.node.startswith("paste/")) / total
            profiles[name] = {"image": "1920x1080", "paste_pct": paste, "top_ops_pct": op_shares(times)[:8]}
            print(f"  ORT profile at 1920x1080: the paste {paste:.1f}% of kernel time | "
                  + ", ".join(f"{op} {pct:.1f}%" for op, pct in op_shares(times)[:6]), flush=True)
            with Detector(pasted, threads=args.threads) as det:
                rows_out = int(det.session.run({"image": img[None]})["masks"].shape[1])
            memory[name] = {"image": "1920x1080", "pasted_peak_mb": peak_rss_mb(pasted, img, args.threads, scratch),
                            "all_rows_peak_mb": peak_rss_mb(fixed, img, args.threads, scratch),
                            "compact_peak_mb": peak_rss_mb(compact, img, args.threads, scratch),
                            "pasted_rows": rows_out, "pasted_output_mb": rows_out * 1080 * 1920 / 2**20,
                            "all_rows_output_mb": 100 * 1080 * 1920 / 2**20}
            m = memory[name]
            print(f"  peak RSS at 1920x1080: pasted {m['pasted_peak_mb']:.0f} MB ({rows_out} rows, output "
                  f"{m['pasted_output_mb']:.0f} MB), all K rows {m['all_rows_peak_mb']:.0f} MB (output "
                  f"{m['all_rows_output_mb']:.0f} MB), compact {m['compact_peak_mb']:.0f} MB", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "results": rows, "profiles": profiles,
                                         "memory": memory}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
