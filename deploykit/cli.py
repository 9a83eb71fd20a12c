"""``deploykit`` command line: export, infer, models, demo.

Exit codes: 0 success, 1 a check failed (graph rule, parity), 2 bad usage or bad input.
Errors are one line naming the thing, the expected and the got.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from .errors import BadInput, DeployKitError, expected_got
from .manifest import manifest_path


def _fail_cleanly(fn):
    """Turn deploykit errors into one-line messages with the right exit code (no tracebacks)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DeployKitError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def _parse_size(value: str | None, what: str = "--input-size") -> tuple[int, int] | None:
    if value is None:
        return None
    text = value.lower().replace("×", "x")
    parts = text.split("x") if "x" in text else [text, text]
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise BadInput(expected_got(what, "HxW (e.g. 800x800) or a single size S", repr(value))) from None
    return h, w


def _parse_range(value: str | None) -> tuple[tuple[int, int], tuple[int, int]] | None:
    if value is None:
        return None
    parts = value.split(":")
    if len(parts) != 2:
        raise BadInput(expected_got("--image-size-range", "MINHxMINW:MAXHxMAXW (e.g. 32x32:4096x4096)", repr(value)))
    return _parse_size(parts[0], "--image-size-range"), _parse_size(parts[1], "--image-size-range")


