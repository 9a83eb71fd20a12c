"""The image-list front end: B images of different sizes in one call, as torchvision batches a list.

``model([a, b, c])`` resizes each image by the model's own rule from **its own** size, normalises
it, and pads all of them bottom/right with zeros to one batch shape: the largest resized height
and width, each rounded up to ``size_divisible`` (``GeneralizedRCNNTransform.batch_images``). This
front end does the same inside the graph. Inputs:

* ``image`` uint8 [B, H, W, 3]: the images, each at the top-left of its slot, zero beyond (the
  caller pads to the largest height and width of the list);
* ``image_hw`` int32 [B, 2]: each image's own (height, width) inside its slot;
* ``canvas`` uint8 [Hp, Wp]: only its **shape** is read: the batch's padded network size by
  torchvision's rule (the runtimes compute it from the sizes with the same float64 arithmetic).
  It keeps every tensor shape a function of input shapes, as TensorRT
  needs (a shape computed from ``image_hw``'s values would be data-dependent). The runtimes make
  all three: :func:`deploykit.runtime.preprocess.image_list_batch`.

Each image is resized with separable bilinear taps (``align_corners=False``, the source row of
output row ``y`` is ``max(h/h' · (y + 0.5) - 0.5, 0)``, PyTorch's rule with its recomputed
ratio) gathered from its own slot, then normalised; everything beyond its resized size is 0.
Outputs (the network's inputs): ``images`` float32 [B, 3, Hp, Wp], ``image_sizes`` float32 [B, 2]
(each resized size) and ``original_sizes`` float32 [B, 2] (each ``image_hw``).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from .pixels_in import _Builder, _emit_resized_size

INPUT_NAMES = ["image", "image_hw", "canvas"]


def _index_vector(g: _Builder, tensor: str, axis: int) -> str:
    """0..n-1 as float [1, n] for the length n of ``tensor``'s ``axis`` (a uint8 [Hp, Wp] read by a Cast)."""
    line = g.op("Gather", tensor, g.const(0, shape=()), axis=1 - axis)  # [n]
    ones = g.op("Add", g.op("Mul", line, g.const(0.0, np.float32, ())), g.const(1.0, np.float32, ()))
    index = g.op("Sub", g.op("CumSum", ones, g.const(0, shape=())), g.const(1.0, np.float32, ()))
    return g.op("Unsqueeze", index, g.const([0]))


def _resample(g: _Builder, x: str, slot: str, size: str, resized: str, out_index: str) -> str:
    """Bilinear resampling of ``x`` [B, slot, rest...] along axis 1, per image: output index ``out_index``
    [1, n] of image b samples its own ``size[b]`` -> ``resized[b]`` rule; ``slot`` is axis 1's length (int64 [1])."""
    f32 = lambda v: g.const(v, np.float32, ())  # noqa: E731
    size_f = g.op("Unsqueeze", g.op("Cast", size, to=TensorProto.FLOAT), g.const([1]))  # [B, 1]
    ratio = g.op("Div", size_f, g.op("Unsqueeze", g.op("Cast", resized, to=TensorProto.FLOAT), g.const([1])))
    src = g.op("Max", g.op("Sub", g.op("Mul", ratio, g.op("Add", out_index, f32(0.5))), f32(0.5)), f32(0.0))
    last = g.op("Sub", size_f, f32(1.0))
    i0 = g.op("Min", g.op("Floor", src), last)  # [B, n]
    lam1 = g.op("Clip", g.op("Sub", src, i0), f32(0.0), f32(1.0))
    i1 = g.op("Where", g.op("Less", i0, last), g.op("Add", i0, f32(1.0)), i0)
    # rows of image b live at b * slot + i in x flattened to [B * slot, ...]
    bsz = g.op("Slice", g.op("Shape", x), g.const(0), g.const(1), g.const(0))
    base = g.op("Mul", g.op("Cast", g.op("Range", g.const(0, shape=()), g.op("Squeeze", bsz, g.const([0])),
                                         g.const(1, shape=())), to=TensorProto.FLOAT),
                g.op("Cast", slot, to=TensorProto.FLOAT))
    base = g.op("Unsqueeze", base, g.const([1]))  # [B, 1]
    rest = g.op("Slice", g.op("Shape", x), g.const(2), g.const(64), g.const(0))
    flat = g.op("Reshape", x, g.op("Concat", g.const([-1]), rest, axis=0))  # [B * slot, rest...]
    taps = [g.op("Gather", flat, g.op("Cast", g.op("Add", base, index), to=TensorProto.INT64), axis=0)
            for index in (i0, i1)]  # [B, n, rest...]
    lam0 = g.op("Sub", f32(1.0), lam1)
    weights = [g.op("Unsqueeze", w, g.const([2, 3])) for w in (lam0, lam1)]  # [B, n, 1, 1]
    return g.op("Add", g.op("Mul", taps[0], weights[0]), g.op("Mul", taps[1], weights[1]), hint="resampled")


