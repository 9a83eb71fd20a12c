"""The pixels-in front end of a detector graph, written directly in ONNX.

``image`` uint8 [B, h, w, 3] (RGB, as decoders and cameras deliver it) becomes what
torchvision's ``GeneralizedRCNNTransform`` makes of it at eval:

1. bilinear resize (``align_corners=False``, no antialias) to ``floor(h·s) × floor(w·s)``, with
   ``s = min(min_size / min(h, w), max_size / max(h, w))`` (dynamic mode) or
   ``s = min(H / h, W / w)`` (fixed canvas H×W) — the scale and the products in Python
   **double** precision, as eager torchvision computes them;
2. ``x / 255``, then ``(x - mean) / std`` per channel (float32). torchvision normalises before
   resizing; resizing first is the same up to float rounding and much cheaper for large images;
3. zero padding bottom/right: to the next multiple of ``size_divisible`` (dynamic mode,
   torchvision's own padding) or to the canvas (fixed mode).

Outputs: ``images`` float32 [B, 3, Hp, Wp], ``image_sizes`` float32 [B, 2] (resized, unpadded
(h', w')) and ``original_sizes`` float32 [B, 2] ((h, w)), which the network part takes.

TensorRT has no float64, and a resize's output size must be a shape tensor (integers, at
most 64 elements): so the double-precision ``floor(x · fl(num / den))`` is computed exactly
with int64 arithmetic (:func:`_emit_floor_scaled`). ``fl(num/den)`` is the nearest double to
the rational; the product differs from the exact rational ``x·num/den`` only where that is
an integer ``k`` and the rounded quotient lies below ``num/den`` by enough to round the
product below ``k`` — then torchvision gets ``k - 1`` (e.g. a 161-pixel side scaled to 800
gives 799). That condition is decided from the quotient's rounding remainder
(``num·2^(52-e) mod den``) with modular arithmetic, never with a float.

Limits (checked at export): image sides 1..8192 and resized sides below 16384.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...runtime.preprocess import torchvision_resized_size  # noqa: F401  (the reference; re-exported)

MAX_SIDE = 8192  # the int64 bounds of the exact double emulation hold up to here
MAX_RESIZED = 16383


@dataclass
class _Builder:
    """Collects nodes and constants; ``op(...)`` returns the new tensor's name."""

    prefix: str
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    _count: int = 0
    _consts: dict = field(default_factory=dict)

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def op(self, op_type: str, *inputs: str, hint: str | None = None, **attrs) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def const(self, value, dtype=np.int64, shape: tuple[int, ...] | None = None) -> str:
        """A constant of ``shape`` (default 1-D: scalars become [1]), shared by value and shape."""
        array = np.asarray(value, dtype=dtype).reshape(shape if shape is not None else (-1,))
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            name = self.name("const")
            self.initializers.append(numpy_helper.from_array(array, name))
            self._consts[key] = name
        return self._consts[key]


# ---------------------------------------------------------------------------------------
# exact double-precision size arithmetic in int64
# ---------------------------------------------------------------------------------------
def _emit_ilog2(g: _Builder, v: str) -> str:
    """floor(log2(v)) for 1 <= v < 2**32, by a 5-step binary search (Where / Div only)."""
    e = g.op("Mul", v, g.const(0), hint="ilog2")
    t = v
    for step in (16, 8, 4, 2, 1):
        big = g.op("GreaterOrEqual", t, g.const(1 << step))
        t = g.op("Where", big, g.op("Div", t, g.const(1 << step)), t)
        e = g.op("Where", big, g.op("Add", e, g.const(step)), e)
    return e


def _emit_pow2(g: _Builder, t: str) -> str:
    """2**t for 0 <= t <= 62, from t's six bits (Div / Sub / Where / Mul only)."""
    result = g.op("Add", g.op("Mul", t, g.const(0)), g.const(1), hint="pow2")
    rest = t
    for bit in (5, 4, 3, 2, 1, 0):
        weight = 1 << bit
        on = g.op("GreaterOrEqual", rest, g.const(weight))
        rest = g.op("Where", on, g.op("Sub", rest, g.const(weight)), rest)
        result = g.op("Where", on, g.op("Mul", result, g.const(1 << weight)), result)
    return result


def _emit_mod(g: _Builder, a: str, m: str) -> str:
    """a mod m for a >= 0, m > 0 (a - (a // m)·m)."""
    return g.op("Sub", a, g.op("Mul", g.op("Div", a, m), m), hint="mod")


