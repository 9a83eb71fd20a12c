"""The precision part of ``deploykit demo``: FP16/INT8 graphs of the demo models, their
accuracy and speed next to PyTorch, pictures per precision, issue 4's accuracy budgets,
and TensorRT engines where TensorRT and a GPU exist.

Numbers go into ``summary.json`` under ``precision`` (see :func:`precision_summary`);
``deploykit.compare.report`` draws its "Accuracy per precision" section from them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

PRECISIONS = ("fp32", "fp16", "int8")
REDUCED = ("fp16", "int8")
# Issue 4's accuracy budgets for the demo models: detector mAP@[.5:.95] drop in points
# below PyTorch (at most), SPADE mean PSNR against the FP32 PyTorch output (at least); the
# Mask R-CNN demo's mask mAP@[.5:.95] drop (issue 16) as the detector's.
BUDGETS = {
    "fp16": {"map_drop": 0.2, "psnr_db": 45.0, "mask_map_drop": 0.2},
    "int8": {"map_drop": 1.0, "psnr_db": 30.0, "mask_map_drop": 1.0},
}
QUANTIZE_DEFAULT_SAMPLES = 128  # deploykit quantize's default; the demo uses fewer for time
DEMO_CALIB_SAMPLES = 64
PICTURES = 4  # detection pictures and SPADE panel rows per precision

Echo = Callable[[str], None]


# -- conversion -------------------------------------------------------------------

def quantize_all(fp32: Path, *, samples: int, threads: int, echo: Echo) -> tuple[dict[str, Path], dict]:
    """FP16 and INT8 graphs of ``fp32`` beside it (``<stem>_fp16.onnx``, ``<stem>_int8.onnx``).

    Calibration: ``samples`` from the project's synthetic generator, seed 0, entropy.
    Returns the paths per precision (fp32 included) and the INT8 calibration record.
    """
    from ..precision.quantize import quantize_artifact

    paths = {"fp32": fp32}
    calibration: dict = {}
    for p in REDUCED:
        out = fp32.with_name(f"{fp32.stem}_{p}.onnx")
        t0 = time.perf_counter()
        manifest = quantize_artifact(fp32, out, p, samples=samples, seed=0, threads=threads, progress=True)
        rec = manifest["precision"]
        if p == "int8":
            calibration = dict(rec.get("calibration") or {})
        echo(f"      {p}: {out.name}, {rec['low_precision_nodes']} nodes in {p}, "
             f"{len(rec['kept_high_precision'])} kept FP32 ({time.perf_counter() - t0:.1f} s)")
        paths[p] = out
    return paths, calibration


# -- timing -----------------------------------------------------------------------

def interleaved_ms(sides: dict[str, Callable[[int], Any]], rounds: int, pause: float = 0.1
                   ) -> dict[str, list[float]]:
    """Per-run milliseconds of each side: one warm-up call each, then ``rounds`` rounds that run
    every side once, in turn, on input ``r`` of round ``r`` (machine noise hits all sides alike).
    ``pause`` lets ONNX Runtime's spinning threads settle before the next side."""
    for fn in sides.values():
        fn(0)
    samples: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(rounds):
        for k, fn in sides.items():
            time.sleep(pause)
            t = time.perf_counter()
            fn(r)
            samples[k].append((time.perf_counter() - t) * 1e3)
    return samples


def _speed_rows(samples: dict[str, list[float]], reference: str) -> dict[str, dict]:
    ref = float(np.median(samples[reference]))
    return {k: {"latency_ms": float(np.median(v)), "speedup": ref / float(np.median(v)),
                "samples_ms": [round(x, 3) for x in v]} for k, v in samples.items()}


# -- detector ---------------------------------------------------------------------