def _parse_overrides(items: tuple[str, ...]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise BadInput(expected_got("--set", "KEY=VALUE", repr(item)))
        k, v = item.split("=", 1)
        for conv in (int, float):
            try:
                v = conv(v)
                break
            except ValueError:
                continue
        else:
            v = {"true": True, "false": False}.get(v.lower(), v)
        out[k.strip()] = v
    return out


class _Progress:
    def __init__(self, quiet: bool):
        self.quiet = quiet

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            click.echo(f"  … {msg}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="deploykit")
def main() -> None:
    """deploykit: export PyTorch vision models (Faster R-CNN, SPADE) to ONNX for TensorRT 11,
    run them with a thin runtime, and prove they compute what PyTorch computes.

    \b
    Typical flow:
      deploykit export fasterrcnn_demo -o demo.onnx      # ONNX + demo.json manifest
      deploykit infer demo.onnx photo.jpg -o out/         # detections JSON + drawn PNG
      deploykit demo                                       # the whole pipeline on the bundled demo models
    """


@main.command("models")
def models_cmd() -> None:
    """List the model names `export` accepts."""
    from . import models

    for name in models.names():
        e = models.entry(name)
        size = f"{e.default_size[0]}x{e.default_size[1]}" if e.default_size else "config"
        ckpt = " (bundled checkpoint)" if e.bundled_checkpoint else ""
        click.echo(f"{name:40s} {e.family:9s} {size}{ckpt}")


@main.command("export")
@click.argument("model")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              help="ONNX file to write; the manifest goes beside it (same stem, .json).")
@click.option("--checkpoint", type=click.Path(dir_okay=False),
              help="State dict to load (torchvision COCO .pth, NVlabs SPADE latest_net_G.pth). "
                   "Default: the bundled checkpoint for demo models, random weights otherwise.")
@click.option("--input", "input_kind", type=click.Choice(["image", "tensor"]), default="image", show_default=True,
              help="Detector graph input. image: uint8 pixels [B,h,w,3] RGB of any size in --image-size-range; "
                   "resize, normalisation, padding and the rescale of the boxes to the image happen in the graph. "
                   "tensor: preprocessed float32 `images` [B,3,H,W] + `image_sizes` [B,2] (you preprocess).")
@click.option("--input-size", help="Detector: a FIXED canvas HxW (multiples of 32): static shapes, anchors baked, "
                                   "images fitted into it; parity is then against the model configured to the canvas "
                                   "(min_size=max_size). Default: dynamic size -- the model's own resize "
                                   "(min_size/max_size), anchors from the shapes, parity against the model as built.")
@click.option("--image-size-range", default=None, metavar="MINHxMINW:MAXHxMAXW",
              help="Detector, --input image: image sizes the graph accepts (and TensorRT's profile min/max). "
                   "Default 32x32:4096x4096.")
@click.option("--opt-image-size", default=None, metavar="HxW",
              help="Detector, --input image: the TensorRT profile's opt image size. Default 720x1280 (clamped to "
                   "the range).")
@click.option("--batch", default=1, show_default=True, type=int, help="Static batch size.")
@click.option("--dynamic-batch", type=int, default=None,
              help="Make the batch axis dynamic, accepting 1..MAX images (overrides --batch).")
@click.option("--max-detections", type=int, default=None,
              help="Detector: rows K of the padded outputs. Default: the model's detections_per_img (100).")
@click.option("--score-threshold", type=float, default=None,
              help="Detector: final score threshold. Default: the model's box_score_thresh (0.05).")
@click.option("--nms-iou", type=float, default=None,
              help="Detector: per-class NMS IoU threshold. Default: the model's box_nms_thresh (0.5).")
@click.option("--raw", is_flag=True, help="Detector: output pre-NMS tensors (RPN objectness and proposals, "
                                          "class logits, box regression) instead of detections; for parity work.")
@click.option("--emulate-padding/--no-emulate-padding", default=True, show_default=True,
              help="Detector: make the fixed canvas compute exactly what torchvision computes on the image "
                   "padded to a multiple of 32 (masks per convolution; slightly slower). Without it, "
                   "results near the padded border differ from torchvision's.")
@click.option("--image-output", type=click.Choice(["float", "uint8"]), default="float", show_default=True,
              help="SPADE: output `image` as float32 [B,3,H,W] in [-1,1] or uint8 [B,H,W,3].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Builder overrides, e.g. --set num_classes=21 or --set label_nc=40 (repeatable).")
@click.option("--opset", default=18, show_default=True, type=int, help="ONNX opset.")
@click.option("-q", "--quiet", is_flag=True, help="No progress messages.")
@_fail_cleanly
def export_cmd(model, out, checkpoint, input_kind, input_size, image_size_range, opt_image_size, batch, dynamic_batch,
               max_detections, score_threshold, nms_iou, raw, emulate_padding, image_output, overrides, opset, quiet):
    """Export MODEL (a name from `deploykit models`) to ONNX, checked against the graph rules.

    \b
    Detector graph (default: --input image, dynamic size): input `image` uint8 [B,h,w,3] RGB;
    outputs `num_detections` int32 [B], `boxes` [B,K,4] (x1,y1,x2,y2 in the image's pixels),
    `scores` [B,K], `labels` int32 [B,K]; padding rows have box 0, score 0, label -1.
    --input tensor: inputs `images` float32 [B,3,H,W] (normalised, zero-padded) and
    `image_sizes` float32 [B,2]; boxes in network-input pixels. NMS is ONNX NonMaxSuppression.
    SPADE graph: integer `label_map` [B,H,W] (+ `instance_map`), one-hot and edges in the graph.
    \b
    Examples:
      deploykit export fasterrcnn_demo -o demo.onnx                        # pixels in, any size
      deploykit export fasterrcnn_resnet50_fpn --checkpoint coco.pth -o r50.onnx
      deploykit export fasterrcnn_demo --input-size 320x320 -o demo320.onnx  # fixed canvas
      deploykit export fasterrcnn_demo --input tensor -o demo_t.onnx        # you preprocess
    """
    from . import models

    progress = _Progress(quiet)
    e = models.entry(model)
    extra = _parse_overrides(overrides)
    if e.family == "generator":
        from .export.spade import export_spade

        progress(f"exporting {model}")
        manifest = export_spade(model, out, checkpoint=checkpoint, batch=batch, dynamic_batch=dynamic_batch,
                                output=image_output, opset=opset, overrides=extra or None)
    else:
        from .export.detector import detector_class_names, export_detector, model_info

        size = _parse_size(input_size)
        ckpt = models.resolve_checkpoint(model, checkpoint)
        # a fixed canvas is compared with the model configured to it; a dynamic graph with the model as built
        build_kwargs = ({"min_size": min(size), "max_size": max(size)} if size else {}) | extra
        progress(f"building {model}" + (f" from {ckpt}" if ckpt else " (random weights)"))
        net = models.build(model, ckpt, **build_kwargs)
        manifest = export_detector(
            net, out, input_size=size, input=input_kind, image_size_range=_parse_range(image_size_range),
            opt_image_size=_parse_size(opt_image_size, "--opt-image-size"), batch=batch, dynamic_batch=dynamic_batch,
            max_detections=max_detections, score_threshold=score_threshold, nms_iou=nms_iou, opset=opset, raw=raw,
            emulate_padding=emulate_padding, model_info=model_info(model, ckpt, build_kwargs),
            class_names=detector_class_names(model, net), progress=progress)
    ins = ", ".join(f"{t['name']} {t['dtype']}{t['shape']}" for t in manifest["inputs"])
    outs = ", ".join(f"{t['name']} {t['dtype']}{t['shape']}" for t in manifest["outputs"])
    click.echo(f"wrote {out} ({Path(out).stat().st_size / 1e6:.1f} MB) and {manifest_path(out)}")
    click.echo(f"  inputs:  {ins}\n  outputs: {outs}")


@main.command("quantize")
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
              help="map-drop=0.5 or map50-drop=0.5 (detector, mAP points below PyTorch), psnr=35 or "
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
@_fail_cleanly
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
    from .calib.pipeline import quantize_artifact

    if samples < 1:
        raise BadInput(expected_got("--samples", "an integer >= 1", str(samples)))
    if low_memory:
        click.echo("warning: --low-memory is deprecated and ignored: INT8 calibration memory does not grow with "
                   "the sample count", err=True)
    progress = _Progress(quiet)
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


@main.command("infer")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output-dir", required=True, type=click.Path(file_okay=False),
              help="Directory for the results (one file set per input).")
