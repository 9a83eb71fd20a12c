"""``deploykit demo``: the README's main job on the bundled demo models."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from .fileio import write_json_atomic


def _timeit(fn, repeat: int, samples: list | None = None) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best = min(best, dt)
        if samples is not None:
            samples.append(dt * 1e3)
    return best


def run_demo(output_dir: str | Path, *, n_images: int = 20, threads: int = 2,
             echo: Callable[[str], None] = print) -> bool:
    """Export the demo detector, check parity on held-out images, draw results, time both sides.

    Returns True when parity holds. Writes ``summary.json`` and pictures to ``output_dir``.
    """
    import torch

    from . import models
    from .export.detector import detector_class_names, export_detector, model_info
    from .parity.detector import detector_parity, held_out_images, reference_detections
    from .runtime import Detector
    from .runtime.detector import Detections
    from .runtime.draw import draw_detections

    torch.set_num_threads(threads)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = "fasterrcnn_demo"
    ckpt = models.resolve_checkpoint(name, None)
    size = models.entry(name).default_size
    kwargs = {"min_size": min(size), "max_size": max(size)}
    echo(f"[1/5] export {name} ({'bundled checkpoint' if ckpt else 'NO checkpoint: random weights'}) "
         f"at {size[0]}x{size[1]}")
    net = models.build(name, ckpt, **kwargs)
    onnx_path = out / f"{name}.onnx"
    t0 = time.perf_counter()
    export_detector(net, onnx_path, input_size=size, model_info=model_info(name, ckpt, kwargs),
                    class_names=detector_class_names(name, net))
    echo(f"      wrote {onnx_path} in {time.perf_counter() - t0:.1f} s")

    echo(f"[2/5] parity: ONNX Runtime vs torchvision on {n_images} held-out images")
    images = held_out_images(n_images)
    report = detector_parity(onnx_path, net, images, threads=threads,
                             progress=lambda i, n: echo(f"      {i}/{n}") if i % 5 == 0 or i == n else None)
    s = report.summary()
    echo(f"      matched {s['matched']} detections (score >= 0.3), unmatched ref/artifact "
         f"{s['unmatched_reference']}/{s['unmatched_artifact']}, min IoU {s['min_iou']:.5f}, "
         f"max |Δscore| {s['max_score_diff']:.2e} -> {'PASS' if report.ok else 'FAIL'}")

    echo("[3/5] inference pictures")
    with Detector(onnx_path, threads=threads) as det:
        for i, img in enumerate(images[:4]):
            dets = det.predict(img)
            draw_detections(img, dets, min_score=0.3).save(out / f"detections_{i}.png")
            ref = Detections(*reference_detections(net, img), class_names=list(dets.class_names))
            draw_detections(img, ref, min_score=0.3).save(out / f"detections_{i}_torch.png")
        echo(f"      wrote {out}/detections_0..3.png")
        echo(f"      wrote {out}/detections_0..3_torch.png (PyTorch reference, for the report)")

        echo("[4/5] speed (best of 5, batch 1, same process)")
        img = images[0]
        s_ref: list[float] = []
        s_ort: list[float] = []
        t_ref = _timeit(lambda: reference_detections(net, img), 5, s_ref)
        t_ort = _timeit(lambda: det.predict(img), 5, s_ort)
    echo(f"      torchvision eager {t_ref * 1e3:.1f} ms, ONNX Runtime {t_ort * 1e3:.1f} ms "
         f"-> {t_ref / t_ort:.2f}x")
    summary = {"detector": {"model": name, "onnx": str(onnx_path), "parity": s, "per_image": report.per_image,
                            "latency_ms": {"torch_eager": t_ref * 1e3, "onnxruntime": t_ort * 1e3},
                            "latency_samples_ms": {"torch_eager": s_ref, "onnxruntime": s_ort},
                            "speedup": t_ref / t_ort}}
    echo("[5/5] SPADE demo generator: export, parity against PyTorch, pictures")
    spade = _spade_demo(out, n_images=max(2, n_images // 5), threads=threads, echo=echo)
    summary["generator"] = spade
    write_json_atomic(out / "summary.json", summary)
    echo(f"summary: {out / 'summary.json'}")
    from .report import write_report

    report_path = write_report(out, out / "report.html", summary=summary)
    echo(f"report: {report_path}")
    ok = report.ok and spade["ok"]
    echo(f"result: detector parity {'PASS' if report.ok else 'FAIL'}, generator parity "
         f"{'PASS' if spade['ok'] else 'FAIL'}")
    return ok


def _spade_demo(out: Path, *, n_images: int, threads: int, echo: Callable[[str], None],
                tolerance: float = 1e-4) -> dict:
    """Export spade_demo, compare ONNX Runtime with the PyTorch generator on held-out label maps."""
    import numpy as np
    import torch
    from PIL import Image

    from . import models
    from .export.spade import export_spade
    from .models.spade import preprocess_upstream
    from .models.spade_demo_data import make_sample
    from .runtime import load

    name = "spade_demo"
    g = models.build(name)
    cfg = g.cfg
    path = out / f"{name}.onnx"
    t0 = time.perf_counter()
    export_spade(name, path)
    echo(f"      wrote {path} in {time.perf_counter() - t0:.1f} s")
    session = load(path, threads=threads)
    dtypes = {t.name: t.dtype for t in session.inputs}
    h, w = cfg.image_size
    worst, psnrs, panels = 0.0, [], []
    for i in range(n_images):
        sample = make_sample(i, size=w, split="heldout")
        feed = {"label_map": sample.label[None].astype(dtypes["label_map"])}
        if "instance_map" in dtypes:
            feed["instance_map"] = sample.instance[None].astype(dtypes["instance_map"])
        got = session.run(feed)["image"][0]
        with torch.no_grad():
            ref = g(preprocess_upstream(sample.label, sample.instance, cfg))[0].numpy()
        worst = max(worst, float(np.abs(got - ref).max()))
        to8 = lambda x: np.clip((np.transpose(x, (1, 2, 0)) + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
        a, b = to8(ref).astype(np.float64), to8(got).astype(np.float64)
        mse = float(((a - b) ** 2).mean())
        psnrs.append(float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse))
        panels.append(np.concatenate([sample.image, to8(ref), to8(got)], axis=1))
    Image.fromarray(np.concatenate(panels, axis=0)).save(out / "spade_demo_panels.png")
    session.close()
    ok = worst <= tolerance
    echo(f"      {n_images} held-out label maps: max |Δ| {worst:.2e} (budget {tolerance:.0e}), "
         f"min PSNR vs PyTorch {min(psnrs):.1f} dB -> {'PASS' if ok else 'FAIL'}")
    echo(f"      wrote {out / 'spade_demo_panels.png'} (ground truth | PyTorch | ONNX Runtime)")
    return {"model": name, "onnx": str(path), "max_abs_diff": worst, "min_psnr_db": min(psnrs), "ok": ok,
            "images": n_images}