def _emit_floor_scaled(g: _Builder, x: str, num: str, den: str) -> str:
    """``floor(x * (num / den))`` evaluated as Python does in float64, for positive int64 tensors.

    ``k = x·num // den`` is the exact floor. Only when ``x·num / den`` is an integer can the
    double product fall below ``k``: with ``c = fl(num/den) = M·2^(e-52)`` (e = floor(log2(num/den)),
    M = round-half-even(num·2^(52-e) / den)) and ``r = num·2^(52-e) mod den``, c lies below
    num/den by ``r·2^(e-52)/den`` when M rounded down, and the product ``x·c`` rounds below
    ``k`` iff ``2·k·r·2^(e - e_k) > num`` (``4·k·...`` when k is a power of two, whose lower
    neighbour is half as far), e_k = floor(log2 k); a tie rounds to k (even mantissa).
    """
    p = g.op("Mul", x, num)
    k = g.op("Div", p, den, hint="k")
    exact = g.op("Equal", g.op("Mul", k, den), p)
    # e = floor(log2(num/den)) = floor(log2(num·2^14 // den)) - 14 (the quotient is >= 1)
    e = g.op("Sub", _emit_ilog2(g, g.op("Div", g.op("Mul", num, g.const(1 << 14)), den)), g.const(14))
    # T = num·2^(52-e) mod 2·den = (num·2^32 mod 2den)·(2^(20-e) mod 2den) mod 2den
    m2 = g.op("Mul", den, g.const(2))
    a = _emit_mod(g, g.op("Mul", _emit_mod(g, num, m2), _emit_mod(g, g.const(1 << 32), m2)), m2)
    b = _emit_mod(g, _emit_pow2(g, g.op("Sub", g.const(20), e)), m2)
    t = _emit_mod(g, g.op("Mul", a, b), m2)
    q_odd = g.op("GreaterOrEqual", t, den)
    r = g.op("Where", q_odd, g.op("Sub", t, den), t)
    twice_r = g.op("Mul", r, g.const(2))
    below_half = g.op("Less", twice_r, den)
    tie_even = g.op("And", g.op("Equal", twice_r, den), g.op("Not", q_odd))
    rounded_down = g.op("And", g.op("Or", below_half, tie_even), g.op("Greater", r, g.const(0)))
    k_pos = g.op("Max", k, g.const(1))
    e_k = _emit_ilog2(g, k_pos)
    is_pow2 = g.op("Equal", _emit_pow2(g, e_k), k_pos)
    factor = g.op("Where", is_pow2, g.const(4), g.const(2))
    # factor·k·r·2^(e - e_k + 32) > num·2^32   (exponent in [6, 33] within the limits)
    lhs = g.op("Mul", g.op("Mul", g.op("Mul", factor, k_pos), r), _emit_pow2(g, g.op("Add", g.op("Sub", e, e_k),
                                                                                     g.const(32))))
    rhs = g.op("Mul", num, g.const(1 << 32))
    below = g.op("And", g.op("And", exact, rounded_down), g.op("Greater", lhs, rhs))
    return g.op("Sub", k, g.op("Cast", below, to=TensorProto.INT64), hint="floor_scaled")


def _emit_resized_size(g: _Builder, h: str, w: str, *, min_size: int | None = None, max_size: int | None = None,
                       canvas: tuple[int, int] | None = None) -> tuple[str, str]:
    """(h', w') of torchvision's resize: min_size/max_size rule, or fit into ``canvas``."""
    if canvas is not None:  # s = min(H / h, W / w)
        ch, cw = g.const(canvas[0]), g.const(canvas[1])
        first = g.op("LessOrEqual", g.op("Mul", ch, w), g.op("Mul", cw, h))  # H/h <= W/w
        num = g.op("Where", first, ch, cw)
        den = g.op("Where", first, h, w)
    else:  # s = min(min_size / min(h, w), max_size / max(h, w))
        lo, hi = g.op("Min", h, w), g.op("Max", h, w)
        smin, smax = g.const(min_size), g.const(max_size)
        first = g.op("LessOrEqual", g.op("Mul", smin, hi), g.op("Mul", smax, lo))
        num = g.op("Where", first, smin, smax)
        den = g.op("Where", first, lo, hi)
    return _emit_floor_scaled(g, h, num, den), _emit_floor_scaled(g, w, num, den)


