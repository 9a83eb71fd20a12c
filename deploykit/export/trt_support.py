"""TensorRT readiness of an ONNX graph, checked without TensorRT.

Every node's op, element types and attributes are compared with a table of
facts from TensorRT's ONNX parser (:data:`SOURCE`): its support matrix
(onnx-tensorrt ``docs/operators.md``) and, where that is silent, its importers
and static checkers (``onnxOpImporters.cpp``, ``onnxOpCheckers.cpp``). Ops that
are not in the table are violations too: a new op has to be looked up before a
graph that uses it is called ready.

Besides the per-op table, three graph-wide rules (TensorRT's own restrictions):

* **element types**: no DOUBLE (the parser silently downcasts it, clamping),
  no strings or other types TensorRT lacks; INT8 only between
  QuantizeLinear and DequantizeLinear (TensorRT is strongly typed: INT8 is a
  quantized type); UINT8 only as a graph input or output, read or made by Cast
  and nothing else, not even Shape/Size (:data:`UINT8_RULE`: where the sources
  differ, the stricter one is followed).
* **shape tensors**: every input TensorRT consumes as a shape (Reshape's
  shape, Expand's, Resize's sizes, Slice's starts/ends, Pad's pads, Range,
  ConstantOfShape, TopK's K, ...) must be computed from constants and
  Shape/Size outputs only, by ops TensorRT evaluates on shape tensors, each
  intermediate 0-D or 1-D with at most 64 elements (``ITensor``: "If the
  tensor is a shape tensor, its volume must not exceed 64"). A shape input
  that depends on tensor *values* (a data-dependent shape) or on the values of
  a graph input is reported with the node that makes it data-dependent.
* **outputs**: every graph-output dimension is a fixed size or a symbol that
  names a graph-input dimension (batch, height, width): no data-dependent
  shape (NonZero, NonMaxSuppression's selected count) reaches an output —
  unless the graph's manifest declares that dimension data-dependent
  (:func:`declared_data_dependent`: the pasted masks of a Mask R-CNN, one row
  per detection), which TensorRT serves through an ``IOutputAllocator``
  (``IExecutionContext::setOutputAllocator``; both deploykit TensorRT runtimes
  install one for such outputs).

No torch and no TensorRT here; pure ``onnx``.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import os
import signal
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper, shape_inference

#: Where the facts in :data:`OPS` come from. Versions are the newest stored
#: copies found; the lines cite which file says what.
SOURCE = {
    "matrix": "onnx/onnx-tensorrt docs/operators.md, TensorRT 10.15 (opset 9-24), commit "
              "fa5aa9f61e7781d2ca8f5351d42c1f19525a6124",
    "importers": "onnx/onnx-tensorrt onnxOpImporters.cpp and onnxOpCheckers.cpp, commit "
                 "dd0a3a9f8794ae4f0316ed07ea68cda9b944bb3c (10.15-era: RotaryEmbedding, TensorScatter present)",
    "limits": "TensorRT ITensor (shape tensor volume <= 64), TopK operator (k <= 3840, one of the last four axes), "
              "Shuffle operator types (no UINT8), dynamic-shapes guide (layers that compute shape tensors)",
    "uint8": "onnx-tensorrt docs/operators.md (note: UINT8 only as network input or output; Shape/Size types "
             "without UINT8) and TensorRT 11.1 NvInferRuntimeBase.h DataType::kUINT8 (convert network-level "
             "UINT8 inputs before other layers use them); NvInfer.h IShapeLayer takes any type, the stricter "
             "reading is kept: UINT8 is read only by Cast",
}
#: The expectation printed for a UINT8 tensor read by another op than Cast (with its sources).
UINT8_RULE = ("UINT8 read only by Cast (onnx-tensorrt docs/operators.md: UINT8 only as network input/output, "
              "Shape/Size without UINT8; NvInfer.h DataType::kUINT8: convert before other layers use it)")
TABLE_VERSION = "TensorRT 10.15 ONNX parser"

# -- element types ------------------------------------------------------------------------------

_F = frozenset({"FLOAT", "FLOAT16", "BFLOAT16"})
_FI = _F | {"INT32", "INT64"}
_FIB = _FI | {"BOOL"}
_B = frozenset({"BOOL"})
#: Element types TensorRT has at all (operators.md header); DOUBLE is listed there but only as a
#: silent, clamping downcast to FLOAT, so deploykit treats it as unsupported.
TRT_TYPES = frozenset({"FLOAT", "FLOAT16", "BFLOAT16", "INT32", "INT64", "INT8", "UINT8", "BOOL",
                       "FLOAT8E4M3FN", "INT4", "FLOAT4E2M1"})
QUANTIZED_TYPES = frozenset({"INT8", "FLOAT8E4M3FN", "INT4", "FLOAT4E2M1"})


@dataclass(frozen=True)
class OpRule:
    """What the TensorRT ONNX parser accepts for one op (facts; ``source`` says from where).

    ``types``: element types of the ``checked`` inputs (``"first"``, ``"all"`` or indices);
    ``attrs``: attribute -> (default, allowed values); ``const_inputs``: inputs that must be
    initializers or Constant outputs; ``shape_inputs``: inputs TensorRT consumes as shape tensors.
    """

    types: frozenset[str]
    checked: str | tuple[int, ...] = "first"
    attrs: Mapping[str, tuple[Any, frozenset]] = field(default_factory=dict)
    const_inputs: tuple[int, ...] = ()
    shape_inputs: tuple[int, ...] = ()
    source: str = "matrix"


def _r(types, checked="first", attrs=None, const=(), shape=(), source="matrix") -> OpRule:
    return OpRule(frozenset(types), checked, dict(attrs or {}), tuple(const), tuple(shape), source)


_DILATIONS_ONE = "dilations must be empty or all ones"

#: The ops deploykit's graphs use (detector fixed canvas and raw, every torchvision architecture,
#: SPADE, their FP16/INT8 versions, pixels-in front ends), as the TensorRT 10.15 parser supports them.
OPS: dict[str, OpRule] = {
    # elementwise arithmetic / comparison: every data input is checked
    **{op: _r(_FI, "all") for op in ("Add", "Sub", "Mul", "Div", "Min", "Max", "Sum", "Pow", "Mod")},
    **{op: _r(_FI, "all") for op in ("Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual")},
    **{op: _r(_B, "all") for op in ("And", "Or", "Xor", "Not")},
    "Where": _r(_FIB, (1, 2), source="matrix; importer refuses UINT8 branches"),
    # unary / activations
    **{op: _r(_F) for op in ("Ceil", "Floor", "Exp", "Log", "Sqrt", "Sigmoid", "Tanh", "Erf", "Reciprocal",
                             "Round", "Sin", "Cos", "LeakyRelu", "Elu", "Selu", "Softplus", "Softsign",
                             "HardSigmoid", "HardSwish", "Clip", "Softmax", "LogSoftmax", "PRelu")},
    **{op: _r(_FI) for op in ("Abs", "Neg", "Sign", "Relu")},
    "Cast": _r(_F | {"INT32", "INT64", "UINT8", "BOOL"}),
    "Identity": _r(_FIB),
    # data movement
    **{op: _r(_FIB) for op in ("Flatten", "Transpose", "Gather", "GatherElements", "GatherND", "Trilu")},
    "Concat": _r(_FIB, "all"),
    "Reshape": _r(_FIB, shape=(1,)),
    "Expand": _r(_FIB, shape=(1,)),
    "Tile": _r(_FIB, shape=(1,), source="matrix; importer refuses UINT8"),
    "Split": _r(_FIB, shape=(1,), source="matrix; importer refuses UINT8"),
    # Slice/Pad axes: tensor axes are parsed only since TensorRT 10.3 / 10.4 (docs/Changelog.md);
    # deploykit requires constants so that every TensorRT >= 10.0 parses its graphs.
    "Slice": _r(_FIB, const=(3,), shape=(1, 2, 3, 4), source="matrix; changelog 10.3 (tensor axes)"),
    "Pad": _r(_FI, attrs={"mode": ("constant", frozenset({"constant", "reflect", "edge", "wrap"}))},
              const=(3,), shape=(1, 3), source="matrix; importer (modes, refuses UINT8); changelog 10.4"),
    # "axes must be resolvable to a constant" (Squeeze/Unsqueeze; dynamic axes since 10.7)
    "Squeeze": _r(_FIB, const=(1,), shape=(1,)),
    "Unsqueeze": _r(_FIB, const=(1,), shape=(1,)),
    "ScatterND": _r(_FI, attrs={"reduction": ("none", frozenset({"none"}))}),
    "ScatterElements": _r(_FI),
    # no UINT8 (matrix; the uint8 rule): IShapeLayer reads any type, the stricter source wins
    "Shape": _r(_FIB, source="matrix (no UINT8); uint8"),
    "Size": _r(_FIB, source="matrix (no UINT8); uint8"),
    "Constant": _r(_F | {"INT32", "INT64", "BOOL", "FLOAT8E4M3FN", "FLOAT4E2M1", "INT4"}),
    "ConstantOfShape": _r(_F | {"INT32", "INT64", "BOOL"}, checked=(), shape=(0,)),
    # importer: "only supports int32, int64, and float input types for Range", all three of one type
    "Range": _r({"FLOAT", "INT32", "INT64"}, "all", shape=(0, 1, 2), source="importer (narrower than matrix)"),
    # reductions: "axes must be an initializer"
    **{op: _r(_FI, const=(1,), shape=(1,)) for op in (
        "ReduceSum", "ReduceMax", "ReduceMin", "ReduceMean", "ReduceProd", "ReduceL1", "ReduceL2",
        "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")},
    "ArgMax": _r(_FI),
    "ArgMin": _r(_FI),
    "CumSum": _r(_F, const=(1,)),
    # TopK: "sorted must be 1, K input must be less than 3840" (matrix); the TopK operator page
    # says k <= 3840 -- deploykit follows the layer's limit (K <= 3840). K constant (static layer).
    "TopK": _r(_FI, attrs={"sorted": (1, frozenset({1}))}, const=(1,), shape=(1,)),
    # network layers
    "Conv": _r(_F),
    "ConvTranspose": _r(_F),
    "Gemm": _r(_F),
    "MatMul": _r(_F, "all", source="matrix; importer refuses INT32/INT64"),
    "MaxPool": _r(_F, source="matrix: 2D/3D only, no Indices output, " + _DILATIONS_ONE),
    "AveragePool": _r(_F, source="matrix: 2D/3D only, " + _DILATIONS_ONE),
    "GlobalAveragePool": _r(_F),
    "GlobalMaxPool": _r(_F),
    "BatchNormalization": _r(_F, attrs={"training_mode": (0, frozenset({0}))},
                             source="matrix; checker: training_mode 0, only output Y"),
    "InstanceNormalization": _r(_F),
    "LayerNormalization": _r(_F, source="matrix: only output Y"),
    "GroupNormalization": _r(_F),
    "Dropout": _r(_F, const=(2,)),
    # Resize: modes, coordinate modes, nearest modes, stretch only, no antialias (matrix + checker)
    "Resize": _r(_F, attrs={
        "mode": ("nearest", frozenset({"nearest", "linear"})),
        "coordinate_transformation_mode": ("half_pixel", frozenset({
            "half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"})),
        "nearest_mode": ("round_prefer_floor", frozenset({"floor", "ceil", "round_prefer_floor",
                                                          "round_prefer_ceil"})),
        "antialias": (0, frozenset({0})),
        "keep_aspect_ratio_policy": ("stretch", frozenset({"stretch"})),
    }, shape=(2, 3), source="matrix; checker (antialias, stretch, tf_half_pixel_for_nn); importer (BOOL/UINT8)"),
    # RoiAlign: the ROIAlign_TRT v2 plugin (importer); checker: mode avg|max, sampling_ratio >= 0,
    # coordinate_transformation_mode half_pixel|output_half_pixel
    "RoiAlign": _r({"FLOAT", "FLOAT16"}, attrs={
        "mode": ("avg", frozenset({"avg", "max"})),
        "coordinate_transformation_mode": ("half_pixel", frozenset({"half_pixel", "output_half_pixel"})),
    }, source="matrix; importer (plugin ROIAlign_TRT v2); checker"),
    "NonMaxSuppression": _r({"FLOAT", "FLOAT16"}, attrs={"center_point_box": (0, frozenset({0, 1}))},
                            shape=(2,), source="matrix; importer (3-D boxes/scores, center_point_box 0|1)"),
    "NonZero": _r({"FLOAT", "FLOAT16"}),
    "OneHot": _r(_FIB, const=(1,)),
    # explicit quantization: zero points must be all zero (symmetric), int8 (or fp8/int4/fp4) only
    "QuantizeLinear": _r(_F, const=(2,)),
    "DequantizeLinear": _r(QUANTIZED_TYPES, const=(2,)),
}

#: Ops TensorRT's parser does not import (operators.md marks them N), with the reason to print.
UNSUPPORTED: dict[str, str] = {
    **{op: "an ONNX Runtime integer kernel; TensorRT takes INT8 only as QuantizeLinear/DequantizeLinear"
       for op in ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear",
                  "QLinearAdd", "QLinearMul", "QGemm", "QLinearConcat", "QLinearGlobalAveragePool")},
    **{op: "marked N (unsupported) in the TensorRT ONNX parser's support matrix"
       for op in ("MaxRoiPool", "MaxUnpool", "Unique", "Compress", "BitShift", "Det", "Multinomial",
                  "StringNormalizer", "TfIdfVectorizer", "Col2Im", "CenterCropPad", "AffineGrid", "DFT",
                  "Optional", "OptionalGetElement", "OptionalHasElement", "RegexFullMatch", "ImageDecoder")},
}

#: Ops imported as plugins from TensorRT's standard plugin library (onnxOpImporters.cpp):
#: the builder and the runtime must call ``init_libnvinfer_plugins`` before parsing/deserialising.
PLUGINS: dict[str, str] = {"RoiAlign": "ROIAlign_TRT v2"}

#: ONNX ops whose TensorRT layers compute shape tensors (the dynamic-shapes guide lists Shape,
#: Concatenation, ElementWise, Gather, Identity, Reduce; Shuffle and Slice take and give shape
#: tensors; Constant). Where (Select) and Not are included on the parser's own use; not confirmed
#: by the guide.
SHAPE_OPS = frozenset({
    "Shape", "Size", "Constant", "Identity", "Cast", "Concat", "Gather", "Slice", "Squeeze", "Unsqueeze",
    "Reshape", "Flatten", "Add", "Sub", "Mul", "Div", "Mod", "Min", "Max", "Equal", "Less", "LessOrEqual",
    "Greater", "GreaterOrEqual", "And", "Or", "Xor", "Not", "Where", "ReduceSum", "ReduceProd", "ReduceMax",
    "ReduceMin"})
MAX_SHAPE_TENSOR_VOLUME = 64
MAX_TOPK = 3840
#: Ops whose output size depends on tensor values (TensorRT: data-dependent shapes).
DATA_DEPENDENT_OPS = frozenset({"NonZero", "NonMaxSuppression", "Unique", "Compress"})

# -- violations and the report ----------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    """One rule one node breaks: ``node`` (its name, or ``graph``/``manifest``), ``op``, ``rule``
    (``op``, ``type``, ``attribute``, ``constant-input``, ``shape-tensor``, ``output-shape``,
    ``manifest``), ``what`` is checked, and the ``expected`` and ``got`` values."""

    node: str
    op: str
    rule: str
    what: str
    expected: str
    got: str

    def __post_init__(self) -> None:  # a hostile file's names and attributes: bytes, lists, newlines -> one-line text
        from ..errors import printable

        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            object.__setattr__(self, f.name, printable(text))

    def line(self) -> str:
        where = f"{self.node} {self.op}" if self.node in ("graph", "manifest") else f"node {self.node!r} ({self.op})"
        return f"{where}: {self.what}: expected {self.expected}, got {self.got}"


@dataclass
class Readiness:
    """The result of :func:`check_readiness`."""

    violations: list[Violation]
    ops: Counter
    plugins: list[str]
    nodes: int
    data_dependent: list[str] = dataclasses.field(default_factory=list)  # "masks[1]": declared, allowed

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        return {"ready": self.ok, "table": {"version": TABLE_VERSION, **SOURCE}, "nodes": self.nodes,
                "ops": dict(sorted(self.ops.items())), "plugins": self.plugins,
                "needs_standard_plugins": bool(self.plugins), "data_dependent_outputs": self.data_dependent,
                "violations": [dataclasses.asdict(v) for v in self.violations]}


# -- graph access ------------------------------------------------------------------------------


class _Graph:
    """Producers, constants, element types and shapes of an (inferred) ONNX graph."""

    def __init__(self, model: onnx.ModelProto):
        self.g = g = model.graph
        self.inits = {t.name: t for t in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output if o}
        self.inputs = {i.name for i in g.input if i.name not in self.inits}
        self.info = {vi.name: vi.type.tensor_type for vi in list(g.input) + list(g.value_info) + list(g.output)
                     if vi.type.HasField("tensor_type")}

    def elem_type(self, name: str) -> str | None:
        if name in self.inits:
            return _type_name(self.inits[name].data_type)
        p = self.producer.get(name)
        if p is not None and p.op_type == "Constant":
            t = _attr(p, "value")
            if isinstance(t, onnx.TensorProto):
                return _type_name(t.data_type)
        t = self.info.get(name)
        if t is None or t.elem_type == TensorProto.UNDEFINED:
            return None
        return _type_name(t.elem_type)

    def dims(self, name: str) -> list[int | str | None] | None:
        if name in self.inits:
            return list(self.inits[name].dims)
        const = self.const(name)
        if const is not None:
            return list(const.shape)
        t = self.info.get(name)
        if t is None or not t.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]

    def is_const(self, name: str) -> bool:
        p = self.producer.get(name)
        return name in self.inits or (p is not None and p.op_type == "Constant")

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant output (``None`` otherwise, or when its data does
        not match its dims: a hostile file's tensor is no constant the rules can read)."""
        try:
            return self._const(name)
        except (ValueError, TypeError, IndexError, OverflowError):
            return None

    def _const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        p = self.producer.get(name)
        if p is not None and p.op_type == "Constant":
            t = _attr(p, "value")
            if isinstance(t, onnx.TensorProto):
                return numpy_helper.to_array(t)
            for key in ("value_int", "value_float"):
                v = _attr(p, key)
                if v is not None:
                    return np.asarray(v)
            for key in ("value_ints", "value_floats"):
                v = _attr(p, key)
                if v is not None:
                    return np.asarray(list(v))
        return None


