"""The mask paste written in ONNX: image-size masks in the original pixels, no ``Loop``, no ``If``.

torchvision pastes each mask with a Python loop (``paste_masks_in_image``; its ONNX export is a
``Loop``). Here the rule of :mod:`deploykit.runtime.masks` becomes two batched matrix products
per detection: bilinear resampling is separable, so with ``Wy`` [h, M+2] and ``Wx`` [w, M+2]
holding each output row's and column's two bilinear taps (zero outside the detection's
integer box, which also clips it to the image),

    pasted = Wy · padded_mask · Wxᵀ      ([h, M+2] · [M+2, M+2] · [M+2, w])

with the taps computed in float32 as PyTorch's ``align_corners=False`` resize computes them
(source ``max(ratio·(j + 0.5) - 0.5, 0)``, ``ratio = (M+2) / box side``), written as the tent
``max(0, 1 - |src - c|)`` over the padded mask's pixels ``c`` (:func:`_taps`). The column product
comes first, as PyTorch interpolates along a row before between rows.

The image's height and width are taken from the front end's float pixels (the uint8 ``image``
only feeds a ``Cast``), so the ``masks`` output's spatial dims are the input's own (``height``,
``width``).

Which rows are pasted (``rows``):

* ``"detections"`` (default): the first N rows, N = the row count of the mask branch (:mod:`.rows`:
  the most detections an image of the batch has, at least 1). ``masks`` is [B, N, h, w] with N
  named ``num_masks``: a **data-dependent** output dimension (``Slice`` of the compact tensors to
  ``Shape(row list)[1]``), which ONNX Runtime serves as is and TensorRT through an output allocator
  (both deploykit TensorRT runtimes install one). Memory N·h·w per image; a photo with 7
  detections pastes 7 masks, as eager torchvision does.
* ``"all"``: every one of the K rows (rows without a detection give zeros), [B, K, h, w]: a static
  shape for runtimes that cannot take a data-dependent output, at K·h·w per image. (Pasting only
  the detections' rows and scattering them into K zero rows, to keep that static shape, was
  measured slower on ONNX Runtime's CPU than pasting all K: docs/masks.md.)

Either way the product before the cast is float32 of the output's size (uint8 binary masks, or
float32 probabilities without a threshold).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from .pixels_in import _Builder
from .rows import INDEX_OUTPUT

OUTPUT_NAME = "masks"
MASK_ROWS = ("detections", "all")
#: The ``masks`` output's data-dependent dimension (``rows="detections"``): its name in the graph and manifest.
NUM_MASKS = "num_masks"


def _coordinates(g: _Builder, pixels: str, axis: int) -> str:
    """Row (``axis=1``) or column (``axis=2``) indices 0..n-1 of ``pixels`` [B, h, w, 3] as float [B, 1, n]."""
    # one line of the image first ([B, h, 3] or [B, w, 3]), then one channel: never a copy of a whole plane
    line = g.op("Gather", pixels, g.const(0, shape=()), axis=3 - axis)
    line = g.op("Gather", line, g.const(0, shape=()), axis=2)  # [B, h] or [B, w]
    ones = g.op("Add", g.op("Mul", line, g.const(0.0, np.float32, ())), g.const(1.0, np.float32, ()))
    index = g.op("Sub", g.op("CumSum", ones, g.const(1, shape=())), g.const(1.0, np.float32, ()))
    return g.op("Unsqueeze", index, g.const([1]), hint="coordinates")


def _taps(g: _Builder, coords: str, first: str, last: str, padded_size: int, extent: str) -> str:
    """Bilinear weights [B, K, n, M+2] of output pixels ``coords`` [B, 1, n] for boxes ``first..last`` [B, K, 1],
    zero from each image's ``extent`` [B, 1, 1] on (its own height or width: the paste clips to the image)."""
    f32 = lambda v: g.const(v, np.float32, ())  # noqa: E731
    side = g.op("Max", g.op("Add", g.op("Sub", last, first), f32(1.0)), f32(1.0))
    ratio = g.op("Div", f32(float(padded_size)), side)
    local = g.op("Sub", coords, first)  # [B, K, n]
    src = g.op("Max", g.op("Sub", g.op("Mul", ratio, g.op("Add", local, f32(0.5))), f32(0.5)), f32(0.0))
    # PyTorch's taps: lam0 = 1 - (src - i0) on i0 = floor(src), lam1 = src - i0 on i0 + 1, both on the last
    # source pixel from there on. That is the tent max(0, 1 - |src - c|) over the grid c = 0..M+1 once src is
    # clipped to M+1; a pixel outside the box (or the image) gets a source far off the grid, so no tap at all.
    src = g.op("Min", src, f32(float(padded_size - 1)))
    inside = g.op("And", g.op("And", g.op("GreaterOrEqual", coords, first), g.op("LessOrEqual", coords, last)),
                  g.op("Less", coords, extent))
    src = g.op("Where", inside, src, f32(-2.0))
    grid = g.const(np.arange(padded_size), np.float32, (padded_size,))
    offset = g.op("Abs", g.op("Sub", g.op("Unsqueeze", src, g.const([-1])), grid))
    return g.op("Relu", g.op("Sub", f32(1.0), offset), hint="taps")


