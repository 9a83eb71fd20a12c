"""``deploykit demo``: the whole pipeline on the bundled demo models."""

from __future__ import annotations

import sys

import click

from .common import command


@command("demo")
@click.option("-o", "--output-dir", default="runs/demo", show_default=True, type=click.Path(file_okay=False),
              help="Where the exported models, report, summary.json and pictures go.")
@click.option("--images", default=20, show_default=True, type=int, help="Held-out images for the FP32 parity check.")
@click.option("--eval-images", default=100, show_default=True, type=int,
              help="Held-out images for mAP per precision (detector).")
@click.option("--eval-label-maps", default=16, show_default=True, type=int,
              help="Held-out label maps for PSNR/SSIM per precision (SPADE).")
@click.option("--calib-samples", default=64, show_default=True, type=int,
              help="Synthetic calibration samples per model (`deploykit quantize` defaults to 128).")
@click.option("--rounds", default=7, show_default=True, type=int,
              help="Interleaved timed runs per side for the speed comparison (median reported).")
@click.option("--threads", type=int, default=2, show_default=True, help="ONNX Runtime / torch threads.")
def demo_cmd(output_dir, images, eval_images, eval_label_maps, calib_samples, rounds, threads):
    """The main job on the bundled demo models, FP32 -> FP16 / INT8.

    \b
    Detector (fasterrcnn_demo): export FP32, parity against torchvision on held-out images,
    FP16 and INT8 graphs (ModelOpt, synthetic calibration), mAP per precision next to
    PyTorch, pictures and end-to-end speed per precision against eager PyTorch.
    Mask R-CNN (maskrcnn_demo): the same, masks pasted in the graph; parity of boxes and masks,
    box and mask (segm) mAP per precision, masks drawn.
    Generator (spade_demo): export, parity, FP16/INT8, PSNR/SSIM vs FP32 PyTorch, pictures, speed.
    TensorRT engines per precision where TensorRT and a GPU exist (skipped otherwise, saying why).
    Writes everything, summary.json and report.html to --output-dir and ends with a summary table.
    Exits 1 if parity fails or a precision misses its budget (FP16: mAP and mask mAP drop <= 0.2
    points, PSNR >= 45 dB; INT8: mAP and mask mAP drop <= 1.0 point, PSNR >= 30 dB).
    """
    from rich.console import Console

    from ..demo.precision import summary_table
    from ..demo.run import run_demo

    summary = run_demo(output_dir, n_images=images, eval_images=eval_images, spade_eval_images=eval_label_maps,
                       calib_samples=calib_samples, rounds=rounds, threads=threads, echo=click.echo)
    out = sys.stdout
    Console(file=out, width=None if out.isatty() else 130).print(summary_table(summary))
    click.echo(f"report: {summary['report']}")
    click.echo(f"demo: {'PASS' if summary['ok'] else 'FAIL'}")
    sys.exit(0 if summary["ok"] else 1)