def size_model(*, min_size: int | None = None, max_size: int | None = None,
               canvas: tuple[int, int] | None = None, opset: int = 18) -> onnx.ModelProto:
    """A model ``(h, w)`` int64 [N] -> ``(resized_h, resized_w)`` int64 [N]: the front end's size
    arithmetic alone, elementwise, so tests can sweep many sizes in one run."""
    g = _Builder("size/")
    oh, ow = _emit_resized_size(g, "h", "w", min_size=min_size, max_size=max_size, canvas=canvas)
    g.nodes.append(helper.make_node("Identity", [oh], ["resized_h"]))
    g.nodes.append(helper.make_node("Identity", [ow], ["resized_w"]))
    vec = [helper.make_tensor_value_info(n, TensorProto.INT64, ["n"]) for n in ("h", "w")]
    outs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["n"]) for n in ("resized_h", "resized_w")]
    graph = helper.make_graph(g.nodes, "resized_size", vec, outs, g.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


# ---------------------------------------------------------------------------------------
# the front-end graph
# ---------------------------------------------------------------------------------------
def front_end(*, mean: tuple[float, float, float], std: tuple[float, float, float], size_divisible: int = 32,
              min_size: int | None = None, max_size: int | None = None, canvas: tuple[int, int] | None = None,
              batch: int | str = "batch", image_hw: tuple[int | str, int | str] = ("height", "width"),
              opset: int = 18) -> onnx.ModelProto:
    """``image`` uint8 [B, h, w, 3] -> ``images``, ``image_sizes``, ``original_sizes`` (see module doc).

    Exactly one of (``min_size`` and ``max_size``) — dynamic mode — or ``canvas`` — fixed mode.
    """
    if (canvas is None) == (min_size is None or max_size is None):
        raise ValueError("give either min_size and max_size (dynamic mode) or canvas (fixed mode)")
    g = _Builder("pre/")
    # The uint8 image is read by this Cast only, everything else reads its float copy: TensorRT takes
    # UINT8 only as a network input/output, converted before any other layer uses it (NvInfer.h
    # DataType::kUINT8; onnx-tensorrt docs/operators.md lists no UINT8 for Shape or Transpose).
    pixels = g.op("Cast", "image", to=TensorProto.FLOAT, hint="pixels_f")
    shape = g.op("Shape", pixels)
    bsz = g.op("Slice", shape, g.const(0), g.const(1), g.const(0), hint="batch")
    h = g.op("Slice", shape, g.const(1), g.const(2), g.const(0), hint="h")
    w = g.op("Slice", shape, g.const(2), g.const(3), g.const(0), hint="w")
    oh, ow = _emit_resized_size(g, h, w, min_size=min_size, max_size=max_size, canvas=canvas)

    # Resize first, then normalise the (usually much smaller) result: bilinear weights sum to 1,
    # so this equals torchvision's normalise-then-resize up to float rounding (~1e-6).
    x = g.op("Transpose", pixels, perm=[0, 3, 1, 2], hint="pixels")
    sizes = g.op("Concat", bsz, g.const(3), oh, ow, axis=0, hint="sizes")
    x = g.op("Resize", x, "", "", sizes, mode="linear", coordinate_transformation_mode="half_pixel",
             hint="resized")
    x = g.op("Div", x, g.const(255.0, np.float32, ()))
    x = g.op("Sub", x, g.const(mean, np.float32, (1, 3, 1, 1)))
    x = g.op("Div", x, g.const(std, np.float32, (1, 3, 1, 1)), hint="normalised")
    if canvas is not None:
        ph, pw = g.const(canvas[0]), g.const(canvas[1])
    else:
        d = g.const(size_divisible)
        ph = g.op("Mul", g.op("Div", g.op("Add", oh, g.const(size_divisible - 1)), d), d)
        pw = g.op("Mul", g.op("Div", g.op("Add", ow, g.const(size_divisible - 1)), d), d)
    zeros6 = g.const([0, 0, 0, 0, 0, 0])
    pads = g.op("Concat", zeros6, g.op("Sub", ph, oh), g.op("Sub", pw, ow), axis=0, hint="pads")
    g.nodes.append(helper.make_node("Pad", [x, pads, g.const(0.0, np.float32, ())], ["images"], name="pre/pad",
                                    mode="constant"))
    pair_shape = g.op("Concat", bsz, g.const(2), axis=0)
    resized = g.op("Cast", g.op("Concat", oh, ow, axis=0), to=TensorProto.FLOAT)
    original = g.op("Cast", g.op("Concat", h, w, axis=0), to=TensorProto.FLOAT)
    g.nodes.append(helper.make_node("Expand", [resized, pair_shape], ["image_sizes"], name="pre/image_sizes"))
    g.nodes.append(helper.make_node("Expand", [original, pair_shape], ["original_sizes"], name="pre/original_sizes"))

    hh, ww = image_hw
    inputs = [helper.make_tensor_value_info("image", TensorProto.UINT8, [batch, hh, ww, 3])]
    if canvas is not None:
        img_shape = [batch, 3, canvas[0], canvas[1]]
    else:
        img_shape = [batch, 3, "padded_height", "padded_width"]
    outputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, img_shape),
               helper.make_tensor_value_info("image_sizes", TensorProto.FLOAT, [batch, 2]),
               helper.make_tensor_value_info("original_sizes", TensorProto.FLOAT, [batch, 2])]
    graph = helper.make_graph(g.nodes, "deploykit_front_end", inputs, outputs, g.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
