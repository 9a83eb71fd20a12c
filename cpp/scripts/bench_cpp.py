"""C++ runtime speed and size, measured as ratios in one run (nothing here is asserted).

    python cpp/scripts/bench_cpp.py MODEL [--build cpp/build/release] [--size 1080x1920] [--rounds 15]

1. C++ ``Detector::predict`` vs a bare ONNX Runtime C++ ``Run`` on the same feed (the
   ``bench_detector`` program, one process, interleaved, medians; 2 intra-op threads, batch 1).
2. C++ ``Detector`` (through the C API, loaded into this Python process with ctypes) vs the Python
   ``deploykit.runtime.Detector.predict`` end to end on one image of ``--size`` (default 1080p),
   both on ONNX Runtime CPU with 2 threads, interleaved, medians; the two must find the same boxes.
3. Binary sizes of libdeploykit.so and deploykit-detect.

MODEL is a pixels-in detector (deploykit export fasterrcnn_demo --input image).
Report the CPU and the load (printed) beside the figures: these machines are shared.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


class DkImage(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("width", ctypes.c_int32), ("height", ctypes.c_int32),
                ("channels", ctypes.c_int32), ("stride", ctypes.c_size_t), ("format", ctypes.c_int)]


class DkDetection(ctypes.Structure):
    _fields_ = [("x1", ctypes.c_float), ("y1", ctypes.c_float), ("x2", ctypes.c_float), ("y2", ctypes.c_float),
                ("score", ctypes.c_float), ("label", ctypes.c_int32), ("label_name", ctypes.c_char_p)]


class CDetector:
    """deploykit's C API through ctypes: the C++ Detector inside this process."""

    def __init__(self, lib: Path, model: Path, threads: int) -> None:
        self.lib = dk = ctypes.CDLL(str(lib))
        dk.dk_last_error.restype = ctypes.c_char_p
        dk.dk_detections_get.restype = ctypes.POINTER(DkDetection)
        dk.dk_detections_get.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]
        dk.dk_detector_predict.argtypes = [ctypes.c_void_p, ctypes.POINTER(DkImage), ctypes.c_size_t,
                                           ctypes.POINTER(ctypes.c_void_p)]
        dk.dk_detections_release.argtypes = [ctypes.c_void_p]
        dk.dk_detector_destroy.argtypes = [ctypes.c_void_p]
        options = ctypes.c_void_p()
        self._check(dk.dk_options_create(ctypes.byref(options)))
        self._check(dk.dk_options_set_threads(options, threads))
        self.handle = ctypes.c_void_p()
        self._check(dk.dk_detector_create(str(model).encode(), options, ctypes.byref(self.handle)))
        dk.dk_options_destroy(options)

    def _check(self, status: int) -> None:
        if status != 0:
            raise RuntimeError(self.lib.dk_last_error().decode())

    def predict(self, image: np.ndarray) -> np.ndarray:
        h, w, _ = image.shape
        view = DkImage(image.ctypes.data, w, h, 3, 0, 0)
        out = ctypes.c_void_p()
        self._check(self.lib.dk_detector_predict(self.handle, ctypes.byref(view), 1, ctypes.byref(out)))
        n = ctypes.c_size_t()
        dets = self.lib.dk_detections_get(out, 0, ctypes.byref(n))
        boxes = np.array([[dets[i].x1, dets[i].y1, dets[i].x2, dets[i].y2] for i in range(n.value)], np.float32)
        self.lib.dk_detections_release(out)
        return boxes.reshape(-1, 4)

    def close(self) -> None:
        self.lib.dk_detector_destroy(self.handle)


def test_image(height: int, width: int) -> np.ndarray:
    """A held-out synthetic-shapes scene scaled to height x width (bilinear)."""
    from PIL import Image

    from deploykit.data.shapes import sample_for_index

    image, _ = sample_for_index(4242, 3)
    return np.ascontiguousarray(np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="pixels-in detector .onnx with its manifest")
    ap.add_argument("--build", type=Path, default=Path(__file__).resolve().parents[1] / "build" / "release",
                    help="C++ build folder (default: cpp/build/release)")
    ap.add_argument("--size", default="1080x1920", help="HxW of the end-to-end image (default 1080x1920)")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds per comparison (default 15)")
    args = ap.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    from deploykit.runtime import Detector

    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; load {os.getloadavg()}")
    image = test_image(height, width)
    results: dict = {"model": str(args.model), "image": [height, width], "rounds": args.rounds,
                     "load_before": os.getloadavg()}

    # 1. Detector::predict vs bare ORT Run, in C++
    with tempfile.NamedTemporaryFile(suffix=".u8") as raw:
        image.tofile(raw.name)
        out = subprocess.run([str(args.build / "bench" / "bench_detector"), str(args.model), raw.name, str(height),
                              str(width), str(args.rounds)], check=True, capture_output=True, text=True).stdout
    results["cpp_vs_bare_ort"] = json.loads(out)
    print("C++ Detector::predict vs bare ORT Run:", out.strip())

    # 2. C++ (ctypes -> C API) vs Python Detector.predict, same process, interleaved
    lib = next(args.build.glob("libdeploykit.so.*.*.*"))
    cdet, pydet = CDetector(lib, args.model, threads=2), Detector(args.model, threads=2)
    c_boxes, py = cdet.predict(image), pydet.predict(image)
    assert c_boxes.shape == py.boxes.shape and np.abs(c_boxes - py.boxes).max(initial=0) <= 1e-4, "answers differ"
    t_c, t_py = [], []
    for r in range(2 + args.rounds):
        order = [(cdet.predict, t_c), (pydet.predict, t_py)]
        for fn, times in (order if r % 2 else order[::-1]):
            t0 = time.perf_counter()
            fn(image)
            if r >= 2:  # two warm-up rounds
                times.append(1e3 * (time.perf_counter() - t0))
    cdet.close()
    pydet.close()
    c_ms, py_ms = statistics.median(t_c), statistics.median(t_py)
    results["cpp_vs_python"] = {"cpp_ms": c_ms, "python_ms": py_ms, "python_over_cpp": py_ms / c_ms,
                                "detections": int(c_boxes.shape[0])}
    print(f"end to end {height}x{width}: C++ {c_ms:.1f} ms, Python {py_ms:.1f} ms, Python/C++ {py_ms / c_ms:.3f}x "
          f"({c_boxes.shape[0]} detections, equal)")

    # 3. sizes
    sizes = {p.name: p.stat().st_size for p in [lib, args.build / "examples" / "deploykit-detect"] if p.exists()}
    results["bytes"] = sizes
    results["load_after"] = os.getloadavg()
    print("sizes:", ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in sizes.items()), f"; load {os.getloadavg()}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