def detector_precision(paths: dict[str, Path], net, images: Sequence[np.ndarray], *, eval_images: int,
                       rounds: int, threads: int, out: Path, echo: Echo, pictures: str = "detections"
                       ) -> dict[str, Any]:
    """mAP per precision (one DetectorEval: PyTorch once, each graph once), pictures and speed.

    Mask R-CNN adds the masks' mAP (``mask_map``, ``mask_map50``) to every row and draws the masks.
    Speed: end-to-end ``Detector.predict`` against torchvision eager ``model([img])`` in this
    process, interleaved, median of ``rounds`` runs; ``images`` cycle over the rounds. Pictures are
    ``<pictures>_<i>[_torch|_fp16|_int8].png``.
    """
    from ..compare.evaluate import DetectorEval
    from ..compare.reference import reference_detections, reference_prediction
    from ..manifest import read_manifest
    from ..runtime import Detector
    from ..runtime.detector import Detections
    from ..runtime.draw import draw_detections

    ev = DetectorEval(read_manifest(paths["fp32"]), samples=eval_images, artifact=paths["fp32"], threads=threads)
    ref = ev.reference_metrics()
    rows: dict[str, dict] = {}
    keys = [k for k in ("map", "map50", "mask_map", "mask_map50") if k in ref]
    for p, path in paths.items():
        m = ev.artifact_metrics(path)
        rows[p] = {"onnx": path.name, **{k: m[k] for k in keys},
                   "drop": {k: 100 * (ref[k] - m[k]) for k in keys}}
        masks = (f"; masks {100 * m['mask_map']:.2f} / {100 * m['mask_map50']:.2f} (drop "
                 f"{rows[p]['drop']['mask_map']:+.2f} / {rows[p]['drop']['mask_map50']:+.2f})" if "mask_map" in m else "")
        echo(f"      {p}: mAP@[.5:.95] {100 * m['map']:.2f}, mAP@.5 {100 * m['map50']:.2f} "
             f"(drop {rows[p]['drop']['map']:+.2f} / {rows[p]['drop']['map50']:+.2f} points){masks}")
    masks = f"; masks {100 * ref['mask_map']:.2f} / {100 * ref['mask_map50']:.2f}" if "mask_map" in ref else ""
    echo(f"      PyTorch: mAP@[.5:.95] {100 * ref['map']:.2f}, mAP@.5 {100 * ref['map50']:.2f}{masks} "
         f"on {len(ev.images)} held-out images")

    detectors = {p: Detector(path, threads=threads) for p, path in paths.items()}
    try:
        for i, img in enumerate(images[:PICTURES]):
            r = reference_prediction(net, img)
            masks = None if "masks" not in r else (r["masks"] > 0.5).astype(np.uint8)
            torch_dets = Detections(r["boxes"], r["scores"], r["labels"], detectors["fp32"].class_names, masks)
            draw_detections(img, torch_dets, min_score=0.3).save(out / f"{pictures}_{i}_torch.png")
            for p, det in detectors.items():
                suffix = "" if p == "fp32" else f"_{p}"  # detections_N.png stays the FP32 artifact's
                draw_detections(img, det.predict(img), min_score=0.3).save(out / f"{pictures}_{i}{suffix}.png")
        echo(f"      wrote {out}/{pictures}_0..{min(PICTURES, len(images)) - 1}[_torch|_fp16|_int8].png")
        pick = lambda r: images[r % len(images)]  # noqa: E731
        sides: dict[str, Callable[[int], Any]] = {"torch_eager": lambda r: reference_detections(net, pick(r))}
        sides.update({p: (lambda r, d=det: d.predict(pick(r))) for p, det in detectors.items()})
        speed = _time_sides(sides, rounds, rows, echo)
    finally:
        for det in detectors.values():
            det.close()
    return {"model": (read_manifest(paths["fp32"]).get("model") or {}).get("name"), "images": len(ev.images),
            "data": ev.source, "reference": {**{k: ref[k] for k in keys}, **speed["torch_eager"]},
            "rows": rows}


# -- generator --------------------------------------------------------------------

def generator_precision(paths: dict[str, Path], *, eval_images: int, rounds: int, threads: int, out: Path,
                        echo: Echo) -> dict[str, Any]:
    """PSNR/SSIM per precision against FP32 PyTorch (one GeneratorEval), panels and speed.

    Speed: ``Generator.generate`` (label map in, uint8 image out) against the PyTorch
    generator on the upstream preprocessing, interleaved, median of ``rounds`` runs.
    """
    import torch
    from PIL import Image

    from .. import models
    from ..compare.evaluate import GeneratorEval
    from ..data.spade_scenes import make_sample
    from ..manifest import read_manifest
    from ..models.spade import preprocess_upstream
    from ..runtime import Generator
    from ..runtime.generator import to_uint8_image

    manifest = read_manifest(paths["fp32"])
    ev = GeneratorEval(manifest, samples=eval_images, artifact=paths["fp32"], threads=threads)
    ref = ev.reference_outputs()
    rows: dict[str, dict] = {}
    shown: dict[str, np.ndarray] = {}
    for p, path in paths.items():
        got = ev.artifact_outputs(path)
        m = ev.metrics(got)
        m.pop("per_image")
        rows[p] = {"onnx": path.name, **m}
        shown[p] = got[:PICTURES]
        echo(f"      {p}: PSNR {m['psnr_mean']:.2f} dB (min {m['psnr_min']:.2f}), SSIM {m['ssim_mean']:.5f} "
             f"vs FP32 PyTorch on {ev.count} held-out label maps")
    as8 = lambda x: x if x.dtype == np.uint8 else to_uint8_image(x)  # noqa: E731
    panel = np.concatenate([np.concatenate([as8(ref[i])] + [as8(shown[p][i]) for p in PRECISIONS], axis=1)
                            for i in range(len(shown["fp32"]))], axis=0)
    Image.fromarray(panel).save(out / "spade_demo_precision_panels.png")
    echo(f"      wrote {out / 'spade_demo_precision_panels.png'} (PyTorch | fp32 | fp16 | int8)")

    name = (manifest.get("model") or {}).get("name") or "spade_demo"
    g = models.build(name)
    generators = {p: Generator(path, threads=threads) for p, path in paths.items()}
    try:
        gen = generators["fp32"]
        h, w = gen.size
        samples = [make_sample(i, size=w, split="heldout") for i in range(PICTURES)]
        inst = lambda s: s.instance if gen.use_instance else None  # noqa: E731

        def torch_side(r: int):
            s = samples[r % len(samples)]
            with torch.no_grad():
                return to_uint8_image(g(preprocess_upstream(s.label, inst(s), g.cfg))[0].numpy())

        sides: dict[str, Callable[[int], Any]] = {"torch_eager": torch_side}
        sides.update({p: (lambda r, m=gm: m.generate(samples[r % len(samples)].label, inst(samples[r % len(samples)])))
                      for p, gm in generators.items()})
        speed = _time_sides(sides, rounds, rows, echo)
    finally:
        for gm in generators.values():
            gm.close()
    return {"model": name, "images": ev.count, "data": ev.source, "reference": speed["torch_eager"], "rows": rows}


