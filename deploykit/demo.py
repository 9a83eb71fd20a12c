"""``deploykit demo``: the README's main job on the bundled demo models."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from .fileio import write_json_atomic


def _timeit(fn, repeat: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def run_demo(output_dir: str | Path, *, n_images: int = 20, threads: int = 2,
             echo: Callable[[str], None] = print) -> bool:
    """Export the demo detector, check parity on held-out images, draw results, time both sides.

    Returns True when parity holds. Writes ``summary.json`` and pictures to ``output_dir``.
    """
    import torch

    from . import models
    from .export.detector import export_detector, model_info
    from .parity.detector import detector_parity, held_out_images, reference_detections
    from .runtime import Detector
    from .runtime.draw import draw_detections

    torch.set_num_threads(threads)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = "fasterrcnn_demo"
    ckpt = models.resolve_checkpoint(name, None)
    size = models.entry(name).default_size
    kwargs = {"min_size": min(size), "max_size": max(size)}
    echo(f"[1/4] export {name} ({'bundled checkpoint' if ckpt else 'NO checkpoint: random weights'}) "
         f"at {size[0]}x{size[1]}")
    net = models.build(name, ckpt, **kwargs)
    from .cli import detector_class_names

    onnx_path = out / f"{name}.onnx"
    t0 = time.perf_counter()
    export_detector(net, onnx_path, input_size=size, model_info=model_info(name, ckpt, kwargs),
                    class_names=detector_class_names(name, net))
    echo(f"      wrote {onnx_path} in {time.perf_counter() - t0:.1f} s")

    echo(f"[2/4] parity: ONNX Runtime vs torchvision on {n_images} held-out images")
    images = held_out_images(n_images)
    report = detector_parity(onnx_path, net, images, threads=threads,
                             progress=lambda i, n: echo(f"      {i}/{n}") if i % 5 == 0 or i == n else None)
    s = report.summary()
    echo(f"      matched {s['matched']} detections (score >= 0.3), unmatched ref/artifact "
         f"{s['unmatched_reference']}/{s['unmatched_artifact']}, min IoU {s['min_iou']:.5f}, "
         f"max |Δscore| {s['max_score_diff']:.2e} -> {'PASS' if report.ok else 'FAIL'}")

    echo("[3/4] inference pictures")
    with Detector(onnx_path, threads=threads) as det:
        for i, img in enumerate(images[:4]):
            dets = det.predict(img)
            draw_detections(img, dets, min_score=0.3).save(out / f"detections_{i}.png")
        echo(f"      wrote {out}/detections_0..3.png")

        echo("[4/4] speed (best of 5, batch 1, same process)")
        img = images[0]
        t_ref = _timeit(lambda: reference_detections(net, img), 5)
        t_ort = _timeit(lambda: det.predict(img), 5)
    echo(f"      torchvision eager {t_ref * 1e3:.1f} ms, ONNX Runtime {t_ort * 1e3:.1f} ms "
         f"-> {t_ref / t_ort:.2f}x")
    summary = {"model": name, "onnx": str(onnx_path), "parity": s, "per_image": report.per_image,
               "latency_ms": {"torch_eager": t_ref * 1e3, "onnxruntime": t_ort * 1e3},
               "speedup": t_ref / t_ort}
    write_json_atomic(out / "summary.json", summary)
    echo(f"summary: {out / 'summary.json'}")
    return report.ok