def _type_name(value: Any) -> str:
    """An ONNX element type's name; ``UNKNOWN(n)`` for a number onnx does not define (a hostile file)."""
    try:
        return TensorProto.DataType.Name(int(value))
    except (ValueError, TypeError):
        return f"UNKNOWN({value!r})"


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            v = onnx.helper.get_attribute_value(a)
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else v  # a hostile file's bytes too
    return default


def _label(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


def _fmt(values: Iterable[Any]) -> str:
    return "{" + ", ".join(sorted(str(v) for v in values)) + "}"


# -- per-node rules ------------------------------------------------------------------------------


def _node_violations(gr: _Graph, node: onnx.NodeProto) -> list[Violation]:
    op = node.op_type
    v = _Collector(node)
    if node.domain not in ("", "ai.onnx"):
        v.add("op", "domain", "the standard ONNX domain (TensorRT imports custom domains only as plugins)",
              repr(node.domain))
        return v.items
    if op in UNSUPPORTED:
        v.add("op", "op", f"an op TensorRT's ONNX parser imports ({op} is {UNSUPPORTED[op]})", op)
        return v.items
    rule = OPS.get(op)
    if rule is None:
        v.add("op", "op", f"an op in deploykit's TensorRT support table ({TABLE_VERSION}; "
                          "look it up in onnx-tensorrt docs/operators.md and add it)", f"{op} (not in the table)")
        return v.items
    _check_types(gr, node, rule, v)
    for name, (default, allowed) in rule.attrs.items():
        value = _attr(node, name, default)
        if value not in allowed:
            v.add("attribute", f"attribute {name}", f"one of {_fmt(allowed)}", repr(value))
    for k in rule.const_inputs:
        if k < len(node.input) and node.input[k] and not gr.is_const(node.input[k]):
            v.add("constant-input", f"input {k} ({node.input[k]!r})",
                  "an initializer or Constant (TensorRT reads it at build time)", "a computed tensor")
    special = _SPECIAL.get(op)
    if special is not None:
        special(gr, node, v)
    return v.items


class _Collector:
    def __init__(self, node: onnx.NodeProto):
        self.node, self.items = node, []

    def add(self, rule: str, what: str, expected: str, got: str) -> None:
        self.items.append(Violation(_label(self.node), self.node.op_type, rule, what, expected, got))


def _check_types(gr: _Graph, node: onnx.NodeProto, rule: OpRule, v: _Collector) -> None:
    if node.op_type == "Constant":
        names = [(None, node.output[0])]
    elif rule.checked == "first":
        names = [(0, node.input[0])] if node.input else []
    elif rule.checked == "all":
        names = [(k, n) for k, n in enumerate(node.input) if n]
    else:
        names = [(k, node.input[k]) for k in rule.checked if k < len(node.input) and node.input[k]]
    for k, name in names:
        t = gr.elem_type(name)
        if t == "UINT8" and k is not None:
            continue  # the graph-wide UINT8 rule reports it, naming its sources
        if t is not None and t not in rule.types:
            where = "output" if k is None else f"input {k} ({name!r})"
            v.add("type", f"{where} element type", f"one of {_fmt(rule.types)}", t)


def _check_topk(gr: _Graph, node: onnx.NodeProto, v: _Collector) -> None:
    if len(node.input) > 1:
        k = gr.const(node.input[1])
        if k is not None and not 0 <= int(k.reshape(-1)[0]) <= MAX_TOPK:
            v.add("attribute", "K", f"0 <= K <= {MAX_TOPK} (TensorRT's TopK limit)", str(int(k.reshape(-1)[0])))
    dims = gr.dims(node.input[0])
    if dims is not None:
        axis = int(_attr(node, "axis", -1))
        axis = axis + len(dims) if axis < 0 else axis
        if axis < len(dims) - 4:
            v.add("attribute", "axis", "one of the last four axes (TensorRT's TopK layer)", str(axis))


def _check_resize(gr: _Graph, node: onnx.NodeProto, v: _Collector) -> None:
    mode = _attr(node, "mode", "nearest")
    ctm = _attr(node, "coordinate_transformation_mode", "half_pixel")
    if ctm == "tf_half_pixel_for_nn" and _attr(node, "nearest_mode", "round_prefer_floor") != "round_prefer_floor":
        v.add("attribute", "nearest_mode", "round_prefer_floor with tf_half_pixel_for_nn",
              repr(_attr(node, "nearest_mode")))
    scales = node.input[2] if len(node.input) > 2 and node.input[2] else None
    sizes = node.input[3] if len(node.input) > 3 and node.input[3] else None
    rank = len(gr.dims(node.input[0]) or [])
    axes = _attr(node, "axes")
    if scales is not None and sizes is None:
        value = gr.const(scales)
        if value is None and axes is not None and list(axes) != list(range(rank)):
            v.add("attribute", "axes", f"absent or [0..{rank - 1}] when scales is a computed tensor", str(list(axes)))
        if value is not None and mode == "linear":
            s = value.reshape(-1).tolist()
            if any(x != 1 for x in s[:-3]):
                v.add("attribute", "scales", "linear resizing on the last three axes only (others 1)", str(s))


def _check_roialign(gr: _Graph, node: onnx.NodeProto, v: _Collector) -> None:
    if int(_attr(node, "sampling_ratio", 0)) < 0:
        v.add("attribute", "sampling_ratio", ">= 0", str(_attr(node, "sampling_ratio")))
    dims = gr.dims(node.input[1]) if len(node.input) > 1 else None
    if dims is not None and (len(dims) != 2 or isinstance(dims[1], int) and dims[1] != 4):
        v.add("attribute", "rois shape", "[num_rois, 4] (the importer's check)", str(dims))


def _check_pool(gr: _Graph, node: onnx.NodeProto, v: _Collector) -> None:
    kernel = _attr(node, "kernel_shape")
    if kernel is not None and len(kernel) not in (2, 3):
        v.add("attribute", "kernel_shape", "2-D or 3-D pooling", str(list(kernel)))
    dil = _attr(node, "dilations")
    if dil is not None and any(d != 1 for d in dil):
        v.add("attribute", "dilations", "empty or all ones", str(list(dil)))
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        v.add("attribute", "output 1 (Indices)", "unused (TensorRT has no MaxPool indices)", node.output[1])


def _check_single_output(gr: _Graph, node: onnx.NodeProto, v: _Collector) -> None:
    extra = [o for o in node.output[1:] if o]
    if extra:
        v.add("attribute", "outputs", "only the first output (TensorRT computes only Y)", str(extra))


def _check_mod(gr: _Graph, node: onnx.NodeProto, v: _Collector) -> None:
    t = gr.elem_type(node.input[0])
    if int(_attr(node, "fmod", 0)) == 0 and t is not None and t not in ("INT32", "INT64"):
        v.add("type", "input 0 element type with fmod=0", "INT32 or INT64 (importer)", t)


def _check_range(gr: _Graph, node: onnx.NodeProto, v: _Collector) -> None:
    types = {gr.elem_type(n) for n in node.input} - {None}
    if len(types) > 1:
        v.add("type", "start/limit/delta element types", "one type for all three", _fmt(types))


#: What a UINT8 tensor may be cast from or to (NvInferRuntimeBase.h DataType::kUINT8: "conversions are only
#: supported for {kFLOAT, kHALF}").
UINT8_CAST_PEERS = frozenset({"FLOAT", "FLOAT16"})


def _check_cast(gr: _Graph, node: onnx.NodeProto, v: _Collector) -> None:
    to = _type_name(_attr(node, "to", 0))
    allowed = OPS["Cast"].types
    if to not in allowed:
        v.add("attribute", "attribute to", f"one of {_fmt(allowed)}", to)
    source = gr.elem_type(node.input[0]) if node.input else None
    if "UINT8" in (to, source) and {to, source} - {"UINT8"} - UINT8_CAST_PEERS - {None}:
        other = source if to == "UINT8" else to
        v.add("type", f"cast {source} -> {to}", "UINT8 converted from or to FLOAT or FLOAT16 only "
              "(TensorRT 11.1 NvInferRuntimeBase.h DataType::kUINT8)", other)


def _check_quantize(gr: _Graph, node: onnx.NodeProto, v: _Collector) -> None:
    if len(node.input) > 1 and node.input[1]:
        scale = gr.const(node.input[1])
        if scale is not None and not bool(np.all(scale > 0)):
            v.add("attribute", "scale", "all positive", f"min {float(np.min(scale))}")
    if len(node.input) > 2 and node.input[2]:
        zp = gr.const(node.input[2])
        if zp is not None:
            if bool(np.any(zp.astype(np.float64) != 0)):
                v.add("attribute", "zero point", "all zeros (TensorRT quantizes symmetrically)",
                      f"{int(np.count_nonzero(zp))} non-zero value(s)")
            zt = gr.elem_type(node.input[2])
            if zt is not None and zt not in QUANTIZED_TYPES:
                v.add("type", "zero point element type", f"one of {_fmt(QUANTIZED_TYPES)} (UINT8 is DLA-only)", zt)


_SPECIAL = {
    "TopK": _check_topk, "Resize": _check_resize, "RoiAlign": _check_roialign, "MaxPool": _check_pool,
    "AveragePool": _check_pool, "BatchNormalization": _check_single_output,
    "LayerNormalization": _check_single_output, "Mod": _check_mod, "Range": _check_range, "Cast": _check_cast,
    "QuantizeLinear": _check_quantize, "DequantizeLinear": _check_quantize,
}
_CONSTANT_ATTRS_REFUSED = ("sparse_value", "value_string", "value_strings")

# -- graph-wide rules --------------------------------------------------------------------------


def _type_violations(gr: _Graph) -> list[Violation]:
    """DOUBLE/strings/other types TensorRT lacks; INT8 only through Q/DQ; UINT8 only at the I/O."""
    out: list[Violation] = []
    for node in gr.g.node:
        c = _Collector(node)
        if node.op_type == "Constant":
            for a in _CONSTANT_ATTRS_REFUSED:
                if _attr(node, a) is not None:
                    c.add("attribute", f"attribute {a}", "value (a dense tensor)", a)
        for k, name in enumerate(node.input):
            t = gr.elem_type(name) if name else None
            if t is None or t not in TRT_TYPES:
                continue  # reported where the tensor is made (or it is a graph input, below)
            if t == "UINT8" and node.op_type != "Cast":
                c.add("type", f"input {k} ({name!r}) element type", UINT8_RULE, "UINT8")
            if t in QUANTIZED_TYPES and node.op_type != "DequantizeLinear" and not (
                    node.op_type == "QuantizeLinear" and k == 2):
                c.add("type", f"input {k} ({name!r}) element type",
                      f"{t} only as DequantizeLinear's input (a quantized type in TensorRT)", t)
        for name in node.output:
            t = gr.elem_type(name) if name else None
            if t == "DOUBLE" or (t is not None and t not in TRT_TYPES):
                c.add("type", f"output {name!r} element type", "a TensorRT type (no DOUBLE, no strings)", t)
            elif t == "UINT8" and node.op_type != "Cast":
                c.add("type", f"output {name!r} element type", "UINT8 made only by Cast (TensorRT: UINT8 is I/O only)",
                      "UINT8")
        out.extend(c.items)
    for vi in list(gr.g.input) + list(gr.g.initializer):
        name = vi.name
        t = gr.elem_type(name)
        if t == "DOUBLE" or (t is not None and t not in TRT_TYPES):
            out.append(Violation("graph", "input" if name in gr.inputs else "initializer", "type",
                                 f"{name!r} element type", "a TensorRT type (no DOUBLE, no strings)", t))
    return out


def _shape_violations(gr: _Graph) -> list[Violation]:
    """Shape inputs computed from constants and Shape/Size only, by shape ops, as small 0-D/1-D tensors."""
    out: list[Violation] = []
    verdict: dict[str, tuple[str, str] | None] = {}  # tensor -> None (fine) or (what, got)

    data_dependent = "a data-dependent shape (TensorRT computes shape tensors from shapes and constants)"

    def trace(name: str, reader: onnx.NodeProto | None = None, depth: int = 0) -> tuple[str, str] | None:
        if not name or name in verdict or gr.is_const(name) or depth > 500:
            return verdict.get(name)
        verdict[name] = None  # provisional; a valid graph has no cycles
        read_by = f", read by {reader.op_type} node {_label(reader)!r}" if reader is not None else ""
        p = gr.producer.get(name)
        if name in gr.inputs:
            result: tuple[str, str] | None = (f"the values of graph input {name!r}{read_by}", data_dependent)
        elif p is None or p.op_type in ("Shape", "Size"):
            result = None
        elif p.op_type not in SHAPE_OPS:
            result = (f"the values of {p.op_type} node {_label(p)!r}{read_by}", data_dependent)
        else:
            dims = gr.dims(name)
            n = (dims[0] if dims else 1) if dims is not None else None
            if dims is not None and len(dims) > 1:
                result = (f"{p.op_type} node {_label(p)!r} making a rank-{len(dims)} tensor",
                          "shape tensors are 0-D or 1-D")
            elif isinstance(n, int) and n > MAX_SHAPE_TENSOR_VOLUME:
                result = (f"{p.op_type} node {_label(p)!r} making {n} values",
                          f"at most {MAX_SHAPE_TENSOR_VOLUME} values in a shape tensor")
            else:
                result = next((r for r in (trace(i, p, depth + 1) for i in p.input) if r is not None), None)
        verdict[name] = result
        return result

    for node in gr.g.node:
        rule = OPS.get(node.op_type)
        if rule is None or node.domain not in ("", "ai.onnx"):
            continue
        for k in rule.shape_inputs:
            if k < len(node.input) and node.input[k]:
                r = trace(node.input[k])
                if r is not None:
                    out.append(Violation(_label(node), node.op_type, "shape-tensor",
                                         f"shape input {k} ({node.input[k]!r})",
                                         "computed from constants and Shape/Size by shape ops only",
                                         f"{r[0]} ({r[1]})"))
    return out


def _data_dependent_source(gr: _Graph, name: str) -> str | None:
    seen: set[str] = set()
    stack = [name]
    while stack:
        t = stack.pop()
        if t in seen or not t:
            continue
        seen.add(t)
        p = gr.producer.get(t)
        if p is None:
            continue
        if p.op_type in DATA_DEPENDENT_OPS:
            return f"{p.op_type} node {_label(p)!r}"
        stack.extend(p.input)
    return None


def declared_data_dependent(manifest: Mapping[str, Any] | None) -> dict[str, set[int]]:
    """Output dimensions a manifest declares data-dependent: ``{"masks": {1}}`` for pasted Mask R-CNN masks
    with one row per detection (``postprocessing.masks.rows == "detections"``), else none."""
    post = (manifest or {}).get("postprocessing") if isinstance(manifest, Mapping) else None
    masks = post.get("masks") if isinstance(post, Mapping) else None
    if isinstance(masks, Mapping) and masks.get("form") in ("pasted", "both") and masks.get("rows") == "detections":
        return {"masks": {1}}
    return {}


def _output_violations(gr: _Graph, declared: Mapping[str, set[int]] | None = None) -> list[Violation]:
    """Graph outputs: fixed dimensions or symbols of graph-input dimensions (no data-dependent shapes but the
    ``declared`` ones)."""
    symbols = {d for i in gr.g.input if i.name in gr.inputs for d in (gr.dims(i.name) or []) if isinstance(d, str)}
    declared = declared or {}
    out = []
    for o in gr.g.output:
        dims = gr.dims(o.name)
        if dims is None:
            out.append(Violation("graph", "output", "output-shape", f"output {o.name!r} shape",
                                 "an inferred shape", "none"))
            continue
        for axis, d in enumerate(dims):
            if isinstance(d, int) or d in symbols or axis in declared.get(o.name, ()):
                continue
            source = _data_dependent_source(gr, o.name)
            if source is None and isinstance(d, str) and d != "?":
                continue  # a symbolic expression of the input shapes (e.g. anchors of a dynamic raw graph)
            why = f"data-dependent (from {source})" if source else "not derived from the input shapes"
            out.append(Violation("graph", "output", "output-shape", f"output {o.name!r} dimension {axis}",
                                 f"a fixed size or an input dimension {_fmt(symbols) if symbols else ''}".strip(),
                                 f"{d!r}, {why}"))
    return out


def _manifest_violations(manifest: Mapping[str, Any] | None) -> list[Violation]:
    precision = (manifest or {}).get("precision") or {}
    if isinstance(precision, Mapping) and precision.get("ort_lowering"):
        lowering = precision.get("ort_lowering")
        pairs = lowering.get("output_qdq_pairs", "?") if isinstance(lowering, Mapping) else "?"
        return [Violation("manifest", "precision", "manifest", "precision.ort_lowering",
                          "a graph for TensorRT (deploykit quantize without --ort-lowering)",
                          f"a graph for ONNX Runtime CPU only ({pairs} output Q/DQ pairs added so ORT fuses "
                          "QLinearConv; build TensorRT engines from the graph quantized without --ort-lowering)")]
    return []


# -- public API --------------------------------------------------------------------------------


def _inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - the graph rules report inference failures; check what we can
        return model


def required_plugins(model: onnx.ModelProto) -> list[str]:
    """TensorRT standard-library plugins the parser will use for ``model`` (e.g. ``["ROIAlign_TRT v2"]``)."""
    return sorted({PLUGINS[n.op_type] for n in model.graph.node if n.op_type in PLUGINS and n.domain in ("", "ai.onnx")})


def check_readiness(model: onnx.ModelProto, manifest: Mapping[str, Any] | None = None, *,
                    inferred: bool = False, data_dependent: Mapping[str, set[int]] | None = None) -> Readiness:
    """Every rule of this module on ``model`` (and its ``manifest``, when given).

    ``inferred``: the model already carries inferred shapes (skip shape inference). Output dimensions
    allowed to be data-dependent: ``data_dependent``, else what the manifest declares.
    """
    m = model if inferred else _inferred(model)
    gr = _Graph(m)
    violations: list[Violation] = list(_manifest_violations(manifest))
    for node in m.graph.node:
        violations.extend(_node_violations(gr, node))
    violations.extend(_type_violations(gr))
    violations.extend(_shape_violations(gr))
    declared = dict(data_dependent) if data_dependent is not None else declared_data_dependent(manifest)
    violations.extend(_output_violations(gr, declared))
    seen: set[tuple] = set()  # one violation per (node, rule, what): the first, most specific, wins
    unique = [x for x in violations if not ((x.node, x.rule, x.what) in seen or seen.add((x.node, x.rule, x.what)))]
    outputs = {o.name for o in m.graph.output}
    dds = [f"{name}[{axis}]" for name, axes in sorted(declared.items()) if name in outputs for axis in sorted(axes)]
    return Readiness(unique, Counter(n.op_type for n in m.graph.node), required_plugins(m), len(m.graph.node), dds)


def trt_violations(model: onnx.ModelProto, *, inferred: bool = False,
                   data_dependent: Mapping[str, set[int]] | None = None) -> list[Violation]:
    """The TensorRT-readiness violations of ``model`` (graph only; see :func:`check_readiness`)."""
    return check_readiness(model, inferred=inferred, data_dependent=data_dependent or {}).violations


def check_trt(model: onnx.ModelProto, what: str = "graph", manifest: Mapping[str, Any] | None = None) -> Readiness:
    """Raise :class:`~deploykit.errors.CheckFailed` (exit 1) naming the TensorRT-readiness violations of ``model``
    (and of its ``manifest``, which also declares the data-dependent outputs)."""
    from ..errors import CheckFailed

    readiness = check_readiness(model, manifest)
    problems = [v.line() for v in readiness.violations]
    if problems:
        more = f" (+{len(problems) - 8} more)" if len(problems) > 8 else ""
        raise CheckFailed(f"{what} is not ready for TensorRT, {len(problems)} violation(s): "
                          f"{'; '.join(problems[:8])}{more}")
    return readiness


def report_text(readiness: Readiness, path: str = "model") -> list[str]:
    """Human-readable lines: one per violation, then a summary line."""
    lines = [f"  {v.line()}" for v in readiness.violations]
    ops = len(readiness.ops)
    plugins = ", ".join(readiness.plugins) or "none"
    verdict = "ready for TensorRT" if readiness.ok else f"NOT ready for TensorRT: {len(readiness.violations)} violation(s)"
    dds = (f"; data-dependent output dims (an output allocator serves them): {', '.join(readiness.data_dependent)}"
           if readiness.data_dependent else "")
    lines.append(f"{path}: {verdict} ({readiness.nodes} nodes, {ops} op types, standard plugins: {plugins}{dds}; "
                 f"checked against the {TABLE_VERSION} table)")
    return lines


def check_file(path: str | os.PathLike) -> Readiness:
    """:func:`check_readiness` of an ONNX file and, when it has one, its manifest.

    Raises BadInput for a missing or unreadable file (CLI exit 2).
    """
    from ..errors import BadInput, expected_got
    from ..manifest import manifest_path, parse_manifest_text, settle

    path = Path(path)
    settle(path)  # finish or undo an interrupted write of the graph and its manifest
    if not path.is_file():
        raise BadInput(expected_got(f"ONNX model {path}", "an existing .onnx file",
                                    "a directory" if path.is_dir() else "no such file"))
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - protobuf/onnx raise many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInput(expected_got(f"ONNX model {path}", "a valid ONNX model", first)) from None
    inferred = _inferred_isolated(model, path)
    manifest = None
    mpath = manifest_path(path)
    if mpath.is_file():
        try:
            data = parse_manifest_text(mpath.read_bytes(), mpath)
        except (OSError, BadInput):
            data = None  # a hostile or broken manifest says nothing about how the graph was made
        if data is not None and data["artifact"]["file"] == path.name:
            manifest = data  # only the manifest that names this file says how it was made
    return check_readiness(inferred, manifest, inferred=True)


def _inferred_isolated(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """:func:`_inferred` in a forked child: onnx's shape inference is native code that a hostile file can
    crash (onnx 1.21 segfaults on a ConvTranspose with a scalar weight; found by the py-trt_check fuzzer).
    A child that dies is one BadInput line; where fork is missing, inference runs in this process."""
    from ..errors import BadInput, expected_got

    if not hasattr(os, "fork"):
        return _inferred(model)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: infer, send the model back, exit without running the parent's cleanups
        os.close(read_fd)
        try:
            # die of a crash by the default action: no inherited handler (faulthandler's dump, a fuzzer's
            # crash report) may speak for the child; the parent reports the signal
            faulthandler.disable()
            for sig in (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT):
                signal.signal(sig, signal.SIG_DFL)
            data = _inferred(model).SerializeToString()
            with os.fdopen(write_fd, "wb") as out:
                out.write(data)
            os._exit(0)
        except BaseException:  # noqa: BLE001 - anything: the parent reports it
            os._exit(1)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as inp:
        data = inp.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) or os.WEXITSTATUS(status) != 0 or not data:
        how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
        raise BadInput(expected_got(f"ONNX model {path}", "a graph onnx's shape inference can read",
                                    f"onnx's shape inference crashed on it ({how})"))
    return onnx.load_from_string(data)