@click.option("--min-score", default=0.3, show_default=True, type=float,
              help="Detector: draw and list only detections at or above this score.")
@click.option("--instances", multiple=True, type=click.Path(dir_okay=False),
              help="SPADE: instance-id PNG per label map (same order), for models with instance edges.")
@click.option("--resize", is_flag=True, help="SPADE: resize label maps of another size with nearest.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores).")
@click.option("--server", default=None, metavar="URL",
              help="Run on a Triton server instead (http://HOST:8000 or grpc://HOST:8001); ARTIFACT is then the "
                   "model's name in its repository (see `deploykit serve`).")
@click.option("--timeout", default=60.0, show_default=True, type=float, help="--server: seconds per request.")
@_fail_cleanly
def infer_cmd(artifact, inputs, output_dir, min_score, instances, resize, threads, server, timeout):
    """Run ARTIFACT (an exported .onnx with its manifest) on images or label maps.

    Detector: writes `<stem>.json` (boxes in original-image pixels, scores, labels) and
    `<stem>.png` (boxes drawn) per image. SPADE: writes `<stem>.png`, the generated image.
    With --server URL the model runs on a Triton server (same answers as the local runtime).
    """
    model = None
    if server is not None:
        from .serving.client import Client

        model = Client(server, artifact, timeout=timeout)
        kind, source = model.kind, f"{server} {artifact}"
    else:
        from .manifest import read_manifest

        kind, source = read_manifest(artifact)["kind"], artifact
    if kind == "detector":
        from .runtime.infer import infer_detector

        written = infer_detector(source, list(inputs), output_dir, min_score=min_score, threads=threads,
                                 detector=model)
    else:
        from .runtime.generator import infer_generator

        written = infer_generator(source, list(inputs), output_dir, instance_paths=list(instances) or None,
                                  resize=resize, generator=model)
    click.echo(f"wrote {len(written)} files to {output_dir}")


@main.command("demo")
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
@_fail_cleanly
def demo_cmd(output_dir, images, eval_images, eval_label_maps, calib_samples, rounds, threads):
    """The main job on the bundled demo models, FP32 -> FP16 / INT8.

    \b
    Detector (fasterrcnn_demo): export FP32, parity against torchvision on held-out images,
    FP16 and INT8 graphs (ModelOpt, synthetic calibration), mAP per precision next to
    PyTorch, pictures and end-to-end speed per precision against eager PyTorch.
    Generator (spade_demo): export, parity, FP16/INT8, PSNR/SSIM vs FP32 PyTorch, pictures, speed.
    TensorRT engines per precision where TensorRT and a GPU exist (skipped otherwise, saying why).
    Writes everything, summary.json and report.html to --output-dir and ends with a summary table.
    Exits 1 if parity fails or a precision misses its budget (FP16: mAP drop <= 0.2 points,
    PSNR >= 45 dB; INT8: mAP drop <= 1.0 point, PSNR >= 30 dB).
    """
    from rich.console import Console

    from .demo import run_demo
    from .demo_precision import summary_table

    summary = run_demo(output_dir, n_images=images, eval_images=eval_images, spade_eval_images=eval_label_maps,
                       calib_samples=calib_samples, rounds=rounds, threads=threads, echo=click.echo)
    out = sys.stdout
    Console(file=out, width=None if out.isatty() else 130).print(summary_table(summary))
    click.echo(f"report: {summary['report']}")
    click.echo(f"demo: {'PASS' if summary['ok'] else 'FAIL'}")
    sys.exit(0 if summary["ok"] else 1)


@main.command("bench")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--batch", "batch", default=None, metavar="1,2,4",
              help="Comma-separated batch sizes, within the artifact's batch range. Default: its smallest batch.")
@click.option("--warmup", default=1.0, show_default=True, type=float, help="Warm-up seconds per side and batch.")
@click.option("--duration", default=None, type=float,
              help="Timed seconds per side and batch (default 5; exclusive with --iterations).")
@click.option("--iterations", default=None, type=int, help="Timed runs per side and batch instead of --duration.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (and torch threads).")
@click.option("--torch", "torch_ref", is_flag=True,
              help="Also time the PyTorch reference rebuilt from the manifest, interleaved; adds a speedup column.")
@click.option("--end-to-end", is_flag=True, help="Also time the whole runtime pipeline (pre- and post-processing).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Write the results here (with every run's latency in samples_ms).")
@click.option("--report", "report_to", type=click.Path(), default=None, metavar="DIR_OR_HTML",
              help="Also write the HTML report (latency distribution per side and batch). PAGE.html: a page for "
                   "this bench alone. DIR: bench_<stem>.json goes there and DIR/report.html shows everything in DIR "
                   "(like `deploykit report DIR`).")
@click.option("--cuda-graph", is_flag=True,
              help="TensorRT engines: capture each context's inference into a CUDA graph on its first run per "
                   "input shape and replay it (less launch overhead); falls back to plain enqueue with a warning "
                   "when the engine cannot be captured.")