def paste_nodes(probs: str, corners: str, pixels: str, sizes: str, *, mask_size: int, threshold: float | None
                ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes computing ``masks`` [B, R, h, w] from ``probs`` [B, R, M, M], ``corners`` int32 [B, R, 4] (R rows), the
    float pixels [B, h, w, 3] and each image's own ``sizes`` float [B, 2] (h, w; smaller than the frame in
    an image-list batch): uint8 0/1 (``probability > threshold``) or float32 probabilities (None)."""
    g = _Builder("paste/")
    padded = g.op("Pad", probs, g.const([0, 0, 1, 1, 0, 0, 1, 1]), g.const(0.0, np.float32, ()), mode="constant")
    box = g.op("Cast", corners, to=TensorProto.FLOAT)
    x0, y0, x1, y1 = (g.op("Slice", box, g.const([i]), g.const([i + 1]), g.const([2])) for i in range(4))
    size = mask_size + 2
    extent_h, extent_w = (g.op("Unsqueeze", g.op("Slice", sizes, g.const([i]), g.const([i + 1]), g.const([1])),
                               g.const([2])) for i in range(2))  # [B, 1, 1]
    cols = _taps(g, _coordinates(g, pixels, axis=2), x0, x1, size, extent_w)  # [B, K, w, M+2]
    rows = _taps(g, _coordinates(g, pixels, axis=1), y0, y1, size, extent_h)  # [B, K, h, M+2]
    along_rows = g.op("MatMul", padded, g.op("Transpose", cols, perm=[0, 1, 3, 2]))  # [B, K, M+2, w]
    if threshold is None:
        pasted = g.op("MatMul", rows, along_rows, hint="pasted")  # [B, R, h, w]
        g.nodes.append(helper.make_node("Identity", [pasted], [OUTPUT_NAME], name="paste/masks"))
    else:
        # Binary masks in two passes over the R x h x w product instead of four: a row's two taps sum to 1
        # inside the box and to 0 outside, so rows · (along_rows + (1 - T)) is p + 1 - T inside the box and 0
        # beyond, and the float -> UINT8 cast (truncation, TensorRT's DataType::kUINT8 and ONNX alike) gives
        # 1 exactly where p >= T (p > T but for values within a float rounding of T).
        lifted = g.op("MatMul", rows, g.op("Add", along_rows, g.const(1.0 - float(threshold), np.float32, ())),
                      hint="pasted_lifted")
        g.nodes.append(helper.make_node("Cast", [lifted], [OUTPUT_NAME], name="paste/masks", to=TensorProto.UINT8))
    return g.nodes, g.initializers


def float_pixels(model: onnx.ModelProto) -> str:
    """The front end's float copy of the uint8 ``image`` (the output of the ``Cast`` it feeds)."""
    for node in model.graph.node:
        if node.op_type == "Cast" and list(node.input) == ["image"]:
            return node.output[0]
    raise ValueError("the pixels-in front end has no Cast of 'image' to read the image's shape from")


def _detection_rows(g: _Builder, *tensors: str) -> list[str]:
    """``tensors`` [B, K, ...] cut to their first N rows, N = the mask branch's row count (``Shape`` of the
    row list [B, N, 2]: a size TensorRT takes from the data-dependent ``NonZero`` it comes from)."""
    count = g.op("Slice", g.op("Shape", INDEX_OUTPUT), g.const([1]), g.const([2]), g.const([0]), hint="num_masks")
    return [g.op("Slice", t, g.const([0]), count, g.const([1]), hint="detection_rows") for t in tensors]


def attach_paste(model: onnx.ModelProto, *, mask_size: int, threshold: float | None, keep_compact: bool,
                 rows: str = "detections") -> onnx.ModelProto:
    """``model`` (pixels-in, with ``mask_probs`` and ``mask_boxes`` outputs) plus the ``masks`` output of the
    detections' rows (``rows="detections"``, [B, num_masks, h, w]) or all K rows (``"all"``; module doc);
    ``keep_compact=False`` drops the compact outputs (they stay internal tensors)."""
    if rows not in MASK_ROWS:
        raise ValueError(f"rows should be one of {MASK_ROWS} instead of {rows!r}")
    probs_in, boxes_in = "mask_probs", "mask_boxes"
    if rows == "detections":
        g = _Builder("paste/rows/")
        probs_in, boxes_in = _detection_rows(g, probs_in, boxes_in)
        model.graph.node.extend(g.nodes)
        model.graph.initializer.extend(g.initializers)
    nodes, inits = paste_nodes(probs_in, boxes_in, float_pixels(model), "original_sizes",
                               mask_size=mask_size, threshold=threshold)
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(inits)
    elem = TensorProto.FLOAT if threshold is None else TensorProto.UINT8
    image = next(i for i in model.graph.input if i.name == "image")
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    probs = next(o for o in model.graph.output if o.name == "mask_probs")
    k = probs.type.tensor_type.shape.dim[1].dim_value if rows == "all" else NUM_MASKS
    out = helper.make_tensor_value_info(OUTPUT_NAME, elem, [dims[0], k, dims[1], dims[2]])
    dropped = {INDEX_OUTPUT} | (set() if keep_compact else {"mask_probs", "mask_boxes"})  # the row list: .rows
    outputs = [o for o in model.graph.output if o.name not in dropped]
    del model.graph.output[:]
    model.graph.output.extend(outputs + [out])
    return onnx.shape_inference.infer_shapes(model, data_prop=True)
