"""Exact Q/DQ lowering of ModelOpt INT8 graphs for ONNX Runtime's CPU integer kernels.

NVIDIA ModelOpt's ONNX PTQ puts QuantizeLinear/DequantizeLinear only on the *inputs* of
Conv/Gemm (what TensorRT wants: it fuses the following activation and the next Q itself).
ONNX Runtime only turns ``DQ -> Conv -> Q`` into ``QLinearConv`` (and ``DQ -> Gemm -> Q`` into
``QGemm``) when the output is quantized too; with ModelOpt's graph it dequantizes the int8
weights and activations every run and convolves in float, which is slower than FP32.

:func:`add_output_qdq` inserts ``Q(s) -> DQ(s)`` right after a quantized Conv/Gemm when every
path from its output reaches a QuantizeLinear with the *same* scale ``s`` and zero point 0
only through ops that commute with that quantizer:

* ``Relu``; ``MaxPool``; ``Resize`` with ``mode="nearest"``; pure data movement
  (``Reshape``, ``Flatten``, ``Transpose``, ``Squeeze``, ``Unsqueeze``, ``Identity``);
* ``Mul`` by a 0/1 mask (a ``Cast`` to float of a boolean tensor, possibly reshaped or
  broadcast, or a constant holding only 0 and 1).

For zero point 0, ``Q`` is a monotone, odd-free rounding-and-saturating map with ``Q(0) = 0``,
so each of those ops ``f`` satisfies ``Q(f(DQ(Q(x)))) == Q(f(x))``: the inserted pair does not
change any quantized value downstream, so the graph's outputs are bit-identical (up to how a
runtime rounds ``DQ(Q(x))/s``, exact for the int8 range). TensorRT sees an ordinary
Q/DQ pair with a calibrated scale (the downstream one) on the Conv output.

Which integer kernels then run depends on the CPU (:mod:`deploykit.runtime.cpu`): with
ModelOpt's int8 weights ONNX Runtime's x86 U8S8 kernels are exact only with VNNI/AMX;
without VNNI they add pairs of products in a saturating int16. :func:`lower_for_ort`
therefore makes the lowering for a CPU target (:data:`TARGETS`):

* ``x86-vnni`` -> ``u8s8``: int8 weights as ModelOpt wrote them (TensorRT can build this
  graph too);
* ``x86`` -> ``u8u8``: every int8 weight re-encoded as ``uint8 = int8 + 128`` with zero
  point 128 (:func:`uint8_weights`: ``(w + 128) - 128 == w``, so every dequantized value is
  bit-identical); ONNX Runtime then picks its U8U8 kernels, which widen to int16 before
  multiplying: exact on every x86 CPU. TensorRT does not take uint8 weights: such a graph is
  for ONNX Runtime on the CPU only.

Pure ``onnx``; no ModelOpt import.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import BadInput, expected_got
from ..runtime import cpu

__all__ = ["add_output_qdq", "uint8_weights", "lower_for_ort", "target_for", "TARGETS"]

#: Lowering targets: CPU target -> (lowering, what it holds). Which CPU classes each target
#: is exact on is :data:`deploykit.runtime.cpu.TARGET_CLASSES`.
TARGETS = {
    "x86-vnni": ("u8s8", "int8 weights (ONNX Runtime's U8S8 kernels: exact with AVX-512 VNNI, AVX-VNNI or AMX)"),
    "x86": ("u8u8", "uint8 weights, zero point 128 (ONNX Runtime's U8U8 kernels: exact on every x86 CPU; "
                    "not for TensorRT)"),
}

#: Ops through which the output quantizer commutes exactly (zero point 0).
_PASS_THROUGH = {"Relu", "MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity"}
#: Ops that only move/broadcast a mask (looked through when proving a Mul operand is 0/1).
_MASK_MOVES = {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Expand", "Tile", "Slice",
               "Gather", "Concat"}
_BOOL_OPS = {"Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal", "And", "Or", "Not", "Xor", "IsNaN",
             "IsInf"}
_QUANTIZED = {"Conv", "Gemm", "MatMul", "ConvTranspose"}
_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}


class _Graph:
    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.g = g
        self.inits = {t.name: t for t in g.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in g.node:
            for o in n.output:
                if o:
                    self.producer[o] = n
            for i in n.input:
                if i:
                    self.consumers[i].append(n)
        self.outputs = {o.name for o in g.output}
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.elem_type: dict[str, int] = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            if vi.type.HasField("tensor_type"):
                self.elem_type[vi.name] = vi.type.tensor_type.elem_type

    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        p = self.producer.get(name)
        if p is not None and p.op_type == "Constant":
            for a in p.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def is_bool(self, name: str, depth: int = 0) -> bool:
        if self.elem_type.get(name) == TensorProto.BOOL:
            return True
        p = self.producer.get(name)
        if p is None or depth > 16:
            return False
        if p.op_type in _BOOL_OPS:
            return True
        if p.op_type in _MASK_MOVES:
            return self.is_bool(p.input[0], depth + 1) and (
                p.op_type != "Concat" or all(self.is_bool(i, depth + 1) for i in p.input))
        if p.op_type == "Cast":
            return _attr(p, "to") == TensorProto.BOOL
        return False

    def is_mask(self, name: str, depth: int = 0) -> bool:
        """True if ``name`` provably holds only 0 and 1 (a Cast of a boolean, or a 0/1 constant)."""
        c = self.const(name)
        if c is not None:
            return c.dtype.kind in "fiub" and bool(np.all((c == 0) | (c == 1)))
        p = self.producer.get(name)
        if p is None or depth > 16:
            return False
        if p.op_type == "Cast":
            return self.is_bool(p.input[0]) or self.is_mask(p.input[0], depth + 1)
        if p.op_type in _MASK_MOVES:
            srcs = p.input if p.op_type == "Concat" else p.input[:1]
            return all(self.is_mask(i, depth + 1) for i in srcs)
        return False


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _is_dq_output(gr: _Graph, name: str) -> bool:
    p = gr.producer.get(name)
    return p is not None and p.op_type == "DequantizeLinear"


def _quant_params(gr: _Graph, q: onnx.NodeProto) -> tuple[float, np.ndarray] | None:
    """(scale, zero point array) of a per-tensor QuantizeLinear with zero point 0, else None."""
    if q.op_type != "QuantizeLinear":
        return None
    scale = gr.const(q.input[1])
    if scale is None or scale.size != 1:
        return None
    if len(q.input) > 2 and q.input[2]:
        zp = gr.const(q.input[2])
        if zp is None or zp.size != 1 or np.any(zp != 0):
            return None
    else:
        zp = np.zeros((), np.uint8)  # ONNX default: uint8, zero point 0
    return float(scale.reshape(())), zp


def _commutes(gr: _Graph, node: onnx.NodeProto, via: str) -> bool:
    op = node.op_type
    if op in _PASS_THROUGH:
        return node.input[0] == via and (op != "MaxPool" or len(node.output) == 1 or not node.output[1])
    if op == "Resize":
        return node.input[0] == via and _attr(node, "mode", b"nearest") in (b"nearest", "nearest")
    if op == "Mul":
        if len(node.input) != 2 or node.input[0] == node.input[1] or via not in node.input:
            return False
        other = node.input[1] if node.input[0] == via else node.input[0]
        return gr.is_mask(other)
    return False


def _downstream_quantizers(gr: _Graph, start: str) -> list[onnx.NodeProto] | None:
    """QuantizeLinear nodes reached from ``start`` through commuting ops only; None if any path
    ends elsewhere (a float consumer or a graph output)."""
    found: list[onnx.NodeProto] = []
    stack, seen = [start], set()
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in gr.outputs or not gr.consumers.get(t):
            return None
        for c in gr.consumers[t]:
            if c.op_type == "QuantizeLinear" and c.input[0] == t:
                found.append(c)
            elif _commutes(gr, c, t):
                stack.append(c.output[0])
            else:
                return None
    return found


def _dedicated_qdq(gr: _Graph, node: onnx.NodeProto, k: int, base: str) -> list[onnx.NodeProto]:
    """If ``node.input[k]`` comes from a per-tensor ``Q -> DQ`` pair whose DQ output also feeds
    other nodes, rewire ``node`` to a private copy of the pair and return the two new nodes.

    The copies carry an explicit ``axis=1`` (the default, meaningless for a per-tensor scale):
    otherwise ORT's common-subexpression elimination merges them back into the shared pair.
    """
    t = node.input[k]
    dq = gr.producer.get(t)
    if dq is None or dq.op_type != "DequantizeLinear" or len(gr.consumers[t]) < 2 or _attr(dq, "axis") is not None:
        return []
    q = gr.producer.get(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear" or _attr(q, "axis") is not None:
        return []
    scale = gr.const(dq.input[1])
    if scale is None or scale.size != 1 or gr.opset < 13:
        return []
    q2 = onnx.NodeProto()
    q2.CopyFrom(q)
    q2.name = f"{q.name or q.output[0]}_for_{base}"
    q2.output[0] = f"{q.output[0]}_for_{base}"
    q2.attribute.append(helper.make_attribute("axis", 1))
    dq2 = onnx.NodeProto()
    dq2.CopyFrom(dq)
    dq2.name = f"{dq.name or t}_for_{base}"
    dq2.input[0] = q2.output[0]
    dq2.output[0] = f"{t}_for_{base}"
    dq2.attribute.append(helper.make_attribute("axis", 1))
    gr.consumers[t].remove(node)
    node.input[k] = dq2.output[0]
    return [q2, dq2]


def add_output_qdq(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Return a copy of ``model`` with ``Q -> DQ`` inserted after every quantized Conv/Gemm/MatMul
    (inputs from DequantizeLinear; also an Add whose two inputs both come from DequantizeLinear,
    which ORT then fuses into QLinearAdd) whose output reaches only same-scale, zero-point-0
    QuantizeLinear nodes through commuting ops (see the module docstring), and the number
    of pairs inserted. An input Q -> DQ pair that such a node shares with other consumers is
    duplicated for it (not counted), so ORT's node-unit fusion applies. Outputs are unchanged; ONNX
    Runtime can then fuse QLinearConv/QGemm/QLinearAdd.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    gr = _Graph(out)
    g = out.graph
    new_nodes: dict[int, list[onnx.NodeProto]] = {}  # index in g.node -> nodes to insert after
    new_inits: list[onnx.TensorProto] = []
    count = 0
    for idx, node in enumerate(g.node):
        if node.op_type not in _QUANTIZED and node.op_type != "Add" or len(node.output) != 1:
            continue
        if not (len(node.input) >= 2 and _is_dq_output(gr, node.input[0]) and _is_dq_output(gr, node.input[1])):
            continue
        y = node.output[0]
        if gr.elem_type.get(y, TensorProto.FLOAT) not in _FLOAT_TYPES:
            continue
        qs = _downstream_quantizers(gr, y)
        if not qs:
            continue
        params = [_quant_params(gr, q) for q in qs]
        if any(p is None for p in params):
            continue
        scales = {p[0] for p in params}
        zps = {(p[1].dtype.str) for p in params}
        if len(scales) != 1 or len(zps) != 1:
            continue
        # Already followed directly by a quantizer (nothing to gain)?
        if all(q.input[0] == y for q in qs):
            continue
        q0 = qs[0]
        scale_arr = gr.const(q0.input[1])
        zp_arr = params[0][1]
        base = f"{node.name or y}_ortq"
        s_name, z_name = f"{base}_scale", f"{base}_zero_point"
        new_inits.append(numpy_helper.from_array(np.asarray(scale_arr).reshape(()).astype(scale_arr.dtype), s_name))
        new_inits.append(numpy_helper.from_array(np.zeros((), dtype=zp_arr.dtype), z_name))
        yq, ydq = f"{base}_q", f"{base}_dq"
        qnode = helper.make_node("QuantizeLinear", [y, s_name, z_name], [yq], name=f"{base}_QuantizeLinear")
        dqnode = helper.make_node("DequantizeLinear", [yq, s_name, z_name], [ydq], name=f"{base}_DequantizeLinear")
        for c in gr.consumers[y]:
            for k, i in enumerate(c.input):
                if i == y:
                    c.input[k] = ydq
        new_nodes[idx] = [qnode, dqnode]
        count += 1
        # ORT only fuses a node unit whose activation Q -> DQ pair feeds nothing else (on x86 it
        # also rewrites that pair to uint8 first); ModelOpt shares the pair between a residual
        # block's first Conv and its Add. Give this node its own copy of the pair.
        dup = _dedicated_qdq(gr, node, 0, base)
        if dup:
            new_nodes.setdefault(-1 - idx, []).extend(dup)
    if count:
        nodes = list(g.node)
        del g.node[:]
        for idx, n in enumerate(nodes):
            g.node.extend(new_nodes.get(-1 - idx, []))  # dedicated DQ copies go before their consumer
            g.node.append(n)
            g.node.extend(new_nodes.get(idx, []))
        g.initializer.extend(new_inits)
    return out, count



def uint8_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Return a copy of ``model`` with every int8 weight (zero point 0) re-encoded as uint8 with
    zero point 128, and the number of weights re-encoded.

    Two forms of weights are handled: a ``QuantizeLinear -> DequantizeLinear`` pair on a float
    initializer (what ModelOpt writes with ``high_precision_dtype='fp32'``; ONNX Runtime folds the
    Q into a constant) gets a uint8 zero point 128 on both nodes -- ``saturate(round(w / s) + 128)``
    over [0, 255] is the int8 value plus 128 -- and an int8 initializer read by a
    ``DequantizeLinear`` is stored as ``int8 + 128``. ``DequantizeLinear`` computes
    ``(q - zero_point) * scale`` with the subtraction in integers, so every dequantized value is
    bit-identical; what changes is the kernel ONNX Runtime fuses (U8U8 instead of U8S8).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    twins: dict[str, str] = {}  # original initializer -> its uint8 twin
    new: list[onnx.TensorProto] = []

    def twin(name: str, values: np.ndarray) -> str:
        if name not in twins:
            twins[name] = f"{name}_u8"
            new.append(numpy_helper.from_array(values, twins[name]))
        return twins[name]

    def int8_zero(node: onnx.NodeProto) -> np.ndarray | None:
        """The node's zero point if it is an int8 initializer of zeros, else None."""
        name = node.input[2] if len(node.input) > 2 else ""
        zp = inits.get(name)
        if zp is None or zp.data_type != TensorProto.INT8:
            return None
        values = numpy_helper.to_array(zp)
        return values if not np.any(values) else None

    count = 0
    for dq in g.node:
        if dq.op_type != "DequantizeLinear" or (zp := int8_zero(dq)) is None:
            continue
        q = producer.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear" and q.input[0] in inits and int8_zero(q) is not None:
            # a weight quantized in the graph: shift the zero point of the pair
            q.input[2] = twin(q.input[2], np.full(int8_zero(q).shape, 128, np.uint8))
        elif dq.input[0] in inits and inits[dq.input[0]].data_type == TensorProto.INT8:
            w = numpy_helper.to_array(inits[dq.input[0]]).astype(np.int16) + 128  # a stored int8 weight
            dq.input[0] = twin(dq.input[0], w.astype(np.uint8))
        else:
            continue  # an activation
        dq.input[2] = twin(dq.input[2], np.full(zp.shape, 128, np.uint8))
        count += 1
    if count:
        g.initializer.extend(new)
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        live = [t for t in g.initializer if t.name in used]
        del g.initializer[:]
        g.initializer.extend(live)
    return out, count