@_fail_cleanly
def bench_cmd(artifact, batch, warmup, duration, iterations, threads, torch_ref, end_to_end, json_out, report_to,
              cuda_graph):
    """Latency (min/mean/median/p90/p95/p99 ms) and throughput (images/s) of ARTIFACT per batch size.

    Model-only times Session.run on a preprocessed feed; --end-to-end adds the runtime's
    whole pipeline; --torch adds eager PyTorch on the same inputs. Ctrl-C prints what was
    measured so far (and still writes --json and --report) and exits 130. See docs/bench.md.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from .bench import TABLE_HEADER, parse_batches, report_target, run_bench, table_rows, write_bench_report
    from .fileio import write_json_atomic

    if report_to is not None:
        report_target(report_to)  # a bad path fails before anything is timed
    result: dict = {}
    err = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err,
                  transient=True) as bar:
        tasks: dict = {}

        def progress(label: str, done: float, total: float) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=done, total=total)

        run_bench(artifact, batches=parse_batches(batch), warmup=warmup, duration=duration, iterations=iterations,
                  threads=threads, torch_ref=torch_ref, end_to_end=end_to_end, cuda_graph=cuda_graph,
                  progress=progress, result=result)
    table = Table(title=f"{result.get('artifact')} ({result.get('kind')}, {', '.join(result.get('providers', []))}"
                        f", threads {result.get('threads') or 'default'}"
                        f"{', CUDA graphs' if result.get('cuda_graph') else ''})")
    for i, name in enumerate(TABLE_HEADER):
        table.add_column(name, justify="left" if i < 2 else "right")
    for row in table_rows(result):
        table.add_row(*row)
    out = sys.stdout
    Console(file=out, width=None if out.isatty() else 150).print(table)
    if json_out:
        write_json_atomic(json_out, result)
        click.echo(f"wrote {json_out}")
    if report_to is not None and result.get("results"):
        click.echo(f"wrote {write_bench_report(result, report_to)}")
    if result.get("interrupted"):
        click.echo("interrupted: partial results above", err=True)
        sys.exit(130)


@main.command("parity")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--images", "images_dir", type=click.Path(), default=None,
              help="Detector: directory of images (default: 20 held-out synthetic images resized to photo "
                   "sizes, 200..2000 px, aspect ratios 1:3..3:1).")
@click.option("--label-maps", "label_maps_dir", type=click.Path(), default=None,
              help="Generator: directory of label map PNGs (default: 8 held-out demo label maps).")
@click.option("--instances", "instances_dir", type=click.Path(), default=None,
              help="Generator: directory of instance PNGs, matched to label maps by file stem.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Write the full report as JSON (atomically).")
@click.option("--threads", type=int, default=None, help="ONNX Runtime / torch threads (default: all cores).")
@click.option("--bisect", is_flag=True,
              help="Instead of comparing with PyTorch: find the first intermediate tensor whose error against a "
                   "reference ONNX graph exceeds the tolerance and name the node producing it.")
@click.option("--against", type=click.Path(dir_okay=False), default=None,
              help="--bisect reference graph (same tensor names). Default: the FP32 source in the manifest "
                   "(precision.source.path), else ARTIFACT itself run with ONNX Runtime optimisations disabled.")
@click.option("--rtol", type=float, default=None,
              help="--bisect: a tensor fails when max|a-b| > atol + rtol*max|ref|. Default by the artifact's "
                   "precision: fp32 1e-4, fp16 1e-2, int8 5e-2.")
@click.option("--atol", type=float, default=None,
              help="--bisect: absolute floor of the tolerance. Default: fp32 1e-6, fp16 1e-4, int8 1e-3.")
@click.option("--samples", type=int, default=1, show_default=True,
              help="--bisect: inputs to run (the first of the parity inputs).")
@click.option("--window", type=int, default=128, show_default=True,
              help="--bisect: most intermediate tensors exposed as outputs per probe (memory bound).")
@click.option("--strict-order", is_flag=True,
              help="--bisect: count tensors holding the reference's values in another order (TopK/NMS near-ties) "
                   "as failing.")
@_fail_cleanly
def parity_cmd(artifact, images_dir, label_maps_dir, instances_dir, json_out, threads, bisect, against, rtol, atol,
               samples, window, strict_order):
    """Compare ARTIFACT (.onnx with its manifest) with the PyTorch reference rebuilt from the manifest.

    Prints per-output error statistics and the verdict (detectors: detections matched both
    ways; generators: max |Δ| and PSNR). Exits 1 when parity fails, 2 on bad input.

    \b
    With --bisect: ONNX against ONNX (see --against), binary search over the intermediate
    tensors for the first one over tolerance; prints the node (name, op, inputs) and its
    error, and the final-output verdict. Exits 1 when a tensor fails. See docs/parity.md.
    """
    from rich.console import Console
    from rich.table import Table

    from .parity.run import run_parity

    bisect_only = {"--against": against, "--rtol": rtol, "--atol": atol,
                   "--samples": samples if samples != 1 else None, "--window": window if window != 128 else None,
                   "--strict-order": strict_order or None}
    if bisect:
        _parity_bisect(artifact, images_dir, label_maps_dir, instances_dir, json_out, threads, against, rtol, atol,
                       samples, window, strict_order)
        return
    given = [k for k, v in bisect_only.items() if v is not None]
    if given:
        raise BadInput(expected_got(", ".join(given), "to come with --bisect", "no --bisect"))

    report = run_parity(artifact, images_dir=images_dir, label_maps_dir=label_maps_dir,
                        instances_dir=instances_dir, threads=threads)
    console = Console(width=max(Console().width, 100))
    console.print(f"reference: {report['reference']}", markup=False)
    table = Table(title=f"{report['model']} ({report['kind']}) vs PyTorch on {report['inputs']}")
    for col in ("output", "elements", "max abs", "mean abs", "p99 abs", "max rel"):
        table.add_column(col, justify="left" if col == "output" else "right")
    for name, s in report["outputs"].items():
        if s is None:
            table.add_row(name, "0", "-", "-", "-", "-")
        else:
            table.add_row(name, str(s["elements"]), f"{s['max_abs']:.3g}", f"{s['mean_abs']:.3g}",
                          f"{s['p99_abs']:.3g}", f"{s['max_rel']:.3g}")
    console.print(table)
    v = report["verdict"]
    if report["kind"] == "detector":
        bad = sum(1 for p in report["per_image"] if not p["ok"])
        console.print(f"detections: {v['matched']} matched, {v['unmatched_reference']} reference and "
                      f"{v['unmatched_artifact']} artifact detections without a partner; {bad} of {v['images']} "
                      f"images fail; min IoU {v['min_iou']:.6f}, max |Δscore| {v['max_score_diff']:.2e}", markup=False)
    else:
        psnr = "inf (identical)" if v["min_psnr_db"] is None else f"{v['min_psnr_db']:.1f} dB"
        console.print(f"images: {v['images']}, max |Δ| {v['max_abs']:.2e} (tolerance {v['tolerance']:.0e}), "
                      f"min PSNR of uint8 images {psnr}; {len(v['images_failed'])} fail", markup=False)
    _finish_check(console, "parity", report, json_out)


@main.command("eval")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--data", "data", type=click.Path(), default=None,
              help="Detector: COCO directory (annotations.json + images); default the held-out synthetic set. "
                   "Generator: directory of label-map PNGs; default held-out spade_demo scenes.")
@click.option("--samples", type=int, default=None,
              help="Images/label maps to use (default: 100 detector, 16 generator, all of a --data directory).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Write the report as JSON (atomically).")
@click.option("--threads", type=int, default=None, help="ONNX Runtime / torch threads (default: all cores).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@_fail_cleanly
def eval_cmd(artifact, data, samples, json_out, threads, quiet):
    """Task accuracy of ARTIFACT (.onnx with its manifest) next to its FP32 PyTorch reference.

    \b
    Detector: COCO mAP@[.5:.95] and mAP@.5 of the artifact and of PyTorch on the same
    images, and the drop in points. Generator: PSNR (mean, min) and SSIM (mean) of the
    artifact's images against PyTorch's. Reports only: exits 0 whatever the numbers.
    See docs/eval.md.
    """
    from rich.console import Console
    from rich.table import Table

    from .evaluate import evaluate_artifact
    from .fileio import write_json_atomic

    r = evaluate_artifact(artifact, data=data, samples=samples, threads=threads, progress=not quiet)
    out = sys.stdout
    console = Console(file=out, width=None if out.isatty() else 120)
    table = Table(min_width=72, title=f"{r['model']} ({r['kind']}, precision {r['precision']}) vs PyTorch",
                  caption=f"{r['images']} {'images' if r['kind'] == 'detector' else 'label maps'}: {r['data']}")
    if r["kind"] == "detector":
        for col in ("metric", "artifact", "PyTorch", "drop (points)"):
            table.add_column(col, justify="left" if col == "metric" else "right")
        for key, label in (("map", "mAP@[.5:.95]"), ("map50", "mAP@.5")):
            table.add_row(label, f"{100 * r['artifact'][key]:.2f}", f"{100 * r['reference'][key]:.2f}",
                          f"{r['drop'][key]:+.2f}")
    else:
        a = r["artifact"]
        for col in ("vs FP32 PyTorch", "mean", "min"):
            table.add_column(col, justify="left" if col.startswith("vs") else "right")
        table.add_row("PSNR (dB, peak 1)", f"{a['psnr_mean']:.2f}", f"{a['psnr_min']:.2f}")
        table.add_row("SSIM", f"{a['ssim_mean']:.5f}", f"{a['ssim_min']:.5f}")
    console.print(table)
    if r.get("reference_model"):
        console.print(f"reference: {r['reference_model']}", markup=False)
    if json_out:
        write_json_atomic(json_out, r)
        click.echo(f"wrote {json_out}")


def _finish_check(console, what: str, report: dict, json_out) -> None:
    """Print the verdict, write the JSON report if asked, exit 0 on PASS and 1 on FAIL."""
    from .fileio import write_json_atomic

    console.print(f"{what}: {'PASS' if report['ok'] else 'FAIL'}", markup=False)
    if json_out:
        write_json_atomic(json_out, report)
        click.echo(f"wrote {json_out}")
    sys.exit(0 if report["ok"] else 1)


def _fmt(x: float) -> str:
    return "inf" if x == float("inf") else f"{x:.3g}"


def _parity_bisect(artifact, images_dir, label_maps_dir, instances_dir, json_out, threads, against, rtol, atol,
                   samples, window, strict_order) -> None:
    from rich.console import Console
    from rich.table import Table

    from .parity.bisect import run_bisect

    err = Console(stderr=True)
    with err.status("bisect") as status:
        report = run_bisect(artifact, against, images_dir=images_dir, label_maps_dir=label_maps_dir,
                            instances_dir=instances_dir, samples=samples, rtol=rtol, atol=atol, window=window,
                            threads=threads, strict_order=strict_order,
                            progress=lambda m: status.update(f"bisect: {m}"))
    console = Console(width=max(Console().width, 110))
    tol = report["tolerance"]
    console.print(f"{report['artifact']} ({report['precision']}) against {report['reference']} on "
                  f"{report['inputs']}; tensor fails when max|a-b| > {tol['atol']:g} + {tol['rtol']:g}·max|ref| "
                  f"({report['tolerance_source']})", markup=False)
    table = Table(title="final outputs")
    for col in ("output", "shape", "max abs", "max |ref|", "max rel", "verdict"):
        table.add_column(col, justify="left" if col in ("output", "shape", "verdict") else "right")

    def verdict(s: dict) -> str:
        v = "FAIL" if s["fails"] else ("reordered" if s.get("reordered") else "ok")
        return f"{v} ({s['mismatch']})" if s.get("mismatch") and s["fails"] else v

    for name, s in report["final_outputs"].items():
        table.add_row(name, str(s["shape"]), _fmt(s["max_abs"]), _fmt(s["ref_max"]), _fmt(s["max_rel"]), verdict(s))
    console.print(table)
    probes = Table(title=f"probes ({report['candidates']} candidate tensors, {report['compared']} compared, "
                         f"{report['ort_runs']} ONNX Runtime runs, {report['seconds']:.1f} s)")
    for col in ("#", "exposed", "tensors", "failing", "reordered", "s"):
        probes.add_column(col, justify="left" if col == "exposed" else "right")
    for p in report["probes"]:
        probes.add_row(str(p["probe"]), p["what"], str(p["tensors"]), str(p["failing"]), str(p["reordered"]),
                       f"{p['seconds']:.2f}")
    console.print(probes)
    first = report["first_failing"]
    if first is None:
        console.print(f"no compared tensor exceeds the tolerance ({len(report['reordered'])} reordered)", markup=False)
    else:
        node, s = first["node"], first["stats"]
        nodes = Table(title=f"first failing tensor: {first['tensor']!r} (candidate {first['index']})")
        for col in ("tensor", "role", "shape", "max abs", "max |ref|", "max rel", "verdict"):
            nodes.add_column(col, justify="left" if col in ("tensor", "role", "shape", "verdict") else "right")
        for name, st in first["inputs"].items():
            nodes.add_row(name, "input", str(st["shape"]), _fmt(st["max_abs"]), _fmt(st["ref_max"]),
                          _fmt(st["max_rel"]), verdict(st))
        nodes.add_row(first["tensor"], "output", str(s["shape"]), _fmt(s["max_abs"]), _fmt(s["ref_max"]),
                      _fmt(s["max_rel"]), verdict(s))
        console.print(nodes)
        console.print(f"node {node['name']!r} ({node['op_type']}), inputs {node['inputs']}"
                      + (f"; not compared: {first['inputs_not_compared']}" if first["inputs_not_compared"] else ""),
                      markup=False)
    _finish_check(console, "bisect", report, json_out)


@main.command("report")
@click.argument("run_dir", type=click.Path())
@click.option("-o", "--output", "out_path", type=click.Path(dir_okay=False), default=None,
              help="HTML file to write (default: RUN_DIR/report.html).")
@_fail_cleanly
def report_cmd(run_dir, out_path):
    """One self-contained HTML page for RUN_DIR (e.g. runs/demo): summary table, latency
    distribution, error histograms and pictures, from summary.json, bench/parity JSON and PNGs.

    No scripts or external links; images are embedded. See docs/report.md.
    """
    from .report import write_report

    path = write_report(run_dir, out_path)
    click.echo(f"wrote {path}")


@main.command("check")
@click.argument("onnx_model", metavar="MODEL.onnx", type=click.Path())
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the report (ops, plugins, every violation) as JSON to this file.")
@_fail_cleanly
def check_cmd(onnx_model, json_path):
    """Check MODEL.onnx for TensorRT, without TensorRT: every node's op, element types and
    attributes inside the TensorRT ONNX parser's support matrix, shape tensors computed from
    shapes only, no data-dependent output shapes, and (from the manifest) no --ort-lowering graph.

    Exit 0 when ready, 1 listing every violation (node, op, what, expected, got), 2 for bad
    input. The table and its source version: docs/tensorrt.md.
    """
    from .errors import CheckFailed
    from .export.trt_support import check_file, report_text
    from .fileio import write_json_atomic

    readiness = check_file(onnx_model)
    for line in report_text(readiness, Path(onnx_model).name):
        click.echo(line)
    if json_path:
        write_json_atomic(json_path, {"file": str(onnx_model), **readiness.to_json()})
    if not readiness.ok:
        raise CheckFailed(expected_got(f"ONNX model {onnx_model}", "a graph ready for TensorRT",
                                       f"{len(readiness.violations)} violation(s), listed above"))


@main.command("build")
@click.argument("onnx_model", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              help="Engine to write (MODEL.plan or MODEL.engine); its manifest goes beside it (MODEL.plan.json).")
@click.option("--workspace-mb", default=1024, show_default=True, type=int, help="TensorRT workspace limit (MiB).")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="Timing cache file: read if it exists, written after the build (reuse it across builds).")
@click.option("--verbose", is_flag=True, help="TensorRT's verbose log.")
@click.option("--opt-image-size", default=None, metavar="HxW",
              help="Dynamic-size detectors: the profile's opt image size (default: the manifest's, "
                   "preprocessing.image_size_range.opt); min and max are the manifest's range.")
@_fail_cleanly
def build_cmd(onnx_model, out, workspace_mb, timing_cache, verbose, opt_image_size):
    """Compile MODEL.onnx (exported by deploykit, with its manifest) into a TensorRT 11 engine.

    Strongly typed: the precision is the ONNX graph's. The optimisation profile comes
    from the manifest: its batch range and, for dynamic-size detectors, its image size
    range (min/opt/max; --opt-image-size sets opt). The graph is first checked for TensorRT on the CPU
    (as `deploykit check` does): a graph TensorRT's parser would refuse, or an --ort-lowering
    graph (ONNX Runtime CPU only), stops with exit 1 before TensorRT is needed. Needs
    `pip install 'deploykit[tensorrt]'` and an NVIDIA GPU.
    """
    from .build import build_engine

    plan = build_engine(onnx_model, out, workspace_mb=workspace_mb, timing_cache=timing_cache, verbose=verbose,
                        echo=lambda m: click.echo(m, err=True),
                        opt_image_size=_parse_size(opt_image_size, "--opt-image-size"))
    click.echo(f"wrote {plan}")


@main.command("triton")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", "repo", required=True, type=click.Path(file_okay=False),
              help="Model repository to write into (created if missing): one REPO/<name>/ per artifact.")
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt", "python", "python-graph"]), default=None,
              help="onnxruntime (.onnx) / tensorrt (.plan): Triton's native backends, the graph as exported. "
                   "python: deploykit's runtime in Triton's Python backend, pixels in, detections in original "
                   "pixels out (runs on the Triton bundled with nvidia-pytriton, CPU). python-graph: the native "
                   "interface on deploykit's runtime. Default: onnxruntime for .onnx, tensorrt for .plan.")
@click.option("--name", "names", multiple=True, help="Model name, once per artifact in order. Default: the file stem.")
@click.option("--version", default=1, show_default=True, type=int, help="Model version directory.")
@click.option("--max-batch-size", type=int, default=None,
              help="Largest batch Triton forms. Default: the graph's batch range max (native backends; a fixed "
                   "batch means no Triton batching), 8 for python.")
@click.option("--preferred-batch-size", "preferred", multiple=True, type=int,
              help="Dynamic batcher's preferred batch size (repeatable). Default: none (as large as ready).")
@click.option("--max-queue-delay-us", default=1000, show_default=True, type=int,
              help="How long the dynamic batcher waits to fill a batch (µs).")
@click.option("--instances", default=1, show_default=True, type=int, help="Model instances per GPU (or on the CPU).")
@click.option("--kind", type=click.Choice(["gpu", "cpu", "auto"]), default=None,
              help="Instance kind. Default: gpu for native backends, cpu for python.")
@click.option("--gpus", default=None, help="Comma-separated GPU ids for the instances. Default: all GPUs.")
@click.option("--warmup/--no-warmup", default=True, show_default=True,
              help="A model_warmup request with a sample input (files in REPO/<name>/warmup/).")
@click.option("--threads", type=int, default=None,
              help="Intra-op threads per instance (ONNX Runtime). Default: the runtime's (all cores).")
@click.option("--ort-tensorrt/--no-ort-tensorrt", default=True, show_default=True,
              help="onnxruntime backend: TensorRT execution accelerator (precision is the graph's own).")
@click.option("--trt-workspace-mb", default=1024, show_default=True, type=int,
              help="onnxruntime backend's TensorRT accelerator: workspace limit (MiB).")
@click.option("--trt-engine-cache", default=None, metavar="DIR",
              help="onnxruntime backend's TensorRT accelerator: engine cache directory on the server. Default: off.")
@click.option("--overwrite", is_flag=True, help="Replace model directories that exist.")
@_fail_cleanly
def triton_cmd(artifacts, repo, backend, names, version, max_batch_size, preferred, max_queue_delay_us, instances,
               kind, gpus, warmup, threads, ort_tensorrt, trt_workspace_mb, trt_engine_cache, overwrite):
    """Write a Triton Inference Server model repository from ARTIFACTS (.onnx / .plan with manifests).

    \b
    REPO/<name>/config.pbtxt   inputs/outputs with Triton types and dims (batch axis -> max_batch_size,
                               dynamic sides -> -1), dynamic_batching, instance_group, model_warmup
    REPO/<name>/labels.txt     detector class names
    REPO/<name>/1/model.onnx | model.plan | model.py (+ the artifact)
    Serve it with `deploykit serve REPO` (python backends, here) or NVIDIA's Triton container
    (docs/serving.md).
    """
    from .serving.repository import RepositoryOptions, write_repository

    try:
        gpu_ids = tuple(int(g) for g in gpus.split(",")) if gpus else ()
    except ValueError:
        raise BadInput(expected_got("--gpus", "comma-separated integers such as 0,1", repr(gpus))) from None
    options = RepositoryOptions(backend=backend, version=version, max_batch_size=max_batch_size,
                                preferred_batch_sizes=tuple(preferred), max_queue_delay_us=max_queue_delay_us,
                                instances=instances, kind=kind, gpus=gpu_ids, warmup=warmup, threads=threads,
                                ort_tensorrt=ort_tensorrt, trt_workspace_mb=trt_workspace_mb,
                                trt_engine_cache=trt_engine_cache)
    for path in write_repository(list(artifacts), repo, names=list(names) or None, options=options,
                                 overwrite=overwrite):
        config = (path / "config.pbtxt").read_text()
        which = next((ln.split(":", 1)[1].strip().strip('"') for ln in config.splitlines()
                      if ln.startswith(("backend:", "platform:"))), "?")
        click.echo(f"wrote {path}/ ({which})")


@main.command("serve")
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--http-port", default=8000, show_default=True, type=int, help="HTTP/REST port.")
@click.option("--grpc-port", default=8001, show_default=True, type=int, help="gRPC port.")
@click.option("--metrics-port", default=8002, show_default=True, type=int, help="Prometheus metrics port.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface, e.g. in a container).")
@click.option("--server", "binary", default="auto", show_default=True,
              help="auto: the Triton bundled with nvidia-pytriton when every model uses the Python backend, "
                   "else `tritonserver` on PATH; bundled; or a path to a tritonserver.")
@click.option("--threads", type=int, default=None, help="ARTIFACT sources: intra-op threads per instance.")
@click.option("--max-batch-size", type=int, default=8, show_default=True,
              help="ARTIFACT sources: largest batch the dynamic batcher forms.")
@click.option("--exit-timeout", default=30, show_default=True, type=int,
              help="On SIGINT/SIGTERM, seconds to let requests in flight complete.")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), default=None,
              help="Write the server's log to this file (default: a temporary file).")
@_fail_cleanly
def serve_cmd(sources, http_port, grpc_port, metrics_port, host, binary, threads, max_batch_size, exit_timeout,
              log_path):
    """Serve SOURCES on a real Triton Inference Server until Ctrl-C / SIGTERM.

    \b
    SOURCES: one model repository (from `deploykit triton`), or artifacts (.onnx with manifests),
    which are served through Triton's Python backend on deploykit's runtime (CPU).
    Waits until every model is ready, prints the endpoints, stops cleanly: requests in
    flight complete. Needs `pip install 'deploykit[serving]'`; see docs/serving.md.
    """
    import shutil
    import tempfile

    from .serving.repository import RepositoryOptions, write_repository
    from .serving.server import TritonServer, serve_until_signal

    paths = [Path(s) for s in sources]
    workdir = None
    if len(paths) == 1 and paths[0].is_dir():
        repo = paths[0]
    elif any(p.is_dir() for p in paths):
        raise BadInput(expected_got("SOURCES", "one model repository or artifact files", "a mix or several folders"))
    else:
        workdir = Path(tempfile.mkdtemp(prefix="deploykit-serve-"))
        repo = workdir / "repository"
        write_repository(paths, repo, options=RepositoryOptions(backend="python", threads=threads,
                                                                max_batch_size=max_batch_size))
    try:
        server = TritonServer(repo, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, host=host,
                              binary=binary, exit_timeout=exit_timeout, log=log_path)
        code = serve_until_signal(server, lambda m: click.echo(m, err=m.startswith("error")))
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