def _time_sides(sides: dict[str, Callable[[int], Any]], rounds: int, rows: dict[str, dict],
                echo: Callable[[str], None]) -> dict[str, dict]:
    """Interleaved timing of PyTorch and every precision; fills ``rows`` and prints one line."""
    speed = _speed_rows(interleaved_ms(sides, rounds), "torch_eager")
    for p in PRECISIONS:
        rows[p].update(speed[p])
    echo(_speed_line(speed))
    return speed


def _speed_line(speed: dict[str, dict[str, float]]) -> str:
    """'torch eager 43.9 ms, fp32 29.1 ms (1.51x), ...' for the progress output."""
    return "      " + ", ".join(f"{k.replace('_', ' ')} {v['latency_ms']:.1f} ms"
                                + ("" if k == "torch_eager" else f" ({v['speedup']:.2f}x)") for k, v in speed.items())


# -- TensorRT ---------------------------------------------------------------------

def tensorrt_engines(paths_by_model: dict[str, dict[str, Path]], *, rounds: int, threads: int, out: Path,
                     echo: Echo) -> dict[str, Any]:
    """Build and bench one engine per model and precision where TensorRT and a GPU exist; else skip."""
    from ..runtime.tensorrt import INSTALL_HINT, missing_requirement

    missing = missing_requirement()
    if missing is not None:
        echo(f"      skipped: {missing} (engines need {INSTALL_HINT} and an NVIDIA GPU; "
             f"they would compile exactly the ONNX graphs checked above)")
        return {"skipped": missing}
    from ..compare.bench import run_bench
    from ..engine.build import build_engine
    from ..fileio import write_json_atomic

    engines: dict[str, dict] = {}
    for model, paths in paths_by_model.items():
        for p, onnx_path in paths.items():
            plan = onnx_path.with_suffix(".plan")
            build_engine(onnx_path, plan, timing_cache=out / "timing.cache", echo=lambda _m: None)
            result = run_bench(plan, iterations=max(rounds, 10), warmup=0.5, threads=threads, torch_ref=True,
                               end_to_end=True)
            write_json_atomic(out / f"bench_{plan.stem}.json", result)
            row = (result.get("results") or [{}])[0]
            lat, speedup = (row.get("end_to_end") or {}).get("median_ms"), row.get("speedup")
            engines[f"{model} {p}"] = {"plan": plan.name, "speedup": speedup, "latency_ms": lat}
            echo(f"      {model} {p}: {plan.name}, end to end "
                 + (f"{lat:.2f} ms, {speedup:.2f}x vs PyTorch" if lat and speedup else "not measured"))
    return {"engines": engines}


# -- budgets and summary ----------------------------------------------------------

def budget_checks(detector: dict[str, Any], generator: dict[str, Any], mask_detector: dict[str, Any] | None = None
                  ) -> list[dict[str, Any]]:
    """Issue 4's budgets against the measured rows: one check per precision and model (the Mask R-CNN
    demo: its box and its mask mAP drop)."""
    checks = []
    for p, b in BUDGETS.items():
        drop = float(detector["rows"][p]["drop"]["map"])
        checks.append({"precision": p, "model": detector.get("model"), "metric": "mAP@[.5:.95] drop (points)",
                       "value": drop, "op": "<=", "limit": b["map_drop"], "ok": drop <= b["map_drop"]})
        if mask_detector is not None:
            for key, metric, limit in (("map", "mAP@[.5:.95] drop (points)", b["map_drop"]),
                                       ("mask_map", "mask mAP@[.5:.95] drop (points)", b["mask_map_drop"])):
                drop = float(mask_detector["rows"][p]["drop"][key])
                checks.append({"precision": p, "model": mask_detector.get("model"), "metric": metric, "value": drop,
                               "op": "<=", "limit": limit, "ok": drop <= limit, "key": key})
        psnr = float(generator["rows"][p]["psnr_mean"])
        checks.append({"precision": p, "model": generator.get("model"), "metric": "PSNR mean vs FP32 PyTorch (dB)",
                       "value": psnr, "op": ">=", "limit": b["psnr_db"], "ok": psnr >= b["psnr_db"]})
    return checks


