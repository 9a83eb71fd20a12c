"""Faster R-CNN -> ONNX detector graph + manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torchvision.models.detection import FasterRCNN

from ..errors import BadInput, expected_got
from ..fileio import sha256_file
from ..manifest import write_manifest
from ..models.detection_export import (
    CUSTOM_TRANSLATIONS,
    INPUT_NAMES,
    OUTPUT_NAMES,
    PAD_LABEL,
    RAW_OUTPUT_NAMES,
    ExportableFasterRCNN,
)
from .onnx_export import DEFAULT_OPSET, export_module, versions


def _tensor_specs(model, names: list[str], dynamic: bool) -> list[dict[str, Any]]:
    from onnx import helper

    by_name = {v.name: v for v in list(model.graph.input) + list(model.graph.output)}
    specs = []
    for n in names:
        t = by_name[n].type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else "batch" for d in t.shape.dim]
        specs.append({"name": n, "dtype": str(helper.tensor_dtype_to_np_dtype(t.elem_type)), "shape": shape})
    return specs


def export_detector(
    model: FasterRCNN,
    out_path: str | os.PathLike,
    *,
    input_size: tuple[int, int],
    batch: int = 1,
    dynamic_batch: int | None = None,
    max_detections: int | None = None,
    score_threshold: float | None = None,
    nms_iou: float | None = None,
    opset: int = DEFAULT_OPSET,
    raw: bool = False,
    emulate_padding: bool = True,
    model_info: dict[str, Any] | None = None,
    class_names: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Export ``model`` (any torchvision ``FasterRCNN``) for a fixed ``input_size`` canvas.

    Writes ``out_path`` and the manifest beside it; returns the manifest. The
    reference for parity is ``model`` with its transform set to
    ``min_size = max_size = S`` for a square canvas S (see docs/detector.md).
    """
    say = progress or (lambda msg: None)
    h, w = (int(x) for x in input_size)
    if h <= 0 or w <= 0 or h % 32 or w % 32:
        raise BadInput(expected_got("--input-size", "HxW with H and W positive multiples of 32", f"{h}x{w}"))
    if batch < 1:
        raise BadInput(expected_got("--batch", "an integer >= 1", batch))
    if dynamic_batch is not None and dynamic_batch < 1:
        raise BadInput(expected_got("--dynamic-batch", "an integer >= 1", dynamic_batch))
    if score_threshold is not None and not 0.0 <= score_threshold < 1.0:
        raise BadInput(expected_got("--score-threshold", "a value in [0, 1)", score_threshold))
    if nms_iou is not None and not 0.0 < nms_iou <= 1.0:
        raise BadInput(expected_got("--nms-iou", "a value in (0, 1]", nms_iou))
    if max_detections is not None and not 1 <= max_detections <= 3840:
        raise BadInput(expected_got("--max-detections", "an integer in [1, 3840] (TensorRT TopK limit)",
                                    max_detections))
    say(f"building export graph for {h}x{w} (anchors baked for this size)")
    wrapper = ExportableFasterRCNN(model, (h, w), max_detections=max_detections, score_threshold=score_threshold,
                                   nms_iou=nms_iou, raw=raw, emulate_padding=emulate_padding).eval()
    b = max(batch, 2) if dynamic_batch is not None else batch
    example = (torch.zeros(b, 3, h, w), torch.full((b, 2), float(min(h, w))))
    outputs = RAW_OUTPUT_NAMES if raw else OUTPUT_NAMES
    say("exporting with torch.onnx.export(dynamo=True)")
    onnx_model = export_module(wrapper, example, out_path, input_names=INPUT_NAMES, output_names=outputs,
                               dynamic_batch=dynamic_batch, opset=opset,
                               custom_translation_table=CUSTOM_TRANSLATIONS)
    dyn = dynamic_batch is not None
    info = dict(model_info or {"name": type(model).__name__, "checkpoint": None, "checkpoint_sha256": None,
                               "overrides": {}})
    t = model.transform
    manifest = {
        "kind": "detector",
        "model": info,
        "inputs": _tensor_specs(onnx_model, INPUT_NAMES, dyn),
        "outputs": _tensor_specs(onnx_model, outputs, dyn),
        "batch": {"dynamic": dyn, "min": 1, "opt": 1 if dyn else batch, "max": int(dynamic_batch) if dyn else batch},
        "preprocessing": {
            "input_size": [h, w],
            "resize": "fit",
            "interpolation": "bilinear",
            "mean": [float(x) for x in t.image_mean],
            "std": [float(x) for x in t.image_std],
            "pixel_scale": 1.0 / 255.0,
            "input_dtype": "float32",
            "layout": "NCHW",
            "color": "RGB",
            "pad_value": 0.0,
            "padding_emulation": emulate_padding,
            "size_divisible": wrapper.size_divisible,
            "reference_transform": {"min_size": min(h, w), "max_size": max(h, w)},
        },
        "postprocessing": {
            "raw": raw,
            "score_threshold": wrapper.score_threshold,
            "nms_iou": wrapper.nms_iou,
            "max_detections": wrapper.max_detections,
            "box_format": "xyxy",
            "box_coordinates": "network-input pixels",
            "padding": {"boxes": 0.0, "scores": 0.0, "labels": PAD_LABEL},
            "rpn": {"pre_nms_top_n": wrapper.rpn_pre_nms, "post_nms_top_n": wrapper.rpn_post_nms,
                    "nms_iou": wrapper.rpn_nms_thresh, "score_threshold": wrapper.rpn_score_thresh},
            "anchors": int(wrapper.anchors.shape[0]),
        },
        "class_names": class_names or ["__background__"] + [f"class_{i}" for i in range(1, wrapper.num_classes)],
        "precision": {"mode": "fp32"},
        "versions": versions(opset),
    }
    return json.loads(write_manifest(out_path, manifest).read_text())


def model_info(name: str, checkpoint: Path | None, overrides: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "checkpoint_sha256": sha256_file(checkpoint) if checkpoint else None,
        "overrides": overrides,
    }


def detector_class_names(name: str, net) -> list[str]:
    """Class names for a registered detector: demo shapes, COCO for 91-class models, else generic."""
    n = int(net.roi_heads.box_predictor.cls_score.out_features)
    if name == "fasterrcnn_demo":
        from ..models.synthetic_shapes import CLASS_NAMES

        if len(CLASS_NAMES) == n:
            return list(CLASS_NAMES)
    if n == 91:
        from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

        return list(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
    return ["__background__"] + [f"class_{i}" for i in range(1, n)]
