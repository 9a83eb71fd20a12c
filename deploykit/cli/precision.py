"""``deploykit quantize``: FP16 / INT8 graphs for TensorRT 11 (ModelOpt), with accuracy budgets."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import BadInput, expected_got
from ..manifest import manifest_path
from .common import Progress, command


@command("quantize")
@click.argument("source", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              help="ONNX file to write (manifest beside it, same stem).")
@click.option("--precision", required=True, type=click.Choice(["fp16", "int8"]),
              help="fp16: ModelOpt AutoCast casts, I/O stays float32. int8: ModelOpt PTQ Q/DQ pairs "
                   "(per-channel symmetric weights), everything else FP32.")
@click.option("--calib", type=click.Path(), default=None,
              help="Calibration data: a folder of images (detector; same preprocessing as inference) or of "
                   "label-map PNGs (SPADE). Default: the project's synthetic generator.")
@click.option("--samples", default=128, show_default=True, type=int, help="Calibration samples.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for sampling the calibration data.")
@click.option("--method", type=click.Choice(["entropy", "max"]), default="entropy", show_default=True,
              help="INT8 activation calibration.")
@click.option("--accuracy-budget", "budget", default=None, metavar="METRIC=VALUE",
              help="map-drop=0.5, map50-drop=0.5 or mask-map-drop=0.5 (detector, mAP points below PyTorch; mask: "
                   "Mask R-CNN), psnr=35 or "
                   "ssim=0.98 (SPADE, vs FP32 PyTorch). INT8 layers are moved back to FP32, most sensitive "
                   "first, until it holds; exit 1 if even FP32 misses it.")
@click.option("--eval-data", type=click.Path(), default=None,
              help="Data for the budget check: a COCO-format folder (detector) or label-map PNGs (SPADE). "
                   "Default: the held-out synthetic set.")
@click.option("--eval-samples", type=int, default=None, help="Images for the budget check (default: all, or 100 "
              "synthetic).")
@click.option("--calibration-cache", type=click.Path(dir_okay=False), default=None,
              help="INT8: also write a TensorRT <= 10 calibration cache (text) from the calibrated scales.")
@click.option("--low-memory", is_flag=True,
              help="Deprecated, ignored: INT8 calibration already holds one sample's tensors at a time, so its "
                   "memory does not grow with --samples (docs/precision.md).")
@click.option("--ort-lowering", is_flag=True,
              help="INT8: add exact output Q/DQ pairs after Convs/Gemms (same scale as the next quantizer) so "
                   "ONNX Runtime's CPU kernels run integer convolutions (QLinearConv); see docs/ort_int8.md.")
@click.option("--ort-cpu", type=click.Choice(["auto", "x86-vnni", "x86"]), default="auto", show_default=True,
              help="With --ort-lowering: the CPUs the graph is for. x86-vnni: int8 weights (ORT's U8S8 kernels, "
                   "exact only with AVX-512 VNNI, AVX-VNNI or AMX; fastest). x86: weights stored as uint8 + 128 "
                   "(U8U8 kernels, exact on every x86 CPU; ONNX Runtime only, TensorRT needs int8 weights). "
                   "auto: x86-vnni on a VNNI CPU, else x86.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads.")
@click.option("-q", "--quiet", is_flag=True, help="No progress messages.")
def quantize_cmd(source, out, precision, calib, samples, seed, method, budget, eval_data, eval_samples,
                 calibration_cache, low_memory, ort_lowering, ort_cpu, threads, quiet):
    """Write SOURCE (an FP32 .onnx from `deploykit export`) in FP16 or INT8 for TensorRT 11.

    \b
    TensorRT 11 is strongly typed: precision lives in the graph. NVIDIA ModelOpt does the
    conversion; deploykit decides what may leave FP32. Detector: backbone, FPN, RPN objectness
    and box-head features only (anchors, box deltas, decoding, RoiAlign, NMS, thresholds stay FP32).
    SPADE: convolutions only (normalisation statistics stay FP32). The manifest records precision,
    calibration (method, samples, source, seed), the source graph and the nodes kept in FP32.
    \b
    Examples:
      deploykit quantize demo.onnx -o demo_int8.onnx --precision int8
      deploykit quantize demo.onnx -o demo_int8.onnx --precision int8 --accuracy-budget map-drop=0.5
      deploykit quantize spade.onnx -o spade_fp16.onnx --precision fp16 --calib labels/
    """
    from ..precision.quantize import quantize_artifact

    if samples < 1:
        raise BadInput(expected_got("--samples", "an integer >= 1", str(samples)))
    if low_memory:
        click.echo("warning: --low-memory is deprecated and ignored: INT8 calibration memory does not grow with "
                   "the sample count", err=True)
    progress = Progress(quiet)
    manifest = quantize_artifact(source, out, precision, calib=calib, samples=samples, seed=seed, method=method,
                                 budget=budget, eval_data=eval_data, eval_samples=eval_samples,
                                 calibration_cache=calibration_cache, threads=threads,
                                 ort_lowering=ort_lowering, ort_cpu=ort_cpu,
                                 progress=not quiet,
                                 log=progress)
    p = manifest["precision"]
    click.echo(f"wrote {out} ({Path(out).stat().st_size / 1e6:.1f} MB) and {manifest_path(out)}")
    click.echo(f"  {p['mode']}: {p['low_precision_nodes']} nodes in reduced precision, "
               f"{len(p['kept_high_precision'])} kept FP32")
    b = p.get("budget")
    if b:
        moved = b.get("moved_to_fp32") or []
        click.echo(f"  budget {b['spec']}: {b['value']:.4g} (met)" + (
            f"; {len(moved)} layer(s) moved to FP32: " + ", ".join(m.get("module") or m["node"] for m in moved)
            + (f" (latency {b['latency_ms']['cost_percent']:+.1f}% on ONNX Runtime CPU)" if b.get("latency_ms") else "")
            if moved else ""))
