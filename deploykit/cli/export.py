"""``deploykit models`` and ``deploykit export``: PyTorch model -> ONNX graph + manifest."""

from __future__ import annotations

from pathlib import Path

import click

from ..manifest import manifest_path
from .common import Progress, command, parse_overrides, parse_range, parse_size, parse_threshold


@command("models")
def models_cmd() -> None:
    """List the model names `export` accepts."""
    from .. import models

    for name in models.names():
        e = models.entry(name)
        size = f"{e.default_size[0]}x{e.default_size[1]}" if e.default_size else "config"
        ckpt = " (bundled checkpoint)" if e.bundled_checkpoint else ""
        click.echo(f"{name:40s} {e.family:9s} {size}{ckpt}")

@command("export")
@click.argument("model")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              help="ONNX file to write; the manifest goes beside it (same stem, .json).")
@click.option("--checkpoint", type=click.Path(dir_okay=False),
              help="State dict to load (torchvision COCO .pth, NVlabs SPADE latest_net_G.pth). "
                   "Default: the bundled checkpoint for demo models, random weights otherwise.")
@click.option("--input", "input_kind", type=click.Choice(["image", "image-list", "tensor"]), default="image",
              show_default=True,
              help="Detector graph input. image: uint8 pixels [B,h,w,3] RGB of any size in --image-size-range (one "
                   "size per call); resize, normalisation, padding and the rescale of the boxes to the image happen "
                   "in the graph. image-list: B images of DIFFERENT sizes in one call, as torchvision batches a list: "
                   "`image` [B,H,W,3] (each zero-padded to the largest), `image_hw` int32 [B,2] (each one's size) "
                   "and `canvas` uint8 [Hp,Wp] (its shape: the batch's padded size; the runtimes make it). "
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
@click.option("--masks", "mask_form", type=click.Choice(["pasted", "compact", "both"]), default="pasted",
              show_default=True,
              help="Mask R-CNN: pasted = `masks` [B,N,h,w], image-size masks in the image's pixels made in the graph "
                   "(memory N*h*w per image, see --mask-rows); compact = `mask_probs` [B,K,28,28] + `mask_boxes` int32 [B,K,4], "
                   "pasted by the runtime with the shared rule; both = all three.")
@click.option("--mask-threshold", default="0.5", show_default=True, metavar="T|none",
              help="Mask R-CNN, pasted masks: uint8 1 where the probability > T; `none`: float32 probabilities "
                   "(4x the memory).")
@click.option("--mask-rows", type=click.Choice(["detections", "all"]), default="detections", show_default=True,
              help="Mask R-CNN, pasted masks: detections = one mask per detection (N = the most detections an "
                   "image of the batch has: a data-dependent dimension `num_masks`, which ONNX Runtime serves as is "
                   "and TensorRT through an output allocator; deploykit's runtimes install one); all = all K rows, "
                   "empty ones included (a static shape, for runtimes without an output allocator; K*h*w per image, "
                   "slower).")
@click.option("--opset", default=18, show_default=True, type=int, help="ONNX opset.")
@click.option("-q", "--quiet", is_flag=True, help="No progress messages.")
def export_cmd(model, out, checkpoint, input_kind, input_size, image_size_range, opt_image_size, batch, dynamic_batch,
               max_detections, score_threshold, nms_iou, raw, emulate_padding, image_output, overrides, mask_form,
               mask_threshold, mask_rows, opset, quiet):
    """Export MODEL (a name from `deploykit models`) to ONNX, checked against the graph rules.

    \b
    Detector graph (default: --input image, dynamic size): input `image` uint8 [B,h,w,3] RGB;
    outputs `num_detections` int32 [B], `boxes` [B,K,4] (x1,y1,x2,y2 in the image's pixels),
    `scores` [B,K], `labels` int32 [B,K]; padding rows have box 0, score 0, label -1.
    --input tensor: inputs `images` float32 [B,3,H,W] (normalised, zero-padded) and
    `image_sizes` float32 [B,2]; boxes in network-input pixels. NMS is ONNX NonMaxSuppression.
    Mask R-CNN (maskrcnn_*): also `masks` uint8 [B,N,h,w], each detection's mask in the image's
    pixels, N <= K the most detections an image of the batch has (--masks compact: `mask_probs`
    [B,K,28,28] + `mask_boxes` int32 [B,K,4] instead).
    SPADE graph: integer `label_map` [B,H,W] (+ `instance_map`), one-hot and edges in the graph.
    \b
    Examples:
      deploykit export fasterrcnn_demo -o demo.onnx                        # pixels in, any size
      deploykit export fasterrcnn_resnet50_fpn --checkpoint coco.pth -o r50.onnx
      deploykit export fasterrcnn_demo --input-size 320x320 -o demo320.onnx  # fixed canvas
      deploykit export fasterrcnn_demo --input tensor -o demo_t.onnx        # you preprocess
    """
    from .. import models

    progress = Progress(quiet)
    e = models.entry(model)
    extra = parse_overrides(overrides)
    if e.family == "generator":
        from ..export.spade import export_spade

        progress(f"exporting {model}")
        manifest = export_spade(model, out, checkpoint=checkpoint, batch=batch, dynamic_batch=dynamic_batch,
                                output=image_output, opset=opset, overrides=extra or None)
    else:
        from ..export.detector import detector_class_names, export_detector, model_info

        size = parse_size(input_size)
        ckpt = models.resolve_checkpoint(model, checkpoint)
        # a fixed canvas is compared with the model configured to it; a dynamic graph with the model as built
        build_kwargs = ({"min_size": min(size), "max_size": max(size)} if size else {}) | extra
        progress(f"building {model}" + (f" from {ckpt}" if ckpt else " (random weights)"))
        net = models.build(model, ckpt, **build_kwargs)
        manifest = export_detector(
            net, out, input_size=size, input=input_kind, image_size_range=parse_range(image_size_range),
            opt_image_size=parse_size(opt_image_size, "--opt-image-size"), batch=batch, dynamic_batch=dynamic_batch,
            max_detections=max_detections, score_threshold=score_threshold, nms_iou=nms_iou, opset=opset, raw=raw,
            emulate_padding=emulate_padding, model_info=model_info(model, ckpt, build_kwargs),
            class_names=detector_class_names(model, net), progress=progress, masks=mask_form,
            mask_threshold=parse_threshold(mask_threshold), mask_rows=mask_rows)
    masks = (manifest.get("postprocessing") or {}).get("masks")
    if masks and masks.get("bytes_per_image_pixel"):
        mb = masks["bytes_per_image_pixel"] * 1920 * 1080 / 2**20
        bound = "at most " if masks.get("rows") == "detections" else ""
        click.echo(f"  masks: {masks['form']}, {bound}{masks['bytes_per_image_pixel']} bytes per image pixel "
                   f"({mb:.0f} MiB for a 1920x1080 image, {masks['bytes_at_max_image'] / 2**20:.0f} MiB at the "
                   "largest accepted size)")
    ins = ", ".join(f"{t['name']} {t['dtype']}{t['shape']}" for t in manifest["inputs"])
    outs = ", ".join(f"{t['name']} {t['dtype']}{t['shape']}" for t in manifest["outputs"])
    click.echo(f"wrote {out} ({Path(out).stat().st_size / 1e6:.1f} MB) and {manifest_path(out)}")
    click.echo(f"  inputs:  {ins}\n  outputs: {outs}")
