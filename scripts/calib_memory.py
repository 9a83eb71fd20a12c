#!/usr/bin/env python
"""Peak memory and wall time of INT8 calibration (``deploykit quantize --precision int8``) per sample count.

For each model: export FP32 once (random weights; detectors get their BatchNorm statistics
calibrated, as ``scripts/bench_int8.py`` does), then run ``quantize_artifact(..., "int8",
samples=N)`` -- synthetic calibration data, ModelOpt PTQ, the manifest -- in a fresh child
process per N, which reports its own peak resident set size (``ru_maxrss``). The load
average is printed beside each run: on a shared machine wall time depends on it, memory
does not.

    python scripts/calib_memory.py                          # resnet50_fpn 800x800 and spade_coco 256x256, 128 samples
    python scripts/calib_memory.py --models demo_spade --samples 8,128,512
    python scripts/calib_memory.py --fp32 resnet50=r50.onnx --samples 8,128 --json out.json

What it shows (docs/precision.md): ModelOpt folds each calibration sample into its ranges or
histograms before running the next, so the peak does not grow with N except for the
calibration inputs themselves (kept as one array: 7.7 MB a sample at 800x800).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

#: key -> (description, export function key in bench_int8 or a demo model name)
MODELS = {
    "resnet50": "fasterrcnn_resnet50_fpn 800x800 (random weights, BN calibrated)",
    "spade": "spade_coco 256x256 (random weights)",
    "demo_detector": "fasterrcnn_demo 320x320 (bundled checkpoint)",
    "demo_spade": "spade_demo (bundled checkpoint)",
}


def export(key: str, out: Path) -> Path:
    if key in ("resnet50", "spade"):
        import bench_int8

        return bench_int8.export_fp32(key, out)
    if key == "demo_spade":
        from deploykit.export.spade import export_spade

        export_spade("spade_demo", out)
        return out
    from deploykit import models
    from deploykit.export.detector import export_detector, model_info

    ckpt = models.resolve_checkpoint("fasterrcnn_demo", None)
    kwargs = {"min_size": 320, "max_size": 320}
    export_detector(models.build("fasterrcnn_demo", ckpt, **kwargs), out, input_size=(320, 320),
                    model_info=model_info("fasterrcnn_demo", ckpt, kwargs))
    return out


def child(fp32: str, samples: int, method: str) -> None:
    """One calibration; prints {"seconds", "peak_rss_gb", ...} as JSON on the last line."""
    from deploykit.precision.quantize import quantize_artifact

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="calib-memory-") as tmp:
        m = quantize_artifact(fp32, Path(tmp) / "int8.onnx", "int8", samples=samples, method=method, progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    print(json.dumps({"seconds": round(time.perf_counter() - started, 1), "peak_rss_gb": round(peak / 1e9, 2),
                      "samples": m["precision"]["calibration"]["samples"],
                      "low_precision_nodes": m["precision"]["low_precision_nodes"]}))


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50,spade", help="comma list of: " + ", ".join(MODELS))
    ap.add_argument("--samples", default="128", help="comma list of calibration sample counts (default 128)")
    ap.add_argument("--method", choices=["entropy", "max"], default="entropy")
    ap.add_argument("--fp32", action="append", default=[], metavar="KEY=PATH",
                    help="use this exported FP32 ONNX (manifest beside it) instead of exporting")
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument("--child", nargs=3, metavar=("FP32", "SAMPLES", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2])
        return
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    for k in keys:
        if k not in MODELS:
            ap.error(f"--models: unknown {k!r} (choose from {', '.join(MODELS)})")
    counts = [int(n) for n in args.samples.split(",")]
    given = dict(x.split("=", 1) for x in args.fp32)
    rows = []
    with tempfile.TemporaryDirectory(prefix="calib-memory-fp32-") as tmp:
        for key in keys:
            fp32 = Path(given[key]) if key in given else export(key, Path(tmp) / f"{key}.onnx")
            for n in counts:
                before = load()
                started = time.perf_counter()
                proc = subprocess.run([sys.executable, __file__, "--child", str(fp32), str(n), args.method],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    row = {"model": key, "samples": n, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
                else:
                    row = {"model": key, "what": MODELS[key], "method": args.method,
                           **json.loads(proc.stdout.strip().splitlines()[-1]),
                           "wall_s": round(time.perf_counter() - started, 1), "load_before": before,
                           "load_after": load()}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n{'model':<14}{'samples':>8}{'peak RSS GB':>13}{'wall s':>9}   load avg (1/5/15 min) before -> after")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<14}{r['samples']:>8}   error: {r['error']}")
        else:
            print(f"{r['model']:<14}{r['samples']:>8}{r['peak_rss_gb']:>13.2f}{r['wall_s']:>9.1f}   "
                  f"{r['load_before']} -> {r['load_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