def check_line(c: dict[str, Any]) -> str:
    return (f"{c['precision']:5s} {c['model']}: {c['metric']} {c['value']:.2f} {'≤' if c['op'] == '<=' else '≥'} "
            f"{c['limit']:g} -> {'PASS' if c['ok'] else 'FAIL'}")


def _signed(x: float) -> str:
    return f"{round(x, 2) + 0.0:+.2f}"  # no "-0.00"


def summary_table(summary: dict[str, Any]):
    """The short rich table ``deploykit demo`` ends with: accuracy, drop, latency, speedup, verdict per precision."""
    from rich.table import Table

    prec = summary["precision"]
    det, gen, masked = prec["detector"], prec["generator"], prec.get("mask_detector")
    cal = prec["calibration"]
    checks: dict[tuple, list] = {}
    for c in prec["checks"]:
        checks.setdefault((c["precision"], c["model"]), []).append(c)
    parity = {det["model"]: (summary.get("detector") or {}).get("parity", {}).get("ok"),
              gen["model"]: (summary.get("generator") or {}).get("ok")}
    if masked:
        parity[masked["model"]] = (summary.get("mask_detector") or {}).get("parity", {}).get("ok")
    fewer = f" (default {QUANTIZE_DEFAULT_SAMPLES}; fewer here for time)" if cal.get("samples", 0) < \
        QUANTIZE_DEFAULT_SAMPLES else ""
    table = Table(title="deploykit demo: accuracy and speed per precision (ONNX Runtime CPU vs PyTorch eager)",
                  caption=f"INT8 calibration: {cal.get('samples')} synthetic samples{fewer}, seed "
                          f"{cal.get('seed')}, {cal.get('method')}. mAP (Mask R-CNN: box / mask mAP@[.5:.95]) on "
                          f"{det['images']} held-out images, PSNR/SSIM "
                          f"on {gen['images']} held-out label maps; latency: median of {prec['rounds']} interleaved "
                          f"end-to-end runs, batch 1, {prec['threads']} threads.")
    for i, col in enumerate(("model", "precision", "accuracy", "Δ vs PyTorch", "latency", "speedup", "check")):
        table.add_column(col, justify="left" if i < 2 or col == "check" else "right")

    def verdict(p: str, model: str) -> str:
        if p == "fp32":
            ok = parity.get(model)
            return "parity " + ("PASS" if ok else "FAIL")
        cs = checks[(p, model)]
        c, ok = cs[0], all(x["ok"] for x in cs)
        return f"{c['op'].replace('<=', '≤').replace('>=', '≥')}{c['limit']:g} {'PASS' if ok else 'FAIL'}"

    def detector_rows(result: dict, second: str, label: str) -> None:  # box mAP and a second metric
        r = result["reference"]
        table.add_row(result["model"], "PyTorch", f"mAP {100 * r['map']:.2f} / {label} {100 * r[second]:.2f}", "",
                      f"{r['latency_ms']:.1f} ms", "1.00x", "")
        for p in PRECISIONS:
            row = result["rows"][p]
            table.add_row("", p, f"mAP {100 * row['map']:.2f} / {label} {100 * row[second]:.2f}",
                          f"{_signed(-row['drop']['map'])} / {_signed(-row['drop'][second])} pts",
                          f"{row['latency_ms']:.1f} ms", f"{row['speedup']:.2f}x", verdict(p, result["model"]))

    detector_rows(det, "map50", "@.5")
    if masked:
        table.add_section()
        detector_rows(masked, "mask_map", "mask")
    table.add_section()
    table.add_row(gen["model"], "PyTorch", "reference (FP32)", "", f"{gen['reference']['latency_ms']:.1f} ms",
                  "1.00x", "")
    for p in PRECISIONS:
        row = gen["rows"][p]
        table.add_row("", p, f"PSNR {row['psnr_mean']:.1f} dB, SSIM {row['ssim_mean']:.4f}",
                      f"min PSNR {row['psnr_min']:.1f} dB", f"{row['latency_ms']:.1f} ms", f"{row['speedup']:.2f}x",
                      verdict(p, gen["model"]))
    return table