def target_for(cpu_class: str) -> str:
    """The lowering target for a machine of ``cpu_class`` (:func:`deploykit.runtime.cpu.cpu_class`).

    VNNI x86 CPUs get the faster U8S8 lowering; every other x86 CPU (and one whose flags cannot
    be read) the U8U8 one, exact everywhere on x86. Other architectures are refused: the
    lowering's exactness is established for ONNX Runtime's x86 kernels only.
    """
    if cpu_class == cpu.X86_VNNI:
        return "x86-vnni"
    if cpu_class in (cpu.X86_NO_VNNI, cpu.UNKNOWN):
        return "x86"
    raise BadInput(expected_got(
        "--ort-lowering CPU", "an x86 CPU (exactness is established for ONNX Runtime's x86 integer kernels)",
        f"{cpu_class}: use the ModelOpt INT8 graph without --ort-lowering, or pass --ort-cpu x86 to make "
        "the lowering for x86 machines"))


def lower_for_ort(model: onnx.ModelProto, target: str) -> tuple[onnx.ModelProto, dict]:
    """The ONNX Runtime lowering of ModelOpt INT8 ``model`` for CPU ``target`` (a key of
    :data:`TARGETS`) and its manifest record ``{"lowering", "cpu_class", "output_qdq_pairs",
    "uint8_weights"}``."""
    if target not in TARGETS:
        raise BadInput(expected_got("ORT lowering target", " | ".join(TARGETS), repr(target)))
    lowering, holds = TARGETS[target]
    lowered, pairs = add_output_qdq(model)
    reencoded = 0
    if lowering == "u8u8":
        lowered, reencoded = uint8_weights(lowered)
    return lowered, {"lowering": lowering, "cpu_class": target, "holds": holds, "output_qdq_pairs": pairs,
                     "uint8_weights": reencoded}
