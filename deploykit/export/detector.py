"""Faster R-CNN and Mask R-CNN -> ONNX detector graph + manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torchvision.models.detection import FasterRCNN, MaskRCNN

from ..errors import BadInput, expected_got
from ..fileio import sha256_file
from ..manifest import write_artifact
from .detection import CUSTOM_TRANSLATIONS, INPUT_NAMES, OUTPUT_NAMES, PAD_LABEL, RAW_OUTPUT_NAMES, ExportableFasterRCNN
from .detection.image_list import front_end_list
from .detection.mask_paste import MASK_ROWS, attach_paste
from .detection.mask_rcnn import DEBUG_OUTPUT_NAMES, FRONT_END_DEBUG_OUTPUTS, MASK_OUTPUT_NAMES, ExportableMaskRCNN
from .detection.pixels_in import MAX_RESIZED, MAX_SIDE, front_end, torchvision_resized_size
from .detection.rows import INDEX_OUTPUT
from .onnx_export import DEFAULT_OPSET, export_module, save_model, versions
from .rules import check_graph
from .trt_support import declared_data_dependent

if TYPE_CHECKING:
    import onnx


def _tensor_specs(model, names: list[str], dynamic: bool) -> list[dict[str, Any]]:
    from onnx import helper

    by_name = {v.name: v for v in list(model.graph.input) + list(model.graph.output)}
    specs = []
    for n in names:
        t = by_name[n].type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        specs.append({"name": n, "dtype": str(helper.tensor_dtype_to_np_dtype(t.elem_type)), "shape": shape})
    return specs


DEFAULT_IMAGE_RANGE = ((32, 32), (4096, 4096))  # pixels-in graphs: smallest and largest (h, w) accepted
DEFAULT_OPT_IMAGE = (720, 1280)  # the TensorRT profile's opt shape unless given (an HD frame)
INPUTS = ("tensor", "image", "image-list")
MASK_FORMS = ("pasted", "compact", "both")  # Mask R-CNN: image-size masks, M×M masks + paste boxes, or both
MAX_PASTED_ELEMENTS = 2**31 - 1  # TensorRT's largest tensor volume; B × K × h × w bounds the pasted masks


def _check_options(input: str, input_size, batch: int, dynamic_batch, score_threshold, nms_iou,
                   max_detections) -> None:
    if input not in INPUTS:
        raise BadInput(expected_got("--input", " or ".join(map(repr, INPUTS)), repr(input)))
    if input_size is not None:
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


def _image_range(image_size_range, opt_image_size, *, min_size: int, max_size: int,
                 canvas: tuple[int, int] | None) -> dict[str, list[int]]:
    """The accepted image sizes of a pixels-in graph, checked against the exact-size-arithmetic limits."""
    low, high = image_size_range or DEFAULT_IMAGE_RANGE
    low, high = (int(low[0]), int(low[1])), (int(high[0]), int(high[1]))
    if not (1 <= low[0] <= high[0] <= MAX_SIDE and 1 <= low[1] <= high[1] <= MAX_SIDE):
        raise BadInput(expected_got("--image-size-range", f"MINHxMINW:MAXHxMAXW with 1 <= min <= max <= {MAX_SIDE}",
                                    f"{low[0]}x{low[1]}:{high[0]}x{high[1]}"))
    opt = tuple(int(v) for v in (opt_image_size or (min(max(DEFAULT_OPT_IMAGE[0], low[0]), high[0]),
                                                      min(max(DEFAULT_OPT_IMAGE[1], low[1]), high[1]))))
    if not (low[0] <= opt[0] <= high[0] and low[1] <= opt[1] <= high[1]):
        raise BadInput(expected_got("--opt-image-size", f"a size within {low[0]}x{low[1]}..{high[0]}x{high[1]}",
                                    f"{opt[0]}x{opt[1]}"))
    # the most elongated accepted images must still resize to >= 1 pixel per side
    for h, w in ((low[0], high[1]), (high[0], low[1])):
        rh, rw = torchvision_resized_size(h, w, min_size=min_size, max_size=max_size, canvas=canvas)
        if min(rh, rw) < 1 or max(rh, rw) > MAX_RESIZED:
            raise BadInput(expected_got("--image-size-range", "sizes whose resized sides are 1.."
                                        f"{MAX_RESIZED} pixels", f"{h}x{w} -> {rh}x{rw}"))
    return {"min": list(low), "opt": list(opt), "max": list(high)}


def export_detector(
    model: FasterRCNN,
    out_path: str | os.PathLike,
    *,
    input_size: tuple[int, int] | None = None,
    input: str = "tensor",
    image_size_range: tuple[tuple[int, int], tuple[int, int]] | None = None,
    opt_image_size: tuple[int, int] | None = None,
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
    masks: str = "pasted",
    mask_threshold: float | None = 0.5,
    mask_rows: str = "detections",
    debug_outputs: bool = False,
) -> dict[str, Any]:
    """Export ``model`` (any torchvision ``FasterRCNN``) to ``out_path``; write its manifest; return it.

    Two modes (docs/detector.md):

    * **dynamic** (``input_size=None``): the network runs at the size torchvision's own
      transform gives each image (``model.transform``'s min_size/max_size rule, padded to a
      multiple of 32); anchors, RoI scales and levels come from the shapes. Parity is with
      ``model`` exactly as configured.
    * **fixed canvas** (``input_size=(H, W)``, multiples of 32): static shapes, anchors baked;
      images are fitted into the canvas. Parity is with ``model`` configured to the canvas
      (``min_size = max_size = S`` for a square canvas S).

    ``input="image"``: the graph takes ``image`` uint8 [B, h, w, 3] RGB pixels of any size in
    ``image_size_range`` and does the resize, normalisation, padding and the rescale of the
    boxes to the original image inside (see :mod:`deploykit.export.detection.pixels_in`).
    ``input="tensor"``: the graph takes the preprocessed ``images`` and ``image_sizes``.

    A torchvision ``MaskRCNN`` (pixels-in only) adds its masks in the original image's pixels
    (docs/masks.md): ``masks="pasted"`` gives ``masks`` [B, N, h, w] — uint8 0/1 where
    the probability exceeds ``mask_threshold``, or float32 probabilities with ``mask_threshold=None``;
    ``"compact"`` gives ``mask_probs`` [B, K, M, M] and ``mask_boxes`` int32 [B, K, 4] for the
    runtime's paste (:mod:`deploykit.runtime.masks`); ``"both"`` gives all three. The pasted masks
    hold one row per detection of the batch's image with the most (``mask_rows="detections"``: a
    data-dependent dimension ``num_masks`` ≤ K) or all K rows (``"all"``: a static shape).
    ``debug_outputs`` (pixels-in graphs) adds the front end's ``images`` and ``image_sizes`` (and, for
    Mask R-CNN, ``boxes_network`` and ``mask_logits``) for raw parity on the graph's own network input.
    """
    say = progress or (lambda msg: None)
    _check_options(input, input_size, batch, dynamic_batch, score_threshold, nms_iou, max_detections)
    dynamic = input_size is None
    pixels = input in ("image", "image-list")
    listed = input == "image-list"
    if listed and not dynamic:
        raise BadInput(expected_got("--input image-list", "the model's own resize (no --input-size): each image is "
                                    "resized from its own size, as torchvision batches a list", "--input-size"))
    with_masks = isinstance(model, MaskRCNN)
    if with_masks:
        _check_mask_options(input, raw, masks, mask_threshold, mask_rows)
    if debug_outputs and not pixels:
        raise BadInput(expected_got("debug_outputs", "a pixels-in graph (--input image or image-list)", repr(input)))
    if raw and pixels and not dynamic:
        raise BadInput(expected_got("--raw", "a tensor-input or dynamic graph", "--input image with --input-size"))
    t = model.transform
    # at test time torchvision resizes to min_size[-1] (a tuple of several is for training)
    min_size = int(t.min_size[-1] if isinstance(t.min_size, (tuple, list)) else t.min_size)
    max_size = int(t.max_size)
    canvas = None if dynamic else (int(input_size[0]), int(input_size[1]))
    image_range = (_image_range(image_size_range, opt_image_size, min_size=min_size, max_size=max_size,
                                canvas=canvas) if pixels else None)
    if dynamic:
        say(f"building the dynamic-size export graph (min_size {min_size}, max_size {max_size}: the model's own "
            "resize; anchors from the feature-map shapes)")
    else:
        say(f"building the export graph for the {canvas[0]}x{canvas[1]} canvas (anchors baked for this size)")
    common = dict(max_detections=max_detections, score_threshold=score_threshold, nms_iou=nms_iou,
                  emulate_padding=emulate_padding and not dynamic)
    if with_masks:
        wrapper = ExportableMaskRCNN(model, canvas, debug_outputs=debug_outputs, **common).eval()
        _check_pasted_volume(masks, wrapper.max_detections, dynamic_batch or batch, image_range)
    else:
        wrapper = ExportableFasterRCNN(model, canvas, raw=raw, rescale_boxes=pixels and not raw, **common).eval()
    d = wrapper.size_divisible
    b = max(batch, 2) if dynamic_batch is not None else batch
    names = list(INPUT_NAMES) + (["original_sizes"] if pixels else [])
    outputs = RAW_OUTPUT_NAMES if raw else OUTPUT_NAMES
    if with_masks:
        outputs = OUTPUT_NAMES + MASK_OUTPUT_NAMES + (DEBUG_OUTPUT_NAMES if debug_outputs else [])
    if dynamic:
        top = -(-max_size // d)  # padded sides are at most max_size rounded up to size_divisible
        ex_h, ex_w = min(8, top), min(7, top)
        example = [torch.zeros(b, 3, ex_h * d, ex_w * d), torch.tensor([[ex_h * d - 5.0, ex_w * d - 3.0]] * b)]
        dims = {2: d * torch.export.Dim("ph", min=1, max=top), 3: d * torch.export.Dim("pw", min=1, max=top)}
    else:
        example = [torch.zeros(b, 3, *canvas), torch.full((b, 2), float(min(canvas)))]
        dims = {}
    if pixels:
        example.append(example[1] * 1.5)
    batch_dim = {0: torch.export.Dim("batch", min=1, max=max(2, int(dynamic_batch)))} if dynamic_batch else {}
    dynamic_shapes = tuple([{**batch_dim, **dims}] + [dict(batch_dim)] * (len(example) - 1))
    if not any(dynamic_shapes):
        dynamic_shapes = None
    say("exporting with torch.onnx.export(dynamo=True)")
    onnx_model = export_module(wrapper, tuple(example), None, input_names=names, output_names=outputs,
                               dynamic_batch=dynamic_batch, opset=opset, custom_translation_table=CUSTOM_TRANSLATIONS,
                               dynamic_shapes=dynamic_shapes, check=not pixels, static_outputs=not raw,
                               dim_names={f"{d}*ph": "padded_height", f"{d}*pw": "padded_width"})
    # Mask R-CNN (pixels-in only): the manifest's postprocessing.masks
    mask_section = _mask_section(wrapper, masks, mask_threshold, image_range, mask_rows) if with_masks else None
    if pixels:
        say("adding the pixels-in front end (resize, normalise, pad) and merging")
        if listed:
            front = front_end_list(mean=tuple(t.image_mean), std=tuple(t.image_std), min_size=min_size,
                                   max_size=max_size, batch="batch" if dynamic_batch else batch, opset=opset)
        else:
            front = front_end(mean=tuple(t.image_mean), std=tuple(t.image_std), size_divisible=d,
                              min_size=min_size if dynamic else None, max_size=max_size if dynamic else None,
                              canvas=canvas, batch="batch" if dynamic_batch else batch, opset=opset)
        onnx_model = attach_front_end(front, onnx_model)
        if with_masks and masks != "compact":
            say("adding the mask paste (image-size masks, two matrix products per detection)")
            onnx_model = attach_paste(onnx_model, mask_size=wrapper.mask_size, threshold=mask_threshold,
                                      keep_compact=masks == "both", rows=mask_rows)
        elif with_masks:  # the row list only feeds the paste
            kept = [o for o in onnx_model.graph.output if o.name != INDEX_OUTPUT]
            del onnx_model.graph.output[:]
            onnx_model.graph.output.extend(kept)
        if debug_outputs:  # the network's input as the front end made it, for raw parity on that very input
            onnx_model = expose_outputs(onnx_model, FRONT_END_DEBUG_OUTPUTS)
        # what the manifest will declare (pasted masks, one row per detection) is what the rules allow
        data_dependent = declared_data_dependent({"postprocessing": {"masks": mask_section}})
        check_graph(onnx_model, dynamic_batch=dynamic_batch is not None, static_outputs=not (raw or debug_outputs),
                    data_dependent=data_dependent)
    dyn = dynamic_batch is not None
    info = dict(model_info or {"name": type(model).__name__, "checkpoint": None, "checkpoint_sha256": None,
                               "overrides": {}})
    preprocessing: dict[str, Any] = {
        "in_graph": pixels,
        "input": input,
        "mode": "dynamic" if dynamic else "fixed",
        "resize": "torchvision" if dynamic else "fit",
        "interpolation": "bilinear",
        "mean": [float(x) for x in t.image_mean],
        "std": [float(x) for x in t.image_std],
        "pixel_scale": 1.0 / 255.0,
        "input_dtype": "uint8" if pixels else "float32",
        "layout": "NHWC" if pixels else "NCHW",
        "color": "RGB",
        "pad_value": 0.0,
        "padding_emulation": wrapper.emulation is not None,
        "size_divisible": d,
        "reference_transform": ({"min_size": min_size, "max_size": max_size} if dynamic
                                else {"min_size": min(canvas), "max_size": max(canvas)}),
    }
    if dynamic:
        preprocessing.update({"min_size": min_size, "max_size": max_size})
        if not pixels or listed:  # the padded network size is an input dimension (images / canvas)
            oh, ow = torchvision_resized_size(*(opt_image_size or DEFAULT_OPT_IMAGE), min_size=min_size,
                                              max_size=max_size)
            preprocessing["padded_size_range"] = {"min": [d, d], "opt": [-(-oh // d) * d, -(-ow // d) * d],
                                                  "max": [top * d, top * d]}
    else:
        preprocessing["input_size"] = list(canvas)
    if pixels:
        preprocessing["image_size_range"] = image_range
    manifest = {
        "kind": "detector",
        "model": info,
        "inputs": _tensor_specs(onnx_model, [i.name for i in onnx_model.graph.input], dyn),
        "outputs": _tensor_specs(onnx_model, [o.name for o in onnx_model.graph.output], dyn),
        "batch": {"dynamic": dyn, "min": 1, "opt": 1 if dyn else batch, "max": int(dynamic_batch) if dyn else batch},
        "preprocessing": preprocessing,
        "postprocessing": {
            "raw": raw,
            "score_threshold": wrapper.score_threshold,
            "nms_iou": wrapper.nms_iou,
            "max_detections": wrapper.max_detections,
            "box_format": "xyxy",
            "box_coordinates": "original-image pixels" if pixels and not raw else "network-input pixels",
            "padding": {"boxes": 0.0, "scores": 0.0, "labels": PAD_LABEL},
            "rpn": {"pre_nms_top_n": wrapper.rpn_pre_nms, "post_nms_top_n": wrapper.rpn_post_nms,
                    "nms_iou": wrapper.rpn_nms_thresh, "score_threshold": wrapper.rpn_score_thresh},
            "anchors": "from the feature-map shapes" if dynamic else int(wrapper.anchors.shape[0]),
            **({"masks": mask_section} if with_masks else {}),
        },
        "class_names": class_names or ["__background__"] + [f"class_{i}" for i in range(1, wrapper.num_classes)],
        "precision": {"mode": "fp32"},
        "versions": versions(opset),
    }
    # the graph and its manifest are published together (a kill leaves the old pair or the new one)
    return json.loads(write_artifact(out_path, lambda staged: save_model(onnx_model, staged), manifest).read_text())


def _check_mask_options(input: str, raw: bool, masks: str, threshold: float | None, rows: str) -> None:
    if input == "tensor":
        raise BadInput(expected_got("--input for a Mask R-CNN", "'image' or 'image-list' (masks are made in the "
                                    "original image's pixels, which a tensor-input graph does not know)", repr(input)))
    if raw:
        raise BadInput(expected_got("--raw", "a Faster R-CNN (Mask R-CNN raw parity uses the Python API's "
                                    "debug_outputs)", "a Mask R-CNN"))
    if masks not in MASK_FORMS:
        raise BadInput(expected_got("--masks", " or ".join(map(repr, MASK_FORMS)), repr(masks)))
    if rows not in MASK_ROWS:
        raise BadInput(expected_got("--mask-rows", " or ".join(map(repr, MASK_ROWS)), repr(rows)))
    if threshold is not None and not 0.0 <= threshold < 1.0:
        raise BadInput(expected_got("--mask-threshold", "a value in [0, 1) or 'none' (probabilities)", threshold))


def _check_pasted_volume(masks: str, k: int, batch: int, image_range: dict[str, list[int]]) -> None:
    """The pasted masks of the largest batch of the largest accepted images must fit one TensorRT tensor."""
    if masks == "compact":
        return
    h, w = image_range["max"]
    volume = batch * k * h * w
    if volume > MAX_PASTED_ELEMENTS:
        raise BadInput(expected_got(
            "pasted masks", f"at most {MAX_PASTED_ELEMENTS} elements (batch x max detections x image pixels)",
            f"{batch} x {k} x {h}x{w} = {volume}; lower --max-detections, --dynamic-batch or --image-size-range, "
            "or export --masks compact"))


def _mask_section(wrapper, masks: str, threshold: float | None, image_range: dict[str, list[int]],
                  rows: str) -> dict:
    """The manifest's ``postprocessing.masks``: form, sizes, threshold and the pasted form's memory (with
    ``rows="detections"`` an upper bound: K rows; a photo with n detections uses n)."""
    k = wrapper.max_detections
    itemsize = 4 if threshold is None else 1
    section = {"form": masks, "mask_size": wrapper.mask_size, "threshold": threshold,
               "paste": "torchvision paste_masks_in_image (docs/detector.md, Masks; deploykit.runtime.masks)"}
    if masks != "compact":
        h, w = image_range["max"]
        section.update({"rows": rows, "dtype": "float32" if threshold is None else "uint8",
                        "bytes_per_image_pixel": k * itemsize,
                        "bytes_at_max_image": k * itemsize * h * w})
    return section


def attach_front_end(front: "onnx.ModelProto", net: "onnx.ModelProto") -> "onnx.ModelProto":
    """One graph: the front end's ``images``/``image_sizes``/``original_sizes`` feed the network's inputs."""
    import onnx
    from onnx import compose

    links = [(o.name, o.name) for o in front.graph.output if o.name in {i.name for i in net.graph.input}]
    merged = compose.merge_models(front, net, io_map=links, producer_name=net.producer_name,
                                  producer_version=net.producer_version)
    merged.graph.name = net.graph.name
    opsets = {}
    for op in merged.opset_import:  # merge_models lists a domain once per input model
        opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
    del merged.opset_import[:]
    merged.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in opsets.items())
    # the network's former input declarations would pin shapes the front end computes
    keep = {vi.name for vi in merged.graph.value_info} - {a for a, _ in links}
    vis = [vi for vi in merged.graph.value_info if vi.name in keep]
    del merged.graph.value_info[:]
    merged.graph.value_info.extend(vis)
    return onnx.shape_inference.infer_shapes(merged, data_prop=True)


def expose_outputs(model: "onnx.ModelProto", names: list[str]) -> "onnx.ModelProto":
    """Add the intermediate tensors ``names`` as graph outputs (their inferred types and shapes)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    known = {vi.name: vi for vi in inferred.graph.value_info}
    model.graph.output.extend(known[n] for n in names)
    return model


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
    if name in ("fasterrcnn_demo", "maskrcnn_demo"):
        from ..data.shapes import CLASS_NAMES

        if len(CLASS_NAMES) == n:
            return list(CLASS_NAMES)
    if n == 91:
        from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

        return list(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
    return ["__background__"] + [f"class_{i}" for i in range(1, n)]
