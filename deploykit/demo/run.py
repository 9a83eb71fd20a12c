"""``deploykit demo``: the README's main job on the bundled demo models."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from ..errors import BadInput, expected_got
from ..fileio import write_json_atomic
from .precision import (
    BUDGETS,
    DEMO_CALIB_SAMPLES,
    PRECISIONS,
    QUANTIZE_DEFAULT_SAMPLES,
    budget_checks,
    check_line,
    detector_precision,
    generator_precision,
    quantize_all,
    tensorrt_engines,
)

STEPS = 10


def run_demo(output_dir: str | Path, *, n_images: int = 20, eval_images: int = 100, spade_eval_images: int = 16,
             calib_samples: int = DEMO_CALIB_SAMPLES, rounds: int = 7, threads: int = 2,
             echo: Callable[[str], None] = print) -> dict:
    """The pipeline on the bundled demo models, FP32 -> FP16/INT8, with proof at each step.

    Detector (fasterrcnn_demo): export, parity on ``n_images`` held-out images, FP16/INT8
    graphs (``calib_samples`` synthetic calibration samples), mAP per precision on
    ``eval_images`` held-out images next to PyTorch, pictures and end-to-end speed per
    precision against torchvision eager (median of ``rounds`` interleaved runs). Mask R-CNN
    (maskrcnn_demo): the same with masks in the image's pixels (parity per mask, mask mAP). SPADE
    (spade_demo): the same with PSNR/SSIM on ``spade_eval_images`` label maps. TensorRT
    engines where TensorRT and a GPU exist. Writes pictures, ``summary.json`` and
    ``report.html`` to ``output_dir``; returns the summary, whose ``ok`` is True when parity
    holds and every precision meets issue 4's budgets (:data:`deploykit.demo.precision.BUDGETS`).
    """
    import torch

    from .. import models
    from ..compare.parity import detector_parity
    from ..data.splits import held_out_photos
    from ..export.detector import detector_class_names, export_detector, model_info

    for name, value in (("images", n_images), ("eval images", eval_images), ("SPADE eval images", spade_eval_images),
                        ("calibration samples", calib_samples), ("rounds", rounds), ("threads", threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInput(expected_got(f"demo {name}", "an integer >= 1", repr(value)))
    torch.set_num_threads(threads)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    name = "fasterrcnn_demo"
    ckpt = models.resolve_checkpoint(name, None)
    size = models.entry(name).default_size
    echo(f"[1/{STEPS}] export {name} ({'bundled checkpoint' if ckpt else 'NO checkpoint: random weights'}), FP32, "
         "pixels in: dynamic size (the model as built) and a fixed canvas")
    net = models.build(name, ckpt)  # as built: its own min_size/max_size
    canvas_kwargs = {"min_size": min(size), "max_size": max(size)}
    canvas_net = models.build(name, ckpt, **canvas_kwargs)
    onnx_path = out / f"{name}.onnx"
    canvas_path = out / f"{name}_{size[0]}x{size[1]}.onnx"
    t0 = time.perf_counter()
    export_detector(net, onnx_path, input="image", model_info=model_info(name, ckpt, {}),
                    class_names=detector_class_names(name, net))
    echo(f"      wrote {onnx_path} (dynamic size, uint8 image of any size in, boxes in its pixels) in "
         f"{time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    export_detector(canvas_net, canvas_path, input="image", input_size=size,
                    model_info=model_info(name, ckpt, canvas_kwargs), class_names=detector_class_names(name, net))
    echo(f"      wrote {canvas_path} (fixed {size[0]}x{size[1]} canvas, static network shapes) in "
         f"{time.perf_counter() - t0:.1f} s")

    images = held_out_photos(n_images)
    echo(f"[2/{STEPS}] parity: FP32 on ONNX Runtime vs torchvision on {n_images} held-out images of 200..2000 px, "
         "aspect ratios 1:3..3:1")
    reports = {}
    for label, path, ref_net, what in (("dynamic", onnx_path, net, "the model as built"),
                                       ("fixed", canvas_path, canvas_net, "the model configured to the canvas")):
        report = detector_parity(path, ref_net, images, threads=threads)
        reports[label] = report
        s = report.summary()
        echo(f"      {label} vs {what}: matched {s['matched']} detections (score >= 0.3), unmatched ref/artifact "
             f"{s['unmatched_reference']}/{s['unmatched_artifact']}, min IoU {s['min_iou']:.5f}, "
             f"max |Δscore| {s['max_score_diff']:.2e} -> {'PASS' if report.ok else 'FAIL'}")
    report = reports["dynamic"]
    s = report.summary()
    s["fixed_canvas"] = reports["fixed"].summary()
    report_ok = all(r.ok for r in reports.values())
    s["ok_dynamic"], s["ok"] = s["ok"], report_ok

    fewer = f" (fewer than quantize's default {QUANTIZE_DEFAULT_SAMPLES}, for time)" \
        if calib_samples < QUANTIZE_DEFAULT_SAMPLES else ""
    echo(f"[3/{STEPS}] {name} FP16 and INT8 graphs (ModelOpt): calibration on {calib_samples} synthetic "
         f"samples{fewer}, seed 0, entropy")
    det_paths, calibration = quantize_all(onnx_path, samples=calib_samples, threads=threads, echo=echo)

    echo(f"[4/{STEPS}] {name} accuracy, pictures and speed per precision: mAP on {eval_images} held-out images; "
         f"Detector.predict vs torchvision eager, median of {rounds} interleaved runs")
    det = detector_precision(det_paths, net, images, eval_images=eval_images, rounds=rounds, threads=threads,
                             out=out, echo=echo)
    lat = {"torch_eager": det["reference"]["latency_ms"],
           **{f"onnxruntime {p}": det["rows"][p]["latency_ms"] for p in PRECISIONS}}
    samples = {"torch_eager": det["reference"]["samples_ms"],
               **{f"onnxruntime {p}": det["rows"][p]["samples_ms"] for p in PRECISIONS}}
    summary: dict = {"detector": {"model": name, "onnx": str(onnx_path), "parity": s, "per_image": report.per_image,
                                  "latency_ms": lat, "latency_stat": "median", "latency_samples_ms": samples,
                                  "speedup": det["rows"]["fp32"]["speedup"]}}

    mask_summary, mask_det, mask_paths = _mask_demo(out, images, eval_images=eval_images, calib_samples=calib_samples,
                                                    rounds=rounds, threads=threads, echo=echo)
    summary["mask_detector"] = mask_summary

    echo(f"[7/{STEPS}] SPADE demo generator: export, parity against PyTorch, pictures")
    spade = _spade_demo(out, n_images=max(2, n_images // 5), threads=threads, echo=echo)
    summary["generator"] = spade

    echo(f"[8/{STEPS}] spade_demo FP16 and INT8 graphs: calibration on {calib_samples} synthetic label maps{fewer}")
    gen_paths, _ = quantize_all(Path(spade["onnx"]), samples=calib_samples, threads=threads, echo=echo)

    echo(f"[9/{STEPS}] spade_demo accuracy, pictures and speed per precision: PSNR/SSIM vs FP32 PyTorch on "
         f"{spade_eval_images} held-out label maps; Generator.generate vs PyTorch, median of {rounds} runs")
    gen = generator_precision(gen_paths, eval_images=spade_eval_images, rounds=rounds, threads=threads, out=out,
                              echo=echo)

    echo(f"[10/{STEPS}] TensorRT engines per precision")
    trt = tensorrt_engines({name: det_paths, mask_det["model"]: mask_paths, gen["model"]: gen_paths}, rounds=rounds,
                           threads=threads, out=out, echo=echo)

    checks = budget_checks(det, gen, mask_det)
    echo("budgets (issue 4):")
    for c in checks:
        echo("  " + check_line(c))
    parity_ok = bool(report_ok and spade["ok"] and mask_summary["parity"]["ok"])
    budgets_ok = all(c["ok"] for c in checks)
    summary["precision"] = {"calibration": {"samples": calib_samples, "seed": 0, "method": "entropy",
                                            "default_samples": QUANTIZE_DEFAULT_SAMPLES, **calibration},
                            "budgets": BUDGETS, "rounds": rounds, "threads": threads,
                            "detector": det, "mask_detector": mask_det, "generator": gen, "checks": checks,
                            "tensorrt": trt,
                            "ok": budgets_ok}
    summary["ok"] = parity_ok and budgets_ok
    summary["seconds"] = round(time.perf_counter() - started, 1)
    write_json_atomic(out / "summary.json", summary)
    echo(f"summary: {out / 'summary.json'}")
    from ..compare.report import write_report

    summary["report"] = str(write_report(out, out / "report.html", summary=summary))
    echo(f"result: parity {'PASS' if parity_ok else 'FAIL'}, precision budgets {'PASS' if budgets_ok else 'FAIL'} "
         f"({summary['seconds']:.0f} s)")
    return summary


def _mask_demo(out: Path, images: list, *, eval_images: int, calib_samples: int, rounds: int, threads: int,
               echo: Callable[[str], None]) -> tuple[dict, dict, dict]:
    """Steps 5 and 6: maskrcnn_demo exported (dynamic size, masks pasted in the graph), parity with masks,
    FP16/INT8, box and mask mAP, pictures with masks and speed. Returns (summary, precision rows, paths)."""
    from .. import models
    from ..compare.parity import detector_parity
    from ..export.detector import detector_class_names, export_detector, model_info

    name = "maskrcnn_demo"
    ckpt = models.resolve_checkpoint(name, None)
    echo(f"[5/{STEPS}] export {name} ({'bundled checkpoint' if ckpt else 'NO checkpoint: random weights'}), FP32, "
         "pixels in, dynamic size, masks pasted in the graph; parity with masks")
    net = models.build(name, ckpt)
    path = out / f"{name}.onnx"
    t0 = time.perf_counter()
    manifest = export_detector(net, path, input="image", model_info=model_info(name, ckpt, {}),
                               class_names=detector_class_names(name, net))
    per_pixel = manifest["postprocessing"]["masks"]["bytes_per_image_pixel"]
    echo(f"      wrote {path} (masks uint8 [B, N, h, w] in the image's pixels, one per detection: at most {per_pixel} "
         f"bytes per image pixel) in {time.perf_counter() - t0:.1f} s")
    report = detector_parity(path, net, images, threads=threads)
    s = report.summary()
    echo(f"      vs the model as built: matched {s['matched']} detections (score >= 0.3), unmatched ref/artifact "
         f"{s['unmatched_reference']}/{s['unmatched_artifact']}, min IoU {s['min_iou']:.5f}, "
         f"{s['masks_compared']} masks with min mask IoU {s['min_mask_iou']:.5f} -> {'PASS' if report.ok else 'FAIL'}")
    echo(f"[6/{STEPS}] {name} FP16 and INT8, box and mask mAP on {eval_images} held-out images, pictures, speed")
    paths, _ = quantize_all(path, samples=calib_samples, threads=threads, echo=echo)
    det = detector_precision(paths, net, images, eval_images=eval_images, rounds=rounds, threads=threads, out=out,
                             echo=echo, pictures="masks")
    summary = {"model": name, "onnx": str(path), "parity": s, "per_image": report.per_image,
               "latency_ms": {"torch_eager": det["reference"]["latency_ms"],
                              **{f"onnxruntime {p}": det["rows"][p]["latency_ms"] for p in PRECISIONS}},
               "latency_stat": "median", "speedup": det["rows"]["fp32"]["speedup"]}
    return summary, det, paths


def _spade_demo(out: Path, *, n_images: int, threads: int, echo: Callable[[str], None],
                tolerance: float = 1e-4) -> dict:
    """Export spade_demo, compare ONNX Runtime with the PyTorch generator on held-out label maps."""
    import numpy as np
    import torch
    from PIL import Image

    from .. import models
    from ..data.spade_scenes import make_sample
    from ..export.spade import export_spade
    from ..models.spade import preprocess_upstream
    from ..runtime import load

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