def front_end_list(*, mean: tuple[float, float, float], std: tuple[float, float, float], min_size: int,
                   max_size: int, batch: int | str = "batch", opset: int = 18) -> onnx.ModelProto:
    """``image``, ``image_hw``, ``canvas`` -> ``images``, ``image_sizes``, ``original_sizes`` (module doc)."""
    g = _Builder("list/")
    pixels = g.op("Cast", "image", to=TensorProto.FLOAT, hint="pixels_f")  # the only reader of the uint8 image
    canvas = g.op("Cast", "canvas", to=TensorProto.FLOAT, hint="canvas_f")
    hw = g.op("Cast", "image_hw", to=TensorProto.INT64)
    h = g.op("Squeeze", g.op("Slice", hw, g.const([0]), g.const([1]), g.const([1])), g.const([1]))  # [B]
    w = g.op("Squeeze", g.op("Slice", hw, g.const([1]), g.const([2]), g.const([1])), g.const([1]))
    rh, rw = _emit_resized_size(g, h, w, min_size=min_size, max_size=max_size)  # [B] each
    shape = g.op("Shape", pixels)
    slot_h = g.op("Slice", shape, g.const(1), g.const(2), g.const(0))
    slot_w = g.op("Slice", shape, g.const(2), g.const(3), g.const(0))
    ys, xs = _index_vector(g, canvas, 0), _index_vector(g, canvas, 1)  # [1, Hp], [1, Wp]
    rows = _resample(g, pixels, slot_h, h, rh, ys)  # [B, Hp, W, 3]
    cols = _resample(g, g.op("Transpose", rows, perm=[0, 2, 1, 3]), slot_w, w, rw, xs)  # [B, Wp, Hp, 3]
    x = g.op("Transpose", cols, perm=[0, 3, 2, 1], hint="resized")  # [B, 3, Hp, Wp]
    x = g.op("Div", x, g.const(255.0, np.float32, ()))
    x = g.op("Sub", x, g.const(mean, np.float32, (1, 3, 1, 1)))
    x = g.op("Div", x, g.const(std, np.float32, (1, 3, 1, 1)), hint="normalised")
    inside_h = g.op("Less", ys, g.op("Unsqueeze", g.op("Cast", rh, to=TensorProto.FLOAT), g.const([1])))  # [B, Hp]
    inside_w = g.op("Less", xs, g.op("Unsqueeze", g.op("Cast", rw, to=TensorProto.FLOAT), g.const([1])))  # [B, Wp]
    inside = g.op("And", g.op("Unsqueeze", inside_h, g.const([1, 3])), g.op("Unsqueeze", inside_w, g.const([1, 2])))
    g.nodes.append(helper.make_node("Where", [inside, x, g.const(0.0, np.float32, ())], ["images"],
                                    name="list/images"))
    resized = g.op("Concat", g.op("Unsqueeze", rh, g.const([1])), g.op("Unsqueeze", rw, g.const([1])), axis=1)
    g.nodes.append(helper.make_node("Cast", [resized], ["image_sizes"], name="list/image_sizes",
                                    to=TensorProto.FLOAT))
    g.nodes.append(helper.make_node("Cast", [hw], ["original_sizes"], name="list/original_sizes",
                                    to=TensorProto.FLOAT))
    inputs = [helper.make_tensor_value_info("image", TensorProto.UINT8, [batch, "height", "width", 3]),
              helper.make_tensor_value_info("image_hw", TensorProto.INT32, [batch, 2]),
              helper.make_tensor_value_info("canvas", TensorProto.UINT8, ["padded_height", "padded_width"])]
    outputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, "padded_height", "padded_width"]),
               helper.make_tensor_value_info("image_sizes", TensorProto.FLOAT, [batch, 2]),
               helper.make_tensor_value_info("original_sizes", TensorProto.FLOAT, [batch, 2])]
    graph = helper.make_graph(g.nodes, "deploykit_front_end_list", inputs, outputs, g.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
